package clickhouse

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/meterd/meterd/aggregate/instance"
)

// instancesLatest is the latest version of each instance: rows are appended, never updated, so the result does
// not depend on ReplacingMergeTree merges.
const instancesLatest = `SELECT instance_id, argMax(subject, version) AS subject, argMax(meter, version) AS meter, argMax(sku, version) AS sku,
argMax(status, version) AS status, argMax(started_ms, version) AS started_ms, argMax(released_ms, version) AS released_ms,
argMax(relate_pkg_instance, version) AS relate_pkg_instance, argMax(site, version) AS site, argMax(updated_ms, version) AS updated_ms,
max(version) AS ver FROM instances GROUP BY instance_id`

// ApplyInstance runs decide and writes its result (instance.Store). The decision and the write are one step
// within this process (a mutex); ClickHouse has no transactions, so one process per database registers instances.
// The history rows are written before the instance row, so an instance never shows a state its history lacks.
func (s *Store) ApplyInstance(ctx context.Context, id, subject, meterKey string, decide instance.Decider) (instance.Result, error) {
	s.imu.Lock()
	defer s.imu.Unlock()
	cur, versions, err := s.queryInstances(ctx, instancesWhere{id: id})
	if err != nil {
		return instance.Result{}, err
	}
	sameKey, _, err := s.queryInstances(ctx, instancesWhere{subject: subject, meter: meterKey, notID: id})
	if err != nil {
		return instance.Result{}, err
	}
	var current *instance.Instance
	var version int64
	if len(cur) == 1 {
		current = &cur[0]
		version = versions[0]
	}
	res, err := decide(current, sameKey)
	if err != nil || !res.Changed {
		return res, err
	}
	in := res.Instance
	if in.ID != id {
		return instance.Result{}, fmt.Errorf("apply instance %s: the decision is about instance %s", id, in.ID)
	}
	if current != nil {
		// The row's identity never changes after creation, whatever the decision says.
		in.Subject, in.Meter, in.SKU, in.StartedAt = current.Subject, current.Meter, current.SKU, current.StartedAt
	}
	if len(res.New) > 0 {
		var lastSeq int64
		if err := s.conn.QueryRow(ctx, `SELECT max(seq) FROM instance_changes`).Scan(&lastSeq); err != nil {
			return instance.Result{}, fmt.Errorf("read instance history sequence: %w", err)
		}
		if err := s.insert(ctx, `INSERT INTO instance_changes (instance_id, seq, at_ms, kind, recorded_ms)`, len(res.New), func(b driver.Batch, i int) error {
			c := res.New[i]
			return b.Append(id, lastSeq+int64(i)+1, c.At.UnixMilli(), string(c.Kind), c.RecordedAt.UnixMilli())
		}); err != nil {
			return instance.Result{}, fmt.Errorf("record changes of instance %s: %w", id, err)
		}
	}
	var released int64
	if !in.ReleasedAt.IsZero() {
		released = in.ReleasedAt.UnixMilli()
	}
	if err := s.insert(ctx, `INSERT INTO instances (instance_id, version, subject, meter, sku, status, started_ms, released_ms, relate_pkg_instance,
site, updated_ms)`, 1, func(b driver.Batch, _ int) error {
		return b.Append(id, version+1, in.Subject, in.Meter, in.SKU, string(in.Status), in.StartedAt.UnixMilli(), released, in.RelatePkgInstance,
			in.Site, in.UpdatedAt.UnixMilli())
	}); err != nil {
		return instance.Result{}, fmt.Errorf("write instance %s: %w", id, err)
	}
	return res, nil
}

// ListInstances returns the instances matching f with their histories (instance.Store).
func (s *Store) ListInstances(ctx context.Context, f instance.Filter) ([]instance.Instance, error) {
	out, _, err := s.queryInstances(ctx, instancesWhere{subject: f.Subject, meter: f.Meter, status: string(f.Status)})
	return out, err
}

// GetInstance returns one instance with its history (instance.Store).
func (s *Store) GetInstance(ctx context.Context, id string) (instance.Instance, bool, error) {
	out, _, err := s.queryInstances(ctx, instancesWhere{id: id})
	if err != nil || len(out) == 0 {
		return instance.Instance{}, false, err
	}
	return out[0], true, nil
}

// instancesWhere selects instances; empty fields match everything.
type instancesWhere struct {
	id, notID, subject, meter, status string
}

func (w instancesWhere) sql() (string, []any) {
	var conds []string
	var args []any
	add := func(cond, v string) {
		if v != "" {
			conds = append(conds, cond)
			args = append(args, v)
		}
	}
	add("instance_id = ?", w.id)
	add("instance_id != ?", w.notID)
	add("subject = ?", w.subject)
	add("meter = ?", w.meter)
	add("status = ?", w.status)
	if len(conds) == 0 {
		return "", nil
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

// queryInstances returns the selected instances with their histories and their row versions, ordered by
// subject, meter, started_at and id.
func (s *Store) queryInstances(ctx context.Context, w instancesWhere) ([]instance.Instance, []int64, error) {
	where, args := w.sql()
	rows, err := s.conn.Query(ctx, `SELECT instance_id, subject, meter, sku, status, started_ms, released_ms, relate_pkg_instance, site,
updated_ms, ver FROM (`+instancesLatest+`)`+where+` ORDER BY subject, meter, started_ms, instance_id`, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("read instances: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var out []instance.Instance
	var versions []int64
	index := map[string]int{}
	for rows.Next() {
		var in instance.Instance
		var status string
		var started, released, updated, version int64
		if err := rows.Scan(&in.ID, &in.Subject, &in.Meter, &in.SKU, &status, &started, &released, &in.RelatePkgInstance, &in.Site,
			&updated, &version); err != nil {
			return nil, nil, fmt.Errorf("read instance: %w", err)
		}
		in.Status = instance.Status(status)
		in.StartedAt, in.UpdatedAt = msTime(started), msTime(updated)
		if released != 0 {
			in.ReleasedAt = msTime(released)
		}
		index[in.ID] = len(out)
		out = append(out, in)
		versions = append(versions, version)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("read instances: %w", err)
	}
	if len(out) == 0 {
		return nil, nil, nil
	}
	// The same selection as a subquery, not a list of ids: with 100,000 instances a list would exceed
	// max_query_size.
	changes, err := s.conn.Query(ctx, `SELECT instance_id, at_ms, kind, recorded_ms FROM instance_changes WHERE instance_id IN
(SELECT instance_id FROM (`+instancesLatest+`)`+where+`) ORDER BY seq`, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("read instance changes: %w", err)
	}
	defer func() { _ = changes.Close() }()
	for changes.Next() {
		var id, kind string
		var at, recorded int64
		if err := changes.Scan(&id, &at, &kind, &recorded); err != nil {
			return nil, nil, fmt.Errorf("read instance change: %w", err)
		}
		if i, ok := index[id]; ok {
			out[i].Changes = append(out[i].Changes, instance.Change{At: msTime(at), Kind: instance.ChangeKind(kind), RecordedAt: msTime(recorded)})
		}
	}
	if err := changes.Err(); err != nil {
		return nil, nil, fmt.Errorf("read instance changes: %w", err)
	}
	return out, versions, nil
}

func msTime(ms int64) time.Time { return time.UnixMilli(ms).UTC() }
