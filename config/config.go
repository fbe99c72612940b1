// Package config loads meterd's configuration file (DESIGN.md §3): YAML with every setting defaulted in Default,
// overridable by METERD_<PATH> environment variables, and validated as a whole so that a bad file fails at start
// with every problem listed, each with the exact key path and reason.
package config

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/aggregate/meter"
	"github.com/meterd/meterd/pricing"
)

// Config is the whole configuration file.
type Config struct {
	Meters     []meter.Spec       `yaml:"meters"`
	Instances  []instance.Spec    `yaml:"instances"`
	Plans      []pricing.PlanSpec `yaml:"plans"`
	KooGallery KooGallery         `yaml:"koogallery"`
	Schedule   Schedule           `yaml:"schedule"`
	Push       Push               `yaml:"push"`
	Listen     string             `yaml:"listen"`
	TLS        ServerTLS          `yaml:"tls"`
	Ingest     Ingest             `yaml:"ingest"`
	Store      Store              `yaml:"store"`
	Kafka      Kafka              `yaml:"kafka"`
	Pricing    Pricing            `yaml:"pricing"`
	Reconcile  Reconcile          `yaml:"reconcile"`

	meters  *meter.Set
	catalog *pricing.Catalog
}

// KooGallery is the usage push endpoint. No endpoint disables pushing: SDRs are built and stay PENDING.
type KooGallery struct {
	Endpoint     string          `yaml:"endpoint"`
	KeyFile      string          `yaml:"key_file"`
	BatchSize    int             `yaml:"batch_size"`
	UsageValueAs string          `yaml:"usage_value_as"`
	Timeout      Duration        `yaml:"timeout"`
	Sites        map[string]Site `yaml:"sites"`
}

// Site is an extra KooGallery site an instance may select.
type Site struct {
	Endpoint string `yaml:"endpoint"`
	KeyFile  string `yaml:"key_file"`
}

// Schedule is the hourly cycle's timing.
type Schedule struct {
	CloseDelay Duration `yaml:"close_delay"`
	Deadline   Duration `yaml:"deadline"`
	LatePolicy string   `yaml:"late_policy"`
	// PushBudget is the time kept for the push before the deadline: hour H is closed by force at
	// H+1h+deadline-push_budget even if the watermark lags, so that a dead collector cannot make it miss.
	PushBudget Duration `yaml:"push_budget"`
}

// ForceAfter is how long after the end of an hour its close is forced: deadline minus the push budget.
func (s Schedule) ForceAfter() time.Duration { return s.Deadline.Duration - s.PushBudget.Duration }

// Push is the retry policy of the push to KooGallery.
type Push struct {
	RetryInitial Duration `yaml:"retry_initial"`
	RetryMax     Duration `yaml:"retry_max"`
}

// ServerTLS makes the HTTP API (ingest, /v1, /metrics) HTTPS: both files set, or neither (plain HTTP). The files
// are PEM (a certificate chain, its private key) and are read at start.
type ServerTLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Ingest is the HTTP ingest.
type Ingest struct {
	MaxBody       ByteSize `yaml:"max_body"`
	TokensFile    string   `yaml:"tokens_file"`
	MaxEventAge   Duration `yaml:"max_event_age"`
	MaxFutureSkew Duration `yaml:"max_future_skew"`
}

// Store selects and configures the storage.
type Store struct {
	Driver     string          `yaml:"driver"`
	SQLite     SQLiteStore     `yaml:"sqlite"`
	ClickHouse ClickHouseStore `yaml:"clickhouse"`
}

// ClickHouseStore is the scale-out store (native protocol).
type ClickHouseStore struct {
	Addr         string `yaml:"addr"`          // host:port of the native protocol
	Database     string `yaml:"database"`      // created if missing
	Username     string `yaml:"username"`      // empty: the server's default user
	PasswordFile string `yaml:"password_file"` // surrounding whitespace trimmed; empty: no password; never logged
	// TLS secures the native protocol (the server's secure port, 9440 by default, rather than 9000).
	TLS ClientTLS `yaml:"tls"`
}

