package koogallery

import (
	"bytes"
	"fmt"
	"os"
	"sync"
)

// KeyEnv is the environment variable that holds the interconnection key; it wins over the key file (DESIGN.md §3).
const KeyEnv = "METERD_KOOGALLERY_KEY"

// KeySource reads the interconnection key from KeyEnv or from a file (surrounding whitespace trimmed, so an editor's
// final newline is not part of the key), caches it, and reads it again on Reload, which the caller wires to
// SIGHUP so a rotated key takes effect without a restart. Its errors never contain the key. It is safe for
// concurrent use.
type KeySource struct {
	file   string
	getenv func(string) string

	mu  sync.Mutex
	key []byte // the last key read successfully; nil before
}

// NewKeySource returns a source reading the environment through getenv (nil: os.Getenv) and then file (may be "").
// Nothing is read before the first Key or Reload.
func NewKeySource(file string, getenv func(string) string) *KeySource {
	if getenv == nil {
		getenv = os.Getenv
	}
	return &KeySource{file: file, getenv: getenv}
}

// Key returns a copy of the cached key, reading it first if it was never read successfully (so a key file that
// appears after start is picked up).
func (k *KeySource) Key() ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.key == nil {
		if err := k.reloadLocked(); err != nil {
			return nil, err
		}
	}
	return bytes.Clone(k.key), nil
}

// Reload reads the key again. When that fails the previous key stays in use, so a rotation half done (the file
// truncated while being rewritten) does not stop pushing; the error says what is wrong.
func (k *KeySource) Reload() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.reloadLocked()
}

func (k *KeySource) reloadLocked() error {
	if v := bytes.TrimSpace([]byte(k.getenv(KeyEnv))); len(v) > 0 {
		k.key = v
		return nil
	}
	if k.file == "" {
		return fmt.Errorf("read koogallery key: neither %s nor koogallery.key_file is set", KeyEnv)
	}
	data, err := os.ReadFile(k.file)
	if err != nil {
		// os errors name the path and the cause, never the content.
		return fmt.Errorf("read koogallery key: %w", err)
	}
	v := bytes.TrimSpace(data)
	if len(v) == 0 {
		return fmt.Errorf("read koogallery key: %s is empty", k.file)
	}
	k.key = v
	return nil
}
