package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/meterd/meterd/aggregate/instance"
)

var _ instance.Store = (*Store)(nil)

const (
	instanceColumns = `instance_id, subject, meter, sku, status, started_ms, released_ms, relate_pkg_instance, site, updated_ms`
	// The upsert never touches subject, meter, sku or started_ms of an existing row: the lifecycle refuses to
	// change them, and the store does not rely on that alone.
	sqlUpsertInstance = `INSERT INTO instances (` + instanceColumns + `) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (instance_id) DO UPDATE SET status = excluded.status, released_ms = excluded.released_ms,
relate_pkg_instance = excluded.relate_pkg_instance, site = excluded.site, updated_ms = excluded.updated_ms`
	sqlInsertChange = `INSERT INTO instance_changes (instance_id, at_ms, kind, recorded_ms) VALUES (?, ?, ?, ?)`
)

// instanceQueryer is what reading instances needs: a transaction or a connection pool.
type instanceQueryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// ApplyInstance runs decide in one write transaction (instance.Store). The write connection BEGINs IMMEDIATE,
// so the transaction holds SQLite's write lock from its first statement: the rows decide sees cannot change
// before the commit, whether the other writer is this process (the ingest writer shares the connection and waits
// for it) or another one (busy_timeout makes it wait at BEGIN).
func (s *Store) ApplyInstance(ctx context.Context, id, subject, meterKey string, decide instance.Decider) (instance.Result, error) {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return instance.Result{}, fmt.Errorf("begin instance transaction: %w", err)
	}
	defer func() { _ = tx.Rollback() }() // no-op after Commit
	cur, err := queryInstances(ctx, tx, instancesWhere{id: id})
	if err != nil {
		return instance.Result{}, err
	}
	sameKey, err := queryInstances(ctx, tx, instancesWhere{subject: subject, meter: meterKey, notID: id})
	if err != nil {
		return instance.Result{}, err
	}
	var current *instance.Instance
	if len(cur) == 1 {
		current = &cur[0]
	}
	res, err := decide(current, sameKey)
	if err != nil || !res.Changed {
		return res, err
	}
	in := res.Instance
	if in.ID != id {
		return instance.Result{}, fmt.Errorf("apply instance %s: the decision is about instance %s", id, in.ID)
	}
	if _, err := tx.ExecContext(ctx, sqlUpsertInstance, in.ID, in.Subject, in.Meter, in.SKU, string(in.Status),
		in.StartedAt.UnixMilli(), instanceMillisOrNull(in.ReleasedAt), instanceTextOrNull(in.RelatePkgInstance), instanceTextOrNull(in.Site),
		in.UpdatedAt.UnixMilli()); err != nil {
		return instance.Result{}, fmt.Errorf("write instance %s: %w", id, err)
	}
	for _, c := range res.New {
		if _, err := tx.ExecContext(ctx, sqlInsertChange, id, c.At.UnixMilli(), string(c.Kind), c.RecordedAt.UnixMilli()); err != nil {
			return instance.Result{}, fmt.Errorf("record %s of instance %s: %w", c.Kind, id, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return instance.Result{}, fmt.Errorf("commit instance %s: %w", id, err)
	}
	return res, nil
}

// ListInstances returns the instances matching f with their histories (instance.Store), read in one
// transaction so that the rows and their histories are one snapshot.
func (s *Store) ListInstances(ctx context.Context, f instance.Filter) ([]instance.Instance, error) {
	return s.readInstances(ctx, instancesWhere{subject: f.Subject, meter: f.Meter, status: string(f.Status)})
}

// GetInstance returns one instance with its history (instance.Store).
func (s *Store) GetInstance(ctx context.Context, id string) (instance.Instance, bool, error) {
	out, err := s.readInstances(ctx, instancesWhere{id: id})
	if err != nil || len(out) == 0 {
		return instance.Instance{}, false, err
	}
	return out[0], true, nil
}

func (s *Store) readInstances(ctx context.Context, w instancesWhere) ([]instance.Instance, error) {
	tx, err := s.read.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("begin instance read: %w", err)
	}
	out, err := queryInstances(ctx, tx, w)
	return out, errors.Join(err, tx.Rollback())
}

// instancesWhere selects instances; empty fields match everything.
type instancesWhere struct {
	id, notID, subject, meter, status string
}

// sql returns the WHERE clause (empty when w selects everything) and its arguments.
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
	add("instance_id <> ?", w.notID)
	add("subject = ?", w.subject)
	add("meter = ?", w.meter)
	add("status = ?", w.status)
	if len(conds) == 0 {
		return "", nil
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

// instancesQueries returns the query of the instances selected by w and the query of their histories, with
// their arguments.
func instancesQueries(w instancesWhere) (rowsSQL, changesSQL string, args []any) {
	where, args := w.sql()
	rowsSQL = `SELECT ` + instanceColumns + ` FROM instances` + where + ` ORDER BY subject, meter, started_ms, instance_id`
	changesSQL = `SELECT instance_id, at_ms, kind, recorded_ms FROM instance_changes WHERE instance_id IN (SELECT instance_id FROM instances` +
		where + `) ORDER BY seq`
	return rowsSQL, changesSQL, args
}

func queryInstances(ctx context.Context, q instanceQueryer, w instancesWhere) ([]instance.Instance, error) {
	rowsSQL, changesSQL, args := instancesQueries(w)
	rows, err := q.QueryContext(ctx, rowsSQL, args...)
	if err != nil {
		return nil, fmt.Errorf("read instances: %w", err)
	}
	defer rows.Close()
	var out []instance.Instance
	index := map[string]int{}
	for rows.Next() {
		var in instance.Instance
		var status string
		var started, updated int64
		var released sql.NullInt64
		var relate, site sql.NullString
		if err := rows.Scan(&in.ID, &in.Subject, &in.Meter, &in.SKU, &status, &started, &released, &relate, &site, &updated); err != nil {
			return nil, fmt.Errorf("read instance: %w", err)
		}
		in.Status = instance.Status(status)
		in.StartedAt, in.UpdatedAt = instanceTime(started), instanceTime(updated)
		if released.Valid {
			in.ReleasedAt = instanceTime(released.Int64)
		}
		in.RelatePkgInstance, in.Site = relate.String, site.String
		index[in.ID] = len(out)
		out = append(out, in)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read instances: %w", err)
	}
	if len(out) == 0 {
		return nil, nil
	}
	changes, err := q.QueryContext(ctx, changesSQL, args...)
	if err != nil {
		return nil, fmt.Errorf("read instance changes: %w", err)
	}
	defer changes.Close()
	for changes.Next() {
		var id, kind string
		var at, recorded int64
		if err := changes.Scan(&id, &at, &kind, &recorded); err != nil {
			return nil, fmt.Errorf("read instance change: %w", err)
		}
		if i, ok := index[id]; ok {
			out[i].Changes = append(out[i].Changes, instance.Change{At: instanceTime(at), Kind: instance.ChangeKind(kind), RecordedAt: instanceTime(recorded)})
		}
	}
	if err := changes.Err(); err != nil {
		return nil, fmt.Errorf("read instance changes: %w", err)
	}
	return out, nil
}

func instanceTime(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

func instanceMillisOrNull(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMilli()
}

func instanceTextOrNull(s string) any {
	if s == "" {
		return nil
	}
	return s
}
