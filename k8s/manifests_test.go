package k8s

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/node"
)

// The kustomizations checked: the base and every overlay.
var kustomizations = []string{"base", "overlays/dev", "overlays/production"}

// pending lists CHANNELS_* variables the manifests set although the binary
// does not read them yet, because the engineers adding them have not landed
// their change. Without this list the test would fail until they do. It is
// checked too: a pending name the binary now reads fails the test ("remove
// from pending"), so the list cannot go stale. Keep it to exactly those.
var pending = map[string]string{}

// The names the manifests and the binary agree on.
const (
	appName     = "channelsd"
	configName  = "channelsd-config"
	secretName  = "channelsd-secrets"
	portName    = "http"
	baseImage   = "channelsd"
	nonRootUser = 65534
)

// kustomization is the part of kustomization.yaml this test understands;
// decoding is strict, so any other field fails the test until it learns it.
type kustomization struct {
	APIVersion            string      `json:"apiVersion"`
	Kind                  string      `json:"kind"`
	Resources             []string    `json:"resources"`
	Patches               []patchRef  `json:"patches"`
	PatchesStrategicMerge []string    `json:"patchesStrategicMerge"`
	Images                []imageRef  `json:"images"`
	ConfigMapGenerator    []generator `json:"configMapGenerator"`
	SecretGenerator       []generator `json:"secretGenerator"`
}

type patchRef struct {
	Path string `json:"path"`
}

type imageRef struct {
	Name    string `json:"name"`
	NewName string `json:"newName"`
	NewTag  string `json:"newTag"`
	Digest  string `json:"digest"`
}

type generator struct {
	Name     string   `json:"name"`
	Behavior string   `json:"behavior"`
	Literals []string `json:"literals"`
}

// object is one resource of a kustomization's output, as a JSON map while
// generators and patches apply, then decoded strictly into its type.
type object struct {
	kind, name string
	from       string // file or generator it came from, for messages
	generated  bool
	raw        map[string]any
	typed      any
}

// build is the output of one kustomization.
type build struct {
	dir     string
	k       kustomization
	objects []*object
	// imageHits counts, per `images:` entry, the containers it changed.
	imageHits map[string]int
}

// typeOf returns a new value of the k8s.io/api type for apiVersion and kind.
func typeOf(apiVersion, kind string) (any, error) {
	switch apiVersion + " " + kind {
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, nil
	case "apps/v1 StatefulSet":
		return &appsv1.StatefulSet{}, nil
	case "v1 Service":
		return &corev1.Service{}, nil
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "v1 Secret":
		return &corev1.Secret{}, nil
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	case "autoscaling/v2 HorizontalPodAutoscaler":
		return &autoscalingv2.HorizontalPodAutoscaler{}, nil
	}
	return nil, fmt.Errorf("apiVersion %q kind %q: not a type this test knows (add it to typeOf)", apiVersion, kind)
}

// decodeStrict decodes one YAML document into its type, failing on unknown
// or duplicate fields, and returns it with its JSON map.
func decodeStrict(doc []byte) (any, map[string]any, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, nil, err
	}
	v, err := typeOf(tm.APIVersion, tm.Kind)
	if err != nil {
		return nil, nil, err
	}
	if err := yaml.UnmarshalStrict(doc, v); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, nil, err
	}
	var raw map[string]any
	if err := json.Unmarshal(js, &raw); err != nil {
		return nil, nil, err
	}
	return v, raw, nil
}

