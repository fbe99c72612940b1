package koogallery

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKeySource(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "key")
	if err := os.WriteFile(file, []byte("  file-key-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	ks := NewKeySource(file, func(k string) string { return env[k] })

	key, err := ks.Key()
	if err != nil || string(key) != "file-key-1" {
		t.Fatalf("file key: %q, %v", key, err)
	}
	key[0] = 'X' // a caller's copy: the cache must not change
	if again, _ := ks.Key(); string(again) != "file-key-1" {
		t.Errorf("cache changed through a returned slice: %q", again)
	}

	// Rotation takes effect on Reload only.
	if err := os.WriteFile(file, []byte("file-key-2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if k, _ := ks.Key(); string(k) != "file-key-1" {
		t.Errorf("before reload: %q", k)
	}
	if err := ks.Reload(); err != nil {
		t.Fatal(err)
	}
	if k, _ := ks.Key(); string(k) != "file-key-2" {
		t.Errorf("after reload: %q", k)
	}

	// A broken rotation keeps the previous key and says why, without the key.
	if err := os.WriteFile(file, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ks.Reload(); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Errorf("empty file: %v", err)
	}
	if k, err := ks.Key(); string(k) != "file-key-2" || err != nil {
		t.Errorf("after a failed reload: %q, %v", k, err)
	}

	// The environment wins.
	env[KeyEnv] = " env-key \n"
	if err := ks.Reload(); err != nil {
		t.Fatal(err)
	}
	if k, _ := ks.Key(); string(k) != "env-key" {
		t.Errorf("env: %q", k)
	}
}

func TestKeySourceErrors(t *testing.T) {
	none := func(string) string { return "" }
	if _, err := NewKeySource("", none).Key(); err == nil || !strings.Contains(err.Error(), KeyEnv) {
		t.Errorf("no source: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "absent")
	ks := NewKeySource(missing, none)
	if _, err := ks.Key(); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: %v", err)
	}
	// A key file that appears later is picked up without a Reload.
	if err := os.WriteFile(missing, []byte("late-key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if k, err := ks.Key(); err != nil || string(k) != "late-key" {
		t.Errorf("late file: %q, %v", k, err)
	}
}
