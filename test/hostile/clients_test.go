package hostile

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/transport/lpclient"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// The well-behaved clients: WebSocket (V2 and V1) and long-poll clients
// in a few rooms, each pushing numbered new_msg at a modest rate the whole
// time, heartbeating as phoenix.js does, reading everything the node
// sends. Each records what a browser would make of it: a text frame that
// is not valid UTF-8 closes a browser's WebSocket (RFC 6455 §8.1).
const (
	wbRooms      = 4
	wbWebSockets = 20 // half V2, half V1
	wbLongPolls  = 5
	wbInterval   = 250 * time.Millisecond
	wbHeartbeat  = 10 * time.Second
	// Every 4th message of the first WebSocket client of each version
	// carries 8 KiB of padding: a chat message with a paste in it, far
	// under --max-payload-size, and over the 4 KiB a WebSocket server may
	// read in one go.
	wbPadEvery = 4
	wbPadSize  = 8 << 10
	// hugeKey is the size from which a presence key seen by a client
	// counts as an attacker's name that got through.
	hugeKey = 16 << 10
)

func roomName(i int) string { return "room:soak-" + strconv.Itoa(i) }

// wbConn is what the two test clients have in common.
type wbConn interface {
	NextRef() string
	JoinRef(topic string) string
	Send(m channels.Message) error
	Join(ctx context.Context, topic string, params any) (wsclient.Message, error)
	Next(ctx context.Context) (wsclient.Message, error)
	Done() <-chan struct{}
	Close() error
}

type member struct {
	user, room, kind string
	c                wbConn
	hc               *http.Client // long-poll only
	padded           bool         // sends a large message now and then
	why              func() string

	mu         sync.Mutex
	closing    bool           // guarded by mu: the test closes it
	lost       string         // guarded by mu: how the node ended it, "" while connected
	pending    map[string]int // guarded by mu: ref → number, awaiting the reply
	sent       int            // guarded by mu
	acked      int            // guarded by mu
	refused    int            // guarded by mu
	refusedWhy string         // guarded by mu: the first refusal
	last       map[string]int // guarded by mu: sender → last number received
	orderErrs  int            // guarded by mu
	orderWhy   string         // guarded by mu: the first
	invalid    int            // guarded by mu: text frames that are not UTF-8
	replaced   int            // guarded by mu: frames carrying U+FFFD (invalid bytes relayed after replacement)
	badFrames  int            // guarded by mu: frames the client could not decode
	foreign    int            // guarded by mu: new_msg of senders that are not members
	hugeKeys   int            // guarded by mu: presence keys ≥ hugeKey
	fakeKeys   int            // guarded by mu: presence keys the API attack forged
	pres       presenceView   // guarded by mu
	readerDone chan struct{}
}

type wellBehaved struct {
	members []*member
	byRoom  map[string][]*member
	kick    chan struct{}
	stop    context.CancelFunc
	senders sync.WaitGroup
}

// startWellBehaved connects and joins every client, then starts their
// readers and senders.
func startWellBehaved(ctx context.Context, addr string) (*wellBehaved, error) {
	wb := &wellBehaved{byRoom: map[string][]*member{}, kick: make(chan struct{}, 1)}
	for i := range wbWebSockets + wbLongPolls {
		m := &member{room: roomName(i % wbRooms), pending: map[string]int{}, last: map[string]int{}, readerDone: make(chan struct{})}
		switch {
		case i < wbWebSockets/2:
			m.kind = "ws-v2"
		case i < wbWebSockets:
			m.kind = "ws-v1"
		default:
			m.kind = "longpoll"
		}
		m.user = fmt.Sprintf("wb-%s-%d", m.kind, i)
		m.padded = i == 0 || i == wbWebSockets/2
		if err := m.connect(ctx, addr, i); err != nil {
			wb.close()
			return nil, fmt.Errorf("well-behaved %s: %w", m.user, err)
		}
		wb.members = append(wb.members, m)
		wb.byRoom[m.room] = append(wb.byRoom[m.room], m)
		reply, err := m.c.Join(ctx, m.room, map[string]string{"user": m.user})
		if err == nil && reply.Status != "ok" {
			err = fmt.Errorf("join answered %s", reply.Raw)
		}
		if err != nil {
			wb.close()
			return nil, fmt.Errorf("well-behaved %s: joining %s: %w", m.user, m.room, err)
		}
		go m.read(wb)
	}
	// ctx bounds the set-up only; the senders run until finish.
	sctx, cancel := context.WithCancel(context.Background())
	wb.stop = cancel
	for _, m := range wb.members {
		wb.senders.Add(1)
		go func() {
			defer wb.senders.Done()
			m.send(sctx)
		}()
	}
	return wb, nil
}

