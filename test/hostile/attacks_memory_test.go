package hostile

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

// The attacks that pin memory, each in a slot of its own (one after the
// other, everything they pinned held to the end) so that the heap's rise
// in a slot is that attack's cost.

// Bounds of one attack's cost, stated for the fixed node with its
// defaults.
const (
	// The live heap an attack in a slot may add: twice the largest budget
	// a default sets for one kind of client state (--max-message-buffers,
	// 64 MiB of WebSocket messages in progress), for what is in flight
	// meanwhile. Measured on the fixed node: 66-81 MiB for fragments, a
	// few MiB for the others; 100-560 MiB each before the fixes.
	slotHeapBound  = 128 << 20
	maxPollAnswer  = 8 << 20 // bytes of one long-poll answer
	lpPingSessions = 4
	lpPingSize     = 60 << 10
	lpPingPosting  = 7 * time.Second
)

// lpSession is an attacker's long-poll session, spoken by hand.
type lpSession struct {
	hc    *http.Client
	base  string // http://addr/socket/longpoll
	token string
}

// lpOpen sends the opening GET with extra query parameters; it returns the
// HTTP status too, for the figures.
func lpOpen(ctx context.Context, hc *http.Client, addr, extra string) (*lpSession, int, error) {
	base := "http://" + addr + "/socket/longpoll"
	u := base + "?vsn=2.0.0"
	if extra != "" {
		u += "&" + extra
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var a struct {
		Status int    `json:"status"`
		Token  string `json:"token"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &a) != nil || a.Status != 410 || a.Token == "" {
		return nil, resp.StatusCode, fmt.Errorf("opening GET: HTTP %d %.100q", resp.StatusCode, body)
	}
	return &lpSession{hc: hc, base: base, token: a.Token}, resp.StatusCode, nil
}

func (s *lpSession) url() string { return s.base + "?vsn=2.0.0&token=" + s.token }

// post sends lines as one ndjson body and returns the answer's status:
// the JSON one ({"status":410} when the session is gone) when the answer
// is HTTP 200, else the HTTP status.
func (s *lpSession) post(ctx context.Context, lines [][]byte) (int, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.url(), bytes.NewReader(bytes.Join(lines, []byte("\n"))))
	req.Header.Set("Content-Type", "application/x-ndjson")
	resp, err := s.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var a struct {
		Status int `json:"status"`
	}
	if resp.StatusCode == http.StatusOK && json.Unmarshal(body, &a) == nil && a.Status != 0 {
		return a.Status, nil
	}
	return resp.StatusCode, nil
}

// poll sends one GET and reads the answer whole, returning its size.
func (s *lpSession) poll(ctx context.Context) (int64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.url(), nil)
	resp, err := s.hc.Do(req)
	if err != nil {
		return 0, err
	}
	return drainBody(resp), nil
}

// lpPings: long-poll sessions post 60 KB pings (each answered with its
// payload into the session's buffer) at the rate the node allows, without
// polling; then two of them poll and read the answer, two poll on a
// connection they never read (held to the end).
func lpPings(ctx context.Context, e *env, r *report) {
	room := "room:hostile-pings"
	payload := []byte(`{"d":"` + strings.Repeat("x", lpPingSize) + `"}`)
	var wg sync.WaitGroup
	for i := range lpPingSessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := e.cs.httpClient("127.0.1.1", 30*time.Second)
			defer hc.CloseIdleConnections()
			s, _, err := lpOpen(ctx, hc, e.addr, "user=hostile-ping-"+strconv.Itoa(i))
			if err != nil {
				r.inc("sessions refused")
				r.note("open: %v", err)
				return
			}
			if _, err := s.post(ctx, [][]byte{v2Frame("1", "1", room, "phx_join", []byte("{}"))}); err != nil {
				return
			}
			// The pings stop 3 s before the slot ends, so that the polls
			// below fall in the slot too.
			pctx, cancel := context.WithTimeout(ctx, lpPingPosting)
			defer cancel()
			ref := 1
			// 10 pings every 100 ms: the node's default rate (100/s,
			// burst 200), so that nearly every ping is answered.
			for pctx.Err() == nil {
				lines := make([][]byte, 10)
				for k := range lines {
					ref++
					lines[k] = v2Frame("1", strconv.Itoa(ref), room, "ping", payload)
				}
				code, err := s.post(pctx, lines)
				if err != nil {
					break
				}
				if code != http.StatusOK {
					// The node ended the session (a slow consumer: 410).
					r.inc("POSTs answered " + strconv.Itoa(code))
					break
				}
				r.add("pings posted", int64(len(lines)))
				r.engaged.Add(1)
				awaitCtx(pctx, 100*time.Millisecond)
			}
			if i%2 == 0 {
				// The answer is read: how big may one be?
				pctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				n, err := s.poll(pctx)
				cancel()
				if err != nil {
					r.note("poll: %v", err)
					return
				}
				r.most("largest answer read (bytes)", n)
				return
			}
			// A poll whose answer is never read: the node's write blocks.
			c, _, err := e.cs.rawRequest(context.Background(), "127.0.1.1", e.addr,
				[]byte("GET /socket/longpoll?vsn=2.0.0&token="+s.token+" HTTP/1.1\r\nHost: "+e.addr+"\r\n\r\n"))
			if err != nil {
				return
			}
			r.inc("polls left unread")
			unreadPolls.Lock()
			unreadPolls.conns = append(unreadPolls.conns, c)
			unreadPolls.Unlock()
		}()
	}
	wg.Wait()
}

var unreadPolls struct {
	sync.Mutex
	conns []net.Conn
}

// lpPingsCheck reads the unread polls at last: an answer that arrives
// whole and larger than an answer may be is the node's fault; one cut
// short was abandoned by the node (a write deadline).
func lpPingsCheck(e *env, r *report) {
	unreadPolls.Lock()
	cs := unreadPolls.conns
	unreadPolls.conns = nil
	unreadPolls.Unlock()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				r.inc("unread polls closed by the node before answering")
				return
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil {
				r.inc("unread polls cut short by the node")
				r.most("largest unread answer, cut (bytes)", n)
				return
			}
			r.most("largest unread answer, whole (bytes)", n)
		}()
	}
	wg.Wait()
	if n := r.get("largest unread answer, whole (bytes)"); n > maxPollAnswer {
		r.fail("an unread poll's answer of %d bytes was kept whole until read (bound %d)", n, maxPollAnswer)
	}
	if n := r.get("largest answer read (bytes)"); n > maxPollAnswer {
		r.fail("a poll answer of %d bytes (bound %d): long-poll answers are not capped", n, maxPollAnswer)
	}
}

// hugeName is a user name of n bytes.
func hugeName(tag string, n int) string { return tag + strings.Repeat("n", n-len(tag)) }

// presenceChurn (whole soak): a WebSocket with a 300 KB user name joins
// and leaves a room of well-behaved clients over and over; the name is
// the connect parameter on one socket, the join parameter on another.
// Every presence_diff carries it to every member of the room.
func presenceChurn(ctx context.Context, e *env, r *report) {
	var wg sync.WaitGroup
	for i, room := range []string{roomName(0), roomName(1)} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := hugeName(fmt.Sprintf("hostile-churn-%d-", i), 300<<10)
			q, join := query("vsn", "2.0.0"), []byte(`{"user":"`+name+`"}`)
			if i == 0 {
				q, join = query("vsn", "2.0.0", "user", name), []byte("{}")
			}
			for tries := 0; tries < 30 && ctx.Err() == nil; tries++ {
				c, err := e.cs.dialWS(ctx, "127.0.1.2", e.addr, q)
				if err != nil {
					r.inc("connects refused")
					r.note("connect: %.120v", err)
					awaitCtx(ctx, time.Second)
					continue
				}
				go c.readLoop(func(_ ws.OpCode, p []byte) {
					// Joins have refs "j<n>", leaves "l<n>".
					switch ref, st := replyStatus(p); {
					case !strings.HasPrefix(ref, "j"):
					case st == "ok":
						r.inc("huge-name joins answered ok")
					default:
						r.inc("huge-name joins refused")
					}
				})
				for k := 1; ctx.Err() == nil && !c.isClosed(); k++ {
					jr := "j" + strconv.Itoa(k)
					if c.text(v2Frame(jr, jr, room, "phx_join", join)) != nil {
						break
					}
					if c.text(v2Frame(jr, "l"+strconv.Itoa(k), room, "phx_leave", []byte("{}"))) != nil {
						break
					}
					r.inc("join/leave pairs")
					awaitCtx(ctx, 40*time.Millisecond)
				}
				c.conn.Close()
				<-c.done
				if ctx.Err() == nil {
					r.inc("closed by node")
					r.note("closed: %s", c.closedBy())
				}
			}
		}()
	}
	wg.Wait()
}

func presenceCheck(e *env, r *report) {
	v := e.wb.verdict()
	r.add("huge keys seen by well-behaved clients", int64(v.hugeKeys))
	if v.hugeKeys > 0 {
		r.fail("well-behaved clients received %d presence keys of %d bytes or more", v.hugeKeys, hugeKey)
	}
}

// presencePin (slot): 20 long-poll sessions with 500 KB user names join
// and leave one room 4 times each and never poll: every presence_state
// (all the names) and diff is buffered for them.
func presencePin(ctx context.Context, e *env, r *report) {
	const sessions, pairs = 20, 4
	room := "room:hostile-presence"
	hc := e.cs.httpClient("127.0.1.2", 30*time.Second)
	defer hc.CloseIdleConnections()
	var ss []*lpSession
	for i := range sessions {
		s, code, err := lpOpen(ctx, hc, e.addr, query("user", hugeName(fmt.Sprintf("hostile-pin-%d-", i), 500<<10)))
		if err != nil {
			r.inc("opens refused (" + statusClass(code, nil) + ")")
			r.note("open: %.120v", err)
			continue
		}
		ss = append(ss, s)
	}
	r.add("sessions with a 500 KB name", int64(len(ss)))
	// Every session joins, then all leave and join again, in step: each
	// join's presence_state lists every name joined at that moment.
	for k := range 2 * pairs {
		var wg sync.WaitGroup
		for _, s := range ss {
			wg.Add(1)
			go func() {
				defer wg.Done()
				event := "phx_join"
				if k%2 == 1 {
					event = "phx_leave"
				}
				jr := strconv.Itoa(k/2 + 1)
				if code, err := s.post(ctx, [][]byte{v2Frame(jr, strconv.Itoa(k+1), room, event, []byte("{}"))}); err == nil && code == http.StatusOK {
					r.inc(event + " posted")
					r.engaged.Add(1)
				}
			}()
		}
		wg.Wait()
	}
}

// joinRefs (slot): WebSockets join 100 topics each with a 200 KB
// join_ref, which every subscription keeps.
func joinRefs(ctx context.Context, e *env, r *report) {
	const sockets, topics = 3, 100
	var wg sync.WaitGroup
	for i := range sockets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := e.cs.dialWS(ctx, "127.0.1.3", e.addr, query("vsn", "2.0.0", "user", "hostile-jr-"+strconv.Itoa(i)))
			if err != nil {
				r.inc("connects refused")
				return
			}
			go c.readLoop(func(_ ws.OpCode, p []byte) {
				if len(p) > 1<<10 && bytes.Contains(p[:min(len(p), 64)], []byte(`"jr-`)) {
					if _, st := replyStatus(p); st == "ok" {
						r.inc("long join_refs answered ok")
						r.engaged.Add(1)
					}
				}
			})
			for k := range topics {
				if ctx.Err() != nil || c.isClosed() {
					break
				}
				jr := fmt.Sprintf("jr-%d-%d-", i, k)
				jr += strings.Repeat("r", 200<<10-len(jr))
				if c.text(v2Frame(jr, jr, fmt.Sprintf("room:hostile-jr-%d-%d", i, k), "phx_join", []byte("{}"))) != nil {
					break
				}
				r.inc("joins sent")
				awaitCtx(ctx, 12*time.Millisecond) // under the default rate
			}
			if c.isClosed() {
				r.inc("sockets closed by the node: " + c.closeKind())
			}
		}()
	}
	wg.Wait()
}

