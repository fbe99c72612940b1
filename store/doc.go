// Package store holds meterd's storage implementations. Each sub-package (sqlite, and clickhouse at scale)
// implements the narrow interfaces declared by the packages that use storage (ingest.Sink, ingest.RejectedLister,
// and the ports of aggregate and report), checked at compile time. The interfaces live with their users so that a
// package states exactly what it needs from a store and nothing more.
package store