func (m *member) connect(ctx context.Context, addr string, i int) error {
	params := map[string]string{"user": m.user}
	switch m.kind {
	case "ws-v2", "ws-v1":
		opts := wsclient.Options{Params: params}
		if m.kind == "ws-v1" {
			opts.Vsn = "1.0.0"
		}
		c, err := wsclient.Dial(ctx, "ws://"+addr+"/socket/websocket", opts)
		if err != nil {
			return err
		}
		m.c, m.why = c, func() string { return c.Status().String() }
	default:
		// Each long-poll client has an address of its own, none an
		// attacker's: a per-address bound must not meet it.
		src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(10+i))}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.DialContext = (&net.Dialer{LocalAddr: src, Timeout: 5 * time.Second}).DialContext
		m.hc = &http.Client{Transport: tr}
		c, err := lpclient.Open(ctx, "http://"+addr+"/socket/longpoll", lpclient.Options{Params: params, HTTPClient: m.hc, RequestLog: -1})
		if err != nil {
			return err
		}
		m.c, m.why = c, func() string { return fmt.Sprint(c.Err()) }
	}
	return nil
}

// send pushes numbered new_msg until ctx ends, and heartbeats.
func (m *member) send(ctx context.Context) {
	tick := time.NewTicker(wbInterval)
	defer tick.Stop()
	beat := time.NewTicker(wbHeartbeat)
	defer beat.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.c.Done():
			return
		case <-beat.C:
			_ = m.c.Send(channels.Message{Ref: channels.StringRef(m.c.NextRef()), Topic: channels.TopicPhoenix, Event: channels.EventHeartbeat, Payload: []byte("{}")})
		case <-tick.C:
			ref := m.c.NextRef()
			m.mu.Lock()
			m.sent++
			n := m.sent
			m.pending[ref] = n
			m.mu.Unlock()
			var payload any = map[string]int{"body": n}
			if m.padded && n%wbPadEvery == 0 {
				payload = map[string]any{"body": n, "pad": padding}
			}
			msg, err := wsclient.PushMessage(m.room, "new_msg", m.c.JoinRef(m.room), ref, payload)
			if err == nil {
				err = m.c.Send(msg)
			}
			if err != nil {
				return
			}
		}
	}
}

// read takes every message the node sends until the client ends.
func (m *member) read(wb *wellBehaved) {
	defer close(m.readerDone)
	for {
		msg, err := m.c.Next(context.Background())
		if err != nil {
			m.mu.Lock()
			if !m.closing {
				m.lost = m.why()
			}
			m.mu.Unlock()
			wb.notify()
			return
		}
		m.handle(msg)
		wb.notify()
	}
}

var (
	replacementChar = []byte("\uFFFD")
	padding         = strings.Repeat("p", wbPadSize)
)

