package stream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/segmentio/kafka-go"
)

// Error is a failed Kafka operation. Retryable tells whether the same operation may succeed later (a broker down,
// a leader moving, a timeout) or will fail again whatever the wait (a message above the broker's size limit, a
// missing permission), so that callers decide from the type, never from the text.
type Error struct {
	Op        string // what was being done, e.g. "produce 12 events"
	Err       error
	Retryable bool
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %v", e.Op, e.Err) }

func (e *Error) Unwrap() error { return e.Err }

// Temporary reports Retryable under the net.Error convention, so that a package that cannot import this one (the
// HTTP ingest, which this package imports) can tell with errors.As on interface{ Temporary() bool }.
func (e *Error) Temporary() bool { return e.Retryable }

// IsRetryable reports whether err, or an error it wraps, is a retryable *Error. An error of another type is not
// known to be retryable.
func IsRetryable(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Retryable
}

// wrap classifies a kafka-go error. Network errors, timeouts and Kafka's transient codes are retryable; a message
// too large or a non-transient Kafka code is not; a cancelled context is not retryable by this caller.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Op: op, Err: err, Retryable: retryable(err)}
}

func retryable(err error) bool {
	if errors.Is(err, context.Canceled) {
		return false
	}
	// A broker whose certificate does not verify will not verify on the next try either: it needs an operator.
	var cert *tls.CertificateVerificationError
	if errors.As(err, &cert) {
		return false
	}
	var we kafka.WriteErrors
	if errors.As(err, &we) {
		// A batch that cannot be written whole fails the request: retrying it is useful only when every failed
		// message may succeed later.
		for _, e := range we {
			if e != nil && !retryable(e) {
				return false
			}
		}
		return true
	}
	var tooLarge kafka.MessageTooLargeError
	if errors.As(err, &tooLarge) {
		return false
	}
	var ke kafka.Error
	if errors.As(err, &ke) {
		return ke.Temporary() || ke.Timeout()
	}
	return true // network errors, deadlines, a closed connection
}