var fragSockets struct {
	sync.Mutex
	all, fillers []*rawWS
}

// fragments (slot): WebSockets each send an unfinished fragmented text
// message just under --max-frame-size, then keep the connection alive
// with pings. Then (fragmentsHold) more sockets each begin a 6 KiB
// message, one every 100 ms: a node that bounds the bytes of all
// unfinished messages together is kept at its bound, and must still take
// the well-behaved clients' larger messages.
func fragments(ctx context.Context, e *env, r *report) {
	const sockets, chunk, chunks = 200, 64 << 10, 15 // 960 KiB, under 1 MiB
	part := bytes.Repeat([]byte("f"), chunk)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range sockets {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := e.cs.dialWS(ctx, "127.0.1.4", e.addr, query("vsn", "2.0.0", "user", "hostile-frag-"+strconv.Itoa(i)))
			if err != nil {
				r.inc("connects refused")
				return
			}
			go c.readLoop(nil)
			for k := range chunks {
				op := ws.OpContinuation
				if k == 0 {
					op = ws.OpText
				}
				if c.write(false, op, part) != nil {
					r.inc("cut off while sending")
					return
				}
			}
			r.inc("sockets holding 960 KiB of fragments")
			r.engaged.Add(1)
			fragSockets.Lock()
			fragSockets.all = append(fragSockets.all, c)
			fragSockets.Unlock()
		}()
	}
	wg.Wait()
}

