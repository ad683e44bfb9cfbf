package harness

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// commitLabel is the image label holding the full commit an image of
// BuildNodeImageAt was built from: a tag that exists with another commit
// (or none) is rebuilt, not trusted.
const commitLabel = "channelsd.commit"

// BuildNodeImageAt builds the node image of an earlier release: the
// binary of commit (anything git rev-parse takes: a hash, a tag), built
// from that commit's tree as test/images/build.sh builds the current one
// (CGO_ENABLED=0, -trimpath, on this host's Go toolchain, into that
// commit's Dockerfile FROM scratch; nothing is pulled), tagged
// channelsd:<12-digit commit>. It returns the tag. An image of that tag
// already built from that commit is reused, so only the first run pays
// for the build (about as long as `make images`).
//
// The tree comes from `git archive` of the repository this package sits
// in, so it needs the commit in the clone's history: a full clone, as CI
// makes, not a shallow one. The old go.mod's modules are fetched the
// usual way (the Go module cache, else GOPROXY) if the cache lacks them.
// GO names the go command (default go), CA_CERTS the certificates copied
// into the image, as for build.sh.
func BuildNodeImageAt(ctx context.Context, commit string) (string, error) {
	root, err := repoRoot(ctx)
	if err != nil {
		return "", err
	}
	full, err := run(ctx, root, nil, "git", "rev-parse", "--verify", "--quiet", commit+"^{commit}")
	if err != nil {
		shallow, _ := run(ctx, root, nil, "git", "rev-parse", "--is-shallow-repository")
		hint := ""
		if shallow == "true" {
			hint = " (this clone is shallow: `git fetch --unshallow` brings the history)"
		}
		return "", fmt.Errorf("harness: commit %q is not in the clone at %s%s", commit, root, hint)
	}
	tag := "channelsd:" + full[:12]
	if got, _ := run(ctx, root, nil, "docker", "image", "inspect", "--format", `{{ index .Config.Labels "`+commitLabel+`" }}`, tag); got == full {
		return tag, nil
	}

	tmp, err := os.MkdirTemp("", "channelsd-"+full[:12]+"-")
	if err != nil {
		return "", fmt.Errorf("harness: %w", err)
	}
	defer os.RemoveAll(tmp)
	src, ctxDir := filepath.Join(tmp, "src"), filepath.Join(tmp, "image")
	for _, d := range []string{src, ctxDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", fmt.Errorf("harness: %w", err)
		}
	}
	if err := archiveTo(ctx, root, full, src); err != nil {
		return "", err
	}

	goCmd := envOr("GO", "go")
	// The old tree is a module of its own: no go.work of this one, and
	// no -mod or build flags meant for the current tree.
	env := append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=")
	if _, err := run(ctx, src, env, goCmd, "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(ctxDir, "channelsd"), "./cmd/channelsd"); err != nil {
		return "", fmt.Errorf("harness: building channelsd at %s: %w", full[:12], err)
	}
	certs := envOr("CA_CERTS", "/etc/ssl/certs/ca-certificates.crt")
	if err := copyFile(certs, filepath.Join(ctxDir, "ca-certificates.crt")); err != nil {
		return "", fmt.Errorf("harness: %w (apt-get install ca-certificates)", err)
	}
	// The commit's own Dockerfile, which matches its binary; a commit
	// older than the file gets today's.
	dockerfile := filepath.Join(src, "Dockerfile")
	if _, err := os.Stat(dockerfile); err != nil {
		dockerfile = filepath.Join(root, "Dockerfile")
	}
	if err := copyFile(dockerfile, filepath.Join(ctxDir, "Dockerfile")); err != nil {
		return "", fmt.Errorf("harness: %w", err)
	}
	if _, err := run(ctx, ctxDir, nil, "docker", "build", "--label", commitLabel+"="+full, "-t", tag, "."); err != nil {
		return "", fmt.Errorf("harness: docker build of %s: %w", tag, err)
	}
	return tag, nil
}

// repoRoot is the top of the git work tree this package's tests run in.
func repoRoot(ctx context.Context) (string, error) {
	root, err := run(ctx, ".", nil, "git", "rev-parse", "--show-toplevel")
	if err != nil {
		return "", fmt.Errorf("harness: not in a git clone, so no earlier release can be built: %w", err)
	}
	return root, nil
}

// archiveTo writes the tree of commit into dir, from git archive's tar
// stream: no second work tree is registered with the clone.
func archiveTo(ctx context.Context, root, commit, dir string) error {
	cmd := exec.CommandContext(ctx, "git", "-C", root, "archive", "--format=tar", commit)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("harness: git archive: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("harness: git archive: %w", err)
	}
	xerr := untar(out, dir)
	if xerr != nil {
		_, _ = io.Copy(io.Discard, out)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("harness: git archive %s: %w: %s", commit, err, strings.TrimSpace(stderr.String()))
	}
	if xerr != nil {
		return fmt.Errorf("harness: unpacking git archive %s: %w", commit, xerr)
	}
	return nil
}

func untar(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(h.Name)
		if name == "." {
			continue
		}
		if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, ".."+string(filepath.Separator)) {
			return fmt.Errorf("path %q leaves the tree", h.Name)
		}
		p := filepath.Join(dir, name)
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			err = writeFile(p, tr, os.FileMode(h.Mode).Perm())
		case tar.TypeSymlink:
			if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
				err = os.Symlink(h.Linkname, p)
			}
		case tar.TypeXGlobalHeader: // git archive's commit id comment
		default:
			err = fmt.Errorf("%s: unexpected entry type %q", h.Name, h.Typeflag)
		}
		if err != nil {
			return err
		}
	}
}

func writeFile(p string, r io.Reader, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode|0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeFile(to, in, 0o644)
}

// run runs name in dir and returns its trimmed standard output; the error
// carries the end of its standard error.
func run(ctx context.Context, dir string, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 {
			msg = "..." + msg[len(msg)-2000:]
		}
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return strings.TrimSpace(stdout.String()), nil
}
