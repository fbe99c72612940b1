package koogallery

import (
	"errors"
	"fmt"
	"testing"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		status int
		code   string
		err    error
		want   Class
	}{
		{200, "0000", nil, ClassAccepted},
		{500, "0999", nil, ClassRetry},
		{406, "0250", nil, ClassRetry},
		{500, "9003", nil, ClassHalve},
		{400, "0100", nil, ClassIsolate},
		{500, "0101", nil, ClassIsolate},
		{400, "0199", nil, ClassIsolate},
		{500, "9001", nil, ClassIsolate},
		{500, "9002", nil, ClassIsolate},
		{500, "9004", nil, ClassExpired},
		{400, "0102", nil, ClassHalt},
		{401, "0150", nil, ClassHalt},
		{401, "0151", nil, ClassHalt},
		{401, "0154", nil, ClassHalt},
		{500, "4242", nil, ClassUnknown},
		{200, "0000x", nil, ClassUnknown},
		// The code wins over the status.
		{500, "0000", nil, ClassAccepted},
		{200, "9003", nil, ClassHalve},
		// No code: the status decides.
		{502, "", nil, ClassRetry},
		{503, "", nil, ClassRetry},
		{429, "", nil, ClassRetry},
		{406, "", nil, ClassRetry},
		{408, "", nil, ClassRetry},
		{413, "", nil, ClassHalve},
		{401, "", nil, ClassHalt},
		{403, "", nil, ClassHalt},
		{400, "", nil, ClassUnknown},
		{404, "", nil, ClassUnknown},
		{302, "", nil, ClassUnknown},
		{200, "", nil, ClassUnknown},
		// Errors.
		{0, "", &TransportError{Err: errors.New("reset")}, ClassRetry},
		{0, "", fmt.Errorf("wrapped: %w", &TransportError{Err: errors.New("eof")}), ClassRetry},
		{0, "", errors.New("read key: no such file"), ClassHalt},
	}
	for _, tt := range tests {
		got := Classify(Response{HTTPStatus: tt.status, Code: tt.code}, tt.err)
		if got != tt.want {
			t.Errorf("Classify(%d, %q, %v) = %s, want %s", tt.status, tt.code, tt.err, got, tt.want)
		}
	}
}

func TestClassString(t *testing.T) {
	want := map[Class]string{ClassAccepted: "accepted", ClassRetry: "retry", ClassHalve: "halve",
		ClassIsolate: "isolate", ClassExpired: "expired", ClassHalt: "halt", ClassUnknown: "unknown", Class(99): "invalid"}
	for c, s := range want {
		if c.String() != s {
			t.Errorf("%d.String() = %q, want %q", int(c), c.String(), s)
		}
	}
}

func TestParseAnswer(t *testing.T) {
	r := parseAnswer(200, []byte(`{"error_code":"CBC.0000","error_msg":"ok","abnormal_usage_data":[`+
		`{"metering_sn":"a","code":"MKT.005","message":"dup"},{"metering_sn":"b","error_code":"010","error_msg":"dup period"},`+
		`{"error_code":11}]}`))
	if r.Code != "0000" || r.Message != "ok" || len(r.Abnormal) != 3 {
		t.Fatalf("answer: %+v", r)
	}
	if a := r.Abnormal[0]; a != (Abnormal{MeteringSN: "a", Code: "005", Message: "dup"}) {
		t.Errorf("entry 0: %+v", a)
	}
	if a := r.Abnormal[1]; a != (Abnormal{MeteringSN: "b", Code: "010", Message: "dup period"}) {
		t.Errorf("entry 1: %+v", a)
	}
	if a := r.Abnormal[2]; a.MeteringSN != "" || a.Code != "11" {
		t.Errorf("entry 2: %+v", a)
	}
	if r := parseAnswer(500, []byte(`{"error_code":999,"error_msg":"x"}`)); r.Code != "999" {
		t.Errorf("numeric code: %+v", r)
	}
	html := parseAnswer(502, []byte("<html><body>Bad Gateway</body></html>"))
	if html.Code != "" || html.Message != "<html><body>Bad Gateway</body></html>" || html.HTTPStatus != 502 {
		t.Errorf("html: %+v", html)
	}
	long := parseAnswer(502, []byte(string(make([]byte, 2000))))
	if len(long.Message) > maxMessage+3 {
		t.Errorf("message not bounded: %d", len(long.Message))
	}
}