// fragmentsHold pings every holder every 5 s until ctx ends (the
// fragments are kept alive, as the issue describes) and, once the holders
// are in place, opens a filler every 100 ms (at most maxFillers): a socket
// that begins a 6 KiB message and never ends it.
func fragmentsHold(ctx context.Context, e *env) {
	const maxFillers = 400
	part := bytes.Repeat([]byte("g"), 6<<10)
	fillers := 0
	for tick := 1; awaitCtx(ctx, 100*time.Millisecond); tick++ {
		fragSockets.Lock()
		all := append([]*rawWS(nil), fragSockets.all...)
		fragSockets.Unlock()
		if tick%50 == 0 {
			for _, c := range all {
				if !c.isClosed() {
					_ = c.write(true, ws.OpPing, []byte("alive"))
				}
			}
		}
		if len(all) == 0 || fillers >= maxFillers {
			continue
		}
		c, err := e.cs.dialWS(ctx, "127.0.1.4", e.addr, query("vsn", "2.0.0"))
		if err != nil {
			continue
		}
		fillers++
		go c.readLoop(nil)
		_ = c.write(false, ws.OpText, part)
		fragSockets.Lock()
		fragSockets.fillers = append(fragSockets.fillers, c)
		fragSockets.Unlock()
	}
}