// splitDocs splits a multi-document YAML file, dropping empty documents.
func splitDocs(data []byte) [][]byte {
	var docs [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---[ \t]*$`).Split(string(data), -1) {
		if strings.TrimSpace(stripComments(d)) != "" {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

func stripComments(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

func (b *build) find(kind, name string) *object {
	for _, o := range b.objects {
		if o.kind == kind && o.name == name {
			return o
		}
	}
	return nil
}

func (b *build) add(t *testing.T, o *object) {
	t.Helper()
	if b.find(o.kind, o.name) != nil {
		t.Fatalf("%s: %s %q defined twice (again in %s)", b.dir, o.kind, o.name, o.from)
	}
	b.objects = append(b.objects, o)
}

// load builds the kustomization in dir the way kustomize would, as far as
// the checks need: resources, generators, patches, images.
func load(t *testing.T, dir string) *build {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	b := &build{dir: dir, imageHits: map[string]int{}}
	if err := yaml.UnmarshalStrict(data, &b.k); err != nil {
		t.Fatalf("%s/kustomization.yaml: %v", dir, err)
	}
	if b.k.APIVersion != "kustomize.config.k8s.io/v1beta1" || b.k.Kind != "Kustomization" {
		t.Fatalf("%s/kustomization.yaml: apiVersion %q kind %q, want kustomize.config.k8s.io/v1beta1 Kustomization", dir, b.k.APIVersion, b.k.Kind)
	}

	for _, res := range b.k.Resources {
		path := filepath.Join(dir, res)
		st, err := os.Stat(path)
		if err != nil {
			t.Fatalf("%s: resource %s: %v", dir, res, err)
		}
		if st.IsDir() {
			sub := load(t, path)
			for _, o := range sub.objects {
				b.add(t, o)
			}
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range splitDocs(data) {
			_, raw, err := decodeStrict(doc)
			if err != nil {
				t.Fatalf("%s (document %d): %v", path, i+1, err)
			}
			o := &object{raw: raw, from: path}
			o.kind, _ = raw["kind"].(string)
			o.name, _ = nested(raw, "metadata", "name").(string)
			if o.name == "" {
				t.Fatalf("%s (document %d): no metadata.name", path, i+1)
			}
			b.add(t, o)
		}
	}

	b.generate(t, "ConfigMap", b.k.ConfigMapGenerator)
	b.generate(t, "Secret", b.k.SecretGenerator)

	patches := b.k.PatchesStrategicMerge
	for _, p := range b.k.Patches {
		if p.Path == "" {
			t.Fatalf("%s/kustomization.yaml: a patch without path (inline patches are not supported by this test)", dir)
		}
		patches = append(patches, p.Path)
	}
	for _, p := range patches {
		path := filepath.Join(dir, p)
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%s: patch: %v", dir, err)
		}
		for i, doc := range splitDocs(data) {
			_, raw, err := decodeStrict(doc)
			if err != nil {
				t.Fatalf("%s (document %d): %v", path, i+1, err)
			}
			kind, _ := raw["kind"].(string)
			name, _ := nested(raw, "metadata", "name").(string)
			target := b.find(kind, name)
			if target == nil {
				t.Fatalf("%s: patches %s %q, which %s does not have", path, kind, name, dir)
			}
			if err := mergePatch(target.raw, raw, ""); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			target.from += " + " + path
		}
	}

	// Decode the result strictly into its type: a patch must leave a
	// valid object.
	for _, o := range b.objects {
		js, err := json.Marshal(o.raw)
		if err != nil {
			t.Fatal(err)
		}
		o.typed, _, err = decodeStrict(js)
		if err != nil {
			t.Fatalf("%s %q (%s) after generators and patches: %v", o.kind, o.name, o.from, err)
		}
	}

	for _, img := range b.k.Images {
		for _, c := range b.containers() {
			if imageName(c.Image) != img.Name {
				continue
			}
			b.imageHits[img.Name]++
			name, tag := imageName(c.Image), ""
			if img.NewName != "" {
				name = img.NewName
			}
			if img.NewTag != "" {
				tag = ":" + img.NewTag
			}
			if img.Digest != "" {
				tag = "@" + img.Digest
			}
			c.Image = name + tag
		}
	}
	return b
}

// generate applies configMapGenerator or secretGenerator entries (literals
// only; kustomize's hash suffix is left out, references stay by name).
func (b *build) generate(t *testing.T, kind string, gens []generator) {
	t.Helper()
	for _, g := range gens {
		data := map[string]any{}
		for _, lit := range g.Literals {
			k, v, ok := strings.Cut(lit, "=")
			if !ok || k == "" {
				t.Fatalf("%s: %s generator %q: literal %q is not KEY=value", b.dir, kind, g.Name, lit)
			}
			data[k] = v
		}
		field := "data"
		if kind == "Secret" {
			field = "stringData"
		}
		existing := b.find(kind, g.Name)
		switch g.Behavior {
		case "", "create":
			b.add(t, &object{kind: kind, name: g.Name, from: b.dir + " " + kind + "Generator", generated: true, raw: map[string]any{
				"apiVersion": "v1", "kind": kind, "metadata": map[string]any{"name": g.Name}, field: data,
			}})
		case "merge", "replace":
			if existing == nil {
				t.Fatalf("%s: %s generator %q with behavior %s, but there is no such %s", b.dir, kind, g.Name, g.Behavior, kind)
			}
			if g.Behavior == "replace" {
				delete(existing.raw, "data")
				delete(existing.raw, "stringData")
			}
			if err := mergePatch(existing.raw, map[string]any{field: data}, ""); err != nil {
				t.Fatal(err)
			}
			existing.generated = true
		default:
			t.Fatalf("%s: %s generator %q: unknown behavior %q", b.dir, kind, g.Name, g.Behavior)
		}
	}
}

// mergeKeys are the list fields a patch may touch, merged by element name
// as a strategic merge patch does. Other lists in a patch fail the test:
// their strategic-merge semantics differ (ports merge by port number,
// args replace) and this test does not model them.
var mergeKeys = map[string]bool{"containers": true, "initContainers": true, "env": true, "volumes": true}

// mergePatch applies a strategic-merge patch to dst, minimally.
func mergePatch(dst, patch map[string]any, path string) error {
	for k, pv := range patch {
		p := path + "." + k
		if strings.HasPrefix(k, "$") {
			return fmt.Errorf("%s: patch directives are not supported by this test", p)
		}
		switch pv := pv.(type) {
		case nil:
			delete(dst, k)
		case map[string]any:
			d, ok := dst[k].(map[string]any)
			if !ok {
				dst[k] = pv
				continue
			}
			if err := mergePatch(d, pv, p); err != nil {
				return err
			}
		case []any:
			if !mergeKeys[k] {
				return fmt.Errorf("%s: patching a list other than %v is not supported by this test", p, slices.Sorted(mapKeys(mergeKeys)))
			}
			d, _ := dst[k].([]any)
			for _, pe := range pv {
				pm, ok := pe.(map[string]any)
				name, _ := pm["name"].(string)
				if !ok || name == "" {
					return fmt.Errorf("%s: list element without a name", p)
				}
				merged := false
				for _, de := range d {
					if dm, ok := de.(map[string]any); ok && dm["name"] == name {
						if err := mergePatch(dm, pm, p+"["+name+"]"); err != nil {
							return err
						}
						merged = true
					}
				}
				if !merged {
					d = append(d, pm)
				}
			}
			dst[k] = d
		default:
			dst[k] = pv
		}
	}
	return nil
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func nested(m map[string]any, keys ...string) any {
	var v any = m
	for _, k := range keys {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[k]
	}
	return v
}

// imageName strips the tag or digest from an image reference.
func imageName(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	return ref
}

// workload is a Deployment or StatefulSet, seen through what the checks need.
type workload struct {
	kind, name string
	selector   *metav1.LabelSelector
	template   *corev1.PodTemplateSpec
}

func (b *build) workloads() []workload {
	var ws []workload
	for _, o := range b.objects {
		switch v := o.typed.(type) {
		case *appsv1.Deployment:
			ws = append(ws, workload{o.kind, o.name, v.Spec.Selector, &v.Spec.Template})
		case *appsv1.StatefulSet:
			ws = append(ws, workload{o.kind, o.name, v.Spec.Selector, &v.Spec.Template})
		}
	}
	return ws
}

func (b *build) containers() []*corev1.Container {
	var cs []*corev1.Container
	for _, w := range b.workloads() {
		for i := range w.template.Spec.Containers {
			cs = append(cs, &w.template.Spec.Containers[i])
		}
	}
	return cs
}

func typed[T any](b *build) []T {
	var out []T
	for _, o := range b.objects {
		if v, ok := o.typed.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// selects reports whether sel selects the pods of w.
func selects(t *testing.T, sel *metav1.LabelSelector, w workload) bool {
	t.Helper()
	if sel == nil {
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Errorf("selector %v: %v", sel, err)
		return false
	}
	return !s.Empty() && s.Matches(labels.Set(w.template.Labels))
}

func hasPort(c *corev1.Container, port intstr.IntOrString) bool {
	for _, p := range c.Ports {
		if (port.Type == intstr.String && p.Name == port.StrVal) || (port.Type == intstr.Int && p.ContainerPort == port.IntVal) {
			return true
		}
	}
	return false
}

func podHasPort(w workload, port intstr.IntOrString) bool {
	for i := range w.template.Spec.Containers {
		if hasPort(&w.template.Spec.Containers[i], port) {
			return true
		}
	}
	return false
}

// --- the binary: its --help, its entrypoint, the paths it serves ---

var (
	helpOnce sync.Once
	helpText string
	helpErr  error
)

// binaryHelp builds cmd/channelsd and returns its --help output.
func binaryHelp(t *testing.T) string {
	t.Helper()
	helpOnce.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			helpErr = fmt.Errorf("the go command is needed to build cmd/channelsd for its --help: %w", err)
			return
		}
		dir, err := os.MkdirTemp("", "channelsd-k8s-test")
		if err != nil {
			helpErr = err
			return
		}
		defer os.RemoveAll(dir)
		bin := filepath.Join(dir, "channelsd")
		build := exec.Command(goBin, "build", "-o", bin, "./cmd/channelsd")
		build.Dir = ".."
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			helpErr = fmt.Errorf("go build ./cmd/channelsd: %v\n%s", err, out)
			return
		}
		cmd := exec.Command(bin, "--help")
		// A clean environment: the help text shows defaults from CHANNELS_*.
		cmd.Env = []string{}
		out, err := cmd.CombinedOutput()
		if err != nil {
			helpErr = fmt.Errorf("channelsd --help: %v\n%s", err, out)
			return
		}
		helpText = string(out)
	})
	if helpErr != nil {
		t.Fatal(helpErr)
	}
	return helpText
}

var envVarRE = regexp.MustCompile(`CHANNELS_[A-Z0-9_]+`)

// binaryVars returns the CHANNELS_* variables channelsd --help mentions.
func binaryVars(t *testing.T) map[string]bool {
	t.Helper()
	vars := map[string]bool{}
	for _, v := range envVarRE.FindAllString(binaryHelp(t), -1) {
		vars[v] = true
	}
	if len(vars) < 5 {
		t.Fatalf("found only %v in channelsd --help; has its format changed?\n%s", vars, binaryHelp(t))
	}
	return vars
}

// binaryDefault returns the default --help shows for the flag of env.
func binaryDefault(t *testing.T, env string) string {
	t.Helper()
	m := regexp.MustCompile(`\(env ` + env + `\) \(default ([^)]*)\)`).FindStringSubmatch(binaryHelp(t))
	if m == nil {
		t.Fatalf("channelsd --help shows no default for %s", env)
	}
	return strings.Trim(m[1], `"`)
}

