package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/meterd/meterd/internal/tlstest"
)

// TestSecureConnectionFiles is the table of the good and bad files for kafka.tls, kafka.sasl and
// store.clickhouse.tls.
func TestSecureConnectionFiles(t *testing.T) {
	tests := []struct {
		file    string
		wantErr []string
	}{
		{file: "bad/kafka_tls.yaml", wantErr: []string{
			"kafka.tls.ca_file: testdata/tokens.txt holds no PEM certificate",
			"kafka.tls.cert_file: required with kafka.tls.key_file (mutual TLS needs both)",
			`kafka.tls.server_name: "kafka.internal:9093" must be a host name (no port, scheme or spaces)`,
		}},
		{file: "bad/kafka_sasl_plain.yaml", wantErr: []string{
			"kafka.sasl.username: required with mechanism plain",
			"kafka.sasl.password_file: open testdata/no-such-password: no such file or directory",
			"kafka.sasl.mechanism: plain sends the password in clear text, and broker kafka-1.internal:9092 is not on loopback: enable kafka.tls, or use scram-sha-256 or scram-sha-512",
		}},
		{file: "bad/kafka_sasl_mechanism.yaml", wantErr: []string{
			`kafka.sasl.mechanism: "SCRAM-SHA-1" must be plain, scram-sha-256 or scram-sha-512 (or empty: no authentication)`,
		}},
		{file: "bad/clickhouse_tls.yaml", wantErr: []string{
			"store.clickhouse.tls.enabled: false, but ca_file, cert_file, key_file or server_name is set: set enabled: true, or remove them",
		}},
		{file: "good/secure_connections.yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			c, _, err := Load(filepath.Join("testdata", tt.file), noEnv)
			if len(tt.wantErr) > 0 {
				checkProblems(t, err, tt.wantErr)
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := Kafka{Brokers: []string{"kafka-1.internal:9093", "kafka-2.internal:9093"}, TLS: ClientTLS{Enabled: true},
				SASL: KafkaSASL{Mechanism: SASLSCRAMSHA512, Username: "meterd", PasswordFile: "testdata/tokens.txt"}}
			if c.Kafka.TLS != want.TLS || c.Kafka.SASL != want.SASL ||
				c.Store.ClickHouse.TLS != (ClientTLS{Enabled: true, ServerName: "clickhouse.internal"}) {
				t.Errorf("kafka %+v %+v, clickhouse tls %+v", c.Kafka.TLS, c.Kafka.SASL, c.Store.ClickHouse.TLS)
			}
			tc, err := c.Store.ClickHouse.TLS.Load("store.clickhouse.tls")
			if err != nil || tc == nil || tc.RootCAs != nil || tc.ServerName != "clickhouse.internal" || tc.InsecureSkipVerify {
				t.Errorf("store.clickhouse.tls loads as %+v, %v: want the system's roots and the server name", tc, err)
			}
		})
	}
}

