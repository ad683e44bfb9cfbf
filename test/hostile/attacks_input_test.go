package hostile

import (
	"bytes"
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/channelsd/channelsd/transport/wsclient"
	"github.com/gobwas/ws"
)

// invalid is a byte sequence that is not UTF-8.
var invalid = "bad\xff\xfe"

// invalidUTF8 (whole soak): bytes that are not UTF-8 sent into the rooms
// of well-behaved clients through every entry point, in turn: WebSocket
// pushes (V2 and V1 text, V2 binary), typing, a join whose user name (the
// presence key) is not UTF-8, in its params and in the connect params,
// long-poll lines, and POST /api/broadcast. None of it may reach a
// well-behaved client: a browser closes its WebSocket on such a frame.
func invalidUTF8(ctx context.Context, e *env, r *report) {
	wsRoom, lpRoom := roomName(2), roomName(3)
	body := []byte(`{"body":"` + invalid + `"}`)
	api := e.cs.httpClient("127.0.1.5", 10*time.Second)
	defer api.CloseIdleConnections()
	var lp *lpSession
	sockets := map[string]*rawWS{}
	reconnects := 0
	// sock returns the attacker's socket of a kind, (re)connected and
	// joined to wsRoom unless join is false.
	sock := func(kind, q string, join []byte) *rawWS {
		if c := sockets[kind]; c != nil && !c.isClosed() {
			return c
		} else if c != nil {
			r.inc("sockets closed by the node")
			r.note("%s closed: %s", kind, c.closeKind())
			c.conn.Close()
		}
		if reconnects++; reconnects > 300 {
			return nil
		}
		c, err := e.cs.dialWS(ctx, "127.0.1.5", e.addr, q)
		if err != nil {
			r.inc("connects refused (" + kind + ")")
			return nil
		}
		go c.readLoop(func(_ ws.OpCode, p []byte) {
			if _, st := replyStatus(p); st == "error" {
				r.inc("error replies")
			}
		})
		if join != nil {
			_ = c.text(v2or1(kind, "1", "1", wsRoom, "phx_join", join))
		}
		sockets[kind] = c
		return c
	}
	v2q, v1q := query("vsn", "2.0.0", "user", "hostile-utf8"), query("vsn", "1.0.0", "user", "hostile-utf8-v1")
	for step := 0; ctx.Err() == nil; step++ {
		ref := strconv.Itoa(step + 10)
		switch step % 8 {
		case 0:
			if c := sock("v2", v2q, []byte("{}")); c != nil && c.text(v2Frame("1", ref, wsRoom, "new_msg", body)) == nil {
				r.inc("V2 pushes")
			}
		case 1:
			if c := sock("v1", v1q, []byte("{}")); c != nil && c.text(v2or1("v1", "1", ref, wsRoom, "new_msg", body)) == nil {
				r.inc("V1 pushes")
			}
		case 2:
			if c := sock("v2", v2q, []byte("{}")); c != nil && c.text(v2Frame("1", ref, wsRoom, "typing", []byte(`{"t":"`+invalid+`"}`))) == nil {
				r.inc("typing pushes")
			}
		case 3:
			// A V2 binary push (kind 0) whose payload holds the bytes.
			m, _ := wsclient.PushMessage(wsRoom, "new_msg", "1", ref, nil)
			m.Payload, m.Binary = body, true
			frame, err := wsclient.EncodeClientBinary(&m)
			if c := sock("v2", v2q, []byte("{}")); err == nil && c != nil && c.write(true, ws.OpBinary, frame) == nil {
				r.inc("binary pushes")
			}
		case 4:
			// The presence key from the join params: join, then leave.
			if c := sock("v2-key", query("vsn", "2.0.0"), nil); c != nil {
				_ = c.text(v2Frame(ref, ref, wsRoom, "phx_join", []byte(`{"user":"`+invalid+ref+`"}`)))
				_ = c.text(v2Frame(ref, ref+"l", wsRoom, "phx_leave", []byte("{}")))
				r.inc("joins with such a user")
			}
		case 5:
			// The presence key from the connect params (%FF in the URL).
			if c, err := e.cs.dialWS(ctx, "127.0.1.5", e.addr, "vsn=2.0.0&user=bad%FF%FE"+ref); err == nil {
				go c.readLoop(nil)
				_ = c.text(v2Frame("1", "1", wsRoom, "phx_join", []byte("{}")))
				r.inc("joins with such a connect user")
				awaitCtx(ctx, 100*time.Millisecond)
				c.conn.Close()
			} else {
				r.inc("connects refused (connect user)")
			}
		case 6:
			if lp == nil {
				var err error
				if lp, _, err = lpOpen(ctx, api, e.addr, "user=hostile-utf8-lp"); err == nil {
					_, _ = lp.post(ctx, [][]byte{v2Frame("1", "1", lpRoom, "phx_join", []byte("{}"))})
				}
			}
			if lp != nil {
				code, err := lp.post(ctx, [][]byte{v2Frame("1", ref, lpRoom, "new_msg", body)})
				r.inc("long-poll lines: " + statusClass(code, err))
				if code == http.StatusGone {
					lp = nil
				}
			}
		case 7:
			code, err := apiPost(ctx, api, e.addr, "/api/broadcast", "application/json",
				[]byte(`{"topic":"`+lpRoom+`","event":"new_msg","payload":{"body":"`+invalid+`"}}`))
			r.inc("/api/broadcast: " + statusClass(code, err))
		}
		awaitCtx(ctx, 150*time.Millisecond)
	}
	for _, c := range sockets {
		c.conn.Close()
	}
}

