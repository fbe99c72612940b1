package meter

import (
	"bytes"
	"encoding/json"

	"github.com/ohler55/ojg/jp"

	"github.com/meterd/meterd/internal/jsonscan"
)

// ValueText is what an event contributes to m in its stored form, Extract(data).Text(m.Aggregation), read from the
// event's data as raw JSON (nil when the event has none) without decoding it: only the members and elements on the
// value's path are looked at. data must be valid JSON (it comes from a validated event). The answers and the errors
// are those of Extract on the same data decoded with UseNumber: a repeated key means its last value, a negative
// index counts from the end, strings are unescaped with invalid UTF-8 replaced by U+FFFD.
func (m *Meter) ValueText(data []byte) (string, error) {
	if m.Aggregation == Count {
		return "1", nil // Extract's quantity 1, as text
	}
	raw, found := lookup(m.path, data)
	if !found || raw[0] == 'n' { // absent or null
		_, err := m.extractFound(nil)
		return "", err
	}
	var val any
	switch raw[0] {
	case '"':
		s := jsonscan.Unquote(raw)
		if m.Aggregation != UniqueCount {
			// The common case: a plain decimal needs neither the general parser nor big-number formatting.
			if text, ok := plainQuantity(s); ok {
				return text, nil
			}
		}
		val = s
	case '{':
		val = map[string]any(nil) // only its kind matters: it is refused
	case '[':
		val = []any(nil)
	case 't':
		val = true
	case 'f':
		val = false
	default:
		if m.Aggregation != UniqueCount {
			if text, ok := plainQuantity(string(raw)); ok {
				return text, nil
			}
		}
		val = json.Number(raw)
	}
	v, err := m.extractFound(val)
	if err != nil {
		return "", err
	}
	return v.Text(m.Aggregation), nil
}

// lookup follows a singular path (root, then children and indexes) through raw JSON.
func lookup(path jp.Expr, data []byte) ([]byte, bool) {
	cur := bytes.TrimSpace(data)
	if len(cur) == 0 || len(path) < 2 {
		return nil, false
	}
	for _, f := range path[1:] {
		var ok bool
		switch step := f.(type) {
		case jp.Child:
			cur, ok = member(cur, string(step))
		case jp.Nth:
			cur, ok = element(cur, int(step))
		}
		if !ok {
			return nil, false
		}
	}
	return cur, true
}

// member returns the value of key in a raw JSON object: the last one when the key repeats, as decoding into a map
// keeps.
func member(obj []byte, key string) ([]byte, bool) {
	if obj[0] != '{' {
		return nil, false
	}
	var found []byte
	i := jsonscan.SkipSpace(obj, 1)
	if obj[i] == '}' {
		return nil, false
	}
	for {
		kEnd := jsonscan.SkipString(obj, i)
		k := obj[i:kEnd]
		i = jsonscan.SkipSpace(obj, jsonscan.SkipSpace(obj, kEnd)+1) // past ':'
		vEnd := jsonscan.SkipValue(obj, i)
		if keyEquals(k, key) {
			found = obj[i:vEnd]
		}
		i = jsonscan.SkipSpace(obj, vEnd)
		if obj[i] == '}' {
			return found, found != nil
		}
		i = jsonscan.SkipSpace(obj, i+1) // past ','
	}
}

// element returns element n of a raw JSON array; a negative n counts from the end.
func element(arr []byte, n int) ([]byte, bool) {
	if arr[0] != '[' {
		return nil, false
	}
	if n < 0 {
		count := 0
		forEachElement(arr, func([]byte) bool { count++; return true })
		n += count
		if n < 0 {
			return nil, false
		}
	}
	var found []byte
	k := 0
	forEachElement(arr, func(e []byte) bool {
		if k == n {
			found = e
			return false
		}
		k++
		return true
	})
	return found, found != nil
}

func forEachElement(arr []byte, yield func([]byte) bool) {
	i := jsonscan.SkipSpace(arr, 1)
	if arr[i] == ']' {
		return
	}
	for {
		end := jsonscan.SkipValue(arr, i)
		if !yield(arr[i:end]) {
			return
		}
		i = jsonscan.SkipSpace(arr, end)
		if arr[i] == ']' {
			return
		}
		i = jsonscan.SkipSpace(arr, i+1)
	}
}

// keyEquals compares a raw JSON string token with a decoded key.
func keyEquals(tok []byte, key string) bool {
	body := tok[1 : len(tok)-1]
	if jsonscan.PlainString(body) {
		return string(body) == key
	}
	return jsonscan.Unquote(tok) == key
}

// plainQuantity is ParseQuantity(s).String() for the common case, unsigned digits with an optional fraction within
// the digit limits, without the general parser and big-number formatting: leading zeros of the integer part and
// trailing zeros of the fraction dropped, as Decimal.String does. ok is false for anything else (signs, exponents,
// limits exceeded, not a number), which ParseQuantity then judges.
func plainQuantity(s string) (text string, ok bool) {
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	if i == 0 {
		return "", false
	}
	intPart, frac := s[:i], ""
	if i < len(s) {
		if s[i] != '.' {
			return "", false
		}
		frac = s[i+1:]
		if frac == "" {
			return "", false
		}
		for j := 0; j < len(frac); j++ {
			if !isDigit(frac[j]) {
				return "", false
			}
		}
	}
	for len(intPart) > 1 && intPart[0] == '0' {
		intPart = intPart[1:]
	}
	for frac != "" && frac[len(frac)-1] == '0' {
		frac = frac[:len(frac)-1]
	}
	intDigits := len(intPart)
	if intPart == "0" {
		intDigits = 0
	}
	if len(frac) > MaxFractionalDigits || intDigits > MaxIntegerDigits {
		return "", false
	}
	switch {
	case frac == "" && len(intPart) == len(s), frac != "" && len(intPart)+1+len(frac) == len(s):
		return s, true // already in its stored form
	case frac == "":
		return intPart, true
	default:
		return intPart + "." + frac, true
	}
}