// entrypoint returns the first word of the Dockerfile's ENTRYPOINT.
func entrypoint(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "ENTRYPOINT "); ok {
			var words []string
			if err := json.Unmarshal([]byte(rest), &words); err != nil || len(words) == 0 {
				t.Fatalf("Dockerfile: ENTRYPOINT %s: want the JSON form", rest)
			}
			return words[0]
		}
	}
	t.Fatal("Dockerfile: no ENTRYPOINT")
	return ""
}

// probeStatuses starts an in-process node and returns the status of GET
// on each path.
func probeStatuses(t *testing.T, paths []string) map[string]int {
	t.Helper()
	n, err := node.New(node.Config{
		Addr:   "127.0.0.1:0",
		Router: &channels.Router{},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := n.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	}()
	client := &http.Client{Timeout: 5 * time.Second}
	statuses := map[string]int{}
	for _, p := range paths {
		resp, err := client.Get("http://" + n.Addr().String() + p)
		if err != nil {
			t.Fatalf("GET %s: %v", p, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		statuses[p] = resp.StatusCode
	}
	client.CloseIdleConnections()
	return statuses
}

// --- the tests ---

func TestManifests(t *testing.T) {
	probePaths := map[string][]string{} // path -> where it is used
	usedVars := map[string][]string{}   // CHANNELS_* -> where it is set
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			b := load(t, dir)
			checkGeneric(t, b)
			checkChannelsd(t, b, probePaths, usedVars)
			checkNoCommittedKeys(t, b)
			checkDevIsInternal(t, b)
			checkClientAddresses(t, b)
		})
	}

	t.Run("probe paths", func(t *testing.T) {
		var paths []string
		for p := range probePaths {
			paths = append(paths, p)
		}
		sort.Strings(paths)
		if len(paths) == 0 {
			t.Fatal("no HTTP probe found")
		}
		for p, code := range probeStatuses(t, paths) {
			if code != http.StatusOK {
				t.Errorf("probe path %s (%s): a node answers %d, want 200", p, strings.Join(probePaths[p], ", "), code)
			}
		}
	})

	t.Run("CHANNELS variables", func(t *testing.T) {
		read := binaryVars(t)
		for _, v := range slices.Sorted(mapKeys(usedVars)) {
			where := strings.Join(usedVars[v], ", ")
			switch {
			case read[v]:
			case pending[v] != "":
				t.Logf("%s (%s) is pending: channelsd does not read it yet (%s)", v, where, pending[v])
			default:
				t.Errorf("%s (set in %s) is not read by channelsd: it is not in `channelsd --help`. Fix the name, or, if another change adds it, list it in pending in k8s/manifests_test.go", v, where)
			}
		}
		for _, v := range slices.Sorted(mapKeys(pending)) {
			if read[v] {
				t.Errorf("%s is now read by channelsd (it is in `channelsd --help`): remove from pending in k8s/manifests_test.go", v)
			}
			if usedVars[v] == nil {
				t.Errorf("%s is in pending but no manifest sets it: remove from pending in k8s/manifests_test.go", v)
			}
		}
	})
}

