package config

import (
	"strings"
	"testing"
)

// The store.clickhouse section: validated with its key paths, ignored with driver sqlite.
func TestClickHouseStore(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantErr []string
	}{
		{name: "defaults accepted", env: map[string]string{"METERD_STORE_DRIVER": "clickhouse"}},
		{name: "bad section", env: map[string]string{"METERD_STORE_DRIVER": "clickhouse",
			"METERD_STORE_CLICKHOUSE_ADDR": "localhost", "METERD_STORE_CLICKHOUSE_DATABASE": "meterd-prod",
			"METERD_STORE_CLICKHOUSE_PASSWORD_FILE": "/nonexistent/password"},
			wantErr: []string{`store.clickhouse.addr: "localhost" must be host:port`,
				`store.clickhouse.database: "meterd-prod" must be a plain identifier`,
				"store.clickhouse.password_file: stat /nonexistent/password"}},
		{name: "section ignored with sqlite", env: map[string]string{"METERD_STORE_CLICKHOUSE_ADDR": "nonsense"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Load("", envOf(tt.env))
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
