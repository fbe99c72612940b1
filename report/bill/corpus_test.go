package bill

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCorpus reads every export of testdata/corpus (malformed, hostile and edge-case bill files) as Import does:
// each is either refused with the 1-based line and reason listed in cases.json (and then nothing of it is used:
// the import is all or nothing), or read with the listed number of rows and abnormal ones.
func TestCorpus(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "corpus", "cases.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cases []struct {
		File     string `json:"file"`
		Rows     int    `json:"rows"`
		Abnormal int    `json:"abnormal"`
		Line     int    `json:"line"` // 0: the file is valid
		Reason   string `json:"reason"`
		Why      string `json:"why"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cases); err != nil {
		t.Fatalf("cases.json: %v", err)
	}
	listed := map[string]bool{"cases.json": true}
	for _, c := range cases {
		listed[c.File] = true
	}
	files, _ := filepath.Glob(filepath.Join("testdata", "corpus", "*"))
	for _, f := range files {
		if !listed[filepath.Base(f)] {
			t.Errorf("%s has no case in cases.json", f)
		}
	}
	for _, c := range cases {
		t.Run(c.File, func(t *testing.T) {
			body, err := os.ReadFile(filepath.Join("testdata", "corpus", c.File))
			if err != nil {
				t.Fatal(err)
			}
			sh, err := parse(bytes.NewReader(body), DefaultColumns(), []string{"ABNORMAL"})
			if c.Line > 0 {
				var fe *FormatError
				if !errors.As(err, &fe) || fe.Line != c.Line || !strings.Contains(fe.Reason, c.Reason) {
					t.Fatalf("got %v, want line %d: ...%s", err, c.Line, c.Reason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			abnormal := 0
			for _, a := range sh.abnormal {
				if a {
					abnormal++
				}
			}
			if len(sh.rows) != c.Rows || abnormal != c.Abnormal {
				t.Fatalf("%d rows (%d abnormal), want %d (%d)", len(sh.rows), abnormal, c.Rows, c.Abnormal)
			}
		})
	}
}
