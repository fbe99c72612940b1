package koogallery

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// DefaultTimeout bounds one call when Config.Timeout is zero (config koogallery.timeout).
const DefaultTimeout = 10 * time.Second

// maxAnswer bounds the answer read: abnormal_usage_data holds at most 1000 short entries.
const maxAnswer = 4 << 20

// maxMessage bounds Response.Message, which may be a proxy's HTML page rather than KooGallery's error_msg.
const maxMessage = 512

// Config holds what the client needs. The zero values of HTTP, Timeout and Now have defaults (see NewClient).
type Config struct {
	// Endpoint is the full URL of the usage API, e.g.
	// https://mkt-intl.myhuaweicloud.com/api/mkp-openapi-public/global/v1/isv/usage-data.
	Endpoint string
	// Key returns the interconnection key. It is called for every request, so a rotated key (KeySource.Reload
	// on SIGHUP) takes effect at the next call without a restart.
	Key func() ([]byte, error)
	// HTTP sends the requests. nil: a client with Timeout, TLS certificate verification on, TLS 1.2 at least,
	// and redirects not followed (a redirect of a signed POST is answered as is, and classified ClassUnknown).
	HTTP *http.Client
	// Timeout bounds one call, whatever HTTP's own timeout; default DefaultTimeout.
	Timeout time.Duration
	// Now is the clock of ts, latency and clock skew; default time.Now.
	Now func() time.Time
	// Metrics may be nil: nothing is recorded.
	Metrics *Metrics
}

// Validate reports every problem of the config at once, each prefixed with its field.
func (c Config) Validate() error {
	var probs []error
	if c.Endpoint == "" {
		probs = append(probs, errors.New("endpoint: required"))
	} else if u, err := url.Parse(c.Endpoint); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		probs = append(probs, fmt.Errorf("endpoint: %q is not an absolute http(s) URL", c.Endpoint))
	}
	if c.Key == nil {
		probs = append(probs, errors.New("key: required"))
	}
	if c.Timeout < 0 {
		probs = append(probs, fmt.Errorf("timeout: %s must not be negative", c.Timeout))
	}
	return errors.Join(probs...)
}

// Client sends signed usage batches to KooGallery. It is safe for concurrent use.
type Client struct {
	endpoint string
	key      func() ([]byte, error)
	http     *http.Client
	timeout  time.Duration
	now      func() time.Time
	metrics  *Metrics
}

// NewClient checks cfg, applies its defaults and returns the client.
func NewClient(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("koogallery client: %w", err)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.HTTP == nil {
		cfg.HTTP = defaultHTTPClient(cfg.Timeout)
	}
	return &Client{endpoint: cfg.Endpoint, key: cfg.Key, http: cfg.HTTP, timeout: cfg.Timeout, now: cfg.Now,
		metrics: cfg.Metrics}, nil
}