// v2or1 writes a push for a socket of kind ("v1": a V1 object).
func v2or1(kind, joinRef, ref, topic, event string, payload []byte) []byte {
	if kind != "v1" {
		return v2Frame(joinRef, ref, topic, event, payload)
	}
	var b bytes.Buffer
	b.WriteString(`{"join_ref":"` + joinRef + `","ref":"` + ref + `","topic":"` + topic + `","event":"` + event + `","payload":`)
	b.Write(payload)
	b.WriteString("}")
	return b.Bytes()
}

func invalidUTF8Check(e *env, r *report) {
	v := e.wb.verdict()
	r.add("frames a browser would close on, at well-behaved clients", int64(v.invalid))
	r.add("frames with U+FFFD at well-behaved clients", int64(v.replaced))
	if v.invalid > 0 {
		r.fail("%d text frames that are not UTF-8 reached well-behaved clients", v.invalid)
	}
	if v.replaced > 0 {
		r.fail("%d frames with bytes replaced by U+FFFD reached well-behaved clients (relayed, not refused)", v.replaced)
	}
	if n := r.get("/api/broadcast: 2xx"); n > 0 {
		r.fail("/api/broadcast accepted a payload that is not UTF-8 %d times", n)
	}
}

// apiPost posts body with a Content-Type ("" for none).
func apiPost(ctx context.Context, hc *http.Client, addr, path, ctype string, body []byte) (int, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+path, bytes.NewReader(body))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	drainBody(resp)
	return resp.StatusCode, nil
}

// apiAbuse (whole soak): what a web page or an anonymous client may ask
// of the HTTP API: forged presence_diff into the rooms, bodies without
// Content-Type or as text/plain (what a no-cors fetch sends), and the
// long-poll CORS answer to a foreign Origin.
func apiAbuse(ctx context.Context, e *env, r *report) {
	hc := e.cs.httpClient("127.0.1.6", 10*time.Second)
	defer hc.CloseIdleConnections()
	for step := 0; ctx.Err() == nil; step++ {
		room := roomName(step % wbRooms)
		switch step % 5 {
		case 0:
			fake := "fake-" + strconv.Itoa(step)
			code, err := apiPost(ctx, hc, e.addr, "/api/broadcast", "application/json", []byte(`{"topic":"`+room+
				`","event":"presence_diff","payload":{"joins":{"`+fake+`":{"metas":[{"phx_ref":"`+fake+`"}]}},"leaves":{}}}`))
			r.inc("forged presence_diff: " + statusClass(code, err))
		case 1:
			code, err := apiPost(ctx, hc, e.addr, "/api/broadcast", "", []byte(`{"topic":"room:hostile-api","event":"new_msg","payload":{"body":"x"}}`))
			r.inc("broadcast without Content-Type: " + statusClass(code, err))
		case 2:
			code, err := apiPost(ctx, hc, e.addr, "/api/broadcast", "text/plain", []byte(`{"topic":"room:hostile-api","event":"new_msg","payload":{"body":"x"}}`))
			r.inc("broadcast as text/plain: " + statusClass(code, err))
		case 3:
			code, err := apiPost(ctx, hc, e.addr, "/api/disconnect", "", []byte(`{"id":"user:hostile-nobody"}`))
			r.inc("disconnect without Content-Type: " + statusClass(code, err))
		case 4:
			if step%25 != 4 {
				break
			}
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+e.addr+"/socket/longpoll?vsn=2.0.0", nil)
			req.Header.Set("Origin", "http://evil.example")
			resp, err := hc.Do(req)
			if err != nil {
				break
			}
			drainBody(resp)
			if resp.Header.Get("Access-Control-Allow-Origin") == "http://evil.example" && strings.EqualFold(resp.Header.Get("Access-Control-Allow-Credentials"), "true") {
				r.inc("long-poll answers granting credentials to a foreign origin")
			} else {
				r.inc("long-poll answers to a foreign origin without credentials")
			}
		}
		awaitCtx(ctx, 200*time.Millisecond)
	}
}

