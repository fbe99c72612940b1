package stream

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meterd/meterd/internal/tlstest"
)

// testPassword is distinctive, so that finding it anywhere is a leak.
const testPassword = "PW-9d2f7c-kafka-sasl-secret"

func passwordFile(t *testing.T, content string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "kafka-password")
	writeTestFile(t, f, []byte(content))
	return f
}

// TestSASLMechanisms builds each mechanism from the config file's values and checks the name kafka-go sends in
// the SASL handshake; PLAIN's initial response shows the password read from the file, trimmed.
func TestSASLMechanisms(t *testing.T) {
	file := passwordFile(t, "\n  "+testPassword+"  \n")
	for mech, want := range map[string]string{MechanismPlain: "PLAIN", MechanismSCRAMSHA256: "SCRAM-SHA-256",
		MechanismSCRAMSHA512: "SCRAM-SHA-512"} {
		sec, err := Security{TLS: TLS{Enabled: true}, SASL: SASL{Mechanism: mech, Username: "meterd", PasswordFile: file}}.
			build([]string{"kafka.example:9093"})
		if err != nil {
			t.Fatalf("%s: %v", mech, err)
		}
		if sec.sasl == nil || sec.sasl.Name() != want {
			t.Fatalf("%s: mechanism %v, want %s", mech, sec.sasl, want)
		}
		if sec.tls == nil {
			t.Errorf("%s: TLS enabled but not built", mech)
		}
		_, ir, err := sec.sasl.Start(context.Background())
		if err != nil {
			t.Fatalf("%s: start: %v", mech, err)
		}
		if mech == MechanismPlain && string(ir) != "\x00meterd\x00"+testPassword {
			t.Errorf("PLAIN initial response %q", ir)
		}
		if mech != MechanismPlain && (strings.Contains(string(ir), testPassword) || !strings.Contains(string(ir), "n=meterd")) {
			t.Errorf("%s client-first message %q: want the user and never the password", mech, ir)
		}
		d, tr := sec.dialer(dialTimeout), sec.transport()
		if d.SASLMechanism != sec.sasl || tr == nil || tr.SASL != sec.sasl || d.TLS != sec.tls || tr.TLS != sec.tls {
			t.Errorf("%s: the dialer or the transport lacks the security", mech)
		}
	}
	plainSec, err := Security{}.build(nil)
	if err != nil || plainSec.tls != nil || plainSec.sasl != nil || plainSec.transport() != nil {
		t.Errorf("zero Security built %v, %v: want plaintext and kafka-go's default transport", plainSec, err)
	}
}

