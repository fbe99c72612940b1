package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"

	"github.com/meterd/meterd/ingest"
)

const sqlListDead = `SELECT source, id, code, reason, event, existing, received_ms FROM dead_letters ORDER BY n DESC LIMIT ?`

// ListRejected returns the newest dead letters first (ingest.RejectedLister).
func (s *Store) ListRejected(ctx context.Context, limit int) ([]ingest.Rejection, error) {
	rows, err := s.read.QueryContext(ctx, sqlListDead, limit)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	defer rows.Close()
	var out []ingest.Rejection
	for rows.Next() {
		var r ingest.Rejection
		var code, event string
		var existing sql.NullString
		var ms int64
		if err := rows.Scan(&r.Source, &r.ID, &code, &r.Reason, &event, &existing, &ms); err != nil {
			return nil, fmt.Errorf("read dead letter: %w", err)
		}
		r.Code = ingest.Code(code)
		r.Event = json.RawMessage(event)
		if existing.Valid {
			r.Existing = json.RawMessage(existing.String)
		}
		r.ReceivedAt = time.UnixMilli(ms).UTC()
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	return out, nil
}
