package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/report/kgsim"
	"github.com/meterd/meterd/report/koogallery"
)

// No container engine or cluster runs here, so the deployment artifacts are checked against the binary instead:
// every file parses; every meterd command line they contain (and every one in docs/runbooks.md) names real
// subcommands and flags of the cobra tree; every METERD_* variable is a real override (config.EnvVars) or one of
// the two secrets read from the environment; ports agree between the config, the container, the Service, the
// scrape configs; every file a mount, COPY or secret refers to exists; the configs they ship validate; the
// Kubernetes config actually serves its probe paths; every metric the alert rules, the dashboard and the catalog
// name is one meterd exports, and every exported metric is in the catalog; every alert links a runbook section
// that exists and is covered by the promtool tests; and the systemd unit's ExecStart runs (with --validate).

const repoRoot = "../.."

func repoPath(parts ...string) string { return filepath.Join(append([]string{repoRoot}, parts...)...) }

func readRepoFile(t *testing.T, parts ...string) string {
	t.Helper()
	b, err := os.ReadFile(repoPath(parts...))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// yamlDocs parses every document of a YAML file into generic maps.
func yamlDocs(t *testing.T, parts ...string) []map[string]any {
	t.Helper()
	dec := yaml.NewDecoder(strings.NewReader(readRepoFile(t, parts...)))
	var docs []map[string]any
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if err == io.EOF {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: %v", filepath.Join(parts...), err)
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
}

// dig walks nested maps and lists: keys are map keys, ints are list indexes.
func dig(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func strs(v any) []string {
	var out []string
	if l, ok := v.([]any); ok {
		for _, x := range l {
			out = append(out, fmt.Sprint(x))
		}
	}
	return out
}

// checkCommandLine resolves args (without the program name) in the real command tree: the subcommand must exist,
// every flag must be one of its flags, and no stray argument may remain. It returns the parsed command.
func checkCommandLine(t *testing.T, where string, args []string) map[string]string {
	t.Helper()
	ran := false
	root := newRoot(strings.NewReader(""), io.Discard, io.Discard, &ran)
	cmd, rest, err := root.Find(args)
	if err != nil {
		t.Errorf("%s: meterd %s: %v", where, strings.Join(args, " "), err)
		return nil
	}
	if err := cmd.ParseFlags(rest); err != nil {
		t.Errorf("%s: meterd %s: %v", where, strings.Join(args, " "), err)
		return nil
	}
	if cmd != root && cmd.Args != nil {
		if err := cmd.Args(cmd, cmd.Flags().Args()); err != nil {
			t.Errorf("%s: meterd %s: %v", where, strings.Join(args, " "), err)
		}
	}
	vals := map[string]string{"": cmd.CommandPath()}
	for _, name := range []string{"config", "role", "listen", "key-file"} {
		if f := cmd.Flags().Lookup(name); f != nil && f.Changed {
			vals[name] = f.Value.String()
		}
	}
	if r, ok := vals["role"]; ok {
		if _, err := parseRole(r); err != nil {
			t.Errorf("%s: %v", where, err)
		}
	}
	return vals
}

// knownEnv tells whether name is a variable meterd reads.
func knownEnv(name string) bool {
	_, ok := config.EnvVars()[name]
	return ok || name == koogallery.KeyEnv || name == tokenEnv
}

var envRef = regexp.MustCompile(`\bMETERD_[A-Z0-9_]+\b`)

// shellWords splits one shell command line (quotes, backslashes), stopping at a comment, a pipe, a redirection
// or a command separator.
func shellWords(line string) []string {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	flush := func() {
		if inWord {
			words = append(words, cur.String())
			cur.Reset()
			inWord = false
		}
	}
	rs := []rune(line)
	for i := 0; i < len(rs); i++ {
		c := rs[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			} else {
				cur.WriteRune(c)
			}
		case c == '\'' || c == '"':
			quote, inWord = c, true
		case c == '\\' && i+1 < len(rs):
			i++
			cur.WriteRune(rs[i])
			inWord = true
		case c == ' ' || c == '\t':
			flush()
		case c == '#' && !inWord, c == '|', c == ';', c == '>', c == '<', c == '&', c == ')':
			flush()
			return words
		default:
			cur.WriteRune(c)
			inWord = true
		}
	}
	flush()
	return words
}

var inlineCode = regexp.MustCompile("`([^`]+)`")

// shellLines returns the lines of a file that are shell commands: in markdown, the lines of fenced code blocks
// (except promql ones) and inline code starting with `meterd `; elsewhere, comment lines written as commands, `#   command` (a hash and three spaces).
func shellLines(name, text string) []string {
	var out []string
	inBlock, shell := false, false
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasSuffix(name, ".md") {
			if cmd, ok := strings.CutPrefix(strings.TrimSpace(line), "#   "); ok {
				out = append(out, cmd)
			}
			continue
		}
		if lang, ok := strings.CutPrefix(strings.TrimSpace(line), "```"); ok {
			inBlock, shell = !inBlock, lang != "promql"
			continue
		}
		if inBlock && shell {
			out = append(out, line)
			continue
		}
		for _, m := range inlineCode.FindAllStringSubmatch(line, -1) {
			if strings.HasPrefix(m[1], "meterd ") {
				out = append(out, m[1])
			}
		}
	}
	return out
}

// meterdCommands finds the meterd invocations in shell lines: a word `meterd` (or a path ending in /meterd) at
// the start of a command, after a prompt, environment assignments, sudo, `--` (kubectl exec) or `$(`.
func meterdCommands(lines []string) [][]string {
	var out [][]string
	for _, line := range lines {
		for _, part := range regexp.MustCompile(`&&|\|\||;|\||\$\(`).Split(line, -1) {
			words := shellWords(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(part), "$ ")))
			for len(words) > 0 && (strings.Contains(words[0], "=") && !strings.HasPrefix(words[0], "-") || words[0] == "sudo") {
				words = words[1:]
			}
			if i := slices.Index(words, "--"); i >= 0 && i+1 < len(words) && isMeterd(words[i+1]) {
				words = words[i+1:]
			}
			if len(words) > 0 && isMeterd(words[0]) {
				out = append(out, words[1:])
			}
		}
	}
	return out
}