func (m *member) handle(msg wsclient.Message) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !msg.Binary {
		if !utf8.Valid(msg.Raw) {
			m.invalid++
		} else if bytes.Contains(msg.Raw, replacementChar) {
			m.replaced++
		}
	}
	if msg.Err != nil {
		m.badFrames++
		return
	}
	switch {
	case msg.Event == channels.EventReply:
		ref := msg.Ref.Text()
		if _, ok := m.pending[ref]; !ok {
			return
		}
		delete(m.pending, ref)
		if msg.Status == "ok" {
			m.acked++
		} else {
			m.refused++
			if m.refusedWhy == "" {
				m.refusedWhy = string(msg.Raw)
			}
		}
	case msg.Topic != m.room:
	case msg.Event == "new_msg":
		var p struct {
			Body json.RawMessage `json:"body"`
			User string          `json:"user"`
		}
		n, err := 0, json.Unmarshal(msg.Payload, &p)
		if err == nil {
			n, err = strconv.Atoi(string(p.Body))
		}
		if err != nil || !strings.HasPrefix(p.User, "wb-") {
			m.foreign++
			return
		}
		if want := m.last[p.User] + 1; n != want {
			m.orderErrs++
			if m.orderWhy == "" {
				m.orderWhy = fmt.Sprintf("from %s got %d, expected %d", p.User, n, want)
			}
		}
		m.last[p.User] = max(m.last[p.User], n)
	case msg.Event == channels.EventPresenceState, msg.Event == channels.EventPresenceDiff:
		huge, fake := m.pres.apply(msg.Event, msg.Payload)
		m.hugeKeys += huge
		m.fakeKeys += fake
	}
}

func (wb *wellBehaved) notify() {
	select {
	case wb.kick <- struct{}{}:
	default:
	}
}

// finish stops the senders and waits, up to limit, until every push has
// been answered and every client holds every message of its room.
func (wb *wellBehaved) finish(limit time.Duration) {
	wb.stop()
	wb.senders.Wait()
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	for !wb.complete() {
		select {
		case <-wb.kick:
		case <-deadline.C:
			return
		}
	}
}

func (wb *wellBehaved) complete() bool {
	sent := map[string]int{}
	for _, m := range wb.members {
		m.mu.Lock()
		sent[m.user] = m.sent
		if m.lost != "" {
			sent[m.user] = m.acked
		}
		waiting := len(m.pending) > 0 && m.lost == ""
		m.mu.Unlock()
		if waiting {
			return false
		}
	}
	for _, m := range wb.members {
		m.mu.Lock()
		lost := m.lost != ""
		short := false
		for _, o := range wb.byRoom[m.room] {
			short = short || m.last[o.user] < sent[o.user]
		}
		m.mu.Unlock()
		if short && !lost {
			return false
		}
	}
	return true
}

// wbVerdict is what the well-behaved clients lived through.
type wbVerdict struct {
	clients, lost                int
	lostWhy                      []string
	sent, acked, refused         int
	expected, delivered, missing int
	orderErrs                    int
	invalid, replaced, badFrames int
	foreign, hugeKeys, fakeKeys  int
	presenceWrong                int
	presenceWhy                  []string
	firstRefusal, firstOrder     string
}

func (wb *wellBehaved) verdict() wbVerdict {
	var v wbVerdict
	// What each sender owes its room: every push, or for a sender the
	// node disconnected (a failure of its own) the pushes acknowledged.
	sent, lost := map[string]int{}, map[string]bool{}
	for _, m := range wb.members {
		m.mu.Lock()
		sent[m.user], lost[m.user] = m.sent, m.lost != ""
		if m.lost != "" {
			sent[m.user] = m.acked
		}
		m.mu.Unlock()
	}
	for _, m := range wb.members {
		m.mu.Lock()
		v.clients++
		if m.lost != "" {
			v.lost++
			v.lostWhy = append(v.lostWhy, m.user+": "+m.lost)
			if strings.Contains(m.lost, "utf8") {
				// The client's WebSocket library refused the frame, as a
				// browser does: it never reached handle.
				v.invalid++
			}
		}
		v.sent += m.sent
		v.acked += m.acked
		v.refused += m.refused
		if v.firstRefusal == "" {
			v.firstRefusal = m.refusedWhy
		}
		for _, o := range wb.byRoom[m.room] {
			v.expected += sent[o.user]
			got := min(m.last[o.user], sent[o.user])
			v.delivered += got
			v.missing += sent[o.user] - got
		}
		v.orderErrs += m.orderErrs
		if v.firstOrder == "" && m.orderWhy != "" {
			v.firstOrder = m.user + ": " + m.orderWhy
		}
		v.invalid += m.invalid
		v.replaced += m.replaced
		v.badFrames += m.badFrames
		v.foreign += m.foreign
		v.hugeKeys += m.hugeKeys
		v.fakeKeys += m.fakeKeys
		if m.lost == "" {
			if why := m.pres.check(wb.connected(m.room, lost)); why != "" {
				v.presenceWrong++
				v.presenceWhy = append(v.presenceWhy, m.user+": "+why)
			}
		}
		m.mu.Unlock()
	}
	sort.Strings(v.lostWhy)
	return v
}

