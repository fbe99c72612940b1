package ingest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"os"
	"strings"
)

// Tokens are the bearer tokens accepted by the API. The zero value accepts every request (loopback-only setups).
type Tokens struct {
	// digests of the tokens: comparing fixed-length digests in constant time hides both the token and its length.
	digests [][sha256.Size]byte
}

// LoadTokens reads bearer tokens from a file, one per line; blank lines and lines starting with # are skipped.
// Errors never contain a token.
func LoadTokens(path string) (Tokens, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Tokens{}, fmt.Errorf("read tokens file: %w", err)
	}
	var t Tokens
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		t.digests = append(t.digests, sha256.Sum256([]byte(line)))
	}
	if err := sc.Err(); err != nil {
		return Tokens{}, fmt.Errorf("read tokens file %s: %w", path, err)
	}
	if len(t.digests) == 0 {
		return Tokens{}, fmt.Errorf("tokens file %s holds no token", path)
	}
	return t, nil
}

// Enabled reports whether any token is configured.
func (t Tokens) Enabled() bool { return len(t.digests) > 0 }

// Allow reports whether the Authorization header carries a configured bearer token. Every configured token is
// compared, in constant time, so timing reveals neither which token matched nor how much of one did.
func (t Tokens) Allow(authorization string) bool {
	if !t.Enabled() {
		return true
	}
	const prefix = "bearer "
	if len(authorization) <= len(prefix) || !strings.EqualFold(authorization[:len(prefix)], prefix) {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(authorization[len(prefix):])))
	match := 0
	for i := range t.digests {
		match |= subtle.ConstantTimeCompare(got[:], t.digests[i][:])
	}
	return match == 1
}

// Wrap guards next with the tokens: 401 without a valid bearer token.
func (t Tokens) Wrap(next http.Handler) http.Handler {
	if !t.Enabled() {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !t.Allow(r.Header.Get("Authorization")) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="meterd"`)
			writeJSON(w, http.StatusUnauthorized, errorBody{Error: "missing or invalid bearer token"})
			return
		}
		next.ServeHTTP(w, r)
	})
}
