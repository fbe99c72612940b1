// Package ingest owns the event model of DESIGN.md §2: decoding the four body forms of POST /v1/events,
// validating CloudEvents against the configured meters, and answering only once every accepted event is durable.
//
// Guarantees: a bad event never sinks its batch (it is listed with its 0-based index and dead-lettered with its
// reason); an event is acknowledged only after the Sink has made it durable; the same (source, id) is counted once
// by the Sink whatever the number of copies, and a copy with different content is a conflict, never summed.
//
// The package declares the ports it needs (Sink, RejectedLister); storage adapters implement them.
package ingest