func fragmentsCheck(e *env, r *report) {
	// A well-behaved client closed with 1013 lost its message to the
	// node's budget for unfinished ones, which the attack keeps full.
	var victims []string
	for _, m := range e.wb.members {
		m.mu.Lock()
		if strings.Contains(m.lost, "1013") {
			victims = append(victims, m.user+": "+m.lost)
		}
		m.mu.Unlock()
	}
	r.add("well-behaved clients closed with 1013", int64(len(victims)))
	if len(victims) > 0 {
		r.fail("well-behaved clients were closed while the attack kept the node's budget for unfinished messages full: %s", strings.Join(victims, "; "))
	}
	fragSockets.Lock()
	defer fragSockets.Unlock()
	fills := map[string]int{}
	for _, c := range fragSockets.fillers {
		if c.isClosed() {
			fills["fillers closed by the node: "+c.closeKind()]++
		} else {
			fills["fillers open"]++
		}
	}
	for _, k := range sortedKeys(fills) {
		r.add(k, int64(fills[k]))
	}
	codes := map[string]int{}
	for _, c := range fragSockets.all {
		if c.isClosed() {
			codes[c.closeKind()]++
		}
	}
	for _, k := range sortedKeys(codes) {
		r.add("holders closed by the node: "+k, int64(codes[k]))
	}
}
