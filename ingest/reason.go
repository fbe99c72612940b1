package ingest

import "fmt"

// Code classifies why an event was refused. The set is closed so that it can label metrics without unbounded
// cardinality; the human reason travels beside it.
type Code string

// Rejection codes.
const (
	CodeMalformed      Code = "malformed"       // not a JSON object
	CodeMissingField   Code = "missing_field"   // a required attribute is absent or empty
	CodeBadSpecVersion Code = "bad_specversion" // not "1.0"
	CodeTooLong        Code = "too_long"        // id, source or subject over its limit
	CodeBadTime        Code = "bad_time"        // time is not RFC 3339
	CodeTooOld         Code = "too_old"         // time older than max_event_age
	CodeInFuture       Code = "in_future"       // time beyond max_future_skew
	CodeUnknownType    Code = "unknown_type"    // no meter is fed by this type
	CodeBadValue       Code = "bad_value"       // a meter's value is missing or not an exact decimal >= 0
	CodeConflict       Code = "conflict"        // same (source, id) stored earlier with different content
)

// Codes lists every code, so metrics can create their series up front.
var Codes = []Code{CodeMalformed, CodeMissingField, CodeBadSpecVersion, CodeTooLong, CodeBadTime, CodeTooOld,
	CodeInFuture, CodeUnknownType, CodeBadValue, CodeConflict}

// InvalidError is a validation failure of one event: the field at fault, the code and the human reason.
type InvalidError struct {
	Code   Code
	Field  string
	Reason string
}

func (e *InvalidError) Error() string {
	if e.Field == "" {
		return e.Reason
	}
	return fmt.Sprintf("%s: %s", e.Field, e.Reason)
}

func invalid(code Code, field, format string, args ...any) *InvalidError {
	return &InvalidError{Code: code, Field: field, Reason: fmt.Sprintf(format, args...)}
}
