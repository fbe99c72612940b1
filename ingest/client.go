package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"time"
)

// Client posts NDJSON batches to a meterd ingest endpoint (POST /v1/events). It retries what may succeed later
// (network errors, 5xx, 429) with capped exponential backoff and jitter; resending is safe because the server
// deduplicates by (source, id).
type Client struct {
	URL         string // the full URL of POST /v1/events
	Token       string // bearer token, optional; never included in errors
	HTTP        *http.Client
	MaxAttempts int           // default 8
	RetryWait   time.Duration // first retry delay, default 200ms; doubles up to 10s
}

// StatusError is a non-2xx answer. Retryable tells whether the same request may succeed later.
type StatusError struct {
	Status    int
	Body      string
	Retryable bool
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("ingest answered %d: %s", e.Status, e.Body)
}

// PostNDJSON sends events (one JSON object per line) and returns the server's answer.
func (c *Client) PostNDJSON(ctx context.Context, body []byte) (Response, error) {
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	attempts := c.MaxAttempts
	if attempts <= 0 {
		attempts = 8
	}
	wait := c.RetryWait
	if wait <= 0 {
		wait = 200 * time.Millisecond
	}
	var last error
	for attempt := 1; ; attempt++ {
		resp, err := c.post(ctx, hc, body)
		if err == nil {
			return resp, nil
		}
		last = err
		var se *StatusError
		if errors.As(err, &se) && !se.Retryable {
			return Response{}, err
		}
		if attempt >= attempts {
			return Response{}, fmt.Errorf("after %d attempts: %w", attempt, last)
		}
		d := wait/2 + time.Duration(rand.Int64N(int64(wait)))
		select {
		case <-ctx.Done():
			return Response{}, errors.Join(ctx.Err(), last)
		case <-time.After(d):
		}
		wait = min(wait*2, 10*time.Second)
	}
}

func (c *Client) post(ctx context.Context, hc *http.Client, body []byte) (Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL, bytes.NewReader(body))
	if err != nil {
		return Response{}, &StatusError{Status: 0, Body: err.Error()}
	}
	req.Header.Set("Content-Type", MediaNDJSON)
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	res, err := hc.Do(req)
	if err != nil {
		return Response{}, fmt.Errorf("post events: %w", err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, 16<<20))
	if err != nil {
		return Response{}, fmt.Errorf("read answer: %w", err)
	}
	if res.StatusCode != http.StatusOK {
		return Response{}, &StatusError{Status: res.StatusCode, Body: string(bytes.TrimSpace(data)),
			Retryable: res.StatusCode >= 500 || res.StatusCode == http.StatusTooManyRequests}
	}
	var out Response
	if err := json.Unmarshal(data, &out); err != nil {
		return Response{}, fmt.Errorf("decode answer: %w", err)
	}
	return out, nil
}
