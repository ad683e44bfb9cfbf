package transport

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// CORS (the preflight and the headers of every answer) and the JSON
// answers.

// preflight answers OPTIONS like Phoenix: HTTP 200, empty body, the
// requested headers echoed. A refused origin gets no Allow-Origin (the
// browser then blocks the request).
func (h *LongPollHandler) preflight(w http.ResponseWriter, r *http.Request, allowed bool, origin string) {
	hd := w.Header()
	if allowed {
		if origin != "" {
			hd.Set("Access-Control-Allow-Origin", origin)
			hd.Set("Access-Control-Allow-Credentials", "true")
		} else {
			hd.Set("Access-Control-Allow-Origin", "*")
		}
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

// corsHeaders sets the headers of a JSON answer: Allow-Origin reflects an
// allowed Origin (with credentials, as Phoenix does), "*" without one.
func (h *LongPollHandler) corsHeaders(w http.ResponseWriter, allowed, hasOrigin bool, origin string) {
	hd := w.Header()
	switch {
	case allowed && hasOrigin && origin != "":
		hd.Set("Access-Control-Allow-Origin", origin)
		hd.Set("Access-Control-Allow-Credentials", "true")
		hd.Add("Vary", "Origin")
	case allowed:
		hd.Set("Access-Control-Allow-Origin", "*")
	}
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
// message an encoded text frame as a JSON string.
func writePollJSON(w http.ResponseWriter, status int, token string, msgs [][]byte) {
	n := 64 + len(token)
	for _, m := range msgs {
		n += len(m) + len(m)/4 + 3
	}
	b := make([]byte, 0, n)
	b = append(b, `{"status":`...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, `,"token":`...)
	b = appendJSONString(b, token)
	b = append(b, `,"messages":[`...)
	for i, m := range msgs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, string(m))
	}
	b = append(b, "]}"...)
	jsonHeaders(w)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// appendJSONString appends s as a JSON string. encoding/json never fails
// on a string (invalid UTF-8 becomes U+FFFD), so a poll never fails.
func appendJSONString(b []byte, s string) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return append(b, strings.TrimSuffix(buf.String(), "\n")...)
}
