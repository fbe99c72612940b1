// Package jsonscan holds the small scanners the ingest hot path uses over raw JSON that encoding/json has already
// validated: they find a value's end, or decode a string token, without building a map of the document. Shared by
// ingest (event attributes) and aggregate/meter (meter values), so both read JSON the same way.
package jsonscan

import (
	"encoding/json"
	"unicode/utf8"
)

// PlainString reports whether the body of a string token is its decoded value: no escapes and valid UTF-8.
func PlainString(body []byte) bool {
	ascii := true
	for _, c := range body {
		if c == '\\' {
			return false
		}
		if c >= utf8.RuneSelf {
			ascii = false
		}
	}
	return ascii || utf8.Valid(body)
}

// Unquote decodes a raw JSON string token as encoding/json does.
func Unquote(tok []byte) string {
	if body := tok[1 : len(tok)-1]; PlainString(body) {
		return string(body)
	}
	var s string
	_ = json.Unmarshal(tok, &s) // tok is a valid string token
	return s
}

func SkipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// SkipString returns the index after the string token starting at b[i].
func SkipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// SkipValue returns the index after the value starting at b[i].
func SkipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return SkipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = SkipString(b, i)
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
		return len(b)
	default:
		for i < len(b) {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i
			}
			i++
		}
		return len(b)
	}
}