// ClientTLS secures a connection meterd opens (to Kafka, to ClickHouse). Enabled alone verifies the server against
// the system's roots; ca_file (PEM) trusts its CAs instead; cert_file and key_file (PEM, both or neither) present a
// client certificate for mutual TLS; server_name is the name the server's certificate must carry (default: the
// host dialled). The server's certificate is always verified: there is no setting to skip that. The files are
// read at load, so that --validate catches a missing or broken one.
type ClientTLS struct {
	Enabled    bool   `yaml:"enabled"`
	CAFile     string `yaml:"ca_file"`
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	ServerName string `yaml:"server_name"`
}

// validate checks a client TLS section; path is its key path. Errors name files, never their content.
func (t ClientTLS) validate(path string) []error {
	if !t.Enabled {
		// A file without enabled would look like TLS while the connection stays plaintext.
		if t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != "" {
			return []error{fmt.Errorf("%s.enabled: false, but ca_file, cert_file, key_file or server_name is set: set enabled: true, or remove them", path)}
		}
		return nil
	}
	var errs []error
	if n := t.ServerName; n != "" && net.ParseIP(n) == nil && strings.ContainsAny(n, ":/ \t\r\n") {
		errs = append(errs, fmt.Errorf("%s.server_name: %q must be a host name (no port, scheme or spaces)", path, n))
	}
	if _, err := t.Load(path); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// Load reads the files into a client configuration that always verifies the server (TLS 1.2 at least); nil when
// TLS is not enabled. path is the section's key path, which prefixes every problem; errors name the files and
// the problem, never key material.
func (t ClientTLS) Load(path string) (*tls.Config, error) {
	if !t.Enabled {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	var errs []error
	if t.CAFile != "" {
		// Only these CAs are trusted, not the system's as well: a private CA pins the brokers or the server.
		pem, err := os.ReadFile(t.CAFile)
		c.RootCAs = x509.NewCertPool()
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s.ca_file: %w", path, err))
		case !c.RootCAs.AppendCertsFromPEM(pem):
			errs = append(errs, fmt.Errorf("%s.ca_file: %s holds no PEM certificate", path, t.CAFile))
		}
	}
	switch {
	case t.CertFile == "" && t.KeyFile == "":
	case t.CertFile == "":
		errs = append(errs, fmt.Errorf("%s.cert_file: required with %s.key_file (mutual TLS needs both)", path, path))
	case t.KeyFile == "":
		errs = append(errs, fmt.Errorf("%s.key_file: required with %s.cert_file (mutual TLS needs both)", path, path))
	default:
		pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.cert_file: %w", path, err))
		}
		c.Certificates = []tls.Certificate{pair}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return c, nil
}

// SQLiteStore is the embedded store.
type SQLiteStore struct {
	Path string `yaml:"path"`
}

// Kafka is the scale-out ingest.
type Kafka struct {
	Brokers  []string `yaml:"brokers"`
	Topic    string   `yaml:"topic"`
	GroupID  string   `yaml:"group_id"`
	DLQTopic string   `yaml:"dlq_topic"`
	// Partitions and ReplicationFactor apply when meterd creates the topics; replication_factor 0 takes the
	// broker's default.replication.factor.
	Partitions        int `yaml:"partitions"`
	ReplicationFactor int `yaml:"replication_factor"`
	// Retention is both topics' retention.ms: at least 21 days, so that every event of the dedup horizon stays
	// readable for a collector back from an outage or a store rebuilt from Kafka.
	Retention Duration `yaml:"retention"`
	// BatchSize, BatchBytes and BatchWait bound one store write of a collector: at most batch_size messages and
	// batch_bytes of message values (whichever comes first), a partial batch held at most batch_wait.
	BatchSize  int      `yaml:"batch_size"`
	BatchBytes ByteSize `yaml:"batch_bytes"`
	BatchWait  Duration `yaml:"batch_wait"`
	// ControlTopic (one partition) and SchedulerGroupID elect the one active scheduler: the member of that group
	// assigned the partition leads.
	ControlTopic     string `yaml:"control_topic"`
	SchedulerGroupID string `yaml:"scheduler_group_id"`
	// TLS and SASL secure every connection to the brokers (producer, collectors, topic administration, positions,
	// election). Both off by default: plaintext without authentication.
	TLS  ClientTLS `yaml:"tls"`
	SASL KafkaSASL `yaml:"sasl"`
}

// SASL mechanisms meterd speaks to Kafka (the key's values).
const (
	SASLPlain       = "plain"
	SASLSCRAMSHA256 = "scram-sha-256"
	SASLSCRAMSHA512 = "scram-sha-512"
)

// KafkaSASL authenticates meterd to the brokers. An empty mechanism sends no credentials. plain sends the password
// itself, so it is refused without TLS unless every broker is on loopback; scram-sha-256 and scram-sha-512 prove
// the password without sending it. The password is only ever read from password_file (surrounding whitespace
// trimmed), never from the YAML, so it cannot end up in the config or its printouts.
type KafkaSASL struct {
	Mechanism    string `yaml:"mechanism"`
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
}

// validate checks the SASL section; path is its key path, tlsOn whether kafka.tls is enabled, brokers the brokers.
func (s KafkaSASL) validate(path string, tlsOn bool, brokers []string) []error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s.%s: %s", path, key, fmt.Sprintf(format, args...)))
	}
	switch s.Mechanism {
	case "":
		if s.Username != "" || s.PasswordFile != "" {
			add("mechanism", "required with username or password_file (plain, scram-sha-256 or scram-sha-512); without it no credentials are sent")
		}
		return errs
	case SASLPlain, SASLSCRAMSHA256, SASLSCRAMSHA512:
	default:
		add("mechanism", "%q must be plain, scram-sha-256 or scram-sha-512 (or empty: no authentication)", s.Mechanism)
	}
	if strings.TrimSpace(s.Username) == "" {
		add("username", "required with mechanism %s", s.Mechanism)
	}
	if s.PasswordFile == "" {
		add("password_file", "required with mechanism %s (the password is only read from a file)", s.Mechanism)
	} else if data, err := os.ReadFile(s.PasswordFile); err != nil {
		add("password_file", "%v", err) // os errors name the path and the cause, never the content
	} else if len(bytes.TrimSpace(data)) == 0 {
		add("password_file", "%s is empty", s.PasswordFile)
	}
	if s.Mechanism == SASLPlain && !tlsOn {
		if remote := nonLoopback(brokers); len(remote) > 0 {
			add("mechanism", "plain sends the password in clear text, and broker %s is not on loopback: enable kafka.tls, or use scram-sha-256 or scram-sha-512", remote[0])
		}
	}
	return errs
}

