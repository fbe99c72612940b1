package koogallery

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
)

// Sign returns base64(HMAC-SHA256(key, "ts="+ts+"&nonce="+nonce+"&body="+body)), the signature header of
// spec/koogallery.md §1. body must be exactly the bytes sent.
func Sign(key []byte, ts, nonce string, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("ts="))
	m.Write([]byte(ts))
	m.Write([]byte("&nonce="))
	m.Write([]byte(nonce))
	m.Write([]byte("&body="))
	m.Write(body)
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// Verify reports whether signature is Sign(key, ts, nonce, body), in constant time. The simulator uses it.
func Verify(key []byte, ts, nonce string, body []byte, signature string) bool {
	got, err := base64.StdEncoding.DecodeString(signature)
	if err != nil {
		return false
	}
	want, _ := base64.StdEncoding.DecodeString(Sign(key, ts, nonce, body))
	return hmac.Equal(got, want)
}