func apiAbuseCheck(e *env, r *report) {
	v := e.wb.verdict()
	r.add("forged presence keys seen by well-behaved clients", int64(v.fakeKeys))
	if v.fakeKeys > 0 {
		r.fail("well-behaved clients received %d forged presence entries", v.fakeKeys)
	}
	for _, k := range []string{"forged presence_diff: 2xx", "broadcast without Content-Type: 2xx", "broadcast as text/plain: 2xx", "disconnect without Content-Type: 2xx"} {
		if n := r.get(k); n > 0 {
			r.fail("%s ×%d", k, n)
		}
	}
	if n := r.get("long-poll answers granting credentials to a foreign origin"); n > 0 {
		r.fail("long-poll CORS granted credentials to http://evil.example ×%d", n)
	}
}

// crossSiteDrain is the last attack: what a cross-site HTML form (or a
// no-cors fetch) can send to POST /api/drain. Then the node must still be
// ready and accept a socket, and the well-behaved clients must still be
// connected.
func crossSiteDrain(e *env, r *report) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	lostBefore := map[*member]bool{}
	for _, m := range e.wb.members {
		select {
		case <-m.c.Done():
			lostBefore[m] = true
		default:
		}
	}
	hc := e.cs.httpClient("127.0.1.6", 5*time.Second)
	defer hc.CloseIdleConnections()
	for _, ct := range []string{"application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"} {
		body := []byte("x=1")
		if strings.HasPrefix(ct, "multipart") {
			body = []byte("--x\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--x--\r\n")
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+e.addr+"/api/drain", bytes.NewReader(body))
		req.Header.Set("Content-Type", ct)
		req.Header.Set("Origin", "http://evil.example")
		resp, err := hc.Do(req)
		code := 0
		if err == nil {
			drainBody(resp)
			code = resp.StatusCode
		}
		r.inc("POST /api/drain as " + strings.SplitN(ct, ";", 2)[0] + ": " + statusClass(code, err))
		if code >= 200 && code < 300 {
			r.fail("POST /api/drain as %s from a foreign origin answered %d", ct, code)
		}
	}
	resp, err := hc.Get("http://" + e.addr + "/readyz")
	if err != nil || resp.StatusCode != http.StatusOK {
		r.fail("the node is not ready after the cross-site drain attempts (%v)", statusClass(statusOf(resp), err))
	}
	if resp != nil {
		drainBody(resp)
	}
	c, err := wsclient.Dial(ctx, "ws://"+e.addr+"/socket/websocket", wsclient.Options{Params: map[string]string{"user": "after-drain"}})
	if err != nil {
		r.fail("a new socket is refused after the cross-site drain attempts: %v", err)
		return
	}
	defer c.Close()
	reply, err := c.Join(ctx, "room:after-drain", nil)
	if err != nil || reply.Status != "ok" {
		r.fail("a new socket cannot join after the cross-site drain attempts: %v %s", err, reply.Raw)
		return
	}
	r.inc("new sockets accepted after it")
	// The drain closes sockets in batches spread over 20 s, the first
	// batch at once: a moment is enough to see a well-behaved one go.
	awaitCtx(ctx, time.Second)
	lost := 0
	for _, m := range e.wb.members {
		select {
		case <-m.c.Done():
			if !lostBefore[m] {
				lost++
			}
		default:
		}
	}
	r.add("well-behaved clients closed after it", int64(lost))
	if lost > 0 {
		r.fail("%d well-behaved clients were closed after the cross-site drain attempts", lost)
	}
}

func statusOf(resp *http.Response) int {
	if resp == nil {
		return 0
	}
	return resp.StatusCode
}
