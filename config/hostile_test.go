package config

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// TestLoadHostileFiles is the table of testdata/hostile: files written to break the loader (alias bombs, deep
// nesting, invalid encodings, overflowing numbers, look-alike hosts, odd schemes and zones). Each one loads or
// fails as listed, quickly, without a panic, and a failure names the file.
func TestLoadHostileFiles(t *testing.T) {
	tests := []struct {
		file    string
		wantErr []string // substrings of the problem lines; empty: valid
	}{
		{"billion_laughs.yaml", []string{"field a not found", "field b not found", "field c not found", "field d not found",
			"field e not found", "field f not found", "field g not found", "field h not found", "yaml: unmarshal errors"}},
		{"billion_laughs_in_known_key.yaml", []string{"yaml: unmarshal errors", "line 4: cannot unmarshal !!seq into string",
			"line 5: cannot unmarshal !!seq into string", "line 6: cannot unmarshal !!seq into string",
			"line 7: cannot unmarshal !!seq into string", "line 8: cannot unmarshal !!seq into string",
			"line 9: cannot unmarshal !!seq into string", "line 10: cannot unmarshal !!seq into string",
			"line 11: cannot unmarshal !!seq into string", "line 12: cannot unmarshal !!seq into string"}},
		{"alias_into_known_key.yaml", []string{"yaml: unmarshal errors", "line 2: field x-defaults not found"}},
		{"merge_key.yaml", []string{"yaml: unmarshal errors", "line 1: field base not found"}},
		{"deep_nesting.yaml", []string{"exceeded max depth of 10000"}},
		{"duplicate_key.yaml", []string{"yaml: unmarshal errors", `line 2: mapping key "listen" already defined at line 1`}},
		{"invalid_utf8.yaml", []string{"invalid leading UTF-8 octet"}},
		{"nul_byte.yaml", []string{"control characters are not allowed"}},
		{"bom.yaml", nil},
		{"tabs_indent.yaml", []string{"found character that cannot start any token"}},
		{"not_a_mapping.yaml", []string{"yaml: unmarshal errors", "cannot unmarshal !!seq into config.Config"}},
		{"yaml_tags.yaml", nil}, // !!binary decodes to the text it encodes: a valid loopback address
		{"huge_int.yaml", []string{"yaml: unmarshal errors", "cannot unmarshal !!float `9999999...` into int"}},
		{"negative_duration.yaml", []string{"schedule.close_delay: -5m0s must be at least 0s"}},
		{"overflow_duration.yaml", []string{`push.retry_max: "9999999999999h" is not a duration`}},
		{"overflow_size.yaml", []string{`ingest.max_body: "9999999999999999GiB" is not a size`}},
		{"listen_ipv6_any.yaml", []string{`listen: "[::]:8080" is reachable beyond loopback`}},
		{"listen_lookalike_host.yaml", []string{`listen: "localhost.attacker.example:8080" is reachable beyond loopback`}},
		{"listen_short_loopback.yaml", []string{`listen: "127.1:8080" is reachable beyond loopback`}},
		{"listen_mapped_loopback.yaml", nil},
		{"listen_newline.yaml", []string{`listen: "127.0.0.1:8080\n0.0.0.0:80" must be host:port`}},
		{"endpoint_javascript.yaml", []string{`koogallery.endpoint: "javascript:alert(1)" must be a full http(s) URL`}},
		{"endpoint_file.yaml", []string{`koogallery.endpoint: "file:///etc/passwd" must be a full http(s) URL`}},
		{"endpoint_no_host.yaml", []string{`koogallery.endpoint: "https:///usage" must be a full http(s) URL`}},
		{"tokens_file_directory.yaml", []string{"ingest.tokens_file: testdata is not a regular file"}},
		{"timezone_path.yaml", []string{`plans[0].timezone: unknown time zone "../../../../etc/localtime"`}},
		{"timezone_local.yaml", []string{`plans[0].timezone: "Local" depends on the machine`}},
		{"price_exponent.yaml", []string{`plans[0].unit_price: "1e999999999": more than 28 integer digits`}},
		{"price_nan.yaml", []string{`plans[0].unit_price: ".nan": not a decimal number`}},
		{"jsonpath_script.yaml", []string{`meters[0].value_property: "$[?(@.price > 0)].tokens" must select exactly one value`}},
		// Accepted: an instance id is opaque text; logs quote it (slog), the CSV report quotes it, the HTML escapes it.
		{"instance_id_newline.yaml", nil},
	}
	files, err := filepath.Glob(filepath.Join("testdata", "hostile", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, tt := range tests {
		listed[tt.file] = true
	}
	for _, f := range files {
		if !listed[filepath.Base(f)] {
			t.Errorf("%s has no case", f)
		}
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			path := filepath.Join("testdata", "hostile", tt.file)
			start := time.Now()
			c, _, err := Load(path, noEnv)
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("took %s", d)
			}
			if len(tt.wantErr) == 0 {
				if err != nil || c == nil {
					t.Fatalf("Load: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("loaded")
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error does not name the file: %v", err)
			}
			msg := err.Error()
			for _, w := range tt.wantErr {
				if !strings.Contains(msg, w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestHostileEnvironment: overrides from the environment are checked like the file: a bad value names the
// variable and the key, and never panics.
func TestHostileEnvironment(t *testing.T) {
	for name, want := range map[string]string{
		"METERD_KOOGALLERY_BATCH_SIZE": `koogallery.batch_size (env METERD_KOOGALLERY_BATCH_SIZE): "1e3" is not an integer`,
		"METERD_SCHEDULE_CLOSE_DELAY":  `schedule.close_delay (env METERD_SCHEDULE_CLOSE_DELAY): "1e3" is not a duration`,
		"METERD_INGEST_MAX_BODY":       `ingest.max_body (env METERD_INGEST_MAX_BODY): "1e3" is not a size`,
		"METERD_LISTEN":                `listen: "1e3" must be host:port`,
	} {
		_, _, err := Load("", envOf(map[string]string{name: "1e3"}))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s=1e3: %v, want %q", name, err, want)
		}
	}
}

// FuzzLoad feeds arbitrary bytes to the config loader (the YAML decoding, the environment overrides and the
// validation of Load, without the file): it must never panic; a refusal lists problems, each on its own non-empty
// line; an accepted config has its meters and catalog, validates again to the same result, and survives a
// round trip through YAML (what meterd would write back is what it reads).
func FuzzLoad(f *testing.F) {
	for _, dir := range []string{"good", "bad", "hostile"} {
		files, err := filepath.Glob(filepath.Join("testdata", dir, "*.yaml"))
		if err != nil {
			f.Fatal(err)
		}
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			if len(data) < 4096 {
				f.Add(data)
			}
		}
	}
	f.Add([]byte("schedule: {close_delay: 1e3}\n"))
	f.Add([]byte("meters: [{key: a, event_type: b, aggregation: SUM, value_property: $.a}]\nplans: [{sku: A, meter: a, currency: CNY, mode: tier, brackets: [{up_to: \"1\", unit_price: \"1\"}, {unit_price: \"0\"}]}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := Default()
		if err := decode(data, &c); err != nil {
			if strings.TrimSpace(err.Error()) == "" {
				t.Fatal("empty decode error")
			}
			return
		}
		if _, err := applyEnv(&c, noEnv); err != nil {
			t.Fatalf("no environment, yet: %v", err)
		}
		err := c.Validate()
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if strings.TrimSpace(line) == "" {
					t.Fatalf("empty problem line in %q", err)
				}
			}
			return
		}
		if c.MeterSet() == nil || c.Catalog() == nil {
			t.Fatal("valid config without meters or catalog")
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("validates once, not twice: %v", err)
		}
		out, err := yaml.Marshal(&c)
		if err != nil {
			t.Fatalf("marshal a valid config: %v", err)
		}
		back := Default()
		if err := decode(out, &back); err != nil && !errors.Is(err, io.EOF) {
			t.Fatalf("re-read what was written: %v\n%s", err, out)
		}
		if err := back.Validate(); err != nil {
			t.Fatalf("a valid config written back is invalid: %v\n%s", err, out)
		}
		if !bytes.Equal(mustMarshal(t, &back), out) {
			t.Fatalf("round trip changed the config:\n%s\n---\n%s", out, mustMarshal(t, &back))
		}
	})
}

func mustMarshal(t *testing.T, c *Config) []byte {
	t.Helper()
	out, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