// checkGeneric checks what holds for any workload: selectors, ports,
// references between objects, images.
func checkGeneric(t *testing.T, b *build) {
	ws := b.workloads()
	for _, w := range ws {
		if !selects(t, w.selector, w) {
			t.Errorf("%s %q: selector %v does not match its template labels %v", w.kind, w.name, w.selector, w.template.Labels)
		}
		for _, tsc := range w.template.Spec.TopologySpreadConstraints {
			if !selects(t, tsc.LabelSelector, w) {
				t.Errorf("%s %q: topology spread selector %v does not select its pods %v", w.kind, w.name, tsc.LabelSelector, w.template.Labels)
			}
		}
		for _, c := range w.template.Spec.Containers {
			for what, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
				if p == nil {
					continue
				}
				var port *intstr.IntOrString
				switch {
				case p.HTTPGet != nil:
					port = &p.HTTPGet.Port
				case p.TCPSocket != nil:
					port = &p.TCPSocket.Port
				}
				if port != nil && !hasPort(&c, *port) {
					t.Errorf("%s %q container %q: %s probe port %s is not a port of the container", w.kind, w.name, c.Name, what, port.String())
				}
			}
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() ||
				c.Resources.Limits.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
				t.Errorf("%s %q container %q: want CPU and memory requests and limits, have %v", w.kind, w.name, c.Name, c.Resources)
			}
			for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				req, lim := c.Resources.Requests[r], c.Resources.Limits[r]
				if req.Cmp(lim) > 0 {
					t.Errorf("%s %q container %q: %s request %s above its limit %s", w.kind, w.name, c.Name, r, req.String(), lim.String())
				}
			}
			for _, ef := range c.EnvFrom {
				if ef.ConfigMapRef != nil && b.find("ConfigMap", ef.ConfigMapRef.Name) == nil {
					t.Errorf("%s %q: envFrom ConfigMap %q is not defined", w.kind, w.name, ef.ConfigMapRef.Name)
				}
				if ef.SecretRef != nil && b.find("Secret", ef.SecretRef.Name) == nil {
					checkUserSecret(t, b, ef.SecretRef.Name)
				}
			}
		}
		if w.kind == "StatefulSet" {
			svc := b.find("Service", statefulSetService(b, w.name))
			if svc == nil {
				t.Errorf("StatefulSet %q: its serviceName %q is not a Service here", w.name, statefulSetService(b, w.name))
			} else if s := svc.typed.(*corev1.Service); s.Spec.ClusterIP != corev1.ClusterIPNone || !selects(t, metav1.SetAsLabelSelector(s.Spec.Selector), w) {
				t.Errorf("StatefulSet %q: Service %q must be headless (clusterIP: None) and select its pods", w.name, s.Name)
			}
		}
	}

	for _, s := range typed[*corev1.Service](b) {
		var targets []workload
		for _, w := range ws {
			if selects(t, metav1.SetAsLabelSelector(s.Spec.Selector), w) {
				targets = append(targets, w)
			}
		}
		if len(targets) == 0 {
			t.Errorf("Service %q: selector %v selects no pods of this kustomization", s.Name, s.Spec.Selector)
		}
		for _, p := range s.Spec.Ports {
			target := p.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(p.Port)
			}
			for _, w := range targets {
				if !podHasPort(w, target) {
					t.Errorf("Service %q port %d: targetPort %s is not a port of %s %q", s.Name, p.Port, target.String(), w.kind, w.name)
				}
			}
		}
	}

	for _, pdb := range typed[*policyv1.PodDisruptionBudget](b) {
		n := 0
		for _, w := range ws {
			if selects(t, pdb.Spec.Selector, w) {
				n++
			}
		}
		if n == 0 {
			t.Errorf("PodDisruptionBudget %q: selector %v selects no pods", pdb.Name, pdb.Spec.Selector)
		}
	}

	if b.dir == "base" {
		if n := len(typed[*corev1.Secret](b)); n > 0 || len(b.k.SecretGenerator) > 0 {
			t.Errorf("base: holds Secrets; secret values belong in overlays (generated for dev) or are created by the user")
		}
		for _, c := range b.containers() {
			if c.Image != baseImage {
				t.Errorf("base: image %q, want the bare %q (overlays set registry and tag)", c.Image, baseImage)
			}
		}
	}
	for _, img := range b.k.Images {
		if b.imageHits[img.Name] == 0 {
			t.Errorf("%s: images entry %q matches no container image", b.dir, img.Name)
		}
	}

	// An in-cluster Redis URL must name a Service of this kustomization.
	for _, o := range b.objects {
		sec, ok := o.typed.(*corev1.Secret)
		if !ok {
			continue
		}
		raw, ok := sec.StringData["CHANNELS_REDIS"]
		if !ok {
			continue
		}
		u, err := url.Parse(raw)
		if err != nil {
			t.Errorf("Secret %q: CHANNELS_REDIS %q: %v", sec.Name, raw, err)
			continue
		}
		if host := u.Hostname(); !strings.Contains(host, ".") {
			port := u.Port()
			if port == "" {
				port = "6379"
			}
			svc := b.find("Service", host)
			if svc == nil || !slices.ContainsFunc(svc.typed.(*corev1.Service).Spec.Ports, func(p corev1.ServicePort) bool { return fmt.Sprint(p.Port) == port }) {
				t.Errorf("Secret %q: CHANNELS_REDIS %q: no Service %q with port %s here", sec.Name, raw, host, port)
			}
		}
	}
}

