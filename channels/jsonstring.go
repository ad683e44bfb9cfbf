package channels

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// wireJSONSafe marks the bytes that appendJSONString copies as they are:
// printable ASCII other than the quote and the backslash. DEL (0x7f) is
// legal inside a JSON string, so it needs no escape either.
var wireJSONSafe = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

const wireHex = "0123456789abcdef"

// appendJSONString appends s as a JSON string literal.
//
// Topics, events and refs are short ASCII in practice, so the common case
// is a scan and one copy. Otherwise the escaping follows encoding/json
// except that <, > and & are left alone, as Phoenix's encoder (Jason) does:
// nothing here is embedded in HTML. Invalid UTF-8 becomes U+FFFD, again
// like encoding/json, so the output is always valid JSON and valid UTF-8
// (a text frame must be valid UTF-8, RFC 6455 §8.1).
func appendJSONString(dst []byte, s string) []byte {
	i := 0
	for i < len(s) && wireJSONSafe[s[i]] {
		i++
	}
	if i == len(s) {
		dst = slices.Grow(dst, len(s)+2)
		dst = append(dst, '"')
		dst = append(dst, s...)
		return append(dst, '"')
	}
	// Grow by no more than the output's least length, so a dst sized
	// exactly with jsonStringLen is never reallocated.
	dst = slices.Grow(dst, len(s)+2)
	dst = append(dst, '"')
	start := 0
	for i < len(s) {
		c := s[i]
		if wireJSONSafe[c] {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', wireHex[c>>4], wireHex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// jsonStringLen is len(appendJSONString(nil, s)), computed without
// building it, so that EncodeBroadcast can allocate its frame exactly once.
func jsonStringLen(s string) int {
	n := 2
	for i := 0; i < len(s); {
		c := s[i]
		if wireJSONSafe[c] {
			n++
			i++
			continue
		}
		if c < utf8.RuneSelf {
			switch c {
			case '"', '\\', '\n', '\r', '\t', '\b', '\f':
				n += 2
			default:
				n += 6
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			n += 6
			i++
			continue
		}
		n += size
		i += size
	}
	return n
}

// wireAppendQuotedBytes is appendJSONString for a []byte, copying without
// an intermediate string when b needs no escaping (binary frame refs,
// §2.4, are ASCII digits in practice).
func wireAppendQuotedBytes(dst []byte, b []byte) []byte {
	for _, c := range b {
		if !wireJSONSafe[c] {
			return appendJSONString(dst, string(b))
		}
	}
	dst = append(dst, '"')
	dst = append(dst, b...)
	return append(dst, '"')
}

// The helpers below walk JSON that wireValid has already accepted.
// Validation is the one pass that must be exact; after it, value
// boundaries can be found by counting brackets outside strings, which
// costs no allocation and no reflection (unlike unmarshalling into
// []json.RawMessage) and lets the decoders keep the payload as the raw
// bytes it arrived as (§2.1).

// wireSkipWS returns the index of the first byte at or after i that is not
// JSON whitespace.
func wireSkipWS(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\r', '\n':
			i++
		default:
			return i
		}
	}
	return i
}

// wireValueEnd returns the index just past the JSON value that starts at
// data[i]. data must be valid JSON.
func wireValueEnd(data []byte, i int) int {
	switch data[i] {
	case '"':
		return wireStringEnd(data, i)
	case '{', '[':
		depth := 0
		for i < len(data) {
			switch data[i] {
			case '"':
				i = wireStringEnd(data, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return len(data)
	}
	// A number or a literal: it ends where the next token or the
	// whitespace before it starts.
	for i < len(data) {
		switch data[i] {
		case ',', ']', '}', ' ', '\t', '\r', '\n':
			return i
		}
		i++
	}
	return i
}

// wireStringEnd returns the index just past the string whose opening quote
// is data[i].
func wireStringEnd(data []byte, i int) int {
	for i++; i < len(data); i++ {
		switch data[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(data)
}

// wireString decodes the JSON string literal raw (valid JSON). When raw
// needs no unescaping the result is a substring of raw, so callers that
// converted a whole header to one string pay a single allocation for all
// its fields.
func wireString(raw string) string {
	inner := raw[1 : len(raw)-1]
	if strings.IndexByte(inner, '\\') < 0 && utf8.ValidString(inner) {
		return inner
	}
	// Escapes, or invalid UTF-8 that encoding/json turns into U+FFFD: the
	// rare case, left to the reference decoder.
	var s string
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		return inner // unreachable for valid JSON
	}
	return s
}

// wireRef turns the JSON value raw (valid JSON) into a Ref, accepting what
// refFromJSON accepts: a string, a number that fits a float64, or null.
// It does the same checks without refFromJSON's allocations, relying on
// raw being valid JSON.
func wireRef(raw string) (Ref, bool) {
	switch c := raw[0]; {
	case c == 'n':
		return NullRef, true
	case c == '"':
		return Ref(raw), true
	case c == '-' || (c >= '0' && c <= '9'):
		if _, err := strconv.ParseFloat(raw, 64); err != nil {
			return NullRef, false
		}
		return Ref(raw), true
	}
	return NullRef, false
}

// wireStringPlain marks the bytes that need no attention inside a JSON
// string while validating: anything but controls, the quote and the
// backslash. Like encoding/json, bytes >= 0x80 are not checked for UTF-8
// here; decoding replaces invalid sequences.
var wireStringPlain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// wireValid reports whether data is one valid JSON value, with exactly the
// verdict of json.Valid (the fuzz targets hold it to that) at several
// times its speed: json.Valid's general scanner was most of the cost of
// decoding a frame.
func wireValid(data []byte) bool {
	// One bit per open container: set for an object, clear for an array.
	// Frames nest a few levels; deeper ones go to json.Valid rather than
	// make every call clear a bit stack sized for encoding/json's limit.
	var objects [4]uint64
	depth := 0
	i := 0
	for {
		// A value starts at the next non-space byte.
		if i = wireSkipWS(data, i); i >= len(data) {
			return false
		}
		switch c := data[i]; c {
		case '{', '[':
			if depth == len(objects)*64 {
				return json.Valid(data)
			}
			if c == '{' {
				objects[depth/64] |= 1 << (depth % 64)
			} else {
				objects[depth/64] &^= 1 << (depth % 64)
			}
			depth++
			i = wireSkipWS(data, i+1)
			switch {
			case i < len(data) && data[i] == c+2: // '{'+2 is '}', '['+2 is ']'
				i++
				depth--
			case c == '{':
				if i = wireScanKey(data, i); i < 0 {
					return false
				}
				continue
			default:
				continue
			}
		case '"':
			if i = wireScanString(data, i); i < 0 {
				return false
			}
		case 't':
			if !bytes.HasPrefix(data[i:], []byte("true")) {
				return false
			}
			i += len("true")
		case 'f':
			if !bytes.HasPrefix(data[i:], []byte("false")) {
				return false
			}
			i += len("false")
		case 'n':
			if !bytes.HasPrefix(data[i:], []byte("null")) {
				return false
			}
			i += len("null")
		default:
			if i = wireScanNumber(data, i); i < 0 {
				return false
			}
		}
		// After a value: close containers until the next element starts.
		for {
			i = wireSkipWS(data, i)
			if depth == 0 {
				return i == len(data)
			}
			if i >= len(data) {
				return false
			}
			d := depth - 1
			object := objects[d/64]&(1<<(d%64)) != 0
			c := data[i]
			if c == ',' {
				if object {
					if i = wireScanKey(data, wireSkipWS(data, i+1)); i < 0 {
						return false
					}
				} else {
					i++
				}
				break
			}
			if (object && c == '}') || (!object && c == ']') {
				i++
				depth--
				continue
			}
			return false
		}
	}
}

// wireScanKey checks an object key and its colon at data[i] and returns
// the index after the colon, or -1.
func wireScanKey(data []byte, i int) int {
	if i >= len(data) || data[i] != '"' {
		return -1
	}
	if i = wireScanString(data, i); i < 0 {
		return -1
	}
	if i = wireSkipWS(data, i); i >= len(data) || data[i] != ':' {
		return -1
	}
	return i + 1
}

// wireScanString checks the string whose opening quote is data[i] and
// returns the index after its closing quote, or -1.
func wireScanString(data []byte, i int) int {
	for i++; i < len(data); {
		c := data[i]
		if wireStringPlain[c] {
			i++
			continue
		}
		switch c {
		case '"':
			return i + 1
		case '\\':
			if i+1 >= len(data) {
				return -1
			}
			switch data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(data) {
					return -1
				}
				for _, h := range data[i+2 : i+6] {
					if !('0' <= h && h <= '9' || 'a' <= h && h <= 'f' || 'A' <= h && h <= 'F') {
						return -1
					}
				}
				i += 6
			default:
				return -1
			}
		default: // a control character
			return -1
		}
	}
	return -1
}

// wireScanNumber checks the number at data[i] against the JSON grammar
// (RFC 8259 §6) and returns the index after it, or -1.
func wireScanNumber(data []byte, i int) int {
	digits := func(i int) int {
		for i < len(data) && data[i] >= '0' && data[i] <= '9' {
			i++
		}
		return i
	}
	if data[i] == '-' {
		i++
	}
	switch {
	case i >= len(data):
		return -1
	case data[i] == '0':
		i++
	case data[i] >= '1' && data[i] <= '9':
		i = digits(i + 1)
	default:
		return -1
	}
	if i < len(data) && data[i] == '.' {
		j := digits(i + 1)
		if j == i+1 {
			return -1
		}
		i = j
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		j := digits(i)
		if j == i {
			return -1
		}
		i = j
	}
	return i
}
