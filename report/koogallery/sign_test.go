package koogallery

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"testing"
)

const (
	vectorKey   = "test-key-0123456789"
	vectorTS    = "1763781000000"
	vectorNonce = "4f1d3c2a-9b8e-4c7d-a6f5-0e1d2c3b4a59"
	vectorBody  = `{"usage_records":[{"begin_time":"20261122T020000Z","end_time":"20261122T030000Z","instance_id":"7f141bf1-aec8-4859-8323-fb3a8ad50721","metering_sn":"sn-1","record_time":"20261122T030500Z","usage_value":12.5}]}`
)

// TestSignIndependent compares Sign with the spec's formula written out here step by step.
func TestSignIndependent(t *testing.T) {
	msg := "ts=" + vectorTS + "&nonce=" + vectorNonce + "&body=" + vectorBody
	mac := hmac.New(sha256.New, []byte(vectorKey))
	mac.Write([]byte(msg))
	want := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	if got := Sign([]byte(vectorKey), vectorTS, vectorNonce, []byte(vectorBody)); got != want {
		t.Errorf("Sign = %s, want %s", got, want)
	}
}

// TestSignVector checks a signature computed outside Go, once, with:
//
//	printf '%s' 'ts=1763781000000&nonce=4f1d3c2a-9b8e-4c7d-a6f5-0e1d2c3b4a59&body=<vectorBody>' |
//	  openssl dgst -sha256 -hmac 'test-key-0123456789' -binary | base64
func TestSignVector(t *testing.T) {
	const want = "UYv7Y0ONUDwY2NiMeSJTDMNIil1Lg0kOO6Wx6LqwvWM="
	got := Sign([]byte(vectorKey), vectorTS, vectorNonce, []byte(vectorBody))
	if got != want {
		t.Errorf("Sign = %s, want %s (openssl)", got, want)
	}
	if !Verify([]byte(vectorKey), vectorTS, vectorNonce, []byte(vectorBody), want) {
		t.Error("Verify refuses the vector")
	}
	if Verify([]byte(vectorKey), vectorTS, vectorNonce, []byte(vectorBody+" "), want) {
		t.Error("Verify accepts a changed body")
	}
	if Verify([]byte("other"), vectorTS, vectorNonce, []byte(vectorBody), want) {
		t.Error("Verify accepts another key")
	}
}