// secretKeys are the variables whose values open a cluster: the API key
// (drain, broadcast, disconnect) and the token secrets (any identity).
var secretKeys = []string{"CHANNELS_API_KEY", "CHANNELS_TOKEN_SECRET", "CHANNELS_TOKEN_SECRET_PREVIOUS"}

// checkNoCommittedKeys: no kustomization carries a value for a secret key,
// in a generator or a Secret; not even for development, since whoever read
// the repository could use it on every cluster made from it.
func checkNoCommittedKeys(t *testing.T, b *build) {
	t.Helper()
	for _, g := range append(append([]generator(nil), b.k.SecretGenerator...), b.k.ConfigMapGenerator...) {
		for _, lit := range g.Literals {
			if k, _, _ := strings.Cut(lit, "="); slices.Contains(secretKeys, k) {
				t.Errorf("%s: generator %q commits a value for %s; have it created with a random value (README.md)", b.dir, g.Name, k)
			}
		}
	}
	for _, o := range b.objects {
		var keys []string
		switch v := o.typed.(type) {
		case *corev1.Secret:
			for k := range v.Data {
				keys = append(keys, k)
			}
			for k := range v.StringData {
				keys = append(keys, k)
			}
		case *corev1.ConfigMap:
			for k := range v.Data {
				keys = append(keys, k)
			}
		}
		for _, k := range keys {
			if slices.Contains(secretKeys, k) {
				t.Errorf("%s: %s %q (%s) commits a value for %s", b.dir, o.kind, o.name, o.from, k)
			}
		}
	}
}