func isMeterd(w string) bool { return w == "meterd" || strings.HasSuffix(w, "/meterd") }

func portOf(t *testing.T, where, hostport string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%s: %q: %v", where, hostport, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%s: %q: %v", where, hostport, err)
	}
	return n
}

// loadShippedConfig loads a config file shipped under deploy/ with paths rewritten by replace and env applied, as
// serve would.
func loadShippedConfig(t *testing.T, text string, replace *strings.Replacer, env map[string]string) (*config.Config, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "meterd.yaml")
	if err := os.WriteFile(path, []byte(replace.Replace(text)), 0o600); err != nil {
		t.Fatal(err)
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cfg, _, err := config.Load(path, lookup)
	if err != nil {
		t.Fatalf("shipped config does not load:\n%v\n%s", err, replace.Replace(text))
	}
	return cfg, path
}

func opsWriteFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestDeployEnvVarsExist checks every METERD_* name written anywhere in the deployment artifacts and the runbooks.
func TestDeployEnvVarsExist(t *testing.T) {
	files := []string{"Dockerfile", "docs/runbooks.md", "docs/metrics.md"}
	err := filepath.WalkDir(repoPath("deploy"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.Contains(p, string(filepath.Separator)+"local"+string(filepath.Separator)) {
			return err
		}
		rel, _ := filepath.Rel(repoRoot, p)
		files = append(files, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, f := range files {
		for _, name := range envRef.FindAllString(readRepoFile(t, f), -1) {
			seen++
			if !knownEnv(name) {
				t.Errorf("%s: %s is neither a config override (config.EnvVars) nor %s/%s", f, name, koogallery.KeyEnv, tokenEnv)
			}
		}
	}
	if seen < 8 {
		t.Errorf("only %d METERD_* references found: the scan is not looking where the artifacts are", seen)
	}
}

// TestRunbookCommandsExist checks every meterd command line of the runbooks, the metrics catalog and the
// deployment files' comments against the command tree.
func TestRunbookCommandsExist(t *testing.T) {
	n := 0
	for _, f := range []string{"docs/runbooks.md", "docs/metrics.md", "deploy/compose.yaml", "deploy/systemd/meterd.service",
		"deploy/kubernetes/secret.yaml", "deploy/kubernetes/pdb.yaml", "deploy/kubernetes/scale-out/secret.yaml", "Dockerfile"} {
		for _, args := range meterdCommands(shellLines(f, readRepoFile(t, f))) {
			n++
			checkCommandLine(t, f, args)
		}
	}
	if n < 12 {
		t.Errorf("only %d meterd command lines found in the runbooks and artifacts", n)
	}
	t.Logf("%d meterd command lines checked", n)
}

// TestDockerfile checks the build stage builds the real main package with the module's Go version, and that the
// image's entry point and default command are a real command line.
func TestDockerfile(t *testing.T) {
	text := readRepoFile(t, "Dockerfile")
	gomod := readRepoFile(t, "go.mod")
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(gomod)
	if m == nil || !strings.Contains(text, "ARG GO_VERSION="+m[1]) {
		t.Errorf("Dockerfile GO_VERSION must be go.mod's %v", m)
	}
	for _, want := range []string{"CGO_ENABLED=0", "./cmd/meterd", "USER 65532:65532", "distroless/static", "EXPOSE 8080",
		`ENTRYPOINT ["/usr/local/bin/meterd"]`, "METERD_STORE_SQLITE_PATH=/var/lib/meterd/meterd.db", `VOLUME ["/var/lib/meterd"]`} {
		if !strings.Contains(text, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if _, err := os.Stat(repoPath("cmd", "meterd", "main.go")); err != nil {
		t.Error(err)
	}
	if !strings.Contains(readRepoFile(t, "cmd", "meterd", "main.go"), `_ "time/tzdata"`) {
		t.Error("the static image has no /usr/share/zoneinfo: main must embed time/tzdata")
	}
	cmdLine := regexp.MustCompile(`(?m)^CMD (\[.*\])$`).FindStringSubmatch(text)
	if cmdLine == nil {
		t.Fatal("Dockerfile has no CMD")
	}
	var args []string
	if err := json.Unmarshal([]byte(cmdLine[1]), &args); err != nil {
		t.Fatal(err)
	}
	vals := checkCommandLine(t, "Dockerfile CMD", args)
	if vals["config"] != "/etc/meterd/meterd.yaml" {
		t.Errorf("Dockerfile CMD config %q: compose and Kubernetes mount the config at /etc/meterd/meterd.yaml", vals["config"])
	}
}

// TestComposeFile checks deploy/compose.yaml, the scale-out trial, against the binary and its own files: every meterd
// service runs serve with a real role and loads the config it mounts with the environment and secrets it gets;
// the roles are an api, two collectors and a scheduler; the config's brokers, ClickHouse and KooGallery endpoint
// are services of the file that listen there (Kafka in KRaft mode, one node); Prometheus scrapes every meterd
// process.
func TestComposeFile(t *testing.T) {
	docs := yamlDocs(t, "deploy", "compose.yaml")
	if len(docs) != 1 {
		t.Fatalf("compose.yaml: %d documents", len(docs))
	}
	c := docs[0]
	services, _ := c["services"].(map[string]any)
	for _, name := range []string{"api", "collector-1", "collector-2", "scheduler-1", "kafka", "clickhouse", "kgsim", "prometheus"} {
		if services[name] == nil {
			t.Fatalf("compose.yaml: service %s missing", name)
		}
	}
	// Every file it mounts or passes as a secret exists.
	for name, s := range services {
		if b := dig(s, "build", "context"); b != nil {
			if _, err := os.Stat(repoPath("deploy", fmt.Sprint(b), fmt.Sprint(dig(s, "build", "dockerfile")))); err != nil {
				t.Errorf("compose %s build: %v", name, err)
			}
		}
		for _, v := range strs(dig(s, "volumes")) {
			src := strings.Split(v, ":")[0]
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(repoPath("deploy", src)); err != nil {
					t.Errorf("compose %s volume %s: %v", name, v, err)
				}
			}
		}
	}
	secrets, _ := c["secrets"].(map[string]any)
	for name := range secrets {
		if _, err := os.Stat(repoPath("deploy", fmt.Sprint(dig(secrets, name, "file")))); err != nil {
			t.Errorf("compose secret %s: %v", name, err)
		}
	}
	mountTarget := func(svc, target string) string {
		for _, v := range strs(dig(services, svc, "volumes")) {
			parts := strings.Split(v, ":")
			if len(parts) >= 2 && parts[1] == target {
				return parts[0]
			}
		}
		return ""
	}
	envOf := func(svc string) map[string]string {
		env := map[string]string{}
		m, _ := dig(services, svc, "environment").(map[string]any)
		for k, v := range m {
			env[k] = fmt.Sprint(v)
		}
		return env
	}
	dir := t.TempDir()

	// The meterd processes: every service running `meterd serve`.
	var serves []string
	for name := range services {
		if args := strs(dig(services, name, "command")); len(args) > 0 && args[0] == "serve" {
			serves = append(serves, name)
		}
	}
	slices.Sort(serves)
	roleCount := map[serveRole]int{}
	var cfg *config.Config // the api's
	var listenPort int
	keyFiles := map[string]string{} // service -> koogallery.key_file it gets
	for _, name := range serves {
		where := "compose " + name
		m := checkCommandLine(t, where, strs(dig(services, name, "command")))
		if m[""] != "meterd serve" || m["role"] == "" {
			t.Errorf("%s: runs %q with --role %q: every meterd service names its role", where, m[""], m["role"])
			continue
		}
		role, err := parseRole(m["role"])
		if err != nil {
			continue // checkCommandLine reported it
		}
		roleCount[role]++
		src := mountTarget(name, m["config"])
		if src == "" {
			t.Errorf("%s: --config %s is not mounted", where, m["config"])
			continue
		}
		env := envOf(name)
		secretPaths := map[string]string{}
		for _, sec := range strs(dig(services, name, "secrets")) {
			if secrets[sec] == nil {
				t.Errorf("%s: secret %s not declared", where, sec)
				continue
			}
			secretPaths["/run/secrets/"+sec] = filepath.Join(dir, name, "secrets", sec)
			opsWriteFile(t, secretPaths["/run/secrets/"+sec], readRepoFile(t, "deploy", fmt.Sprint(dig(secrets, sec, "file"))))
		}
		for k, v := range env {
			if !knownEnv(k) {
				t.Errorf("%s: env %s is no config key", where, k)
			}
			if strings.HasPrefix(v, "/run/secrets/") {
				if secretPaths[v] == "" {
					t.Errorf("%s: %s=%s is not a secret of the service", where, k, v)
				}
				env[k] = secretPaths[v]
			}
		}
		got, _ := loadShippedConfig(t, readRepoFile(t, "deploy", src), strings.NewReplacer(), env)
		if got.Store.Driver != "clickhouse" || !scaledOut(got) {
			t.Errorf("%s: store.driver %q, kafka.brokers %v: the compose file is the scale-out deployment", where, got.Store.Driver, got.Kafka.Brokers)
		}
		port := portOf(t, where+" listen", got.Listen)
		for _, p := range strs(dig(services, name, "ports")) {
			if !strings.HasSuffix(p, ":"+strconv.Itoa(port)) {
				t.Errorf("%s: port %s does not publish the listen port %d", where, p, port)
			}
		}
		for _, dep := range []string{"kafka", "clickhouse"} {
			if dig(services, name, "depends_on", dep, "condition") != "service_healthy" {
				t.Errorf("%s: must wait for %s to be healthy (it creates topics and its database at start)", where, dep)
			}
		}
		if dig(services, name, "stop_grace_period") == nil {
			t.Errorf("%s: no stop_grace_period (SIGTERM waits up to %s)", where, shutdownGrace)
		}
		keyFiles[name] = got.KooGallery.KeyFile
		if role == roleAPI {
			cfg, listenPort = got, port
			if len(strs(dig(services, name, "ports"))) == 0 {
				t.Errorf("%s: the API publishes no port", where)
			}
		}
	}
	if roleCount[roleAPI] < 1 || roleCount[roleCollector] < 2 || roleCount[roleScheduler] < 1 || roleCount[roleAll] > 0 {
		t.Fatalf("compose roles %v: want an api, two collectors, at least one scheduler, and no all (each role its process)", roleCount)
	}

	// kafka: the official image, one node in KRaft mode (broker and controller), advertising the brokers meterd uses.
	kenv := envOf("kafka")
	if img := fmt.Sprint(dig(services, "kafka", "image")); !strings.HasPrefix(img, "apache/kafka:") {
		t.Errorf("kafka image %s: the official apache/kafka image expected", img)
	}
	if kenv["KAFKA_PROCESS_ROLES"] != "broker,controller" || kenv["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "" || services["zookeeper"] != nil {
		t.Errorf("kafka: KAFKA_PROCESS_ROLES %q, quorum voters %q: one KRaft node expected", kenv["KAFKA_PROCESS_ROLES"], kenv["KAFKA_CONTROLLER_QUORUM_VOTERS"])
	}
	if id, err := base64.RawURLEncoding.DecodeString(kenv["CLUSTER_ID"]); err != nil || len(id) != 16 {
		t.Errorf("kafka CLUSTER_ID %q: a base64 UUID expected (%v)", kenv["CLUSTER_ID"], err)
	}
	// One broker: the internal topics and meterd's topics cannot have more replicas, or groups and topics fail.
	if kenv["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] != "1" || cfg.Kafka.ReplicationFactor > 1 {
		t.Errorf("kafka: offsets topic replication %q, kafka.replication_factor %d: one broker holds one replica",
			kenv["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"], cfg.Kafka.ReplicationFactor)
	}
	if kenv["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] != "false" {
		t.Error("kafka: topics must not be auto-created (meterd creates them with LogAppendTime and its retention)")
	}
	for _, b := range cfg.Kafka.Brokers {
		host, port, _ := net.SplitHostPort(b)
		if (host != "kafka" && dig(services, "kafka", "hostname") != host) || !strings.Contains(kenv["KAFKA_ADVERTISED_LISTENERS"], "://"+b) ||
			!strings.Contains(kenv["KAFKA_LISTENERS"], ":"+port) {
			t.Errorf("kafka.brokers %s: not a listener the kafka service advertises (%s)", b, kenv["KAFKA_ADVERTISED_LISTENERS"])
		}
	}
	if cfg.Kafka.Partitions < roleCount[roleCollector] {
		t.Errorf("kafka.partitions %d < %d collectors: some would stand idle", cfg.Kafka.Partitions, roleCount[roleCollector])
	}

	// clickhouse: the official image, at the address meterd uses, with the user and password meterd has.
	chenv := envOf("clickhouse")
	if img := fmt.Sprint(dig(services, "clickhouse", "image")); !strings.HasPrefix(img, "clickhouse/clickhouse-server:") {
		t.Errorf("clickhouse image %s", img)
	}
	if host, port, _ := net.SplitHostPort(cfg.Store.ClickHouse.Addr); host != "clickhouse" || port != "9000" {
		t.Errorf("store.clickhouse.addr %s: want the clickhouse service's native port, clickhouse:9000", cfg.Store.ClickHouse.Addr)
	}
	if cfg.Store.ClickHouse.Username != chenv["CLICKHOUSE_USER"] {
		t.Errorf("store.clickhouse.username %q, the clickhouse service creates %q", cfg.Store.ClickHouse.Username, chenv["CLICKHOUSE_USER"])
	}
	if b, err := os.ReadFile(cfg.Store.ClickHouse.PasswordFile); err != nil || strings.TrimSpace(string(b)) != chenv["CLICKHOUSE_PASSWORD"] {
		t.Errorf("store.clickhouse.password_file %s (%v) is not the clickhouse service's CLICKHOUSE_PASSWORD", cfg.Store.ClickHouse.PasswordFile, err)
	}
	for _, name := range []string{"kafka", "clickhouse"} {
		if dig(services, name, "healthcheck", "test") == nil {
			t.Errorf("compose %s: no healthcheck (the meterd services wait for it)", name)
		}
	}

	// kgsim: a real command line, listening where meterd's endpoint points, on the path KooGallery uses.
	k := checkCommandLine(t, "compose kgsim", strs(dig(services, "kgsim", "command")))
	if k[""] != "meterd kgsim" {
		t.Errorf("compose kgsim runs %q", k[""])
	}
	u, err := url.Parse(cfg.KooGallery.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	if u.Hostname() != "kgsim" || u.Port() != strconv.Itoa(portOf(t, "kgsim --listen", k["listen"])) || u.Path != kgsim.DefaultPath {
		t.Errorf("compose: koogallery.endpoint %s does not reach the kgsim service (--listen %s, path %s)", u, k["listen"], kgsim.DefaultPath)
	}
	if kf := k["key-file"]; !strings.HasPrefix(kf, "/run/secrets/") || !slices.Contains(strs(dig(services, "kgsim", "secrets")), strings.TrimPrefix(kf, "/run/secrets/")) {
		t.Errorf("compose kgsim: --key-file %s is not one of its secrets", kf)
	}
	for _, name := range serves {
		if r := checkCommandLine(t, name, strs(dig(services, name, "command")))["role"]; r != string(roleScheduler) {
			continue
		}
		if kf := keyFiles[name]; kf == "" || filepath.Base(kf) != filepath.Base(k["key-file"]) {
			t.Errorf("compose: %s and kgsim must share the key secret (%s vs %s)", name, kf, k["key-file"])
		}
	}

	// prometheus: its config and rules are mounted, it scrapes every meterd process on the listen port.
	var promCfgPath, rulesTarget string
	for _, a := range strs(dig(services, "prometheus", "command")) {
		if v, ok := strings.CutPrefix(a, "--config.file="); ok {
			promCfgPath = v
		}
	}
	promSrc := mountTarget("prometheus", promCfgPath)
	if promSrc == "" {
		t.Fatalf("compose prometheus: config %q not mounted", promCfgPath)
	}
	var prom map[string]any
	if err := yaml.Unmarshal([]byte(readRepoFile(t, "deploy", promSrc)), &prom); err != nil {
		t.Fatal(err)
	}
	for _, r := range strs(prom["rule_files"]) {
		rulesTarget = r
		if s := mountTarget("prometheus", r); s != "./prometheus/meterd.rules.yml" {
			t.Errorf("prometheus rule file %s is mounted from %q, want ./prometheus/meterd.rules.yml", r, s)
		}
	}
	if rulesTarget == "" {
		t.Error("prometheus.yml loads no rule file")
	}
	job := dig(prom, "scrape_configs", 0)
	if dig(job, "job_name") != "meterd" {
		t.Errorf("scrape job %v: the rules' MeterdDown matches job=~\"meterd.*\"", dig(job, "job_name"))
	}
	if p := dig(job, "metrics_path"); p != nil && p != "/metrics" {
		t.Errorf("metrics_path %v", p)
	}
	var want []string
	for _, name := range serves {
		want = append(want, name+":"+strconv.Itoa(listenPort))
	}
	tg := strs(dig(job, "static_configs", 0, "targets"))
	slices.Sort(tg)
	if !slices.Equal(tg, want) {
		t.Errorf("prometheus targets %v, want every meterd process %v", tg, want)
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		// promtool checks the whole Prometheus config with the rule file at its real place.
		local := strings.ReplaceAll(readRepoFile(t, "deploy", promSrc), rulesTarget, mustAbs(t, repoPath("deploy", "prometheus", "meterd.rules.yml")))
		p := filepath.Join(dir, "prometheus.yml")
		opsWriteFile(t, p, local)
		if out, err := exec.Command(promtool, "check", "config", p).CombinedOutput(); err != nil {
			t.Errorf("promtool check config: %v\n%s", err, out)
		}
	}
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// k8sObjects reads every manifest of one kustomization (deploy/kubernetes/<sub...>) by kind/name. Its
// subdirectories are other kustomizations (scale-out): it must not list them.
func k8sObjects(t *testing.T, sub ...string) map[string]map[string]any {
	t.Helper()
	dir := append([]string{"deploy", "kubernetes"}, sub...)
	part := func(name string) []string { return append(slices.Clone(dir), name) }
	objs := map[string]map[string]any{}
	kust := yamlDocs(t, part("kustomization.yaml")...)[0]
	listed := strs(kust["resources"])
	entries, err := os.ReadDir(repoPath(dir...))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			if slices.Contains(listed, e.Name()) {
				t.Errorf("%s/kustomization.yaml lists %s: another deployment of the same names", filepath.Join(dir...), e.Name())
			}
			continue
		}
		if e.Name() == "kustomization.yaml" {
			continue
		}
		if !slices.Contains(listed, e.Name()) {
			t.Errorf("%s/kustomization.yaml does not list %s", filepath.Join(dir...), e.Name())
		}
		for _, d := range yamlDocs(t, part(e.Name())...) {
			if d["apiVersion"] == nil || d["kind"] == nil || dig(d, "metadata", "name") == nil {
				t.Errorf("%s: a document without apiVersion, kind or metadata.name", e.Name())
				continue
			}
			objs[fmt.Sprintf("%s/%s", d["kind"], dig(d, "metadata", "name"))] = d
		}
	}
	for _, l := range listed {
		if _, err := os.Stat(repoPath(part(l)...)); err != nil {
			t.Errorf("%s/kustomization.yaml: %v", filepath.Join(dir...), err)
		}
	}
	return objs
}

// matches tells whether a label selector (matchLabels or a Service's selector) selects pods with these labels.
func matches(selector, labels any) bool {
	sel, _ := selector.(map[string]any)
	lab, _ := labels.(map[string]any)
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if lab[k] != v {
			return false
		}
	}
	return true
}

// TestKubernetesScaleOutManifests checks deploy/kubernetes/scale-out: an api, a collector and a scheduler
// Deployment running serve with their role, two collectors and two schedulers (the election makes one act), each
// selected by its own PodDisruptionBudget and by nothing else, the API Service selecting only the API; probes on
// /healthz and /readyz on the listen port, resources, a shutdown longer than serve's; and the ConfigMap's config
// loading with the Secret's files where it reads them, on ClickHouse and Kafka.
func TestKubernetesScaleOutManifests(t *testing.T) {
	objs := k8sObjects(t, "scale-out")
	roles := map[string]serveRole{"Deployment/meterd-api": roleAPI, "Deployment/meterd-collector": roleCollector,
		"Deployment/meterd-scheduler": roleScheduler}
	for _, want := range []string{"Deployment/meterd-api", "Deployment/meterd-collector", "Deployment/meterd-scheduler",
		"Service/meterd", "ConfigMap/meterd-scale-out-config", "Secret/meterd-secrets", "PodDisruptionBudget/meterd-api",
		"PodDisruptionBudget/meterd-collector", "PodDisruptionBudget/meterd-scheduler"} {
		if objs[want] == nil {
			t.Fatalf("deploy/kubernetes/scale-out: %s missing", want)
		}
	}
	for name, o := range objs {
		if o["kind"] == "StatefulSet" || o["kind"] == "PersistentVolumeClaim" {
			t.Errorf("%s: the scale-out roles keep no local state (ClickHouse and Kafka do)", name)
		}
	}
	wantReplicas := map[serveRole]int{roleAPI: 2, roleCollector: 2, roleScheduler: 2}
	podLabels := map[string]any{}
	var cfg *config.Config
	for name, role := range roles {
		d := objs[name]
		labels := dig(d, "spec", "template", "metadata", "labels")
		podLabels[name] = labels
		if !matches(dig(d, "spec", "selector", "matchLabels"), labels) {
			t.Errorf("%s: its selector does not match its pods", name)
		}
		if r, _ := dig(d, "spec", "replicas").(int); r < wantReplicas[role] {
			t.Errorf("%s: replicas %d, want %d", name, r, wantReplicas[role])
		}
		if dig(d, "spec", "strategy", "rollingUpdate", "maxUnavailable") != 0 {
			t.Errorf("%s: a rollout must start a new pod before stopping an old one (maxUnavailable 0)", name)
		}
		grace, _ := dig(d, "spec", "template", "spec", "terminationGracePeriodSeconds").(int)
		if time.Duration(grace)*time.Second <= shutdownGrace {
			t.Errorf("%s: terminationGracePeriodSeconds %d must exceed serve's shutdown grace %s", name, grace, shutdownGrace)
		}
		c := dig(d, "spec", "template", "spec", "containers", 0)
		args := checkCommandLine(t, name+" args", strs(dig(c, "args")))
		if args[""] != "meterd serve" || args["role"] != string(role) {
			t.Errorf("%s: runs %q --role %q, want serve --role %s", name, args[""], args["role"], role)
		}
		for _, r := range []string{"cpu", "memory"} {
			if dig(c, "resources", "requests", r) == nil {
				t.Errorf("%s: the container requests no %s", name, r)
			}
		}
		if dig(c, "resources", "limits", "memory") == nil {
			t.Errorf("%s: no memory limit (GOMEMLIMIT follows it)", name)
		}
		for _, e := range dig(c, "env").([]any) {
			if n := fmt.Sprint(dig(e, "name")); strings.HasPrefix(n, "METERD_") && !knownEnv(n) {
				t.Errorf("%s: env %s is no config key", name, n)
			}
		}

		// The config: the mounted ConfigMap key at --config, the Secret's keys where the config reads them.
		volumes := map[string]any{}
		for _, v := range dig(d, "spec", "template", "spec", "volumes").([]any) {
			volumes[fmt.Sprint(dig(v, "name"))] = v
		}
		dir := t.TempDir()
		var pairs []string
		var cfgText string
		for _, m := range dig(c, "volumeMounts").([]any) {
			v, path := volumes[fmt.Sprint(dig(m, "name"))], fmt.Sprint(dig(m, "mountPath"))
			switch {
			case v == nil:
				t.Errorf("%s: volumeMount %v has no volume", name, m)
			case dig(v, "configMap") != nil && path == filepath.Dir(args["config"]):
				cfgText, _ = dig(objs["ConfigMap/"+fmt.Sprint(dig(v, "configMap", "name"))], "data", filepath.Base(args["config"])).(string)
			case dig(v, "secret") != nil:
				secret := objs["Secret/"+fmt.Sprint(dig(v, "secret", "secretName"))]
				if secret == nil {
					t.Fatalf("%s: mounted Secret %v missing", name, dig(v, "secret", "secretName"))
				}
				local := filepath.Join(dir, "secrets")
				for k, val := range dig(secret, "stringData").(map[string]any) {
					opsWriteFile(t, filepath.Join(local, k), fmt.Sprint(val))
				}
				pairs = append(pairs, path, local)
			}
		}
		if cfgText == "" {
			t.Fatalf("%s: --config %s is not a key of a mounted ConfigMap", name, args["config"])
		}
		got, _ := loadShippedConfig(t, cfgText, strings.NewReplacer(pairs...), nil)
		for what, p := range map[string]string{"koogallery.key_file": got.KooGallery.KeyFile, "ingest.tokens_file": got.Ingest.TokensFile,
			"store.clickhouse.password_file": got.Store.ClickHouse.PasswordFile} {
			if _, err := os.Stat(p); err != nil {
				t.Errorf("%s: %s: not in a mounted Secret: %v", name, what, err)
			}
		}
		if got.Store.Driver != "clickhouse" || !scaledOut(got) {
			t.Errorf("%s: store.driver %q, kafka.brokers %v: the scale-out deployment runs on ClickHouse and Kafka", name, got.Store.Driver, got.Kafka.Brokers)
		}
		cfg = got

		// Ports agree: listen, containerPort, the probes, the scrape annotation; probes on /healthz and /readyz.
		listenPort := portOf(t, name+" listen", got.Listen)
		portName := ""
		for _, p := range dig(c, "ports").([]any) {
			if dig(p, "containerPort") == listenPort {
				portName = fmt.Sprint(dig(p, "name"))
			}
		}
		if portName == "" {
			t.Fatalf("%s: no containerPort is the listen port %d", name, listenPort)
		}
		for probe, path := range map[string]string{"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
			if dig(c, probe, "httpGet", "port") != portName || dig(c, probe, "httpGet", "path") != path {
				t.Errorf("%s: %s %v, want GET %s on port %s", name, probe, dig(c, probe, "httpGet"), path, portName)
			}
		}
		ann := dig(d, "spec", "template", "metadata", "annotations").(map[string]any)
		if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != strconv.Itoa(listenPort) || ann["prometheus.io/path"] != "/metrics" {
			t.Errorf("%s: scrape annotations %v (every process must be scraped: the collector and scheduler alerts)", name, ann)
		}
	}
	if cfg.Kafka.Partitions < wantReplicas[roleCollector] {
		t.Errorf("kafka.partitions %d: fewer than the collectors, some would stand idle", cfg.Kafka.Partitions)
	}
	if cfg.Kafka.ReplicationFactor == 1 {
		t.Error("kafka.replication_factor 1: a broker lost loses acknowledged events; 0 (the broker default) or 3")
	}

	// Each role's pods are selected by its own budget and, for the API, the Service; never by another role's.
	selectors := map[string]any{"Service/meterd": dig(objs["Service/meterd"], "spec", "selector")}
	for name, o := range objs {
		if o["kind"] == "PodDisruptionBudget" {
			selectors[name] = dig(o, "spec", "selector", "matchLabels")
			if dig(o, "spec", "minAvailable") != 1 {
				t.Errorf("%s: minAvailable %v, want 1 (of 2: one eviction at a time)", name, dig(o, "spec", "minAvailable"))
			}
		}
	}
	for sel, selector := range selectors {
		var selected []string
		for name := range roles {
			if matches(selector, podLabels[name]) {
				selected = append(selected, name)
			}
		}
		want := "Deployment/meterd-" + strings.TrimPrefix(strings.TrimPrefix(sel, "PodDisruptionBudget/meterd-"), "Service/")
		if sel == "Service/meterd" {
			want = "Deployment/meterd-api"
		}
		if len(selected) != 1 || selected[0] != want {
			t.Errorf("%s selects %v, want only %s", sel, selected, want)
		}
	}
	if tp := dig(objs["Service/meterd"], "spec", "ports", 0, "targetPort"); tp != "http" {
		t.Errorf("Service/meterd targetPort %v is not the container's port", tp)
	}
}

// TestKubernetesManifests checks the manifests against each other and the binary, then serves the ConfigMap's
// config (its paths rewritten to temporary ones, the Secret's values written where the Secret is mounted) and
// asks it the probe and scrape paths the manifests use.
func TestKubernetesManifests(t *testing.T) {
	objs := k8sObjects(t)
	for _, want := range []string{"StatefulSet/meterd", "Service/meterd", "Service/meterd-headless", "ConfigMap/meterd-config",
		"Secret/meterd-secrets", "PodDisruptionBudget/meterd"} {
		if objs[want] == nil {
			t.Fatalf("deploy/kubernetes: %s missing", want)
		}
	}
	sts := objs["StatefulSet/meterd"]
	if r := dig(sts, "spec", "replicas"); r != 1 {
		t.Errorf("StatefulSet replicas %v: the embedded store allows exactly one", r)
	}
	if dig(sts, "spec", "serviceName") != "meterd-headless" || dig(objs["Service/meterd-headless"], "spec", "clusterIP") != "None" {
		t.Error("the StatefulSet must be governed by the headless Service")
	}
	podLabels := dig(sts, "spec", "template", "metadata", "labels").(map[string]any)
	for _, sel := range []any{dig(sts, "spec", "selector", "matchLabels"), dig(objs["Service/meterd"], "spec", "selector"),
		dig(objs["PodDisruptionBudget/meterd"], "spec", "selector", "matchLabels")} {
		for k, v := range sel.(map[string]any) {
			if podLabels[k] != v {
				t.Errorf("selector %s=%v does not match the pod labels %v", k, v, podLabels)
			}
		}
	}
	if dig(objs["PodDisruptionBudget/meterd"], "spec", "minAvailable") != 1 {
		t.Error("PodDisruptionBudget: minAvailable 1 expected for the single replica")
	}
	grace, _ := dig(sts, "spec", "template", "spec", "terminationGracePeriodSeconds").(int)
	if time.Duration(grace)*time.Second <= shutdownGrace {
		t.Errorf("terminationGracePeriodSeconds %d must exceed serve's shutdown grace %s", grace, shutdownGrace)
	}
	c := dig(sts, "spec", "template", "spec", "containers", 0)
	for _, r := range []string{"cpu", "memory"} {
		if dig(c, "resources", "requests", r) == nil {
			t.Errorf("container requests no %s", r)
		}
	}
	args := checkCommandLine(t, "StatefulSet args", strs(dig(c, "args")))
	if args[""] != "meterd serve" {
		t.Fatalf("the container runs %q", args[""])
	}
	for _, e := range dig(c, "env").([]any) {
		if n := fmt.Sprint(dig(e, "name")); strings.HasPrefix(n, "METERD_") && !knownEnv(n) {
			t.Errorf("container env %s is no config key", n)
		}
	}

	// Mounts: config at --config, the Secret's keys where the config reads them, the volume claim at the store.
	volumes := map[string]any{}
	for _, v := range dig(sts, "spec", "template", "spec", "volumes").([]any) {
		volumes[fmt.Sprint(dig(v, "name"))] = v
	}
	for _, v := range dig(sts, "spec", "volumeClaimTemplates").([]any) {
		volumes[fmt.Sprint(dig(v, "metadata", "name"))] = map[string]any{"pvc": true}
	}
	mounts := map[string]any{} // mountPath -> volume
	for _, m := range dig(c, "volumeMounts").([]any) {
		v := volumes[fmt.Sprint(dig(m, "name"))]
		if v == nil {
			t.Errorf("volumeMount %v has no volume", m)
		}
		mounts[fmt.Sprint(dig(m, "mountPath"))] = v
	}
	cfgMount := mounts[filepath.Dir(args["config"])]
	cmName := fmt.Sprint(dig(cfgMount, "configMap", "name"))
	cfgText, ok := dig(objs["ConfigMap/"+cmName], "data", filepath.Base(args["config"])).(string)
	if !ok {
		t.Fatalf("--config %s is not a key of a mounted ConfigMap", args["config"])
	}
	dir := t.TempDir()
	var pairs []string
	for path, v := range mounts {
		switch {
		case dig(v, "secret") != nil:
			secret := objs["Secret/"+fmt.Sprint(dig(v, "secret", "secretName"))]
			if secret == nil {
				t.Fatalf("mounted Secret %v missing", dig(v, "secret", "secretName"))
			}
			local := filepath.Join(dir, "secrets")
			for k, val := range dig(secret, "stringData").(map[string]any) {
				opsWriteFile(t, filepath.Join(local, k), fmt.Sprint(val))
			}
			pairs = append(pairs, path, local)
		case dig(v, "pvc") == true:
			pairs = append(pairs, path, filepath.Join(dir, "data"))
		}
	}
	replace := strings.NewReplacer(pairs...)
	cfg, cfgPath := loadShippedConfig(t, cfgText, replace, nil)
	for what, p := range map[string]string{"koogallery.key_file": cfg.KooGallery.KeyFile, "ingest.tokens_file": cfg.Ingest.TokensFile} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: not in a mounted Secret: %v", what, err)
		}
	}
	if !strings.HasPrefix(cfg.Store.SQLite.Path, filepath.Join(dir, "data")+string(filepath.Separator)) {
		t.Errorf("store.sqlite.path %s is not on the volume claim", cfg.Store.SQLite.Path)
	}

	// Ports agree: listen, containerPort, the Service, the scrape annotation.
	listenPort := portOf(t, "ConfigMap listen", cfg.Listen)
	portName := ""
	for _, p := range dig(c, "ports").([]any) {
		if dig(p, "containerPort") == listenPort {
			portName = fmt.Sprint(dig(p, "name"))
		}
	}
	if portName == "" {
		t.Fatalf("no containerPort is the listen port %d", listenPort)
	}
	for _, svc := range []string{"Service/meterd", "Service/meterd-headless"} {
		if tp := dig(objs[svc], "spec", "ports", 0, "targetPort"); tp != portName && tp != listenPort {
			t.Errorf("%s targetPort %v is not the container's port", svc, tp)
		}
	}
	ann := dig(sts, "spec", "template", "metadata", "annotations").(map[string]any)
	if ann["prometheus.io/port"] != strconv.Itoa(listenPort) {
		t.Errorf("prometheus.io/port %v", ann["prometheus.io/port"])
	}

	// The probes and the scrape path are answered by serve running this very config.
	paths := []string{fmt.Sprint(ann["prometheus.io/path"])}
	for _, probe := range []string{"startupProbe", "readinessProbe", "livenessProbe"} {
		if dig(c, probe, "httpGet", "port") != portName {
			t.Errorf("%s port %v", probe, dig(c, probe, "httpGet", "port"))
		}
		paths = append(paths, fmt.Sprint(dig(c, probe, "httpGet", "path")))
	}
	addr := opsServeInProcess(t, cfgPath, map[string]string{"METERD_KOOGALLERY_ENDPOINT": "http://127.0.0.1:9/unreachable"}, args["role"])
	for _, p := range paths {
		res, err := http.Get("http://" + addr + p)
		if err != nil {
			t.Fatal(err)
		}
		_ = res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s", p, res.Status)
		}
	}
}

