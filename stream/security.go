package stream

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// SASL mechanisms, as the config file's kafka.sasl.mechanism names them.
const (
	MechanismPlain       = "plain"
	MechanismSCRAMSHA256 = "scram-sha-256"
	MechanismSCRAMSHA512 = "scram-sha-512"
)

// Security secures every connection this package opens to the brokers (the producer's and the collectors'
// writers, the collectors' readers, topic administration, positions, the election): TLS and SASL as the config
// file's kafka.tls and kafka.sasl give them. The zero value is plaintext without authentication.
//
// It holds settings and file paths, never a secret, so a Config can be printed and compared: the files (CA,
// client certificate and key, password) are read when a client is built, by NewProducer, NewCollector,
// EnsureTopics, PositionsOf, NewElection and EnsureElectionTopic, and their errors name the key and the file,
// never what is in it. The server's certificate is always verified.
type Security struct {
	TLS  TLS
	SASL SASL
}

// TLS is the kafka.tls section. Enabled alone verifies the brokers against the system's roots; CAFile trusts the
// CAs of that PEM file instead; CertFile and KeyFile (both or neither) present a client certificate (mutual
// TLS); ServerName is the name the brokers' certificates must carry (default: the host dialled).
type TLS struct {
	Enabled    bool
	CAFile     string
	CertFile   string
	KeyFile    string
	ServerName string
}

// SASL is the kafka.sasl section: Mechanism "" sends no credentials. The password is read from PasswordFile
// (surrounding whitespace trimmed).
type SASL struct {
	Mechanism    string // "", MechanismPlain, MechanismSCRAMSHA256 or MechanismSCRAMSHA512
	Username     string
	PasswordFile string
}

// validate checks the settings without reading the files, each problem with its key path; brokers are the
// bootstrap addresses, for the rule on PLAIN without TLS.
func (s Security) validate(brokers []string) []error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("kafka.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	t := s.TLS
	if !t.Enabled && (t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != "") {
		add("tls.enabled", "false, but ca_file, cert_file, key_file or server_name is set: set enabled, or remove them")
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		add("tls.cert_file", "cert_file and key_file go together (mutual TLS needs both)")
	}
	m := s.SASL
	switch m.Mechanism {
	case "":
		if m.Username != "" || m.PasswordFile != "" {
			add("sasl.mechanism", "required with username or password_file; without it no credentials are sent")
		}
		return errs
	case MechanismPlain, MechanismSCRAMSHA256, MechanismSCRAMSHA512:
	default:
		add("sasl.mechanism", "%q must be %s, %s or %s (or empty: no authentication)", m.Mechanism,
			MechanismPlain, MechanismSCRAMSHA256, MechanismSCRAMSHA512)
	}
	if strings.TrimSpace(m.Username) == "" {
		add("sasl.username", "required with mechanism %s", m.Mechanism)
	}
	if m.PasswordFile == "" {
		add("sasl.password_file", "required with mechanism %s", m.Mechanism)
	}
	if m.Mechanism == MechanismPlain && !t.Enabled {
		for _, b := range brokers {
			if !loopback(b) {
				add("sasl.mechanism", "plain sends the password in clear text, and broker %s is not on loopback: enable kafka.tls, or use %s or %s",
					b, MechanismSCRAMSHA256, MechanismSCRAMSHA512)
				break
			}
		}
	}
	return errs
}

// loopback reports whether a broker address is localhost or a loopback IP.
func loopback(broker string) bool {
	host, _, err := net.SplitHostPort(broker)
	if err != nil {
		host = broker
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// secured is Security built: what kafka-go's clients take. Both nil: plaintext without authentication.
type secured struct {
	tls  *tls.Config
	sasl sasl.Mechanism
}

// build checks s and reads its files.
func (s Security) build(brokers []string) (secured, error) {
	if err := errors.Join(s.validate(brokers)...); err != nil {
		return secured{}, err
	}
	var out secured
	var errs []error
	if s.TLS.Enabled {
		c, err := clientTLS(s.TLS)
		if err != nil {
			errs = append(errs, err)
		}
		out.tls = c
	}
	if s.SASL.Mechanism != "" {
		m, err := mechanism(s.SASL)
		if err != nil {
			errs = append(errs, err)
		}
		out.sasl = m
	}
	if err := errors.Join(errs...); err != nil {
		return secured{}, err
	}
	return out, nil
}

// clientTLS reads the files of t into a client configuration that always verifies the server.
func clientTLS(t TLS) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	var errs []error
	if t.CAFile != "" {
		// Only these CAs are trusted, not the system's as well: a private CA pins the brokers.
		pem, err := os.ReadFile(t.CAFile)
		c.RootCAs = x509.NewCertPool()
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("kafka.tls.ca_file: %w", err))
		case !c.RootCAs.AppendCertsFromPEM(pem):
			errs = append(errs, fmt.Errorf("kafka.tls.ca_file: %s holds no PEM certificate", t.CAFile))
		}
	}
	if t.CertFile != "" {
		// The standard library's errors name the problem (no PEM data, a key that does not match), never the key.
		pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("kafka.tls.cert_file: %w", err))
		}
		c.Certificates = []tls.Certificate{pair}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return c, nil
}