// nonLoopback returns the brokers whose host is neither localhost nor a loopback address.
func nonLoopback(brokers []string) []string {
	var out []string
	for _, b := range brokers {
		host, _, err := net.SplitHostPort(b)
		if err != nil {
			host = b
		}
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			out = append(out, b)
		}
	}
	return out
}

// validate checks the kafka section; path is its key path.
func (k Kafka) validate(path string) []error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s.%s: %s", path, key, fmt.Sprintf(format, args...)))
	}
	for i, b := range k.Brokers {
		if host, port, err := net.SplitHostPort(b); err != nil || host == "" || port == "" {
			add(fmt.Sprintf("brokers[%d]", i), "%q must be host:port", b)
		}
	}
	if err := checkTopicName(k.Topic); err != nil {
		add("topic", "%v", err)
	}
	if err := checkTopicName(k.DLQTopic); err != nil {
		add("dlq_topic", "%v", err)
	} else if k.DLQTopic == k.Topic {
		add("dlq_topic", "%q is also kafka.topic: dead letters would be consumed as events", k.DLQTopic)
	}
	if strings.TrimSpace(k.GroupID) == "" {
		add("group_id", "required")
	}
	if err := checkTopicName(k.ControlTopic); err != nil {
		add("control_topic", "%v", err)
	} else if k.ControlTopic == k.Topic || k.ControlTopic == k.DLQTopic {
		add("control_topic", "%q is also the events or dead-letter topic: the election needs its own topic", k.ControlTopic)
	}
	switch {
	case strings.TrimSpace(k.SchedulerGroupID) == "":
		add("scheduler_group_id", "required")
	case k.SchedulerGroupID == k.GroupID:
		add("scheduler_group_id", "%q is also kafka.group_id: schedulers and collectors need their own groups", k.SchedulerGroupID)
	}
	if k.Partitions < 1 || k.Partitions > 10000 {
		add("partitions", "%d must be from 1 to 10000", k.Partitions)
	}
	if k.ReplicationFactor < 0 || k.ReplicationFactor > 32 {
		add("replication_factor", "%d must be from 0 (the broker's default) to 32", k.ReplicationFactor)
	}
	switch {
	case k.Retention.bad != "":
		add("retention", "%s", k.Retention.bad)
	case k.Retention.Duration < DedupHorizonMin:
		add("retention", "%s must be at least 21 days (504h): events must stay readable for the whole dedup horizon", k.Retention.Duration)
	}
	if k.BatchSize < 1 || k.BatchSize > 1_000_000 {
		add("batch_size", "%d must be from 1 to 1000000", k.BatchSize)
	}
	switch {
	case k.BatchBytes.bad != "":
		add("batch_bytes", "%s", k.BatchBytes.bad)
	case k.BatchBytes.Bytes < 64<<10 || k.BatchBytes.Bytes > 256<<20:
		add("batch_bytes", "%d must be from 64KiB to 256MiB", k.BatchBytes.Bytes)
	}
	switch {
	case k.BatchWait.bad != "":
		add("batch_wait", "%s", k.BatchWait.bad)
	case k.BatchWait.Duration < time.Millisecond || k.BatchWait.Duration > time.Minute:
		add("batch_wait", "%s must be from 1ms to 1m", k.BatchWait.Duration)
	}
	errs = append(errs, k.TLS.validate(path+".tls")...)
	errs = append(errs, k.SASL.validate(path+".sasl", k.TLS.Enabled, k.Brokers)...)
	return errs
}