// opsServeInProcess runs serve in this process with cfgPath on a free loopback port, the given environment
// overrides, and waits until /readyz answers 200. It stops when the test ends.
func opsServeInProcess(t *testing.T, cfgPath string, env map[string]string, role string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	t.Setenv("METERD_LISTEN", addr)
	for k, v := range env {
		t.Setenv(k, v)
	}
	args := []string{"serve", "--config", cfgPath}
	if role != "" {
		args = append(args, "--role", role)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, strings.NewReader(""), io.Discard, &stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("serve exited %d:\n%s", code, stderr.String())
			}
		case <-time.After(30 * time.Second):
			t.Errorf("serve did not stop:\n%s", stderr.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case code := <-done:
			t.Fatalf("serve exited %d before it was ready:\n%s", code, stderr.String())
		default:
		}
		res, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			_ = res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return addr
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve not ready: %v\n%s", err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// unitFile parses a systemd unit: key -> values in order, across sections.
func unitFile(t *testing.T, text string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	sc := bufio.NewScanner(strings.NewReader(text))
	section := ""
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
			if !slices.Contains([]string{"Unit", "Service", "Install"}, section) {
				t.Errorf("unit section %q", section)
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Errorf("unit line %q", line)
				continue
			}
			out[k] = append(out[k], v)
		}
	}
	return out
}