func defaultHTTPClient(timeout time.Duration) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	return &http.Client{
		Timeout:   timeout,
		Transport: tr,
		// Following a redirect would resend the signed body to another URL (or drop it, for 301/302); an answer
		// the pusher cannot classify is the safer outcome.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Response is KooGallery's answer to one call.
type Response struct {
	HTTPStatus int
	// Code is the numeric code of error_code with any "MKT."/"CBC." (any "PREFIX.") removed; "" when the body
	// has none, e.g. a gateway's error page.
	Code string
	// Message is error_msg, or the start of a body that is not KooGallery JSON.
	Message string
	// Abnormal lists the per-record problems of abnormal_usage_data; the records of a 0000 answer not listed
	// here were accepted.
	Abnormal []Abnormal
	Latency  time.Duration
	// ServerTime is the answer's Date header (zero when absent). It has a resolution of one second.
	ServerTime time.Time
	// ClockSkew is ServerTime minus the local midpoint of the request (0 when unknown); a positive skew means
	// the local clock is behind. Its resolution is that of the Date header.
	ClockSkew time.Duration
}

// Abnormal is one entry of abnormal_usage_data. Its JSON shape is not published (spec §1, inferred): it is read
// from "metering_sn" and "error_code" (or "code"), "error_msg" (or "message"). An entry without metering_sn has
// MeteringSN "": the pusher cannot tell which record it names.
type Abnormal struct {
	MeteringSN string
	Code       string // record-level code, e.g. "005", prefix removed
	Message    string
}

// TransportError is a call without a usable answer: network error, timeout, connection closed before or while
// the answer was read. The outcome is unknown (KooGallery may have processed the batch) unless Unsent is true.
// Retry it with the identical body.
type TransportError struct {
	Err error
	// Unsent is true only when the request certainly did not leave this process (the context ended before
	// sending, the connection could not be opened): KooGallery cannot have processed it.
	Unsent bool
}

func (e *TransportError) Error() string { return "push usage batch: " + e.Err.Error() }
func (e *TransportError) Unwrap() error { return e.Err }

// Push sends one body with a fresh ts (Unix milliseconds) and nonce, and returns the parsed answer. It makes
// exactly one attempt: retries, with the same body, are the pusher's (Classify says which).
//
// A transport failure returns a *TransportError. An HTTP answer always returns a Response and a nil error, even
// for 4xx and 5xx. Any other error happened before sending (key unreadable, request not buildable).
func (c *Client) Push(ctx context.Context, body []byte) (Response, error) {
	key, err := c.key()
	if err != nil {
		// The KeySource's errors never include the key; a custom Key func is trusted to do the same.
		return Response{}, fmt.Errorf("push usage batch: read key: %w", err)
	}
	if len(key) == 0 {
		// HMAC takes an empty key, and every request would be signed with a secret anybody can guess.
		return Response{}, errors.New("push usage batch: the key is empty")
	}
	if err := ctx.Err(); err != nil {
		return Response{}, &TransportError{Err: err, Unsent: true}
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	start := c.now()
	ts := strconv.FormatInt(start.UnixMilli(), 10)
	nonce := rand.Text() // 26 base32 characters, 128 random bits: never reused in practice
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint, bytes.NewReader(body))
	if err != nil {
		return Response{}, fmt.Errorf("push usage batch: build request: %w", err)
	}
	// Assigned directly so the names go out in the lower case of the docs; Header.Set would send "Ts".
	req.Header["Content-Type"] = []string{"application/json"}
	req.Header["Accept"] = []string{"application/json"}
	req.Header["ts"] = []string{ts}
	req.Header["nonce"] = []string{nonce}
	req.Header["signature"] = []string{Sign(key, ts, nonce, body)}

	res, err := c.http.Do(req)
	if err != nil {
		c.metrics.observeTransport(c.now().Sub(start))
		return Response{}, &TransportError{Err: err, Unsent: unsent(err)}
	}
	data, readErr := io.ReadAll(io.LimitReader(res.Body, maxAnswer))
	closeErr := res.Body.Close()
	end := c.now()
	if readErr != nil {
		// Cut short: KooGallery answered, but we do not know what.
		c.metrics.observeTransport(end.Sub(start))
		return Response{}, &TransportError{Err: fmt.Errorf("read answer (HTTP %d): %w", res.StatusCode, errors.Join(readErr, closeErr))}
	}
	resp := parseAnswer(res.StatusCode, data)
	resp.Latency = end.Sub(start)
	if d, err := http.ParseTime(res.Header.Get("Date")); err == nil {
		resp.ServerTime = d.UTC()
		resp.ClockSkew = d.Sub(start.Add(end.Sub(start) / 2))
	}
	c.metrics.observe(resp)
	return resp, nil
}

// unsent reports errors that prove the request never left: a context that ended before dialling, a dial that
// failed, or a server certificate that failed verification. Anything else may have reached KooGallery.
func unsent(err error) bool {
	if op, ok := errors.AsType[*net.OpError](err); ok && op.Op == "dial" {
		return true
	}
	// The server's certificate is checked during the handshake, before a byte of the request is written.
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return true
	}
	_, dns := errors.AsType[*net.DNSError](err)
	return dns
}

// answer is the JSON of KooGallery's synchronous answer. Codes are raw so that a number is read as well as a
// string.
type answer struct {
	ErrorCode json.RawMessage `json:"error_code"`
	ErrorMsg  string          `json:"error_msg"`
	Abnormal  []struct {
		MeteringSN string          `json:"metering_sn"`
		ErrorCode  json.RawMessage `json:"error_code"`
		Code       json.RawMessage `json:"code"`
		ErrorMsg   string          `json:"error_msg"`
		Message    string          `json:"message"`
	} `json:"abnormal_usage_data"`
}

func parseAnswer(status int, data []byte) Response {
	resp := Response{HTTPStatus: status}
	var a answer
	if err := json.Unmarshal(data, &a); err != nil {
		resp.Message = excerpt(data)
		return resp
	}
	resp.Code = codeOf(a.ErrorCode)
	resp.Message = a.ErrorMsg
	for _, e := range a.Abnormal {
		code := codeOf(e.ErrorCode)
		if code == "" {
			code = codeOf(e.Code)
		}
		msg := e.ErrorMsg
		if msg == "" {
			msg = e.Message
		}
		resp.Abnormal = append(resp.Abnormal, Abnormal{MeteringSN: e.MeteringSN, Code: code, Message: msg})
	}
	return resp
}

// codeOf reads a code given as a JSON string or number and removes its "MKT."/"CBC." prefix: the docs use both
// prefixes across versions, and the number is what carries the meaning.
func codeOf(raw json.RawMessage) string {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		var n json.Number
		if err := json.Unmarshal(raw, &n); err != nil {
			return ""
		}
		s = n.String()
	}
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '.'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

func excerpt(data []byte) string {
	s := strings.TrimSpace(string(data))
	if len(s) > maxMessage {
		s = s[:maxMessage]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
		s += "..."
	}
	return s
}