// checkTopicName applies Kafka's rules for topic names: 1 to 249 characters from [a-zA-Z0-9._-], not "." or "..".
func checkTopicName(t string) error {
	switch {
	case t == "":
		return errors.New("required")
	case t == "." || t == "..":
		return fmt.Errorf("%q is not a valid topic name", t)
	case len(t) > 249:
		return fmt.Errorf("%d characters, at most 249 allowed", len(t))
	}
	for _, r := range t {
		if r != '.' && r != '_' && r != '-' && (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') && (r < '0' || r > '9') {
			return fmt.Errorf("%q: a topic name may only contain letters, digits, '.', '_' and '-'", t)
		}
	}
	return nil
}

// Pricing holds display settings of amounts. Amounts are exact everywhere; only what is shown is rounded.
type Pricing struct {
	DisplayPlaces int `yaml:"display_places"`
}

// Reconcile configures the import of KooGallery's console exports, bill details and SDR Management (`meterd report
// reconcile --bill`): the exports' column names, how far an amount may differ before it is listed, and which status
// values mark an SDR KooGallery refused after accepting it.
type Reconcile struct {
	BillColumns BillColumns `yaml:"bill_columns"`
	// AmountTolerance is the largest difference between the ledger's exact amount and the bill's that is not
	// listed, a non-negative decimal; "0" lists every difference.
	AmountTolerance string `yaml:"amount_tolerance"`
	// AbnormalStatuses are the status values (compared without regard to case) of records KooGallery refused
	// asynchronously: such an SDR becomes ASYNC_REJECTED and is re-reported under its next revision.
	AbnormalStatuses []string `yaml:"abnormal_statuses"`
}

