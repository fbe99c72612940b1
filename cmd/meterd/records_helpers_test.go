package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"
)

// recordJSON is one record of GET /v1/records, as the end-to-end tests read it.
type recordJSON struct {
	InstanceID string `json:"instance_id"`
	Hour       string `json:"hour"`
	UsageValue string `json:"usage_value"`
	Amount     string `json:"amount"`
	State      string `json:"state"`
	Attempts   []struct {
		Code string `json:"code"`
	} `json:"attempts"`
}

// waitAccepted polls GET /v1/records from hour `from` on the API at base until there are want records, all
// ACCEPTED, and returns them; it fails after timeout with dump() (the processes' logs).
func waitAccepted(t *testing.T, base string, from time.Time, want int, timeout time.Duration, dump func() string) []recordJSON {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		res, err := http.Get(fmt.Sprintf("%s/v1/records?from=%s", base, from.Format(time.RFC3339)))
		if err != nil {
			t.Fatal(err)
		}
		var out struct {
			Records []recordJSON `json:"records"`
		}
		err = json.NewDecoder(res.Body).Decode(&out)
		res.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		accepted := 0
		for _, r := range out.Records {
			if r.State == "ACCEPTED" {
				accepted++
			}
		}
		if len(out.Records) == want && accepted == want {
			return out.Records
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d records accepted (%d built): %+v\n%s", accepted, want, len(out.Records), out.Records, dump())
		}
		time.Sleep(200 * time.Millisecond)
	}
}
