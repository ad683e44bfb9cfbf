package transport

import (
	"errors"
	"io"
	"net/http"
	"os"
	"time"
)

// POST bodies and the node-wide budget of their bytes (MaxBodyBuffers).
//
// A body is read whole before any of its lines is handled, so that a
// body cut short or too large is refused with nothing processed; each
// POST in progress therefore holds up to MaxBody, and without a budget
// the only bound on their sum is the number of connections. The budget
// refuses whoever does not fit rather than taking bytes back from older
// POSTs (as the WebSocket budget does, wsconn_budget.go): a POST's hold
// is bounded by IOTimeout while it is read, and a refused POST has lost
// nothing, so the client's retry finds room once the older ones end.

// errBodyBudget ends the read of a body without Content-Length that
// outgrew the room left in MaxBodyBuffers.
var errBodyBudget = errors.New("transport: long-poll body buffers full")

// reserveBody counts n more bytes in BodyBuffers, for a body that holds
// mine already, if they fit MaxBodyBuffers or no other body holds any (a
// body alone may exceed the bound); otherwise it counts the refusal and
// reports false.
func (h *LongPollHandler) reserveBody(n, mine int64) bool {
	if n <= 0 {
		return true
	}
	held := &h.stats.BodyBuffers
	for {
		cur := held.Load()
		if max := h.cfg.MaxBodyBuffers; max >= 0 && cur > mine && cur+n > max {
			h.stats.BodyBuffersFull.Add(1)
			return false
		}
		if held.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

// releaseBody gives back n bytes that reserveBody counted.
func (h *LongPollHandler) releaseBody(n int64) {
	if n > 0 {
		h.stats.BodyBuffers.Add(-n)
	}
}

// readBody reads a POST body of at most MaxBody bytes, reserving it in
// MaxBodyBuffers first (or as it grows, without Content-Length). It
// returns the bytes reserved, which the caller releases once the POST is
// answered. On failure it has answered (413 above MaxBody, 503 when the
// budget has no room, 400 for a body cut short) and released what it
// reserved.
func (h *LongPollHandler) readBody(w http.ResponseWriter, r *http.Request) (body []byte, held int64, ok bool) {
	if r.ContentLength > h.cfg.MaxBody {
		// Refused unread; MaxBytesReader's answer to a longer read.
		h.stats.BodiesTooLarge.Add(1)
		skipBody(w)
		writeStatusJSON(w, http.StatusRequestEntityTooLarge, 413)
		return nil, 0, false
	}
	if r.ContentLength > 0 {
		if !h.reserveBody(r.ContentLength, 0) {
			h.refuseBody(w, r)
			return nil, 0, false
		}
		held = r.ContentLength
	}
	// A body trickled in must not hold the request (and what was read of
	// it) for longer than IOTimeout. A relayed body is already here.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(h.cfg.IOTimeout))
	src := http.MaxBytesReader(w, r.Body, h.cfg.MaxBody)
	var err error
	if r.ContentLength >= 0 {
		body = make([]byte, r.ContentLength)
		_, err = io.ReadFull(src, body)
	} else {
		body, held, err = h.readUnsized(src)
	}
	if err == nil {
		// The server's read of the next request has its own deadline.
		// (After a failure the deadline stays: the server then gives up
		// on the rest of the body at once.)
		_ = rc.SetReadDeadline(time.Time{})
		return body, held, true
	}
	h.releaseBody(held)
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		h.stats.BodiesTooLarge.Add(1)
		writeStatusJSON(w, http.StatusRequestEntityTooLarge, 413)
	case errors.Is(err, errBodyBudget):
		h.refuseBody(w, r)
	default:
		// The client went away or was too slow mid-body; nothing was
		// processed.
		if errors.Is(err, os.ErrDeadlineExceeded) {
			h.stats.IOTimeouts.Add(1)
		}
		writeStatusJSON(w, http.StatusBadRequest, 400)
	}
	return nil, 0, false
}

// readUnsized reads a body without Content-Length (chunked), reserving
// each growth of its buffer before making it. It returns the bytes
// reserved, also on failure.
func (h *LongPollHandler) readUnsized(src io.Reader) ([]byte, int64, error) {
	var buf []byte
	var held int64
	for {
		if len(buf) == cap(buf) {
			// One byte over MaxBody, for src to tell a longer body.
			next := min(max(2*cap(buf), 4096), int(h.cfg.MaxBody)+1)
			if !h.reserveBody(int64(next-cap(buf)), held) {
				return nil, held, errBodyBudget
			}
			held += int64(next - cap(buf))
			nb := make([]byte, len(buf), next)
			copy(nb, buf)
			buf = nb
		}
		n, err := src.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, held, nil
		}
		if err != nil {
			return nil, held, err
		}
	}
}

// refuseBody answers a POST that MaxBodyBuffers has no room for: HTTP 503
// (phoenix.js treats a POST's non-200 as an error and reconnects), with
// the JSON status as the handler's other answers carry.
func (h *LongPollHandler) refuseBody(w http.ResponseWriter, r *http.Request) {
	h.log.Debug("transport: long-poll body buffers full; POST refused", "remote", r.RemoteAddr)
	skipBody(w)
	w.Header().Set("Retry-After", "5")
	writeStatusJSON(w, http.StatusServiceUnavailable, 503)
}

// skipBody makes the server give up at once on the unread rest of a
// refused body: it would otherwise wait for up to 256 KiB of it before
// sending the answer, as long as the client takes to send them. The
// connection closes after the answer.
func skipBody(w http.ResponseWriter) {
	_ = http.NewResponseController(w).SetReadDeadline(time.Now())
}