// BillColumns are the header names of an export's columns, compared without regard to case or surrounding space.
// A row is matched by metering_sn when it has one, else by instance_id and period (begin_time, end_time). An empty
// name says the exports have no such column; then metering_sn, or instance_id, begin_time and end_time, must remain.
type BillColumns struct {
	MeteringSN string `yaml:"metering_sn"`
	InstanceID string `yaml:"instance_id"`
	BeginTime  string `yaml:"begin_time"`
	EndTime    string `yaml:"end_time"`
	Usage      string `yaml:"usage"`
	Amount     string `yaml:"amount"`
	Status     string `yaml:"status"`
}

// DedupHorizonMin is the shortest dedup horizon allowed: KooGallery accepts SDRs up to 21 days old, so a repeat
// of an event must be recognised at least that long (DESIGN.md §4 step 1).
const DedupHorizonMin = 21 * 24 * time.Hour

// Default returns the configuration used where the file and the environment are silent: every default is here.
func Default() Config {
	return Config{
		KooGallery: KooGallery{BatchSize: 1000, UsageValueAs: "number", Timeout: Duration{Duration: 10 * time.Second}},
		Schedule: Schedule{CloseDelay: Duration{Duration: 5 * time.Minute}, Deadline: Duration{Duration: 15 * time.Minute},
			LatePolicy: "carry", PushBudget: Duration{Duration: 5 * time.Minute}},
		Push:   Push{RetryInitial: Duration{Duration: 2 * time.Second}, RetryMax: Duration{Duration: time.Minute}},
		Listen: "127.0.0.1:8080",
		Ingest: Ingest{MaxBody: ByteSize{Bytes: 10 << 20}, MaxEventAge: Duration{Duration: DedupHorizonMin},
			MaxFutureSkew: Duration{Duration: 5 * time.Minute}},
		Store: Store{Driver: "sqlite", SQLite: SQLiteStore{Path: "./meterd-data/meterd.db"},
			ClickHouse: ClickHouseStore{Addr: "127.0.0.1:9000", Database: "meterd"}},
		Kafka: Kafka{Topic: "usage-events", GroupID: "meterd-collectors", DLQTopic: "usage-events-dlq", Partitions: 6,
			Retention: Duration{Duration: 30 * 24 * time.Hour}, BatchSize: 50000, BatchBytes: ByteSize{Bytes: 16 << 20}, BatchWait: Duration{Duration: time.Second},
			ControlTopic: "meterd-control", SchedulerGroupID: "meterd-schedulers"},
		Pricing: Pricing{DisplayPlaces: 2},
		Reconcile: Reconcile{
			BillColumns: BillColumns{MeteringSN: "metering_sn", InstanceID: "instance_id", BeginTime: "begin_time",
				EndTime: "end_time", Usage: "usage_value", Amount: "amount", Status: "status"},
			AmountTolerance:  "0.01",
			AbnormalStatuses: []string{"ABNORMAL", "FAILED", "REJECTED"},
		},
	}
}

// MeterSet returns the validated meters (after Validate).
func (c *Config) MeterSet() *meter.Set { return c.meters }

// Catalog returns the validated plan catalog (after Validate).
func (c *Config) Catalog() *pricing.Catalog { return c.catalog }

