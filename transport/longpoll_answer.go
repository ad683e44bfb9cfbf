package transport

import (
	"errors"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"
)

// CORS (the preflight and the headers of every answer) and the JSON
// answers.

// preflight answers OPTIONS like Phoenix: HTTP 200, empty body, the
// requested headers echoed, the CORS headers of allowOrigin. A refused
// origin gets none (the browser then blocks the request).
func (h *LongPollHandler) preflight(w http.ResponseWriter, r *http.Request, allowed, hasOrigin bool, origin string) {
	hd := w.Header()
	if allowed {
		h.allowOrigin(hd, hasOrigin, origin)
		if rh := r.Header.Get("Access-Control-Request-Headers"); rh != "" {
			hd.Set("Access-Control-Allow-Headers", rh)
		}
		hd.Set("Access-Control-Allow-Methods", "get, post, options")
		hd.Set("Access-Control-Max-Age", "3600")
	}
	hd.Add("Vary", "Origin")
	hd.Set("Cache-Control", "max-age=0, private, must-revalidate")
	hd.Set("Content-Length", "0")
	w.WriteHeader(http.StatusOK)
}

// corsHeaders sets the CORS headers of a JSON answer: allowOrigin's for an
// allowed request, none for a refused one.
func (h *LongPollHandler) corsHeaders(w http.ResponseWriter, allowed, hasOrigin bool, origin string) {
	hd := w.Header()
	hd.Add("Vary", "Origin")
	if allowed {
		h.allowOrigin(hd, hasOrigin, origin)
	}
}

// allowOrigin sets Access-Control-Allow-Origin for an allowed request.
// Credentials (cookies, HTTP authentication) are granted only to an origin
// that AllowedOrigins names: any other page reads answers with "*", as
// Phoenix answers, which a browser never pairs with credentials. Echoing
// any Origin with credentials, as the origin check passes every origin by
// default, would let every web page make its visitors' browsers poll with
// their cookies and read the answers.
func (h *LongPollHandler) allowOrigin(hd http.Header, hasOrigin bool, origin string) {
	if hasOrigin && h.origins.names(origin) {
		hd.Set("Access-Control-Allow-Origin", origin)
		hd.Set("Access-Control-Allow-Credentials", "true")
		return
	}
	hd.Set("Access-Control-Allow-Origin", "*")
}

// names reports whether the configured list names origin itself (not
// through "*" or an empty list).
func (oc *originChecker) names(origin string) bool {
	c, ok := canonicalOrigin(origin, false)
	if !ok {
		return false
	}
	_, ok = oc.allowed[c]
	return ok
}

func jsonHeaders(w http.ResponseWriter) {
	hd := w.Header()
	hd.Set("Content-Type", "application/json; charset=utf-8")
	hd.Set("Cache-Control", "no-store")
}

// writeStatusJSON answers {"status":N} with HTTP code httpStatus.
func writeStatusJSON(w http.ResponseWriter, httpStatus, status int) {
	jsonHeaders(w)
	w.WriteHeader(httpStatus)
	_, _ = w.Write([]byte(`{"status":` + strconv.Itoa(status) + `}`))
}

// writePollJSON answers {"status":N,"token":T,"messages":[...]}, each
// message an encoded text frame as a JSON string, within timeout (see
// writeAnswer).
func writePollJSON(w http.ResponseWriter, status int, token string, msgs []lpMsg, timeout time.Duration) error {
	n := pollAnswerOverhead + len(token)
	for _, m := range msgs {
		n += m.n + 1
	}
	b := make([]byte, 0, n)
	b = append(b, `{"status":`...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, `,"token":`...)
	b = appendJSONString(b, []byte(token))
	b = append(b, `,"messages":[`...)
	for i, m := range msgs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, m.data)
	}
	b = append(b, "]}"...)
	jsonHeaders(w)
	return writeAnswer(w, http.StatusOK, b, timeout)
}

// pollAnswerOverhead bounds the bytes of a poll answer other than its
// token and messages: {"status":NNN,"token":,"messages":[]}.
const pollAnswerOverhead = 64

// writeAnswer writes an answer's status and body and flushes it, all
// within timeout: a client that does not read its answer must not pin
// that answer (and the messages in it) for longer (README "Limits"). It
// reports a failed or late write; a writer without deadlines (a relayed
// request's recorder) just writes.
func writeAnswer(w http.ResponseWriter, httpStatus int, body []byte, timeout time.Duration) error {
	rc := http.NewResponseController(w)
	if timeout > 0 {
		_ = rc.SetWriteDeadline(time.Now().Add(timeout))
	}
	w.WriteHeader(httpStatus)
	if _, err := w.Write(body); err != nil {
		return err
	}
	if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

// appendJSONString appends s as a JSON string (RFC 8259 §7), as
// encoding/json writes it without HTML escaping: invalid UTF-8 becomes
// \ufffd, so a poll never fails and its answer is always valid JSON.
// jsonStringLen(s) is exactly what it appends.
func appendJSONString(b []byte, s []byte) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c >= 0x20 && c != '"' && c != '\\':
				b = append(b, c)
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c == '\b':
				b = append(b, '\\', 'b')
			case c == '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			// Valid JSON, but not valid JavaScript source.
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// jsonStringLen is the length of appendJSONString's output for s: what a
// buffered message will take in a poll answer.
func jsonStringLen(s []byte) int {
	n := 2
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c >= 0x20 && c != '"' && c != '\\':
				n++
			case c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f':
				n += 2
			default:
				n += 6
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		switch {
		case r == utf8.RuneError && size == 1, r == '\u2028', r == '\u2029':
			n += 6
		default:
			n += size
		}
		i += size
	}
	return n
}