// TestSecurityValidate lists every rule with its key path.
func TestSecurityValidate(t *testing.T) {
	file := passwordFile(t, testPassword)
	tests := []struct {
		name    string
		brokers []string
		sec     Security
		wantErr []string // empty: valid
	}{
		{name: "zero: plaintext", brokers: []string{"kafka.example:9092"}},
		{name: "TLS alone", sec: Security{TLS: TLS{Enabled: true}}},
		{name: "plain over TLS", brokers: []string{"kafka.example:9093"},
			sec: Security{TLS: TLS{Enabled: true}, SASL: SASL{Mechanism: MechanismPlain, Username: "u", PasswordFile: file}}},
		{name: "plain without TLS on loopback", brokers: []string{"127.0.0.1:9092", "localhost:9093", "[::1]:9094"},
			sec: Security{SASL: SASL{Mechanism: MechanismPlain, Username: "u", PasswordFile: file}}},
		{name: "scram without TLS", brokers: []string{"kafka.example:9092"},
			sec: Security{SASL: SASL{Mechanism: MechanismSCRAMSHA512, Username: "u", PasswordFile: file}}},
		{name: "plain without TLS beyond loopback", brokers: []string{"127.0.0.1:9092", "10.0.0.7:9092"},
			sec:     Security{SASL: SASL{Mechanism: MechanismPlain, Username: "u", PasswordFile: file}},
			wantErr: []string{"kafka.sasl.mechanism: plain sends the password in clear text, and broker 10.0.0.7:9092 is not on loopback: enable kafka.tls"}},
		{name: "files without enabled", sec: Security{TLS: TLS{CAFile: "ca.pem", ServerName: "k"}},
			wantErr: []string{"kafka.tls.enabled: false, but ca_file"}},
		{name: "half a client pair", sec: Security{TLS: TLS{Enabled: true, KeyFile: "k.pem"}},
			wantErr: []string{"kafka.tls.cert_file: cert_file and key_file go together"}},
		{name: "unknown mechanism, no user, no file", sec: Security{SASL: SASL{Mechanism: "GSSAPI"}},
			wantErr: []string{`kafka.sasl.mechanism: "GSSAPI" must be plain, scram-sha-256 or scram-sha-512`,
				"kafka.sasl.username: required with mechanism GSSAPI", "kafka.sasl.password_file: required with mechanism GSSAPI"}},
		{name: "credentials without mechanism", sec: Security{SASL: SASL{Username: "u", PasswordFile: file}},
			wantErr: []string{"kafka.sasl.mechanism: required with username or password_file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := validConfig()
			if tt.brokers != nil {
				cfg.Brokers = tt.brokers
			}
			cfg.Security = tt.sec
			err := cfg.Validate()
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				if _, err := tt.sec.build(cfg.Brokers); err != nil {
					t.Fatalf("build: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			if lines := strings.Split(err.Error(), "\n"); len(lines) != len(tt.wantErr) {
				t.Errorf("%d problems, want %d:\n%v", len(lines), len(tt.wantErr), err)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			// Every constructor refuses it the same way.
			if _, perr := NewProducer(cfg); perr == nil || perr.Error() != err.Error() {
				t.Errorf("NewProducer: %v", perr)
			}
			if _, perr := PositionsOf(cfg).StoredOffsets(context.Background()); perr == nil || perr.Error() != err.Error() {
				t.Errorf("PositionsOf(...).StoredOffsets: %v", perr)
			}
		})
	}
}

// TestSecurityFiles: problems with the files are found when a client is built, each with its key path and file,
// never with the content.
func TestSecurityFiles(t *testing.T) {
	p := tlstest.NewPKI(t, "broker.test")
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	writeTestFile(t, notPEM, []byte(testPassword))
	missing := filepath.Join(dir, "missing")
	empty := passwordFile(t, " \n")
	tests := []struct {
		name    string
		sec     Security
		wantErr []string
	}{
		{name: "CA missing", sec: Security{TLS: TLS{Enabled: true, CAFile: missing}},
			wantErr: []string{"kafka.tls.ca_file: open " + missing + ": no such file or directory"}},
		{name: "CA not PEM", sec: Security{TLS: TLS{Enabled: true, CAFile: notPEM}},
			wantErr: []string{"kafka.tls.ca_file: " + notPEM + " holds no PEM certificate"}},
		{name: "client pair mismatched", sec: Security{TLS: TLS{Enabled: true, CertFile: p.ClientCertFile, KeyFile: notPEM}},
			wantErr: []string{"kafka.tls.cert_file: tls: failed to find any PEM data in key input"}},
		{name: "password file missing", sec: Security{TLS: TLS{Enabled: true},
			SASL: SASL{Mechanism: MechanismSCRAMSHA256, Username: "u", PasswordFile: missing}},
			wantErr: []string{"kafka.sasl.password_file: open " + missing}},
		{name: "password file empty", sec: Security{TLS: TLS{Enabled: true},
			SASL: SASL{Mechanism: MechanismSCRAMSHA256, Username: "u", PasswordFile: empty}},
			wantErr: []string{"kafka.sasl.password_file: " + empty + " is empty"}},
		{name: "password not SASLprep", sec: Security{SASL: SASL{Mechanism: MechanismSCRAMSHA512, Username: "u",
			PasswordFile: passwordFile(t, testPassword+"\a")}},
			wantErr: []string{"kafka.sasl: the username or the password of"}},
		{name: "NUL in a PLAIN password", sec: Security{TLS: TLS{Enabled: true}, SASL: SASL{Mechanism: MechanismPlain, Username: "u",
			PasswordFile: passwordFile(t, testPassword+"\x00x")}},
			wantErr: []string{"kafka.sasl: the username or the password holds a NUL character"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.sec.build([]string{"127.0.0.1:9092"})
			if err == nil {
				t.Fatal("build accepted it")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error(), testPassword) {
				t.Errorf("the error holds the password: %v", err)
			}
		})
	}
}

// TestSecurityNeverPrintsThePassword prints everything that holds the security with every usual verb: the config
// holds only the password file's path, and what is built from it prints the mechanism and the user.
func TestSecurityNeverPrintsThePassword(t *testing.T) {
	file := passwordFile(t, testPassword)
	for _, mech := range []string{MechanismPlain, MechanismSCRAMSHA256, MechanismSCRAMSHA512} {
		cfg := validConfig()
		cfg.Security = Security{TLS: TLS{Enabled: true}, SASL: SASL{Mechanism: mech, Username: "meterd", PasswordFile: file}}
		sec, err := cfg.Security.build(cfg.Brokers)
		if err != nil {
			t.Fatal(err)
		}
		ecfg := ElectionConfig{Brokers: cfg.Brokers, Security: cfg.Security}
		for _, v := range []any{cfg, &cfg, ecfg, sec, &sec, sec.sasl, sec.dialer(dialTimeout), sec.transport()} {
			for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
				if out := fmt.Sprintf(verb, v); strings.Contains(out, testPassword) ||
					strings.Contains(out, fmt.Sprintf("%x", testPassword)) {
					t.Errorf("%s: %s of %T shows the password: %s", mech, verb, v, out)
				}
			}
		}
		if got := fmt.Sprint(sec.sasl); got != fmt.Sprintf("%s(user \"meterd\")", sec.sasl.Name()) {
			t.Errorf("mechanism prints as %q", got)
		}
	}
}

// TestSecurityErrorsAreNotRetried: a failure to build the security is a configuration error, returned before any
// connection, and not an *Error a caller would retry.
func TestSecurityErrorsAreNotRetried(t *testing.T) {
	cfg := validConfig()
	cfg.Security.TLS = TLS{Enabled: true, CAFile: filepath.Join(t.TempDir(), "missing")}
	err := EnsureTopics(context.Background(), cfg)
	var se *Error
	if err == nil || errors.As(err, &se) || IsRetryable(err) {
		t.Errorf("EnsureTopics: %v, want a plain configuration error", err)
	}
}