// Warnings returns advice about valid but risky settings.
func (c *Config) Warnings() []string {
	var w []string
	if c.Schedule.CloseDelay.Duration < time.Minute {
		w = append(w, fmt.Sprintf("schedule.close_delay: %s is below 1m: events from clients with a skewed clock may become late usage", c.Schedule.CloseDelay.Duration))
	}
	if c.KooGallery.Endpoint == "" {
		w = append(w, "koogallery.endpoint: not set: pushing is disabled, SDRs will be built and stay PENDING")
	}
	return w
}

// Validate checks the whole configuration and builds its derived parts (meters, plan catalog). It reports every
// problem at once, one per line, each prefixed with its key path.
func (c *Config) Validate() error {
	var errs []error
	add := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
	}
	durations := []struct {
		path string
		d    Duration
		min  time.Duration
	}{
		{"koogallery.timeout", c.KooGallery.Timeout, time.Millisecond},
		{"schedule.close_delay", c.Schedule.CloseDelay, 0},
		{"schedule.deadline", c.Schedule.Deadline, 0},
		{"schedule.push_budget", c.Schedule.PushBudget, 0},
		{"push.retry_initial", c.Push.RetryInitial, time.Millisecond},
		{"push.retry_max", c.Push.RetryMax, time.Millisecond},
		{"ingest.max_event_age", c.Ingest.MaxEventAge, time.Hour},
		{"ingest.max_future_skew", c.Ingest.MaxFutureSkew, 0},
	}
	for _, d := range durations {
		switch {
		case d.d.bad != "":
			add(d.path, "%s", d.d.bad)
		case d.d.Duration < d.min:
			add(d.path, "%s must be at least %s", d.d.Duration, d.min)
		}
	}
	if c.Schedule.Deadline.Duration < c.Schedule.CloseDelay.Duration {
		add("schedule.deadline", "%s must be >= schedule.close_delay (%s)", c.Schedule.Deadline.Duration, c.Schedule.CloseDelay.Duration)
	}
	if c.Schedule.Deadline.Duration >= c.Schedule.CloseDelay.Duration && c.Schedule.ForceAfter() < c.Schedule.CloseDelay.Duration {
		add("schedule.push_budget", "%s leaves no time to close: deadline - push_budget must be >= close_delay (%s)",
			c.Schedule.PushBudget.Duration, c.Schedule.CloseDelay.Duration)
	}
	if c.Schedule.Deadline.Duration > 2*time.Hour {
		add("schedule.deadline", "%s is beyond KooGallery's 2-hour limit for late reporting", c.Schedule.Deadline.Duration)
	}
	if c.Push.RetryMax.Duration < c.Push.RetryInitial.Duration {
		add("push.retry_max", "%s must be >= push.retry_initial (%s)", c.Push.RetryMax.Duration, c.Push.RetryInitial.Duration)
	}
	switch c.Schedule.LatePolicy {
	case "carry", "drop":
	default:
		add("schedule.late_policy", "%q must be carry or drop", c.Schedule.LatePolicy)
	}
	if c.KooGallery.BatchSize < 1 || c.KooGallery.BatchSize > 1000 {
		add("koogallery.batch_size", "%d must be from 1 to 1000 (KooGallery's limit per call)", c.KooGallery.BatchSize)
	}
	switch c.KooGallery.UsageValueAs {
	case "number", "string":
	default:
		add("koogallery.usage_value_as", "%q must be number or string", c.KooGallery.UsageValueAs)
	}
	if c.KooGallery.Endpoint != "" {
		if err := checkEndpoint(c.KooGallery.Endpoint); err != nil {
			add("koogallery.endpoint", "%v", err)
		}
	}
	for name, site := range c.KooGallery.Sites {
		if err := checkEndpoint(site.Endpoint); err != nil {
			add("koogallery.sites."+name+".endpoint", "%v", err)
		}
	}
	if c.Ingest.MaxBody.bad != "" {
		add("ingest.max_body", "%s", c.Ingest.MaxBody.bad)
	} else if c.Ingest.MaxBody.Bytes < 1024 {
		add("ingest.max_body", "%d bytes is too small (at least 1KiB)", c.Ingest.MaxBody.Bytes)
	}
	if c.Ingest.MaxEventAge.Duration+c.Ingest.MaxFutureSkew.Duration < DedupHorizonMin && c.Ingest.MaxEventAge.bad == "" {
		add("ingest.max_event_age", "%s: the dedup horizon (max_event_age + max_future_skew) must be at least 21 days (504h)", c.Ingest.MaxEventAge.Duration)
	}
	if c.Ingest.TokensFile != "" {
		if fi, err := os.Stat(c.Ingest.TokensFile); err != nil {
			add("ingest.tokens_file", "%v", err)
		} else if !fi.Mode().IsRegular() {
			// serve could not read tokens from it: say so now, so that --validate does not pass a config that
			// cannot start.
			add("ingest.tokens_file", "%s is not a regular file", c.Ingest.TokensFile)
		}
	}
	if err := checkListen(c.Listen, c.Ingest.TokensFile != ""); err != nil {
		add("listen", "%v", err)
	}
	switch t := c.TLS; {
	case t.CertFile == "" && t.KeyFile == "":
	case t.CertFile == "":
		add("tls.cert_file", "required with tls.key_file")
	case t.KeyFile == "":
		add("tls.key_file", "required with tls.cert_file")
	default:
		// Loaded here so that --validate catches a wrong pair; the error never contains key material.
		if _, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile); err != nil {
			add("tls", "%v", err)
		}
	}
	switch c.Store.Driver {
	case "sqlite":
		if strings.TrimSpace(c.Store.SQLite.Path) == "" {
			add("store.sqlite.path", "required with driver sqlite")
		}
	case "clickhouse":
		if host, port, err := net.SplitHostPort(c.Store.ClickHouse.Addr); err != nil || host == "" || port == "" {
			add("store.clickhouse.addr", "%q must be host:port (the native protocol port)", c.Store.ClickHouse.Addr)
		}
		if !isIdentifier(c.Store.ClickHouse.Database) {
			add("store.clickhouse.database", "%q must be a plain identifier (letters, digits, _)", c.Store.ClickHouse.Database)
		}
		if f := c.Store.ClickHouse.PasswordFile; f != "" {
			if _, err := os.Stat(f); err != nil {
				add("store.clickhouse.password_file", "%v", err)
			}
		}
		errs = append(errs, c.Store.ClickHouse.TLS.validate("store.clickhouse.tls")...)
	default:
		add("store.driver", "%q must be sqlite or clickhouse", c.Store.Driver)
	}
	// Collectors write to ClickHouse: the embedded store has one writer, the serve process that owns its file.
	if len(c.Kafka.Brokers) > 0 && c.Store.Driver != "clickhouse" {
		add("kafka.brokers", "Kafka ingest needs store.driver clickhouse (collectors write to ClickHouse); store.driver is %q", c.Store.Driver)
	}
	errs = append(errs, c.Kafka.validate("kafka")...)
	if c.Pricing.DisplayPlaces < 0 || c.Pricing.DisplayPlaces > 10 {
		add("pricing.display_places", "%d must be from 0 to 10", c.Pricing.DisplayPlaces)
	}

	errs = append(errs, c.Reconcile.validate("reconcile")...)

	meters, err := meter.NewSet(c.Meters, "meters")
	if err != nil {
		errs = append(errs, err)
	}
	catalog, err := pricing.NewCatalog(c.Plans, "plans")
	if err != nil {
		errs = append(errs, err)
	}
	if meters != nil {
		for i, p := range c.Plans {
			if _, ok := meters.Get(p.Meter); p.Meter != "" && !ok {
				add(fmt.Sprintf("plans[%d].meter", i), "%q is not a configured meter", p.Meter)
			}
		}
	}
	errs = append(errs, c.validateInstances(meters)...)
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	c.meters, c.catalog = meters, catalog
	return nil
}

