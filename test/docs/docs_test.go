package docs

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// root is the repository's top directory: where go.mod is, above this
// package's directory (the test's working directory).
func root(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		up := filepath.Dir(dir)
		if up == dir {
			t.Fatal("docs: no go.mod above the test's directory")
		}
		dir = up
	}
}

// checked tells whether a file is one whose text is read: the kinds that
// carry prose and comments.
func checked(name string) bool {
	base := path.Base(name)
	if base == "Makefile" || base == "Dockerfile" {
		return true
	}
	switch path.Ext(base) {
	case ".go", ".md", ".js", ".html", ".yaml", ".yml", ".sh":
		return true
	}
	return false
}

// trackedFiles lists the repository's files, slash-separated and relative
// to top: git's list when git and the repository are there, else every
// file below top outside hidden directories (a source archive).
func trackedFiles(t *testing.T, top string) []string {
	t.Helper()
	cmd := exec.Command("git", "ls-files", "-z")
	cmd.Dir = top
	if out, err := cmd.Output(); err == nil {
		var files []string
		for _, f := range strings.Split(string(out), "\x00") {
			if f != "" {
				files = append(files, f)
			}
		}
		return files
	}
	var files []string
	err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != top && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(top, p)
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

var (
	headingTop = regexp.MustCompile(`(?m)^## (\d+)\. `)
	headingSub = regexp.MustCompile(`(?m)^### (\d+\.\d+) `)
	// A citation: the section sign and a dotted number.
	citation = regexp.MustCompile("\u00a7" + `(\d+(?:\.\d+)*)`)
	// What, right before a citation, makes it another document's.
	external = regexp.MustCompile(`(?i)(?:\bRFC\s*\d+|\bissue\s*#?\d+)[\s,]*$`)
	// What may stand between two citations of one list.
	listGlue = regexp.MustCompile(`^(?:[\s,;/&–-]|\band\b|\bor\b|\b(?:item|step)\s+\d+\b)*$`)
	// Comment and list markers at the start of a line, dropped so that a
	// citation whose document is named at the end of the line before
	// ("RFC 6455" newline "// " sign) is read as one sentence.
	linePrefix = regexp.MustCompile(`^\s*(?://+|#+|\*|-)?\s*`)
	// Markdown documents named anywhere, with an optional path.
	mdName = regexp.MustCompile(`[A-Za-z0-9_./-]*[A-Za-z0-9_-]\.md\b`)
	// Protocol references that live outside the repository.
	outside = regexp.MustCompile(`(?i)shared\s+reference|\.\./shared\b|shared/+PROTOCOL`)
)

// sections returns the section numbers PROTOCOL.md has headings for.
func sections(protocol []byte) map[string]bool {
	s := map[string]bool{}
	for _, m := range headingTop.FindAllSubmatch(protocol, -1) {
		s[string(m[1])] = true
	}
	for _, m := range headingSub.FindAllSubmatch(protocol, -1) {
		s[string(m[1])] = true
	}
	return s
}

// cite is a citation of PROTOCOL.md found in a file.
type cite struct {
	line    int
	section string
}

// protocolCitations returns the citations in text that belong to
// PROTOCOL.md, with their line numbers.
func protocolCitations(text []byte) []cite {
	// One line of running text per file, comment markers dropped; starts
	// maps a position back to its line.
	var flat []byte
	var starts []int
	for _, line := range bytes.Split(text, []byte("\n")) {
		starts = append(starts, len(flat))
		flat = append(flat, linePrefix.ReplaceAll(line, nil)...)
		flat = append(flat, ' ')
	}
	lineOf := func(pos int) int {
		i, found := slices.BinarySearch(starts, pos)
		if !found {
			i--
		}
		return i + 1
	}
	var out []cite
	prevEnd, prevExternal := -1, false
	for _, m := range citation.FindAllSubmatchIndex(flat, -1) {
		var ext bool
		if prevEnd >= 0 && listGlue.Match(flat[prevEnd:m[0]]) {
			ext = prevExternal
		} else {
			ext = external.Match(flat[:m[0]])
		}
		if !ext {
			out = append(out, cite{line: lineOf(m[0]), section: string(flat[m[2]:m[3]])})
		}
		prevEnd, prevExternal = m[1], ext
	}
	return out
}

func TestProtocolCitationsExist(t *testing.T) {
	top := root(t)
	protocol, err := os.ReadFile(filepath.Join(top, "PROTOCOL.md"))
	if err != nil {
		t.Fatalf("docs: the protocol document: %v", err)
	}
	have := sections(protocol)
	if len(have) < 10 {
		t.Fatalf("docs: only %d section headings found in PROTOCOL.md; the heading pattern no longer matches", len(have))
	}
	files := trackedFiles(t, top)
	mdBases := map[string]bool{}
	for _, f := range files {
		if path.Ext(f) == ".md" {
			mdBases[path.Base(f)] = true
		}
	}
	var broken []string
	count := 0
	for _, f := range files {
		if !checked(f) {
			continue
		}
		text, err := os.ReadFile(filepath.Join(top, filepath.FromSlash(f)))
		if err != nil {
			if os.IsNotExist(err) {
				continue // deleted in the work tree, not yet in the index
			}
			t.Fatal(err)
		}
		for _, c := range protocolCitations(text) {
			count++
			if !have[c.section] {
				broken = append(broken, fmt.Sprintf("%s:%d: PROTOCOL.md has no section %s", f, c.line, c.section))
			}
		}
		for i, line := range bytes.Split(text, []byte("\n")) {
			for _, m := range outside.FindAll(line, -1) {
				broken = append(broken, fmt.Sprintf("%s:%d: %q names a document outside the repository", f, i+1, m))
			}
			for _, m := range mdName.FindAll(line, -1) {
				if !mdBases[path.Base(string(m))] {
					broken = append(broken, fmt.Sprintf("%s:%d: %q is not a document of the repository", f, i+1, m))
				}
			}
		}
	}
	if count == 0 {
		t.Fatal("docs: no citation of PROTOCOL.md found at all; the citation pattern no longer matches")
	}
	if len(broken) > 0 {
		t.Errorf("%d broken citations (of %d):\n%s", len(broken), count, strings.Join(broken, "\n"))
	}
}

// The reading rules, on made-up text (the section sign is written as an
// escape here, so that this file itself cites nothing).
func TestProtocolCitationsRules(t *testing.T) {
	const s = "\u00a7"
	text := strings.Join([]string{
		"// See PROTOCOL.md " + s + "3.3 and " + s + "5.1, " + s + "6.1.", // 1: three of ours
		"// a close code (RFC 6455 " + s + "7.4.1, " + s + "5.5) and",     // 2: two of the RFC's
		"// as the RFC says (RFC 6455",                                    // 3
		"// " + s + "7.4), then " + s + "12.",                             // 4: RFC's, then ours
		"# Issue 16 " + s + "3: not ours; issue #4 " + s + "2 neither",    // 5
		"text " + s + "2.4 step 3",                                        // 6: ours
		"(RFC 6455 " + s + "4.1 item 8, " + s + "10.2)",                   // 7: the RFC's
	}, "\n")
	var got []string
	for _, c := range protocolCitations([]byte(text)) {
		got = append(got, fmt.Sprintf("%d:%s", c.line, c.section))
	}
	want := []string{"1:3.3", "1:5.1", "1:6.1", "4:12", "6:2.4"}
	if !slices.Equal(got, want) {
		t.Errorf("citations %q, want %q", got, want)
	}
	have := sections([]byte("# t\n## 1. A\n### 1.1 B\n### 1.2 C\n## 2. D\n#### 2.1.1 not a section\n"))
	for sec, ok := range map[string]bool{"1": true, "1.1": true, "1.2": true, "2": true, "2.1": false, "2.1.1": false, "3": false} {
		if have[sec] != ok {
			t.Errorf("section %s present = %v, want %v", sec, have[sec], ok)
		}
	}
	for line, bad := range map[string]bool{
		"see the shared " + "reference":     true,
		"../" + "shared/" + "PROTOCOL.md":   true,
		"see PROTOCOL.md":                   false,
		"a shared, referenced subscription": false,
	} {
		if outside.MatchString(line) != bad {
			t.Errorf("%q flagged = %v, want %v", line, !bad, bad)
		}
	}
}