// mechanism reads the password file and builds the SASL mechanism. Its errors never contain the password: the
// SCRAM library's do (it quotes a password it cannot normalise), so they are replaced.
func mechanism(s SASL) (sasl.Mechanism, error) {
	data, err := os.ReadFile(s.PasswordFile)
	if err != nil {
		return nil, fmt.Errorf("kafka.sasl.password_file: %w", err) // names the path and the cause, never the content
	}
	password := string(bytes.TrimSpace(data))
	if password == "" {
		return nil, fmt.Errorf("kafka.sasl.password_file: %s is empty", s.PasswordFile)
	}
	var m sasl.Mechanism
	switch s.Mechanism {
	case MechanismPlain:
		if strings.ContainsRune(password, 0) || strings.ContainsRune(s.Username, 0) {
			return nil, errors.New("kafka.sasl: the username or the password holds a NUL character, which PLAIN cannot send")
		}
		m = plain.Mechanism{Username: s.Username, Password: password}
	case MechanismSCRAMSHA256, MechanismSCRAMSHA512:
		algo := scram.SHA256
		if s.Mechanism == MechanismSCRAMSHA512 {
			algo = scram.SHA512
		}
		if m, err = scram.Mechanism(algo, s.Username, password); err != nil {
			return nil, fmt.Errorf("kafka.sasl: the username or the password of %s is not valid SASLprep text (control or prohibited characters)", s.PasswordFile)
		}
	default:
		return nil, fmt.Errorf("kafka.sasl.mechanism: %q is not supported", s.Mechanism)
	}
	return credentials{Mechanism: m, username: s.Username}, nil
}

// credentials is a SASL mechanism that prints without its password, whatever the verb: kafka-go's PLAIN mechanism
// is a struct with an exported Password that %+v would show.
type credentials struct {
	sasl.Mechanism
	username string
}

// Format prints the mechanism and the user name only.
func (c credentials) Format(f fmt.State, _ rune) {
	_, _ = fmt.Fprintf(f, "%s(user %q)", c.Name(), c.username)
}

// Format prints what is configured, never the password nor the client key.
func (s secured) Format(f fmt.State, _ rune) {
	_, _ = fmt.Fprintf(f, "{tls:%t sasl:%v}", s.tls != nil, s.sasl)
}

// dialTimeout is kafka-go's default of its Dialer, kept for ours.
const dialTimeout = 10 * time.Second

// dialer returns a kafka.Dialer (the Reader's, the ConsumerGroup's, DialLeader's) with this security.
func (s secured) dialer(timeout time.Duration) *kafka.Dialer {
	return &kafka.Dialer{Timeout: timeout, DualStack: true, TLS: s.tls, SASLMechanism: s.sasl}
}

// transport returns a kafka.Transport (the Writer's, the Client's) with this security, or nil for plaintext
// without authentication, which keeps kafka-go's shared DefaultTransport.
func (s secured) transport() *kafka.Transport {
	if s.tls == nil && s.sasl == nil {
		return nil
	}
	return &kafka.Transport{TLS: s.tls, SASL: s.sasl}
}

// client returns an admin client of brokers with this security and a func that closes its own connections.
func (s secured) client(brokers []string, timeout time.Duration) (*kafka.Client, func()) {
	c := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: timeout}
	if t := s.transport(); t != nil {
		c.Transport = t
		return c, t.CloseIdleConnections
	}
	return c, func() {}
}

// securedWriter is a kafka.Writer with its own transport, which Close also closes (kafka-go's Writer.Close
// leaves a transport it was given open).
type securedWriter struct {
	*kafka.Writer
	transport *kafka.Transport
}

func (w securedWriter) Close() error {
	err := w.Writer.Close()
	w.transport.CloseIdleConnections()
	return err
}