// validate checks the reconcile section; path is its key path.
func (r Reconcile) validate(path string) []error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s.%s: %s", path, key, fmt.Sprintf(format, args...)))
	}
	if tol, err := pricing.ParseDecimal(strings.TrimSpace(r.AmountTolerance)); err != nil {
		add("amount_tolerance", "%q is not a decimal", r.AmountTolerance)
	} else if tol.Sign() < 0 {
		add("amount_tolerance", "%q must not be negative", r.AmountTolerance)
	}
	for i, s := range r.AbnormalStatuses {
		if strings.TrimSpace(s) == "" {
			add(fmt.Sprintf("abnormal_statuses[%d]", i), "must not be empty")
		}
	}
	cols := r.BillColumns
	named := []struct{ key, name string }{{"metering_sn", cols.MeteringSN}, {"instance_id", cols.InstanceID},
		{"begin_time", cols.BeginTime}, {"end_time", cols.EndTime}, {"usage", cols.Usage}, {"amount", cols.Amount},
		{"status", cols.Status}}
	seen := map[string]string{}
	for _, n := range named {
		k := strings.ToLower(strings.TrimSpace(n.name))
		if k == "" {
			continue
		}
		if prev, dup := seen[k]; dup {
			add("bill_columns."+n.key, "%q is already the column of %s", n.name, prev)
			continue
		}
		seen[k] = n.key
	}
	blank := func(s string) bool { return strings.TrimSpace(s) == "" }
	if blank(cols.MeteringSN) && (blank(cols.InstanceID) || blank(cols.BeginTime) || blank(cols.EndTime)) {
		add("bill_columns", "rows cannot be matched: name the metering_sn column, or the instance_id, begin_time and end_time columns")
	}
	return errs
}

