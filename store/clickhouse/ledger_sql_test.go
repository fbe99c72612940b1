package clickhouse

import (
	"strings"
	"testing"
	"time"

	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/bill"
)

// Every read of an SDR is the first stored copy of its sdrs row joined with its current state, the row with the
// greatest (epoch, version); hour conditions go to both sides so that each reads only those hours.
func TestSDRsSQL(t *testing.T) {
	h := time.Date(2026, 11, 20, 3, 0, 0, 0, time.UTC)
	q, args := sdrsSQL(sdrWhere{from: 1, to: 2, instanceID: "i-1", states: []report.State{report.Pending, report.Sent}, due: true,
		dueBy: 99, limit: 10})
	want := sdrSelect + " FROM sdrs ALL INNER JOIN (SELECT metering_sn, " + stateAgg + " FROM sdr_states WHERE hour_ms >= ? AND hour_ms < ?" +
		" GROUP BY metering_sn HAVING st_state IN (?, ?) AND st_next <= ?) USING metering_sn WHERE hour_ms >= ? AND hour_ms < ?" +
		" AND instance_id = ? ORDER BY hour_ms, instance_id, revision, created_ms LIMIT 1 BY metering_sn LIMIT ?"
	if q != want {
		t.Errorf("sql\n got %s\nwant %s", q, want)
	}
	wantArgs := []any{int64(1), int64(2), "PENDING", "SENT", int64(99), int64(1), int64(2), "i-1", 10}
	if len(args) != len(wantArgs) {
		t.Fatalf("args %v", args)
	}
	for i := range args {
		if args[i] != wantArgs[i] {
			t.Errorf("arg %d = %v, want %v", i, args[i], wantArgs[i])
		}
	}
	// The fencing: every current-state read ranks rows by (epoch, version), never by version alone.
	for _, q := range []string{stateAgg, pushableHoursSQL, currentStateOf(""), periodUsageSQL, oldestUnacceptedSQL, compactOpenSQL} {
		if strings.Count(q, "argMax(") != strings.Count(q, ", (epoch, version))") {
			t.Errorf("a current state not ranked by (epoch, version): %s", q)
		}
	}

	// The push's read: only the SDRs in the open index, through each table's sorting key.
	q, args = sdrsSQL(sdrWhere{hours: []int64{h.UnixMilli()}, open: true, states: []report.State{report.Pending}})
	want = sdrSelect + " FROM sdrs ALL INNER JOIN (SELECT metering_sn, " + stateAgg + " FROM sdr_states WHERE hour_ms IN (?)" +
		" AND (hour_ms, metering_sn) IN (SELECT hour_ms, metering_sn FROM sdr_open) GROUP BY metering_sn HAVING st_state IN (?))" +
		" USING metering_sn WHERE hour_ms IN (?) AND (hour_ms, metering_sn) IN (SELECT hour_ms, metering_sn FROM sdr_open)" +
		" AND (hour_ms, instance_id) IN (SELECT hour_ms, instance_id FROM sdr_open)" +
		" ORDER BY hour_ms, instance_id, revision, created_ms LIMIT 1 BY metering_sn"
	if q != want || len(args) != 3 {
		t.Errorf("open\n got %s %v\nwant %s", q, args, want)
	}
	if !strings.Contains(pushableHoursSQL, "FROM sdr_states\nWHERE "+inOpenIndex+" GROUP BY") {
		t.Errorf("pushable hours not read through the open index: %s", pushableHoursSQL)
	}

	q, args = sdrsSQL(sdrWhere{hours: []int64{h.UnixMilli()}, periods: []bill.Period{{InstanceID: "i-2", Begin: h.Add(20 * time.Minute),
		End: h.Add(time.Hour)}}})
	want = sdrSelect + " FROM sdrs ALL INNER JOIN (SELECT metering_sn, " + stateAgg + " FROM sdr_states WHERE hour_ms IN (?)" +
		" GROUP BY metering_sn) USING metering_sn WHERE hour_ms IN (?) AND (instance_id, hour_ms, begin_ms, end_ms) IN ((?, ?, ?, ?))" +
		" ORDER BY hour_ms, instance_id, revision, created_ms LIMIT 1 BY metering_sn"
	if q != want || len(args) != 6 || args[3] != h.UnixMilli() || args[4] != h.Add(20*time.Minute).UnixMilli() {
		t.Errorf("periods\n got %s %v\nwant %s", q, args, want)
	}
}

func TestStatesBySNSQL(t *testing.T) {
	h := time.Date(2026, 11, 20, 3, 0, 0, 0, time.UTC)
	a, b := report.MeteringSN("i-1", h, 0), report.MeteringSN("i-2", h.Add(time.Hour), 2)
	q, args := statesBySNSQL([]string{a, b})
	want := "SELECT metering_sn, " + stateAgg + " FROM sdr_states WHERE hour_ms IN (?, ?) AND metering_sn IN (?, ?) GROUP BY metering_sn"
	if q != want || len(args) != 4 || args[0] != h.UnixMilli() || args[1] != h.Add(time.Hour).UnixMilli() || args[3] != b {
		t.Errorf("got %s %v", q, args)
	}
	// A number not made by report.MeteringSN: every hour is read.
	q, args = statesBySNSQL([]string{a, "other"})
	if want := "SELECT metering_sn, " + stateAgg + " FROM sdr_states WHERE metering_sn IN (?, ?) GROUP BY metering_sn"; q != want || len(args) != 2 {
		t.Errorf("got %s %v", q, args)
	}
}

// snHours must read the hour report.MeteringSN puts in a number, whatever the instance id and revision.
func TestSNHours(t *testing.T) {
	h := time.Date(2026, 1, 2, 23, 0, 0, 0, time.UTC)
	sns := []string{report.MeteringSN("a very long instance id "+strings.Repeat("x", 100), h, 0), report.MeteringSN("i", h, 17),
		report.MeteringSN("i", h.Add(-time.Hour), 1)}
	hours, ok := snHours(sns)
	if !ok || len(hours) != 2 || hours[0] != h.Add(-time.Hour).UnixMilli() || hours[1] != h.UnixMilli() {
		t.Errorf("hours %v %v", hours, ok)
	}
	for _, bad := range []string{"", "m2026010223", "x2026010223-r0-00000000000000000000000000000000", "m2026019923-r0-00000000000000000000000000000000",
		"m2026010223-r0-0000000000000000000000000000000"} {
		if _, ok := snHours([]string{bad}); ok {
			t.Errorf("%q read as a metering_sn", bad)
		}
	}
}

func TestUnbuiltSQL(t *testing.T) {
	h := time.Date(2026, 11, 20, 3, 0, 0, 0, time.UTC)
	q, args := unbuiltSQL(5, h, "i-9", 100)
	want := "SELECT " + rowColumns + " FROM usage_hours WHERE " + committed + " AND hour_ms >= ?\n" +
		"AND (hour_ms > ? OR (hour_ms = ? AND instance_id > ?)) AND usage_value != 0\n" +
		"AND (instance_id, hour_ms) NOT IN (SELECT instance_id, hour_ms FROM sdrs WHERE hour_ms >= ?)\n" +
		"ORDER BY hour_ms, instance_id LIMIT ?"
	if q != want || len(args) != 6 || args[0] != int64(5) || args[1] != h.UnixMilli() || args[3] != "i-9" || args[4] != int64(5) {
		t.Errorf("got %s %v", q, args)
	}
	if _, args := unbuiltSQL(0, time.Time{}, "", 1); args[1] != int64(-1)<<62 {
		t.Errorf("from the start: %v", args)
	}
}