// checkDevIsInternal: the dev overlay's Service stays inside the cluster
// (kubectl port-forward reaches it); a dev cluster is often on a shared or
// cloud network.
func checkDevIsInternal(t *testing.T, b *build) {
	t.Helper()
	if b.dir != "overlays/dev" {
		return
	}
	for _, s := range typed[*corev1.Service](b) {
		if s.Spec.Type != "" && s.Spec.Type != corev1.ServiceTypeClusterIP {
			t.Errorf("%s: Service %q is of type %s, which publishes it outside the cluster; use ClusterIP", b.dir, s.Name, s.Spec.Type)
		}
	}
}

// checkClientAddresses: a Service that reaches clients outside the
// cluster keeps their addresses (externalTrafficPolicy: Local), or every
// client behind one Kubernetes node would share that node's address in
// the per-address limits; the API refuses the policy on other types.
func checkClientAddresses(t *testing.T, b *build) {
	t.Helper()
	for _, s := range typed[*corev1.Service](b) {
		external := s.Spec.Type == corev1.ServiceTypeLoadBalancer || s.Spec.Type == corev1.ServiceTypeNodePort
		switch {
		case external && s.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal:
			t.Errorf("%s: Service %q of type %s: externalTrafficPolicy %q, want Local so that clients keep their addresses", b.dir, s.Name, s.Spec.Type, s.Spec.ExternalTrafficPolicy)
		case !external && s.Spec.ExternalTrafficPolicy != "":
			t.Errorf("%s: Service %q of type %q sets externalTrafficPolicy, which the API refuses", b.dir, s.Name, s.Spec.Type)
		}
	}
}

func statefulSetService(b *build, name string) string {
	return b.find("StatefulSet", name).typed.(*appsv1.StatefulSet).Spec.ServiceName
}

// checkUserSecret: a Secret the kustomization references but does not
// contain is created by the user, with the command in the directory's
// README.md (the base is not applied on its own and is exempt).
func checkUserSecret(t *testing.T, b *build, name string) {
	t.Helper()
	if b.dir == "base" {
		return
	}
	data, err := os.ReadFile(filepath.Join(b.dir, "README.md"))
	if err != nil || !bytes.Contains(data, []byte("kubectl create secret generic "+name)) {
		t.Errorf("%s: Secret %q is neither generated nor defined here, so %s/README.md must show `kubectl create secret generic %s ...`", b.dir, name, b.dir, name)
	}
}

// userSecretKeys returns the keys of the documented `kubectl create secret`.
func userSecretKeys(dir string) []string {
	data, err := os.ReadFile(filepath.Join(dir, "README.md"))
	if err != nil {
		return nil
	}
	var keys []string
	for _, m := range regexp.MustCompile(`--from-literal=([A-Za-z0-9_]+)=`).FindAllSubmatch(data, -1) {
		keys = append(keys, string(m[1]))
	}
	return keys
}

