// Package schemas is the contract of meterd's data: the CloudEvents JSON Schema of a usage event, the plan schema,
// and the versioned SQL migrations of each store. Files are embedded so the binary carries its own schema.
//
// Migrations are numbered NNNN_name.sql and applied in order, each once; a migration is never edited after it
// has been released, only followed by a new one.
package schemas

import "embed"

// SQLite holds the SQLite migrations (sqlite/NNNN_name.sql).
//
//go:embed sqlite/*.sql
var SQLite embed.FS

// EventSchema is the JSON Schema of one structured-mode usage event (DESIGN.md §2).
//
//go:embed event.schema.json
var EventSchema []byte

// ClickHouse holds the ClickHouse migrations (clickhouse/NNNN_name.sql): statements separated by ";" at the end
// of a line, each idempotent.
//
//go:embed clickhouse/*.sql
var ClickHouse embed.FS
