//go:build integration

package clickhouse

import (
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/internal/services"
)

// openThrowaway opens a store on a new database, closed and dropped when the test ends.
func openThrowaway(t *testing.T) *Store {
	t.Helper()
	addr := services.ClickHouse(t)
	st, err := Open(context.Background(), Config{Addr: addr, Database: services.Database(t, addr)}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// TestKeyHashMatchesServer: the pre-check index is written with keyHash computed here and backfilled by the
// migration with ClickHouse's cityHash64(concat(source, '\0', id)); both must agree for every key, or stored events
// would look new.
func TestKeyHashMatchesServer(t *testing.T) {
	ctx := context.Background()
	st := openThrowaway(t)
	for _, k := range [][2]string{{"", ""}, {"s", "1"}, {"meterd-gen", "gen-000000001"}, {"app/é", "ид-🙂"},
		{"long-source-name-for-a-real-service", "7f141bf1-aec8-4859-8323-fb3a8ad50721"}, {"a\x00b", "c"}} {
		var server uint64
		if err := st.conn.QueryRow(ctx, "SELECT cityHash64(concat(?, '\\0', ?))", k[0], k[1]).Scan(&server); err != nil {
			t.Fatal(err)
		}
		if got := keyHash(k[0], k[1]); got != server {
			t.Errorf("keyHash(%q, %q) = %d, ClickHouse says %d", k[0], k[1], got, server)
		}
	}
}

// precheckEvent is a validated event as the writer receives it; content names its data, so equal contents are
// equal hashes.
func precheckEvent(id, content string) *ingest.Event {
	at := time.Date(2026, 11, 20, 3, 10, 0, 0, time.UTC)
	raw := fmt.Sprintf(`{"id":%q,"source":"pre","data":{"v":%q}}`, id, content)
	return &ingest.Event{Source: "pre", ID: id, Type: "t", Subject: "s", Time: at, ReceivedAt: at,
		Hash: sha256.Sum256([]byte(content)), Raw: []byte(raw), Values: []ingest.MeterValue{{Meter: "m", Value: "1"}}}
}

// TestPreCheck drives each path of the writer's pre-check against a real server: new keys, a duplicate known by
// its digest alone, a conflict (within the batch too), a key stored twice with different contents by a racing
// writer (the first copy wins), and a key hash that matches no stored key (a collision: the event is new). It also
// checks the digests Go writes against the migration's backfill formula on the server.
func TestPreCheck(t *testing.T) {
	ctx := context.Background()
	st := openThrowaway(t)
	write := func(want []ingest.Outcome, events ...*ingest.Event) ingest.WriteResult {
		t.Helper()
		res, err := st.Write(ctx, events, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(res.Outcomes, want) {
			t.Fatalf("outcomes %v, want %v", res.Outcomes, want)
		}
		return res
	}
	a1, b1 := precheckEvent("a", "1"), precheckEvent("b", "1")
	write([]ingest.Outcome{ingest.Stored, ingest.Stored}, a1, b1)

	res := write([]ingest.Outcome{ingest.Duplicate, ingest.Conflict, ingest.Stored, ingest.Conflict},
		precheckEvent("a", "1"), precheckEvent("a", "2"), precheckEvent("c", "1"), precheckEvent("c", "2"))
	if string(res.Existing[1]) != string(a1.Raw) || string(res.Existing[3]) != string(precheckEvent("c", "1").Raw) {
		t.Errorf("conflicts carry %s and %s, want the first copies", res.Existing[1], res.Existing[3])
	}

	// A racing writer stored a second copy of b with other content, after the first: b now has two digests.
	b2 := precheckEvent("b", "2")
	if err := st.insertColumns(ctx, "INSERT INTO events (seq, source, id, type, subject, time_ms, hash, raw, received_ms)", 1,
		[]int64{1000}, []string{b2.Source}, []string{b2.ID}, []string{b2.Type}, []string{b2.Subject}, []int64{b2.Time.UnixMilli()},
		[]string{string(b2.Hash[:])}, []string{string(b2.Raw)}, []int64{b2.ReceivedAt.UnixMilli()}); err != nil {
		t.Fatal(err)
	}
	if err := st.insertColumns(ctx, "INSERT INTO event_digests (kh, dh)", 1, []uint64{keyHash("pre", "b")}, []uint64{digest("pre", "b", b2.Hash[:])}); err != nil {
		t.Fatal(err)
	}
	res = write([]ingest.Outcome{ingest.Conflict, ingest.Duplicate}, precheckEvent("b", "2"), precheckEvent("b", "1"))
	if string(res.Existing[0]) != string(b1.Raw) {
		t.Errorf("a copy equal to the racing one conflicts with %s, want the first copy %s", res.Existing[0], b1.Raw)
	}

	// A key hash in the index with no stored key behind it (as a collision would leave) does not make z a repeat.
	if err := st.insertColumns(ctx, "INSERT INTO event_digests (kh, dh)", 1, []uint64{keyHash("pre", "z")}, []uint64{12345}); err != nil {
		t.Fatal(err)
	}
	write([]ingest.Outcome{ingest.Stored}, precheckEvent("z", "1"))

	rows, err := st.conn.Query(ctx, "SELECT source, id, hash, cityHash64(concat(source, '\\0', id, '\\0', hash)) FROM events")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = rows.Close() }()
	n := 0
	for rows.Next() {
		var source, id, hash string
		var server uint64
		if err := rows.Scan(&source, &id, &hash, &server); err != nil {
			t.Fatal(err)
		}
		if got := digest(source, id, []byte(hash)); got != server {
			t.Errorf("digest of %s/%s = %d, the migration's backfill computes %d", source, id, got, server)
		}
		n++
	}
	if err := rows.Err(); err != nil || n != 5 {
		t.Fatalf("read %d stored events, want 5 (a, b, c, the racing b, z): %v", n, err)
	}
}

// TestWriteInChunks: a batch larger than insertChunkRows reaches every table whole, and written again is all
// duplicates.
func TestWriteInChunks(t *testing.T) {
	ctx := context.Background()
	st := openThrowaway(t)
	n := 2*insertChunkRows + 5
	batch := func() []*ingest.Event {
		events := make([]*ingest.Event, n)
		for i := range events {
			events[i] = precheckEvent(fmt.Sprintf("k%d", i), "1")
		}
		return events
	}
	for round, want := range []ingest.Outcome{ingest.Stored, ingest.Duplicate} {
		res, err := st.Write(ctx, batch(), nil)
		if err != nil {
			t.Fatal(err)
		}
		for i, o := range res.Outcomes {
			if o != want {
				t.Fatalf("round %d: event %d %v, want %v", round, i, o, want)
			}
		}
	}
	for table, key := range map[string]string{"events": "seq", "event_values": "seq", "event_digests": "kh"} {
		var rows, keys uint64
		if err := st.conn.QueryRow(ctx, "SELECT count(), uniqExact("+key+") FROM "+table).Scan(&rows, &keys); err != nil {
			t.Fatal(err)
		}
		if rows != uint64(n) || keys != uint64(n) {
			t.Errorf("%s: %d rows, %d distinct %s, want %d of each", table, rows, keys, key, n)
		}
	}
}