// checkChannelsd checks the channelsd Deployment and what goes with it,
// and collects probe paths and CHANNELS_* variables for the checks against
// the binary.
func checkChannelsd(t *testing.T, b *build, probePaths, usedVars map[string][]string) {
	o := b.find("Deployment", appName)
	if o == nil {
		t.Fatalf("no Deployment %q", appName)
	}
	d := o.typed.(*appsv1.Deployment)
	w := workload{"Deployment", d.Name, d.Spec.Selector, &d.Spec.Template}
	spec := &d.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("Deployment %q: %d containers, want 1", d.Name, len(spec.Containers))
	}
	c := &spec.Containers[0]
	use := func(v, where string) {
		if strings.HasPrefix(v, "CHANNELS_") {
			usedVars[v] = append(usedVars[v], b.dir+": "+where)
		}
	}

	// Ports and probes.
	if !hasPort(c, intstr.FromString(portName)) {
		t.Fatalf("container %q has no port named %q", c.Name, portName)
	}
	for what, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		want := map[string]string{"readiness": "/readyz", "liveness": "/healthz"}[what]
		if p == nil || p.HTTPGet == nil {
			t.Errorf("container %q: want an HTTP %s probe", c.Name, what)
			continue
		}
		if p.HTTPGet.Path != want || p.HTTPGet.Port.String() != portName {
			t.Errorf("container %q: %s probe GET %s on port %s, want GET %s on port %s", c.Name, what, p.HTTPGet.Path, p.HTTPGet.Port.String(), want, portName)
		}
		if p.TimeoutSeconds < 2 || p.PeriodSeconds < p.TimeoutSeconds {
			t.Errorf("container %q: %s probe timeout %ds, period %ds: want timeout >= 2s (readyz pings Redis with 2s) and period >= timeout", c.Name, what, p.TimeoutSeconds, p.PeriodSeconds)
		}
	}
	for _, p := range []*corev1.Probe{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
		if p != nil && p.HTTPGet != nil {
			probePaths[p.HTTPGet.Path] = append(probePaths[p.HTTPGet.Path], b.dir)
		}
	}

	// Selection of the pods by the Service, the PDB and the HPA's target.
	svc := b.find("Service", appName)
	if svc == nil || !selects(t, metav1.SetAsLabelSelector(svc.typed.(*corev1.Service).Spec.Selector), w) {
		t.Errorf("no Service %q selecting the Deployment's pods", appName)
	}
	if !slices.ContainsFunc(typed[*policyv1.PodDisruptionBudget](b), func(p *policyv1.PodDisruptionBudget) bool {
		return selects(t, p.Spec.Selector, w) && p.Spec.MaxUnavailable != nil && p.Spec.MaxUnavailable.String() == "1"
	}) {
		t.Errorf("no PodDisruptionBudget with maxUnavailable 1 selecting the Deployment's pods")
	}
	hpas := typed[*autoscalingv2.HorizontalPodAutoscaler](b)
	if len(hpas) != 1 {
		t.Fatalf("%d HorizontalPodAutoscalers, want 1", len(hpas))
	}
	h := hpas[0]
	if ref := h.Spec.ScaleTargetRef; ref.APIVersion != "apps/v1" || ref.Kind != "Deployment" || ref.Name != d.Name {
		t.Errorf("HorizontalPodAutoscaler %q targets %s %s %q, want apps/v1 Deployment %q", h.Name, ref.APIVersion, ref.Kind, ref.Name, d.Name)
	}
	if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 2 || *h.Spec.MinReplicas > h.Spec.MaxReplicas {
		t.Errorf("HorizontalPodAutoscaler %q: minReplicas %v maxReplicas %d: want 2 <= min <= max", h.Name, h.Spec.MinReplicas, h.Spec.MaxReplicas)
	}
	if h.Spec.Behavior == nil || h.Spec.Behavior.ScaleDown == nil || h.Spec.Behavior.ScaleDown.StabilizationWindowSeconds == nil || *h.Spec.Behavior.ScaleDown.StabilizationWindowSeconds < 300 {
		t.Errorf("HorizontalPodAutoscaler %q: want a scale-down stabilization window of at least 300s, so sockets are not churned", h.Name)
	}
	if len(h.Spec.Metrics) == 0 || h.Spec.Metrics[0].Resource == nil || h.Spec.Metrics[0].Resource.Name != corev1.ResourceCPU {
		t.Errorf("HorizontalPodAutoscaler %q: want a CPU utilization target", h.Name)
	}
	if d.Spec.Replicas != nil {
		t.Errorf("Deployment %q sets replicas %d although HorizontalPodAutoscaler %q owns the count: every apply would reset it", d.Name, *d.Spec.Replicas, h.Name)
	}

	// Security.
	psc, csc := spec.SecurityContext, c.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != nonRootUser {
		t.Errorf("pod securityContext: want runAsNonRoot and runAsUser %d (the image's USER)", nonRootUser)
	}
	if csc == nil || csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem ||
		csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation ||
		csc.Capabilities == nil || !slices.Contains(csc.Capabilities.Drop, "ALL") {
		t.Errorf("container securityContext: want readOnlyRootFilesystem, allowPrivilegeEscalation false, capabilities drop ALL")
	}

	// The node id.
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "POD_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name"
	}) {
		t.Errorf("container %q: want env POD_NAME from fieldRef metadata.name (the node id)", c.Name)
	}

	// Configuration: every variable set, from wherever.
	var config *corev1.ConfigMap
	var haveSecret bool
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			cm := b.find("ConfigMap", ef.ConfigMapRef.Name)
			if cm == nil {
				continue
			}
			cmv := cm.typed.(*corev1.ConfigMap)
			if cmv.Name == configName {
				config = cmv
			}
			for k := range cmv.Data {
				checkEnvName(t, k, "ConfigMap "+cmv.Name)
				use(k, "ConfigMap "+cmv.Name)
			}
		case ef.SecretRef != nil:
			haveSecret = haveSecret || ef.SecretRef.Name == secretName
			if s := b.find("Secret", ef.SecretRef.Name); s != nil {
				sv := s.typed.(*corev1.Secret)
				for k := range sv.Data {
					checkEnvName(t, k, "Secret "+sv.Name)
					use(k, "Secret "+sv.Name)
				}
				for k := range sv.StringData {
					checkEnvName(t, k, "Secret "+sv.Name)
					use(k, "Secret "+sv.Name)
				}
			} else {
				for _, k := range userSecretKeys(b.dir) {
					checkEnvName(t, k, "the documented Secret "+ef.SecretRef.Name)
					use(k, "README.md kubectl create secret "+ef.SecretRef.Name)
				}
			}
		}
	}
	for _, e := range c.Env {
		use(e.Name, "env of Deployment "+d.Name)
	}
	if config == nil {
		t.Fatalf("container %q: no envFrom ConfigMap %q", c.Name, configName)
	}
	if !haveSecret {
		t.Errorf("container %q: no envFrom Secret %q", c.Name, secretName)
	}

	// CHANNELS_ADDR listens on the container port.
	if _, port, err := net.SplitHostPort(config.Data["CHANNELS_ADDR"]); err != nil || port != fmt.Sprint(containerPort(c, portName)) {
		t.Errorf("ConfigMap %q: CHANNELS_ADDR %q does not listen on the container port %s (%d)", configName, config.Data["CHANNELS_ADDR"], portName, containerPort(c, portName))
	}

	// Termination: the preStop drain and the shutdown after SIGTERM both
	// run within terminationGracePeriodSeconds.
	drain, err := time.ParseDuration(config.Data["CHANNELS_DRAIN_WINDOW"])
	if err != nil {
		t.Errorf("ConfigMap %q: CHANNELS_DRAIN_WINDOW %q: want a duration: %v", configName, config.Data["CHANNELS_DRAIN_WINDOW"], err)
	}
	shutdownText, ok := config.Data["CHANNELS_SHUTDOWN_TIMEOUT"]
	if !ok {
		shutdownText = binaryDefault(t, "CHANNELS_SHUTDOWN_TIMEOUT")
	}
	shutdown, err := time.ParseDuration(shutdownText)
	if err != nil {
		t.Errorf("CHANNELS_SHUTDOWN_TIMEOUT %q: %v", shutdownText, err)
	}
	if spec.TerminationGracePeriodSeconds == nil {
		t.Errorf("Deployment %q: no terminationGracePeriodSeconds (the default 30s is not enough)", d.Name)
	} else if grace := time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second; grace <= drain+shutdown {
		t.Errorf("Deployment %q: terminationGracePeriodSeconds %s must exceed the drain window %s plus the shutdown timeout %s", d.Name, grace, drain, shutdown)
	}
	ep := entrypoint(t)
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Exec == nil ||
		!slices.Equal(c.Lifecycle.PreStop.Exec.Command, []string{ep, "drain"}) {
		t.Errorf("container %q: want a preStop exec hook [%q, \"drain\"] (%s is the image's entrypoint), have %+v", c.Name, ep, ep, c.Lifecycle)
	}
	if len(c.Command) > 0 && c.Command[0] != ep {
		t.Errorf("container %q: command %v does not run the image's entrypoint %s", c.Name, c.Command, ep)
	}
}