// TestSystemdUnitExecStartRuns parses deploy/systemd/meterd.service and runs its ExecStartPre and ExecStart with
// the built binary, the shipped config and its key and tokens files at temporary paths, and --validate: the
// command line, the config and the environment the unit gives are accepted by the real binary. Where
// systemd-analyze is installed, systemd's own checker verifies the unit too.
func TestSystemdUnitExecStartRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	unitText := readRepoFile(t, "deploy", "systemd", "meterd.service")
	unit := unitFile(t, unitText)
	for _, k := range []string{"ExecStart", "ExecStartPre", "StateDirectory", "ConfigurationDirectory", "User", "NoNewPrivileges",
		"ProtectSystem", "TimeoutStopSec", "KillSignal", "ExecReload"} {
		if len(unit[k]) == 0 {
			t.Errorf("unit lacks %s=", k)
		}
	}
	if stop, err := time.ParseDuration(unit["TimeoutStopSec"][0] + "s"); err != nil || stop <= shutdownGrace {
		t.Errorf("TimeoutStopSec %v must exceed serve's shutdown grace %s", unit["TimeoutStopSec"], shutdownGrace)
	}
	// The unit's own paths: /etc/meterd from ConfigurationDirectory, /var/lib/meterd from StateDirectory.
	if unit["ConfigurationDirectory"][0] != "meterd" || unit["StateDirectory"][0] != "meterd" {
		t.Fatalf("ConfigurationDirectory %v, StateDirectory %v", unit["ConfigurationDirectory"], unit["StateDirectory"])
	}
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	etc, state := filepath.Join(dir, "etc", "meterd"), filepath.Join(dir, "var", "lib", "meterd")
	replace := strings.NewReplacer("/usr/local/bin/meterd", bin, "/etc/meterd", etc, "/var/lib/meterd", state)
	cfgText := readRepoFile(t, "deploy", "systemd", "meterd.yaml")
	opsWriteFile(t, filepath.Join(etc, "meterd.yaml"), replace.Replace(cfgText))
	env := map[string]string{}
	for _, e := range unit["Environment"] {
		k, v, _ := strings.Cut(e, "=")
		if !knownEnv(k) {
			t.Errorf("unit Environment %s is no config key", k)
		}
		env[k] = replace.Replace(v)
	}
	// The secrets the config names live in ConfigurationDirectory (the install notes put them there), the store in
	// StateDirectory.
	cfg, _ := loadShippedConfigAt(t, replace.Replace(cfgText), env, func(c *config.Config) {
		opsWriteFile(t, c.KooGallery.KeyFile, "test-key")
		opsWriteFile(t, c.Ingest.TokensFile, "test-token\n")
	})
	for what, p := range map[string]string{"koogallery.key_file": cfg.KooGallery.KeyFile, "ingest.tokens_file": cfg.Ingest.TokensFile} {
		if !strings.HasPrefix(p, etc+"/") {
			t.Errorf("%s %s is not in ConfigurationDirectory", what, p)
		}
	}
	if !strings.HasPrefix(cfg.Store.SQLite.Path, state+"/") {
		t.Errorf("store.sqlite.path %s is not in StateDirectory", cfg.Store.SQLite.Path)
	}
	if err := os.MkdirAll(state, 0o750); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"ExecStartPre", "ExecStart"} {
		line := unit[key][0]
		words := shellWords(line)
		if len(words) == 0 || words[0] != "/usr/local/bin/meterd" {
			t.Fatalf("%s=%s: want /usr/local/bin/meterd", key, line)
		}
		vals := checkCommandLine(t, key, words[1:])
		if vals["config"] != "/etc/meterd/meterd.yaml" {
			t.Errorf("%s: --config %q is not in ConfigurationDirectory", key, vals["config"])
		}
		args := shellWords(replace.Replace(line))
		if !slices.Contains(args, "--validate") {
			args = append(args, "--validate")
		}
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		for k, v := range env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		cmd.Dir = state
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "config ok") {
			t.Errorf("%s %v: %v\n%s", key, args, err, out)
		}
	}
	if sa, err := exec.LookPath("systemd-analyze"); err == nil {
		// It exits 0 on unknown keys and bad values but prints them, so any output is a failure.
		unitPath := filepath.Join(dir, "meterd.service")
		opsWriteFile(t, unitPath, strings.ReplaceAll(unitText, "/usr/local/bin/meterd", bin))
		out, err := exec.Command(sa, "verify", unitPath).CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	}
}

// loadShippedConfigAt loads config text as serve would, after prepare has created the files it names (prepare
// sees the config parsed without validation of those files).
func loadShippedConfigAt(t *testing.T, text string, env map[string]string, prepare func(*config.Config)) (*config.Config, string) {
	t.Helper()
	var raw config.Config
	if err := yaml.Unmarshal([]byte(text), &raw); err != nil {
		t.Fatal(err)
	}
	prepare(&raw)
	return loadShippedConfig(t, text, strings.NewReplacer(), env)
}