// connected lists the members of room not in lost: a member the node
// closed has left everyone's presence.
func (wb *wellBehaved) connected(room string, lost map[string]bool) []*member {
	var out []*member
	for _, m := range wb.byRoom[room] {
		if !lost[m.user] {
			out = append(out, m)
		}
	}
	return out
}

func (wb *wellBehaved) close() {
	if wb.stop != nil {
		wb.stop()
		wb.senders.Wait()
	}
	for _, m := range wb.members {
		m.mu.Lock()
		m.closing = true
		m.mu.Unlock()
		_ = m.c.Close()
		<-m.readerDone
		if m.hc != nil {
			m.hc.CloseIdleConnections()
		}
	}
}

// presenceView is a client's presence list, kept as phoenix.js keeps it:
// presence_state replaces it, diffs (held until the first state) add
// joins' metas and remove leaves'.
type presenceView struct {
	synced  bool
	refs    map[string]map[string]bool // key → phx_refs
	pending [][]byte
}

type metasByKey map[string]struct {
	Metas []struct {
		PhxRef string `json:"phx_ref"`
	} `json:"metas"`
}

// apply takes one presence_state or presence_diff and returns how many
// keys in it were huge and how many forged.
func (p *presenceView) apply(event string, payload []byte) (huge, fake int) {
	count := func(ms metasByKey) {
		for k := range ms {
			if len(k) >= hugeKey {
				huge++
			}
			if strings.HasPrefix(k, "fake-") {
				fake++
			}
		}
	}
	if event == channels.EventPresenceState {
		var st metasByKey
		if json.Unmarshal(payload, &st) != nil {
			return 0, 0
		}
		count(st)
		p.refs = map[string]map[string]bool{}
		p.merge(st)
		p.synced = true
		for _, d := range p.pending {
			p.diff(d, count)
		}
		p.pending = nil
		return huge, fake
	}
	if !p.synced {
		p.pending = append(p.pending, payload)
		return 0, 0
	}
	p.diff(payload, count)
	return huge, fake
}

func (p *presenceView) diff(payload []byte, count func(metasByKey)) {
	var d struct {
		Joins  metasByKey `json:"joins"`
		Leaves metasByKey `json:"leaves"`
	}
	if json.Unmarshal(payload, &d) != nil {
		return
	}
	count(d.Joins)
	count(d.Leaves)
	p.merge(d.Joins)
	for k, e := range d.Leaves {
		for _, m := range e.Metas {
			delete(p.refs[k], m.PhxRef)
		}
		if len(p.refs[k]) == 0 {
			delete(p.refs, k)
		}
	}
}

func (p *presenceView) merge(ms metasByKey) {
	for k, e := range ms {
		if p.refs[k] == nil {
			p.refs[k] = map[string]bool{}
		}
		for _, m := range e.Metas {
			p.refs[k][m.PhxRef] = true
		}
	}
}

// check says what is wrong with the list, "" when every member of the
// room is in it exactly once (one socket each).
func (p *presenceView) check(room []*member) string {
	if !p.synced {
		return "no presence_state"
	}
	var wrong []string
	for _, o := range room {
		if n := len(p.refs[o.user]); n != 1 {
			wrong = append(wrong, fmt.Sprintf("%s ×%d", o.user, n))
		}
	}
	if len(wrong) > 0 {
		return strings.Join(wrong, ", ")
	}
	return ""
}