// validateInstances checks each configured instance on its own and against the meters, plans and sites of this
// file (instance.ValidateAll); the registry checks the lifecycle rules against what is stored when they are
// applied. A broken meter list is not consulted, so its mistakes are not reported again on every instance.
func (c *Config) validateInstances(meters *meter.Set) []error {
	refs := instance.Refs{
		// The plans are read from the specs, not the catalog, so that an instance naming a SKU whose plan has
		// its own problems is not also reported as having no plan.
		PlanMeter: func(sku string) (string, bool) { return planMeter(c.Plans, sku) },
		Site: func(name string) bool {
			_, ok := c.KooGallery.Sites[name]
			return ok
		},
	}
	if meters != nil {
		refs.Meter = func(key string) bool {
			_, ok := meters.Get(key)
			return ok
		}
	}
	if err := instance.ValidateAll(c.Instances, "instances", refs); err != nil {
		return []error{err}
	}
	return nil
}

// planMeter returns the meter priced by the plans of sku (NewCatalog checks that all its versions agree).
func planMeter(plans []pricing.PlanSpec, sku string) (string, bool) {
	for _, p := range plans {
		if p.SKU == sku {
			return p.Meter, true
		}
	}
	return "", false
}

func checkEndpoint(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return fmt.Errorf("%q must be a full http(s) URL", s)
	}
	return nil
}

// checkListen refuses an address reachable beyond this machine unless bearer tokens guard the API: ingest without
// auth is only safe on loopback.
func checkListen(addr string, haveTokens bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return fmt.Errorf("%q must be host:port", addr)
	}
	if haveTokens {
		return nil
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%q is reachable beyond loopback: set ingest.tokens_file (bearer tokens) or listen on 127.0.0.1", addr)
}

// isIdentifier reports whether s is a plain SQL identifier: a letter or _, then letters, digits or _.
func isIdentifier(s string) bool {
	for i, r := range s {
		letter := r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')
		if !letter && (i == 0 || r < '0' || r > '9') {
			return false
		}
	}
	return s != ""
}
