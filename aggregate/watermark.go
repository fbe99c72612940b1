package aggregate

import (
	"context"
	"time"
)

// SyncWatermark is the watermark of a store that commits before it acknowledges (the embedded SQLite store):
// every acknowledged event is already stored, so the watermark is now and an hour never waits for stragglers.
type SyncWatermark struct{}

// Watermark returns now.
func (SyncWatermark) Watermark(_ context.Context, now time.Time) (time.Time, error) { return now, nil }
