// Command backend is the application backend of the cluster's proxy
// test (test/cluster, harness.StartBackend): the calls of README
// "Channels for any backend", answered from memory, with the signature
// checked. test/images/build.sh compiles it statically into an image FROM
// scratch (test/images/backend/Dockerfile), as it does the node.
//
// Its application: a socket connects with the parameter user (none: 401
// "who are you?"); order:<id> is joined only by the order's owner (ann
// owns 7 and 9, bob 8; else "not your order"), anyone else may watch
// order:7 when joining with {"watch": true}; add_item {"sku"} answers
// {"count": <items of the order>} and broadcasts item_added {"sku", "by"}
// to the topic. GET /healthz answers 200 once it listens.
//
// Environment: BACKEND_ADDR (default :3000), BACKEND_SECRET (the nodes'
// CHANNELS_PROXY_SECRET; empty: unsigned calls are accepted).
package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"sync"
)

// owners says who owns which order.
var owners = map[string]string{"7": "ann", "8": "bob", "9": "ann"}

type backend struct {
	secret []byte
	mu     sync.Mutex
	items  map[string][]string // order -> skus; guarded by mu
}

type request struct {
	Params  map[string]any  `json:"params"`
	User    string          `json:"user"`
	Topic   string          `json:"topic"`
	Event   string          `json:"event"`
	Payload json.RawMessage `json:"payload"`
	Reason  string          `json:"reason"`
}

func (b *backend) connect(r *request) any {
	user, _ := r.Params["user"].(string)
	if user == "" {
		return map[string]any{"status": "error", "reason": "who are you?", "http_status": 401}
	}
	return map[string]any{"status": "ok", "socket_id": "user:" + user, "user": user}
}

func (b *backend) join(r *request) any {
	order, _ := strings.CutPrefix(r.Topic, "order:")
	watch, _ := r.Params["watch"].(bool)
	if owners[order] != r.User && !(watch && order == "7") {
		return map[string]any{"status": "error", "reason": "not your order"}
	}
	b.mu.Lock()
	items := append([]string{}, b.items[order]...)
	b.mu.Unlock()
	return map[string]any{"status": "ok", "reply": map[string]any{"items": items}}
}

func (b *backend) event(r *request) any {
	if r.Event != "add_item" {
		return map[string]any{"status": "error", "reason": "unknown event"}
	}
	var p struct {
		SKU string `json:"sku"`
	}
	if err := json.Unmarshal(r.Payload, &p); err != nil || p.SKU == "" {
		return map[string]any{"status": "error", "reason": "sku required"}
	}
	order, _ := strings.CutPrefix(r.Topic, "order:")
	b.mu.Lock()
	b.items[order] = append(b.items[order], p.SKU)
	n := len(b.items[order])
	b.mu.Unlock()
	return map[string]any{
		"status":     "ok",
		"reply":      map[string]any{"count": n},
		"broadcasts": []any{map[string]any{"event": "item_added", "payload": map[string]any{"sku": p.SKU, "by": r.User}}},
	}
}

func (b *backend) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method == http.MethodGet && req.URL.Path == "/healthz" {
		return
	}
	calls := map[string]func(*request) any{
		"/channels/connect": b.connect,
		"/channels/join":    b.join,
		"/channels/event":   b.event,
		"/channels/leave":   func(*request) any { return map[string]any{"status": "ok"} },
	}
	call, ok := calls[req.URL.Path]
	if !ok || req.Method != http.MethodPost {
		http.NotFound(w, req)
		return
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	if err != nil {
		http.Error(w, "unreadable body", http.StatusBadRequest)
		return
	}
	if len(b.secret) > 0 {
		// Over the body as received, before parsing it.
		mac := hmac.New(sha256.New, b.secret)
		mac.Write(body)
		want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
		if !hmac.Equal([]byte(want), []byte(req.Header.Get("X-Channelsd-Signature"))) {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
	}
	var r request
	if err := json.Unmarshal(body, &r); err != nil {
		http.Error(w, "not JSON", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(call(&r))
}

func main() {
	addr := os.Getenv("BACKEND_ADDR")
	if addr == "" {
		addr = ":3000"
	}
	b := &backend{secret: []byte(os.Getenv("BACKEND_SECRET")), items: map[string][]string{}}
	log.Printf("backend: listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, b))
}
