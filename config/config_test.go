package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"go.yaml.in/yaml/v3"
)

// noEnv is a lookup that finds nothing, so the machine's environment cannot change what a test loads.
func noEnv(string) (string, bool) { return "", false }

// envOf is a lookup over a fixed set of variables.
func envOf(vars map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
}

// problemLines returns the problems of a Load error, one per line, without the "config FILE:" header line that
// Load puts before Validate's list.
func problemLines(err error) []string {
	lines := strings.Split(err.Error(), "\n")
	if len(lines) > 1 && strings.HasPrefix(lines[0], "config ") && strings.HasSuffix(lines[0], ":") {
		lines = lines[1:]
	}
	return lines
}

// checkProblems asserts that the error lists exactly the wanted problems, in any order: each line of the error
// contains one wanted substring and each wanted substring is on its own line. Extra problems fail the test too,
// so a file meant to show one mistake cannot hide a second.
func checkProblems(t *testing.T, err error, want []string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %d problems:\n%s", len(want), strings.Join(want, "\n"))
	}
	lines := problemLines(err)
	used := make([]bool, len(lines))
	for _, w := range want {
		found := false
		for i, l := range lines {
			if !used[i] && strings.Contains(l, w) {
				used[i], found = true, true
				break
			}
		}
		if !found {
			t.Errorf("error lacks %q; got:\n%v", w, err)
		}
	}
	for i, l := range lines {
		if !used[i] {
			t.Errorf("unexpected problem %q; whole error:\n%v", l, err)
		}
	}
}

func dur(s string) Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		panic(err)
	}
	return Duration{Duration: d}
}

const warnNoEndpoint = "koogallery.endpoint: not set: pushing is disabled"