// TestSecureConnectionRules sets the keys from the environment (as METERD_<PATH>) and checks every rule with its
// key path.
func TestSecureConnectionRules(t *testing.T) {
	certs := tlstest.NewPKI(t, "kafka.internal") // its server key is a key that does not match the client certificate
	dir := t.TempDir()
	password := filepath.Join(dir, "password")
	emptyPassword := filepath.Join(dir, "empty")
	for f, data := range map[string]string{password: "s3cret\n", emptyPassword: " \n"} {
		if err := os.WriteFile(f, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	scaleOut := map[string]string{"METERD_STORE_DRIVER": "clickhouse", "METERD_KAFKA_BROKERS": "kafka.internal:9093"}
	with := func(vars map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range scaleOut {
			out[k] = v
		}
		for k, v := range vars {
			out[k] = v
		}
		return out
	}
	tests := []struct {
		name    string
		env     map[string]string
		wantErr []string // empty: valid
		check   func(t *testing.T, c *Config)
	}{
		{name: "mutual TLS to both, SCRAM", env: with(map[string]string{
			"METERD_KAFKA_TLS_ENABLED": "true", "METERD_KAFKA_TLS_CA_FILE": certs.CAFile, "METERD_KAFKA_TLS_CERT_FILE": certs.ClientCertFile,
			"METERD_KAFKA_TLS_KEY_FILE": certs.ClientKeyFile, "METERD_KAFKA_TLS_SERVER_NAME": "kafka.internal",
			"METERD_KAFKA_SASL_MECHANISM": "scram-sha-256", "METERD_KAFKA_SASL_USERNAME": "meterd",
			"METERD_KAFKA_SASL_PASSWORD_FILE":     password,
			"METERD_STORE_CLICKHOUSE_TLS_ENABLED": "true", "METERD_STORE_CLICKHOUSE_TLS_CA_FILE": certs.CAFile,
			"METERD_STORE_CLICKHOUSE_TLS_CERT_FILE": certs.ClientCertFile, "METERD_STORE_CLICKHOUSE_TLS_KEY_FILE": certs.ClientKeyFile,
			"METERD_STORE_CLICKHOUSE_TLS_SERVER_NAME": "10.0.0.5"}),
			check: func(t *testing.T, c *Config) {
				for path, s := range map[string]ClientTLS{"kafka.tls": c.Kafka.TLS, "store.clickhouse.tls": c.Store.ClickHouse.TLS} {
					tc, err := s.Load(path)
					if err != nil || tc == nil || tc.RootCAs == nil || len(tc.Certificates) != 1 || tc.InsecureSkipVerify ||
						tc.MinVersion < 0x0303 {
						t.Errorf("%s loads as %+v, %v", path, tc, err)
					}
				}
				if c.Kafka.SASL != (KafkaSASL{Mechanism: "scram-sha-256", Username: "meterd", PasswordFile: password}) {
					t.Errorf("kafka.sasl = %+v", c.Kafka.SASL)
				}
			}},
		{name: "plain over TLS", env: with(map[string]string{"METERD_KAFKA_TLS_ENABLED": "true",
			"METERD_KAFKA_SASL_MECHANISM": "plain", "METERD_KAFKA_SASL_USERNAME": "meterd", "METERD_KAFKA_SASL_PASSWORD_FILE": password})},
		{name: "plain without TLS on loopback", env: map[string]string{"METERD_STORE_DRIVER": "clickhouse",
			"METERD_KAFKA_BROKERS":        "127.0.0.1:9092,localhost:9093,[::1]:9094",
			"METERD_KAFKA_SASL_MECHANISM": "plain", "METERD_KAFKA_SASL_USERNAME": "meterd", "METERD_KAFKA_SASL_PASSWORD_FILE": password}},
		{name: "plain without TLS beyond loopback", env: with(map[string]string{
			"METERD_KAFKA_SASL_MECHANISM": "plain", "METERD_KAFKA_SASL_USERNAME": "meterd", "METERD_KAFKA_SASL_PASSWORD_FILE": password}),
			wantErr: []string{"kafka.sasl.mechanism: plain sends the password in clear text, and broker kafka.internal:9093 is not on loopback"}},
		{name: "client key does not match", env: with(map[string]string{"METERD_KAFKA_TLS_ENABLED": "true",
			"METERD_KAFKA_TLS_CERT_FILE": certs.ClientCertFile, "METERD_KAFKA_TLS_KEY_FILE": certs.ServerKeyFile}),
			wantErr: []string{"kafka.tls.cert_file: tls: private key does not match public key"}},
		{name: "certificate without key", env: with(map[string]string{"METERD_STORE_CLICKHOUSE_TLS_ENABLED": "true",
			"METERD_STORE_CLICKHOUSE_TLS_CERT_FILE": certs.ClientCertFile}),
			wantErr: []string{"store.clickhouse.tls.key_file: required with store.clickhouse.tls.cert_file"}},
		{name: "CA missing", env: with(map[string]string{"METERD_STORE_CLICKHOUSE_TLS_ENABLED": "true",
			"METERD_STORE_CLICKHOUSE_TLS_CA_FILE": filepath.Join(dir, "nope.pem")}),
			wantErr: []string{"store.clickhouse.tls.ca_file: open " + filepath.Join(dir, "nope.pem") + ": no such file or directory"}},
		{name: "CA is a key", env: with(map[string]string{"METERD_KAFKA_TLS_ENABLED": "true", "METERD_KAFKA_TLS_CA_FILE": certs.ClientKeyFile}),
			wantErr: []string{"kafka.tls.ca_file: " + certs.ClientKeyFile + " holds no PEM certificate"}},
		{name: "server name with a scheme", env: with(map[string]string{"METERD_KAFKA_TLS_ENABLED": "true",
			"METERD_KAFKA_TLS_SERVER_NAME": "tls://kafka.internal"}),
			wantErr: []string{`kafka.tls.server_name: "tls://kafka.internal" must be a host name`}},
		{name: "server name without enabled", env: with(map[string]string{"METERD_KAFKA_TLS_SERVER_NAME": "kafka.internal"}),
			wantErr: []string{"kafka.tls.enabled: false, but ca_file, cert_file, key_file or server_name is set"}},
		{name: "credentials without mechanism", env: with(map[string]string{"METERD_KAFKA_SASL_USERNAME": "meterd"}),
			wantErr: []string{"kafka.sasl.mechanism: required with username or password_file"}},
		{name: "empty password file, blank username", env: with(map[string]string{"METERD_KAFKA_SASL_MECHANISM": "scram-sha-512",
			"METERD_KAFKA_SASL_USERNAME": " ", "METERD_KAFKA_SASL_PASSWORD_FILE": emptyPassword}),
			wantErr: []string{"kafka.sasl.username: required with mechanism scram-sha-512",
				"kafka.sasl.password_file: " + emptyPassword + " is empty"}},
		{name: "no password file", env: with(map[string]string{"METERD_KAFKA_SASL_MECHANISM": "scram-sha-512",
			"METERD_KAFKA_SASL_USERNAME": "meterd"}),
			wantErr: []string{"kafka.sasl.password_file: required with mechanism scram-sha-512 (the password is only read from a file)"}},
		{name: "tls enabled not a boolean", env: with(map[string]string{"METERD_KAFKA_TLS_ENABLED": "yes please"}),
			wantErr: []string{`kafka.tls.enabled (env METERD_KAFKA_TLS_ENABLED): "yes please" is not a boolean`}},
		{name: "clickhouse TLS unchecked with sqlite", env: map[string]string{"METERD_STORE_CLICKHOUSE_TLS_CA_FILE": "/nope"}},
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
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

// TestSASLPasswordNeverInConfig: the password is only in its file, so neither the loaded config printed nor
// written back as YAML holds it, nor a refusal.
func TestSASLPasswordNeverInConfig(t *testing.T) {
	const secret = "PW-41c7e0-kafka-password"
	f := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(f, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"METERD_STORE_DRIVER": "clickhouse", "METERD_KAFKA_BROKERS": "kafka.internal:9093",
		"METERD_KAFKA_SASL_MECHANISM": "scram-sha-512", "METERD_KAFKA_SASL_USERNAME": "meterd", "METERD_KAFKA_SASL_PASSWORD_FILE": f}
	c, _, err := Load("", envOf(env))
	if err != nil {
		t.Fatal(err)
	}
	out, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{string(out), fmt.Sprintf("%+v", *c), fmt.Sprintf("%#v", c.Kafka)} {
		if strings.Contains(s, secret) {
			t.Errorf("the password ended up in the config: %s", s)
		}
	}
	env["METERD_KAFKA_SASL_MECHANISM"] = "plain" // refused: brokers beyond loopback without TLS
	if _, _, err := Load("", envOf(env)); err == nil || strings.Contains(err.Error(), secret) {
		t.Errorf("refusal %v: want an error without the password", err)
	}
}
