package bill

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/koogallery"
)

const fuzzHeader = "metering_sn,instance_id,begin_time,end_time,usage_value,amount,status\n"

// FuzzImport feeds arbitrary bytes to the export parser: it must never panic, must refuse with a FormatError on a
// line that exists, and whatever it accepts must be rows it can match, on increasing lines, with no negative usage.
func FuzzImport(f *testing.F) {
	for _, seed := range []string{
		fuzzHeader + "m1,i1,20261120T000000Z,20261120T010000Z,1.5,0.45,SUCCESS\n",
		fuzzHeader + ",i1,2026-11-20T08:00:00+08:00,2026-11-20T09:00:00+08:00,1.5,0.45,ABNORMAL\n",
		"\ufeffMETERING_SN ,Amount,usage_value\nm1,1e3,0\nm2,\"1.0\",2\n",
		fuzzHeader + "m1,i1,x,y,-1,abc,\n",
		fuzzHeader + "\"m1\nm2\",i1,,,1,1,\n",
		fuzzHeader + "m1,i1,,,1,1,\nm1,i1,,,1,1,\n",
		"a,b\n\"unterminated\n",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		sh, err := parse(bytes.NewReader(data), DefaultColumns(), []string{"ABNORMAL"})
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("not a FormatError: %v", err)
			}
			if fe.Line < 1 || fe.Line > bytes.Count(data, []byte("\n"))+1 {
				t.Fatalf("line %d of a %d-line file: %v", fe.Line, bytes.Count(data, []byte("\n"))+1, err)
			}
			return
		}
		if len(sh.abnormal) != len(sh.rows) {
			t.Fatalf("%d rows, %d abnormal flags", len(sh.rows), len(sh.abnormal))
		}
		last := 1
		for _, row := range sh.rows {
			if row.Line <= last {
				t.Fatalf("row on line %d after line %d", row.Line, last)
			}
			last = row.Line
			if row.MeteringSN == "" && (row.InstanceID == "" || row.Begin.IsZero() || row.End.IsZero()) {
				t.Fatalf("line %d cannot be matched: %+v", row.Line, row)
			}
			if row.Usage.Sign() < 0 {
				t.Fatalf("line %d: negative usage %s", row.Line, row.Usage)
			}
		}
	})
}

func TestPick(t *testing.T) {
	rev := func(n int, st report.State) report.SDR {
		return report.SDR{MeteringSN: string(rune('a' + n)), Revision: n, State: st}
	}
	tests := []struct {
		name     string
		revs     []report.SDR
		abnormal bool
		want     string // metering_sn, "" for none
	}{
		{"none", nil, false, ""},
		{"one", []report.SDR{rev(0, report.Accepted)}, false, "a"},
		{"live revision", []report.SDR{rev(0, report.AsyncRejected), rev(1, report.Accepted)}, false, "b"},
		{"billed revision before a newer pending one", []report.SDR{rev(0, report.Billed), rev(1, report.Pending)}, false, "a"},
		{"re-report not accepted yet", []report.SDR{rev(1, report.Sent), rev(0, report.AsyncRejected)}, false, "b"},
		{"abnormal, first time", []report.SDR{rev(0, report.Accepted)}, true, "a"},
		{"abnormal, already handled", []report.SDR{rev(1, report.Accepted), rev(0, report.AsyncRejected)}, true, "a"},
	}
	for _, tt := range tests {
		got := pick(tt.revs, tt.abnormal)
		if (got == nil) != (tt.want == "") || (got != nil && got.MeteringSN != tt.want) {
			t.Errorf("%s: got %+v, want %q", tt.name, got, tt.want)
		}
	}
}

func TestValueForm(t *testing.T) {
	tests := []struct {
		body     string
		fallback koogallery.ValueAs
		want     koogallery.ValueAs
	}{
		{`{"usage_value":"1.5"}`, koogallery.ValueAsNumber, koogallery.ValueAsString},
		{`{"usage_value":1.5}`, koogallery.ValueAsString, koogallery.ValueAsNumber},
		{``, koogallery.ValueAsString, koogallery.ValueAsString},
		{`{}`, "", koogallery.ValueAsNumber},
	}
	for _, tt := range tests {
		if got := valueForm([]byte(tt.body), tt.fallback); got != tt.want {
			t.Errorf("valueForm(%s, %s) = %s, want %s", tt.body, tt.fallback, got, tt.want)
		}
	}
}

// fakeStore records the changes Import asks for.
type fakeStore struct {
	sdrs    []report.SDR
	changes []Change
}

func (f *fakeStore) SDRsByMeteringSN(_ context.Context, sns []string) ([]report.SDR, error) {
	var out []report.SDR
	for _, d := range f.sdrs {
		for _, sn := range sns {
			if d.MeteringSN == sn {
				out = append(out, d)
			}
		}
	}
	return out, nil
}

func (f *fakeStore) SDRsByPeriod(context.Context, []Period) ([]report.SDR, error) { return nil, nil }

func (f *fakeStore) ListSDRs(context.Context, report.SDRFilter) ([]report.SDR, error) {
	return nil, nil
}

func (f *fakeStore) ApplyBill(_ context.Context, _ Source, changes []Change) (Applied, error) {
	f.changes = changes
	return Applied{}, nil
}

// TestImportAsksOnlyForAcceptedSDRs: lines for SDRs in any state but ACCEPTED are compared but ask for no change
// (the store checks again in its transaction).
func TestImportAsksOnlyForAcceptedSDRs(t *testing.T) {
	hour := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	var csv strings.Builder
	csv.WriteString(fuzzHeader)
	st := &fakeStore{}
	for _, state := range report.States {
		for _, status := range []string{"SUCCESS", "abnormal"} {
			d := report.SDR{InstanceID: "i-" + string(state), Hour: hour, Begin: hour, End: hour.Add(time.Hour), RecordTime: hour.Add(time.Hour),
				UsageValue: decimal.NewFromInt(1), Amount: decimal.RequireFromString("0.3"), State: state}
			d.MeteringSN = report.MeteringSN(d.InstanceID+status, hour, 0)
			st.sdrs = append(st.sdrs, d)
			csv.WriteString(d.MeteringSN + ",,,,1,0.3," + status + "\n")
		}
	}
	path := filepath.Join(t.TempDir(), "b.csv")
	if err := os.WriteFile(path, []byte(csv.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := Import(context.Background(), st, path, "", Options{AbnormalStatuses: []string{"ABNORMAL"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Matched != 2*len(report.States) || len(st.changes) != 2 {
		t.Fatalf("matched %d, changes %+v", res.Matched, st.changes)
	}
	for _, c := range st.changes {
		var d report.SDR
		for _, s := range st.sdrs {
			if s.MeteringSN == c.MeteringSN {
				d = s
			}
		}
		if d.State != report.Accepted || (c.To == report.AsyncRejected) != (c.Next != nil) {
			t.Errorf("change %+v for a %s SDR", c, d.State)
		}
	}
}