func containerPort(c *corev1.Container, name string) int32 {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	return 0
}

// checkEnvName: keys of the ConfigMap and Secret channelsd reads with
// envFrom are its CHANNELS_* variables; anything else is a typo or a
// stray.
func checkEnvName(t *testing.T, key, where string) {
	t.Helper()
	if !envVarRE.MatchString(key) || envVarRE.FindString(key) != key {
		t.Errorf("%s: key %q is not a CHANNELS_* variable", where, key)
	}
}

// TestMergePatch pins the minimal strategic merge the checks rely on.
func TestMergePatch(t *testing.T) {
	dst := map[string]any{"spec": map[string]any{
		"replicas":   1.0,
		"containers": []any{map[string]any{"name": "a", "image": "x", "env": []any{map[string]any{"name": "A", "value": "1"}}}},
	}}
	patch := map[string]any{"spec": map[string]any{
		"replicas":   nil,
		"containers": []any{map[string]any{"name": "a", "env": []any{map[string]any{"name": "B", "value": "2"}}}},
	}}
	if err := mergePatch(dst, patch, ""); err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(dst)
	want := `{"spec":{"containers":[{"env":[{"name":"A","value":"1"},{"name":"B","value":"2"}],"image":"x","name":"a"}]}}`
	if string(got) != want {
		t.Fatalf("merged\n%s\nwant\n%s", got, want)
	}
	if err := mergePatch(dst, map[string]any{"args": []any{"x"}}, ""); err == nil {
		t.Fatal("a patch of args merged; want it refused")
	}
}
