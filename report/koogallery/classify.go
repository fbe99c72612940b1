package koogallery

import (
	"errors"
	"net/http"
)

// Class is what the pusher does with the outcome of one Push (DESIGN.md §4 step 9).
type Class int

// The classes. ClassRetry and ClassUnknown both mean that the outcome of the call is unknown: KooGallery may
// have billed the batch, so a later 005/010 for its records confirms them (DESIGN.md §4 step 10).
const (
	ClassAccepted Class = iota // 0000: the batch went through; Response.Abnormal lists the records that did not
	ClassRetry                 // transport error, timeout, 5xx/406/408/429 without code, 0999, 0250: back off, resend
	ClassHalve                 // 9003, or 413 without code: too many records, split the batch
	ClassIsolate               // 0100, 0101, 0199, 9001, 9002: bisect to find the bad record(s), send the rest
	ClassExpired               // 9004: begin_time older than 21 days, never retry
	ClassHalt                  // 0102, 0150, 0151, 0154, 401/403 without code, or a local configuration error: stop, alert, keep records
	ClassUnknown               // any other code or answer: retry like ClassRetry, but alert, since nobody knows what it means
)

var classNames = [...]string{"accepted", "retry", "halve", "isolate", "expired", "halt", "unknown"}

func (c Class) String() string {
	if c < 0 || int(c) >= len(classNames) {
		return "invalid"
	}
	return classNames[c]
}

// Classify returns what to do with the result of Push. An answer is classified by the numeric code of its body
// first, by its HTTP status only when the body has no code (a gateway or proxy answered, not KooGallery).
//
// A *TransportError is ClassRetry. Any other error comes from before sending (the key could not be read, the
// request could not be built): nothing was sent, and a retry cannot help until the configuration is fixed, so it
// is ClassHalt.
//
// A 2xx without a code is ClassUnknown, not ClassAccepted: nothing says the batch was taken. Resending is safe,
// since KooGallery answers 005/010 for records it already has.
func Classify(resp Response, err error) Class {
	if err != nil {
		if _, ok := errors.AsType[*TransportError](err); ok {
			return ClassRetry
		}
		return ClassHalt
	}
	switch resp.Code {
	case "0000":
		return ClassAccepted
	case "0999", "0250":
		return ClassRetry
	case "9003":
		return ClassHalve
	case "0100", "0101", "0199", "9001", "9002":
		return ClassIsolate
	case "9004":
		return ClassExpired
	case "0102", "0150", "0151", "0154":
		return ClassHalt
	case "":
	default:
		return ClassUnknown
	}
	switch s := resp.HTTPStatus; {
	case s >= 500, s == http.StatusNotAcceptable, s == http.StatusRequestTimeout, s == http.StatusTooManyRequests:
		return ClassRetry
	case s == http.StatusRequestEntityTooLarge:
		return ClassHalve
	case s == http.StatusUnauthorized, s == http.StatusForbidden:
		return ClassHalt
	}
	return ClassUnknown
}
