package app

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, method, path string) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(method, path, nil))
	return w
}

func TestDemoHandlerServesPage(t *testing.T) {
	h := DemoHandler("/ws/")
	w := get(t, h, "GET", "/")
	if w.Code != http.StatusOK {
		t.Fatalf("GET /: %d", w.Code)
	}
	if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("Content-Type %q", ct)
	}
	if w.Header().Get("Content-Security-Policy") == "" {
		t.Error("no Content-Security-Policy on the page")
	}
	body := w.Body.String()
	for _, want := range []string{"<title>channelsd demo</title>", `src="config.js"`, `src="app.js"`, `href="style.css"`} {
		if !strings.Contains(body, want) {
			t.Errorf("index.html lacks %q", want)
		}
	}
	// Offline: no external URL anywhere.
	for _, path := range []string{"/", "/app.js", "/style.css", "/config.js"} {
		if b := get(t, h, "GET", path).Body.String(); strings.Contains(b, "http://") || strings.Contains(b, "https://") || strings.Contains(b, "//cdn") {
			t.Errorf("%s refers to an external URL", path)
		}
	}

	js := get(t, h, "GET", "/app.js")
	if js.Code != http.StatusOK || !strings.HasPrefix(js.Header().Get("Content-Type"), "text/javascript") {
		t.Fatalf("GET /app.js: %d %q", js.Code, js.Header().Get("Content-Type"))
	}
	for _, want := range []string{"vsn=2.0.0", "heartbeat", "phx_join", "presence_diff", "new_msg", "typing"} {
		if !strings.Contains(js.Body.String(), want) {
			t.Errorf("app.js lacks %q", want)
		}
	}
	if strings.Contains(js.Body.String(), "innerHTML") {
		t.Error("app.js uses innerHTML")
	}
	css := get(t, h, "GET", "/style.css")
	if css.Code != http.StatusOK || !strings.HasPrefix(css.Header().Get("Content-Type"), "text/css") {
		t.Fatalf("GET /style.css: %d %q", css.Code, css.Header().Get("Content-Type"))
	}
}

func TestDemoHandlerSocketPath(t *testing.T) {
	for in, want := range map[string]string{
		"":             `"socketPath":"/socket"`,
		"/":            `"socketPath":"/socket"`,
		"/socket":      `"socketPath":"/socket"`,
		"/ws/":         `"socketPath":"/ws"`,
		"live/socket":  `"socketPath":"/live/socket"`,
		"/a</script>b": `"socketPath":"/a\u003c/script\u003eb"`,
	} {
		w := get(t, DemoHandler(in), "GET", "/config.js")
		if w.Code != http.StatusOK || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/javascript") {
			t.Fatalf("GET /config.js: %d %q", w.Code, w.Header().Get("Content-Type"))
		}
		if !strings.Contains(w.Body.String(), want) {
			t.Errorf("DemoHandler(%q): config.js = %q, want it to contain %s", in, w.Body.String(), want)
		}
	}
}

func TestDemoHandlerNotFound(t *testing.T) {
	h := DemoHandler("")
	for _, path := range []string{"/index.html", "/web/app.js", "/nope", "/app.js/", "/socket/websocket", "/favicon.ico"} {
		if w := get(t, h, "GET", path); w.Code != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", path, w.Code)
		}
	}
	if w := get(t, h, "POST", "/"); w.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /: %d, want 405", w.Code)
	}
	if w := get(t, h, "HEAD", "/"); w.Code != http.StatusOK || w.Body.Len() != 0 {
		t.Errorf("HEAD /: %d with %d bytes", w.Code, w.Body.Len())
	}
}

func TestDemoHandlerETag(t *testing.T) {
	h := DemoHandler("")
	w := get(t, h, "GET", "/app.js")
	etag := w.Header().Get("ETag")
	if etag == "" {
		t.Fatal("no ETag")
	}
	req := httptest.NewRequest("GET", "/app.js", nil)
	req.Header.Set("If-None-Match", etag)
	w2 := httptest.NewRecorder()
	h.ServeHTTP(w2, req)
	if w2.Code != http.StatusNotModified {
		t.Errorf("conditional GET: %d, want 304", w2.Code)
	}
}
