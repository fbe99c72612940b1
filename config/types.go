package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is a time.Duration written as Go duration text ("5m", "1h30m"). A bad value does not stop decoding:
// it is kept and reported by Validate with its path, beside every other problem.
type Duration struct {
	time.Duration
	bad string
}

// UnmarshalYAML reads duration text.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	return d.set(n.Value)
}

func (d *Duration) set(s string) error {
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		d.bad = fmt.Sprintf("%q is not a duration (e.g. 90s, 5m, 1h)", s)
		return nil
	}
	d.Duration, d.bad = v, ""
	return nil
}

// MarshalYAML writes duration text.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// ByteSize is a size in bytes written as a number with an optional unit: 512, 64KiB, 10MiB, 1GiB (also KB, MB, GB
// as powers of 1000).
type ByteSize struct {
	Bytes int64
	bad   string
}

// UnmarshalYAML reads size text.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error { return b.set(n.Value) }

func (b *ByteSize) set(s string) error {
	t := strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		b.bad = fmt.Sprintf("%q is not a size (e.g. 512KiB, 10MiB)", s)
		return nil
	}
	b.Bytes, b.bad = v*mult, ""
	return nil
}

// MarshalYAML writes the size in bytes.
func (b ByteSize) MarshalYAML() (any, error) { return b.Bytes, nil }