// TestLoadFiles is the table of good and bad config files under testdata: each good file loads with the values it
// sets, each bad one fails naming the key path and the reason of every problem, and of nothing else.
func TestLoadFiles(t *testing.T) {
	tests := []struct {
		file     string
		wantErr  []string // one entry per expected problem line; empty: the file is valid
		wantWarn []string
		check    func(t *testing.T, c *Config)
	}{
		{file: "good/empty.yaml", wantWarn: []string{warnNoEndpoint}, check: checkDefaults},
		{file: "good/comments_only.yaml", wantWarn: []string{warnNoEndpoint}, check: checkDefaults},
		{file: "good/full.yaml", wantWarn: []string{warnNoEndpoint}, check: checkFull},
		{file: "good/listen_any_with_tokens.yaml", wantWarn: []string{warnNoEndpoint}, check: func(t *testing.T, c *Config) {
			if c.Listen != "0.0.0.0:8080" || c.Ingest.TokensFile != "testdata/tokens.txt" {
				t.Errorf("listen %q tokens_file %q", c.Listen, c.Ingest.TokensFile)
			}
		}},
		{file: "good/close_delay_short.yaml",
			wantWarn: []string{"schedule.close_delay: 30s is below 1m"}}, // an endpoint is set: no pushing warning
		{file: "good/dedup_horizon_exact.yaml", wantWarn: []string{warnNoEndpoint}},
		{file: "good/reconcile.yaml", wantWarn: []string{warnNoEndpoint}, check: func(t *testing.T, c *Config) {
			want := Reconcile{BillColumns: BillColumns{MeteringSN: "SDR No.", InstanceID: "Resource ID", BeginTime: "Start Time",
				EndTime: "End Time", Usage: "Usage", Amount: "Amount (CNY)", Status: ""},
				AmountTolerance: "0", AbnormalStatuses: []string{"Abnormal", "Failed"}}
			if !reflect.DeepEqual(c.Reconcile, want) {
				t.Errorf("reconcile\n got %+v\nwant %+v", c.Reconcile, want)
			}
		}},
		{file: "good/reconcile_by_period.yaml", wantWarn: []string{warnNoEndpoint}, check: func(t *testing.T, c *Config) {
			want := Default().Reconcile
			want.BillColumns.MeteringSN, want.BillColumns.InstanceID = "", "resource_id"
			if !reflect.DeepEqual(c.Reconcile, want) {
				t.Errorf("reconcile\n got %+v\nwant %+v", c.Reconcile, want)
			}
		}},

		{file: "bad/unknown_key.yaml", wantErr: []string{"line 4: field colse_delay not found"}},
		{file: "bad/type_errors.yaml", wantErr: []string{
			"line 2: cannot unmarshal !!str `lots` into int",
			"line 4: cannot unmarshal !!seq into int",
		}},
		{file: "bad/two_documents.yaml", wantErr: []string{"more than one YAML document"}},
		{file: "bad/bad_duration.yaml", wantErr: []string{`schedule.close_delay: "abc" is not a duration`}},
		{file: "bad/push_budget_too_large.yaml",
			wantErr: []string{"schedule.push_budget: 12m0s leaves no time to close: deadline - push_budget must be >= close_delay (5m0s)"}},
		{file: "bad/deadline_before_close_delay.yaml",
			wantErr: []string{"schedule.deadline: 5m0s must be >= schedule.close_delay (10m0s)"}},
		{file: "bad/late_policy_unknown.yaml", wantErr: []string{`schedule.late_policy: "later" must be carry or drop`}},
		{file: "bad/batch_size_zero.yaml", wantErr: []string{"koogallery.batch_size: 0 must be from 1 to 1000"}},
		{file: "bad/batch_size_1001.yaml", wantErr: []string{"koogallery.batch_size: 1001 must be from 1 to 1000"}},
		{file: "bad/usage_value_as_bad.yaml",
			wantErr: []string{`koogallery.usage_value_as: "float" must be number or string`}},
		{file: "bad/max_body_bad.yaml", wantErr: []string{`ingest.max_body: "10 parsecs" is not a size`}},
		{file: "bad/dedup_horizon_short.yaml", wantErr: []string{
			"ingest.max_event_age: 503h0m0s: the dedup horizon (max_event_age + max_future_skew) must be at least 21 days"}},
		{file: "bad/listen_any_without_tokens.yaml",
			wantErr: []string{`listen: "0.0.0.0:8080" is reachable beyond loopback: set ingest.tokens_file`}},
		{file: "bad/listen_all_interfaces_without_tokens.yaml",
			wantErr: []string{`listen: ":8080" is reachable beyond loopback`}},
		{file: "bad/tokens_file_missing.yaml",
			wantErr: []string{"ingest.tokens_file: stat testdata/no-such-tokens.txt: no such file"}},
		{file: "bad/store_driver_unknown.yaml", wantErr: []string{`store.driver: "postgres" must be sqlite or clickhouse`}},
		{file: "bad/kafka_brokers.yaml", wantErr: []string{`kafka.brokers: Kafka ingest needs store.driver clickhouse (collectors write to ClickHouse); store.driver is "sqlite"`}},
		{file: "bad/meter_count_with_value.yaml",
			wantErr: []string{"meters[0].value_property: COUNT meters count events and take no value"}},
		{file: "bad/meter_sum_without_value.yaml", wantErr: []string{"meters[0].value_property: required for SUM"}},
		{file: "bad/meter_aggregation_unknown.yaml", wantErr: []string{`meters[0].aggregation: unknown "AVG"`}},
		{file: "bad/meter_bad_jsonpath.yaml", wantErr: []string{
			`meters[0].value_property: "$.tokens[" is not a valid JSONPath`,
			`meters[1].value_property: "tokens" must be a JSONPath starting with $`,
			`meters[2].value_property: "$..tokens" must select exactly one value`,
		}},
		{file: "bad/meter_duplicate_key.yaml", wantErr: []string{`meters[1].key: duplicate meter key "tokens"`}},
		{file: "bad/plan_unknown_meter.yaml", wantErr: []string{`plans[0].meter: "tokens" is not a configured meter`}},
		{file: "bad/plan_bad_brackets.yaml", wantErr: []string{
			"plans[1].brackets[1].up_to: must be greater than 3 (brackets ascend strictly)",
			"plans[1].brackets[2].unit_price: must not be negative",
			`plans[1].brackets[2].up_to: "abc": not a decimal number`,
			"plans[1].brackets[3].up_to: the last bracket must be open-ended",
		}},
		{file: "bad/instance_bad.yaml", wantErr: []string{
			`instances[0].sku: "NOPE" has no plan`,
			`instances[1].meter: "nope" is not a configured meter`,
			`instances[2].started_at: "yesterday" is not an RFC 3339 time`,
			"instances[3].released_at: required when status is RELEASED",
			`instances[4].sku: "OFFI-TOKENS" prices meter "tokens", not the instance's meter "api_calls"`,
			`instances[5].instance_id: "i-unknown-meter" already defined at instances[1]`,
			`instances[5].status: "PAUSED" must be ACTIVE, FROZEN or RELEASED`,
			"instances[5].released_at: 2026-10-01T00:00:00Z must be after started_at",
		}},
		{file: "bad/reconcile_bad.yaml", wantErr: []string{
			`reconcile.amount_tolerance: "x" is not a decimal`,
			"reconcile.abnormal_statuses[1]: must not be empty",
			`reconcile.bill_columns.amount: "amount" is already the column of usage`,
		}},
		{file: "bad/reconcile_no_match_columns.yaml", wantErr: []string{
			`reconcile.amount_tolerance: "-0.01" must not be negative`,
			"reconcile.bill_columns: rows cannot be matched: name the metering_sn column, or the instance_id, begin_time and end_time columns",
		}},
		{file: "bad/site_unknown.yaml", wantErr: []string{
			`koogallery.sites.cn.endpoint: "not a url" must be a full http(s) URL`,
			`instances[0].site: "eu" is not in koogallery.sites`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			path := filepath.Join("testdata", tt.file)
			c, warnings, err := Load(path, noEnv)
			if len(tt.wantErr) > 0 {
				checkProblems(t, err, tt.wantErr)
				if err != nil && !strings.Contains(err.Error(), path) {
					t.Errorf("error does not name the file %s: %v", path, err)
				}
				if c != nil || warnings != nil {
					t.Errorf("a bad config returned config %v and warnings %q", c != nil, warnings)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if len(warnings) != len(tt.wantWarn) {
				t.Errorf("warnings %q, want %d matching %q", warnings, len(tt.wantWarn), tt.wantWarn)
			}
			for _, w := range tt.wantWarn {
				if !slices.ContainsFunc(warnings, func(s string) bool { return strings.Contains(s, w) }) {
					t.Errorf("warnings %q lack %q", warnings, w)
				}
			}
			if c.MeterSet() == nil || c.Catalog() == nil {
				t.Error("a valid config has no meter set or catalog")
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

// checkDefaults asserts that a file setting nothing gives Default(), and that Default() holds DESIGN.md §3's values.
func checkDefaults(t *testing.T, c *Config) {
	t.Helper()
	got := *c
	got.meters, got.catalog = nil, nil
	if !reflect.DeepEqual(got, Default()) {
		t.Errorf("empty file: got %+v, want Default() %+v", got, Default())
	}
	d := Default()
	checks := []struct {
		name      string
		got, want any
	}{
		{"koogallery.batch_size", d.KooGallery.BatchSize, 1000},
		{"koogallery.usage_value_as", d.KooGallery.UsageValueAs, "number"},
		{"koogallery.timeout", d.KooGallery.Timeout.Duration, 10 * time.Second},
		{"koogallery.endpoint", d.KooGallery.Endpoint, ""},
		{"schedule.close_delay", d.Schedule.CloseDelay.Duration, 5 * time.Minute},
		{"schedule.deadline", d.Schedule.Deadline.Duration, 15 * time.Minute},
		{"schedule.late_policy", d.Schedule.LatePolicy, "carry"},
		{"push.retry_initial", d.Push.RetryInitial.Duration, 2 * time.Second},
		{"push.retry_max", d.Push.RetryMax.Duration, time.Minute},
		{"listen", d.Listen, "127.0.0.1:8080"},
		{"ingest.max_body", d.Ingest.MaxBody.Bytes, int64(10 << 20)},
		{"ingest.tokens_file", d.Ingest.TokensFile, ""},
		{"ingest.max_event_age", d.Ingest.MaxEventAge.Duration, 21 * 24 * time.Hour},
		{"ingest.max_future_skew", d.Ingest.MaxFutureSkew.Duration, 5 * time.Minute},
		{"store.driver", d.Store.Driver, "sqlite"},
		{"store.sqlite.path", d.Store.SQLite.Path, "./meterd-data/meterd.db"},
		{"kafka.brokers", len(d.Kafka.Brokers), 0},
		{"kafka.topic", d.Kafka.Topic, "usage-events"},
		{"kafka.group_id", d.Kafka.GroupID, "meterd-collectors"},
		{"kafka.dlq_topic", d.Kafka.DLQTopic, "usage-events-dlq"},
		{"reconcile.bill_columns", d.Reconcile.BillColumns, BillColumns{MeteringSN: "metering_sn", InstanceID: "instance_id",
			BeginTime: "begin_time", EndTime: "end_time", Usage: "usage_value", Amount: "amount", Status: "status"}},
		{"reconcile.amount_tolerance", d.Reconcile.AmountTolerance, "0.01"},
		{"reconcile.abnormal_statuses", strings.Join(d.Reconcile.AbnormalStatuses, ","), "ABNORMAL,FAILED,REJECTED"},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("default %s = %v, want %v (DESIGN.md §3)", ck.name, ck.got, ck.want)
		}
	}
}

// checkFull asserts the values of good/full.yaml, including the derived meter set and plan catalog.
func checkFull(t *testing.T, c *Config) {
	t.Helper()
	if got := len(c.Meters); got != 4 {
		t.Errorf("%d meters, want 4", got)
	}
	if m, ok := c.MeterSet().Get("tokens"); !ok || m.Aggregation != "SUM" || m.ValueProperty != "$.tokens" {
		t.Errorf("meter tokens = %+v, %v", m, ok)
	}
	if ms := c.MeterSet().ForType("api_call"); len(ms) != 1 || ms[0].Key != "api_calls" {
		t.Errorf("meters for api_call: %+v", ms)
	}
	if got, want := c.Catalog().SKUs(), []string{"OFFI-CALLS", "OFFI-STORAGE", "OFFI-TOKENS"}; !slices.Equal(got, want) {
		t.Errorf("SKUs %v, want %v", got, want)
	}
	at := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	step, err := c.Catalog().Plan("OFFI-TOKENS", at)
	if err != nil {
		t.Fatal(err)
	}
	if step.Mode != "step" || step.Accumulation != "month" || step.Location.String() != "Asia/Shanghai" ||
		!step.UnitScale.Equal(decimal.RequireFromString("0.001")) || step.Currency != "CNY" {
		t.Errorf("OFFI-TOKENS plan %+v", step)
	}
	if _, err := c.Catalog().Plan("OFFI-TOKENS", time.Date(2026, 10, 31, 0, 0, 0, 0, time.UTC)); err == nil {
		t.Error("OFFI-TOKENS is in effect before its effective_from")
	}
	tier, err := c.Catalog().Plan("OFFI-CALLS", at)
	if err != nil {
		t.Fatal(err)
	}
	// Unquoted numbers in YAML arrive as the text written, so 0.008 is exact.
	if tier.Mode != "tier" || len(tier.Brackets) != 3 || !tier.Brackets[0].UpTo.Equal(decimal.NewFromInt(1000)) ||
		tier.Brackets[1].UnitPrice.String() != "0.008" || !tier.Brackets[2].Open {
		t.Errorf("OFFI-CALLS plan %+v", tier)
	}
	fixed, err := c.Catalog().Plan("OFFI-STORAGE", at)
	if err != nil {
		t.Fatal(err)
	}
	if fixed.Mode != "fixed" || fixed.UnitPrice.String() != "0.5" {
		t.Errorf("OFFI-STORAGE plan %+v", fixed)
	}

	if len(c.Instances) != 3 {
		t.Fatalf("%d instances, want 3", len(c.Instances))
	}
	in0, in1, in2 := c.Instances[0], c.Instances[1], c.Instances[2]
	if in0.Subject != "tenant-42" || in0.StartedAt != "2026-11-01T00:00:00Z" || in0.ReleasedAt != nil ||
		in0.RelatePkgInstance != nil || in0.Site != nil {
		t.Errorf("instances[0] = %+v", in0)
	}
	if in1.Status != "RELEASED" || in1.ReleasedAt == nil || *in1.ReleasedAt != "2026-11-15T08:00:00Z" ||
		in1.RelatePkgInstance == nil || *in1.RelatePkgInstance != "pkg-1" {
		t.Errorf("instances[1] = %+v", in1)
	}
	if in2.Status != "FROZEN" || in2.StartedAt != "2026-11-02T10:30:00+08:00" {
		t.Errorf("instances[2] = %+v", in2)
	}

	want := Default()
	want.KooGallery = KooGallery{KeyFile: "/run/secrets/koogallery-key", BatchSize: 500, UsageValueAs: "string",
		Timeout: dur("20s")}
	want.Schedule = Schedule{CloseDelay: dur("2m"), Deadline: dur("12m"), LatePolicy: "drop", PushBudget: dur("5m")}
	want.Push = Push{RetryInitial: dur("1s"), RetryMax: dur("30s")}
	want.Listen = "127.0.0.1:18080"
	want.Ingest = Ingest{MaxBody: ByteSize{Bytes: 4 << 20}, MaxEventAge: dur("480h"), MaxFutureSkew: dur("24h")}
	want.Store.SQLite.Path = "./meterd-data/test.db"
	want.Kafka.Brokers = []string{}
	want.Pricing.DisplayPlaces = 3
	got := *c
	got.Meters, got.Instances, got.Plans, got.meters, got.catalog = nil, nil, nil, nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("settings\n got %+v\nwant %+v", got, want)
	}
}

// TestLoadReportsEveryProblem proves that one load lists every problem of a file, from the plain settings, the
// meters, the plans and the instances alike, so that a bad config is fixed in one round.
func TestLoadReportsEveryProblem(t *testing.T) {
	_, _, err := Load("testdata/bad/many_problems.yaml", noEnv)
	checkProblems(t, err, []string{
		`schedule.close_delay: "abc" is not a duration`,
		`schedule.late_policy: "later" must be carry or drop`,
		"koogallery.batch_size: 0 must be from 1 to 1000",
		`koogallery.endpoint: "ftp://example.com/usage" must be a full http(s) URL`,
		`listen: "0.0.0.0:8080" is reachable beyond loopback`,
		`store.driver: "postgres" must be sqlite or clickhouse`,
		"meters[0].value_property: required for SUM",
		"plans[0].brackets[1].up_to: must be greater than 3",
		`instances[0].sku: "NOPE" has no plan`,
	})
	if err != nil && !strings.HasPrefix(err.Error(), "config testdata/bad/many_problems.yaml:\n") {
		t.Errorf("error does not start with the file: %q", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, _, err := Load(filepath.Join(t.TempDir(), "nope.yaml"), noEnv)
	if err == nil || !strings.Contains(err.Error(), "read config") || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("err = %v, want read config naming the file", err)
	}
}

// TestEnvOverrides checks METERD_<PATH> overrides of each kind of value, and that a bad value is reported with
// its key path (and, where the variable itself cannot be read, the variable's name).
func TestEnvOverrides(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantErr []string
		check   func(t *testing.T, c *Config)
	}{
		{name: "sqlite path", env: map[string]string{"METERD_STORE_SQLITE_PATH": "/var/lib/meterd/x.db"},
			check: func(t *testing.T, c *Config) {
				if c.Store.SQLite.Path != "/var/lib/meterd/x.db" {
					t.Errorf("store.sqlite.path = %q", c.Store.SQLite.Path)
				}
			}},
		{name: "listen", env: map[string]string{"METERD_LISTEN": "127.0.0.1:9999"},
			check: func(t *testing.T, c *Config) {
				if c.Listen != "127.0.0.1:9999" {
					t.Errorf("listen = %q", c.Listen)
				}
			}},
		{name: "close delay", env: map[string]string{"METERD_SCHEDULE_CLOSE_DELAY": "1m30s"},
			check: func(t *testing.T, c *Config) {
				if c.Schedule.CloseDelay.Duration != 90*time.Second {
					t.Errorf("schedule.close_delay = %s", c.Schedule.CloseDelay.Duration)
				}
			}},
		{name: "byte size and int", env: map[string]string{"METERD_INGEST_MAX_BODY": "64KiB", "METERD_PRICING_DISPLAY_PLACES": " 4 "},
			check: func(t *testing.T, c *Config) {
				if c.Ingest.MaxBody.Bytes != 64<<10 || c.Pricing.DisplayPlaces != 4 {
					t.Errorf("ingest.max_body = %d, pricing.display_places = %d", c.Ingest.MaxBody.Bytes, c.Pricing.DisplayPlaces)
				}
			}},
		{name: "reconcile", env: map[string]string{"METERD_RECONCILE_AMOUNT_TOLERANCE": "0.005",
			"METERD_RECONCILE_ABNORMAL_STATUSES": "Abnormal, Expired", "METERD_RECONCILE_BILL_COLUMNS_AMOUNT": "Amount (USD)"},
			check: func(t *testing.T, c *Config) {
				r := c.Reconcile
				if r.AmountTolerance != "0.005" || !slices.Equal(r.AbnormalStatuses, []string{"Abnormal", "Expired"}) ||
					r.BillColumns.Amount != "Amount (USD)" || r.BillColumns.Usage != "usage_value" {
					t.Errorf("reconcile = %+v", r)
				}
			}},
		{name: "reconcile tolerance not a decimal", env: map[string]string{"METERD_RECONCILE_AMOUNT_TOLERANCE": "1,5"},
			wantErr: []string{`reconcile.amount_tolerance: "1,5" is not a decimal`}},
		{name: "bad close delay", env: map[string]string{"METERD_SCHEDULE_CLOSE_DELAY": "abc"},
			wantErr: []string{`schedule.close_delay (env METERD_SCHEDULE_CLOSE_DELAY): "abc" is not a duration`}},
		{name: "batch size not an integer", env: map[string]string{"METERD_KOOGALLERY_BATCH_SIZE": "abc"},
			wantErr: []string{`koogallery.batch_size (env METERD_KOOGALLERY_BATCH_SIZE): "abc" is not an integer`}},
		{name: "batch size out of range", env: map[string]string{"METERD_KOOGALLERY_BATCH_SIZE": "1001"},
			wantErr: []string{"koogallery.batch_size: 1001 must be from 1 to 1000"}},
		{name: "listen beyond loopback", env: map[string]string{"METERD_LISTEN": "0.0.0.0:8080"},
			wantErr: []string{`listen: "0.0.0.0:8080" is reachable beyond loopback`}},
		{name: "kafka brokers", env: map[string]string{"METERD_KAFKA_BROKERS": "k1:9092, k2:9092"},
			wantErr: []string{"kafka.brokers: Kafka ingest needs store.driver clickhouse"}},
		{name: "env and validation problems together",
			env: map[string]string{"METERD_KOOGALLERY_BATCH_SIZE": "abc", "METERD_SCHEDULE_LATE_POLICY": "later"},
			wantErr: []string{
				`koogallery.batch_size (env METERD_KOOGALLERY_BATCH_SIZE): "abc" is not an integer`,
				`schedule.late_policy: "later" must be carry or drop`,
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _, err := Load("", envOf(tt.env))
			if len(tt.wantErr) > 0 {
				checkProblems(t, err, tt.wantErr)
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			tt.check(t, c)
		})
	}
}

// TestEnvKafkaBrokersList checks the comma-separated list form (blank items dropped), below Validate, which
// refuses brokers for now.
func TestEnvKafkaBrokersList(t *testing.T) {
	c := Default()
	warnings, err := applyEnv(&c, envOf(map[string]string{"METERD_KAFKA_BROKERS": " k1:9092, k2:9092,,"}))
	if err != nil || len(warnings) != 0 {
		t.Fatalf("applyEnv: %v, warnings %q", err, warnings)
	}
	if want := []string{"k1:9092", "k2:9092"}; !slices.Equal(c.Kafka.Brokers, want) {
		t.Errorf("kafka.brokers = %q, want %q", c.Kafka.Brokers, want)
	}
}

// TestEnvWinsOverFile: the environment overrides what the file says; keys the environment does not name keep the
// file's values.
func TestEnvWinsOverFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "meterd.yaml")
	dbPath := filepath.Join(dir, "file.db")
	data := fmt.Sprintf("listen: 127.0.0.1:8081\nschedule: {close_delay: 7m}\nstore: {sqlite: {path: %q}}\n", dbPath)
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _, err := Load(path, envOf(map[string]string{
		"METERD_LISTEN":            "127.0.0.1:9090",
		"METERD_STORE_SQLITE_PATH": filepath.Join(dir, "env.db"),
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:9090" || c.Store.SQLite.Path != filepath.Join(dir, "env.db") {
		t.Errorf("env did not win: listen %q, path %q", c.Listen, c.Store.SQLite.Path)
	}
	if c.Schedule.CloseDelay.Duration != 7*time.Minute {
		t.Errorf("file value lost: close_delay %s", c.Schedule.CloseDelay.Duration)
	}
}

// TestEnvVarsMatchYAMLKeys proves that every environment variable EnvVars lists names a real key of the file: the
// path exists in Default() written as YAML, and the name is METERD_ + the upper-cased path. Setting every one of
// them to its default's text then loads exactly the defaults, so each kind of value parses from the environment.
func TestEnvVarsMatchYAMLKeys(t *testing.T) {
	out, err := yaml.Marshal(Default())
	if err != nil {
		t.Fatal(err)
	}
	var tree map[string]any
	if err := yaml.Unmarshal(out, &tree); err != nil {
		t.Fatal(err)
	}
	vars := EnvVars()
	if len(vars) < 20 {
		t.Fatalf("EnvVars lists only %d variables: %v", len(vars), vars)
	}
	for _, name := range []string{"METERD_KOOGALLERY_ENDPOINT", "METERD_STORE_DRIVER", "METERD_LISTEN",
		"METERD_STORE_SQLITE_PATH", "METERD_SCHEDULE_CLOSE_DELAY", "METERD_KAFKA_BROKERS", "METERD_INGEST_MAX_BODY"} {
		if _, ok := vars[name]; !ok {
			t.Errorf("EnvVars lacks %s", name)
		}
	}
	asEnv := map[string]string{}
	for name, path := range vars {
		if want := "METERD_" + strings.ToUpper(strings.ReplaceAll(path, ".", "_")); name != want {
			t.Errorf("%s names path %s, want %s", name, path, want)
		}
		var node any = tree
		for _, part := range strings.Split(path, ".") {
			m, ok := node.(map[string]any)
			if !ok {
				t.Errorf("%s: %s is not a key path of the YAML file (%q is below a scalar)", name, path, part)
				node = nil
				break
			}
			if node, ok = m[part]; !ok {
				t.Errorf("%s: %s is not a key path of the YAML file (no key %q)", name, path, part)
				break
			}
		}
		switch v := node.(type) {
		case map[string]any:
			t.Errorf("%s: %s is a mapping, not a leaf key", name, path)
		case []any:
			items := make([]string, len(v))
			for i, it := range v {
				items[i] = fmt.Sprint(it)
			}
			asEnv[name] = strings.Join(items, ",")
		case nil:
			asEnv[name] = ""
		default:
			asEnv[name] = fmt.Sprint(v)
		}
	}
	if t.Failed() {
		return
	}
	c, _, err := Load("", envOf(asEnv))
	if err != nil {
		t.Fatalf("every variable set to its default: %v", err)
	}
	base, _, err := Load("", noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, base) {
		t.Errorf("every variable set to its default changed the config:\n got %+v\nwant %+v", c, base)
	}
}

// TestKooGalleryKeyEnvIsNotConfig: METERD_KOOGALLERY_KEY is the secret read by the push client, not a config key,
// so it is not an override, never ends up in Config, and does not draw the "matches no config key" warning that a
// misspelt variable does.
func TestKooGalleryKeyEnvIsNotConfig(t *testing.T) {
	const secret = "s3cr3t-koogallery-key"
	t.Setenv("METERD_KOOGALLERY_KEY", secret)
	t.Setenv("METERD_KOOGALERY_ENDPOINT", "https://example.com/usage") // misspelt: warned about
	if _, ok := EnvVars()["METERD_KOOGALLERY_KEY"]; ok {
		t.Error("METERD_KOOGALLERY_KEY is listed as a config override")
	}
	c, warnings, err := Load("", os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range warnings {
		if strings.Contains(w, "METERD_KOOGALLERY_KEY") {
			t.Errorf("warning about the key variable: %q", w)
		}
	}
	if !slices.ContainsFunc(warnings, func(w string) bool {
		return strings.Contains(w, "environment variable METERD_KOOGALERY_ENDPOINT matches no config key")
	}) {
		t.Errorf("no warning for a misspelt variable; warnings %q", warnings)
	}
	out, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), secret) || strings.Contains(fmt.Sprintf("%+v", *c), secret) {
		t.Error("the KooGallery key ended up in the config")
	}
}

// TestByteSizeAndDurationText covers the value syntaxes the file and the environment share.
func TestByteSizeAndDurationText(t *testing.T) {
	sizes := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"512", 512, true}, {"64KiB", 64 << 10, true}, {"10MiB", 10 << 20, true}, {"1GiB", 1 << 30, true},
		{"2KB", 2000, true}, {"3MB", 3_000_000, true}, {"1GB", 1_000_000_000, true}, {"100B", 100, true},
		{" 4 MiB ", 4 << 20, true},
		{"-1", 0, false}, {"1.5MiB", 0, false}, {"10 parsecs", 0, false}, {"", 0, false}, {"99999999999GiB", 0, false},
	}
	for _, s := range sizes {
		var b ByteSize
		_ = b.set(s.in)
		if ok := b.bad == ""; ok != s.ok || (ok && b.Bytes != s.want) {
			t.Errorf("size %q: bytes %d bad %q, want %d ok=%v", s.in, b.Bytes, b.bad, s.want, s.ok)
		}
	}
	for _, s := range []struct {
		in string
		ok bool
	}{{"5m", true}, {"1h30m", true}, {"0s", true}, {"90", false}, {"abc", false}, {"", false}} {
		var d Duration
		_ = d.set(s.in)
		if ok := d.bad == ""; ok != s.ok {
			t.Errorf("duration %q: bad %q, want ok=%v", s.in, d.bad, s.ok)
		}
	}
}
