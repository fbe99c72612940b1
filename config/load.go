package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// EnvPrefix starts every environment override: METERD_<PATH>, the key path upper-cased with '_' between parts
// (store.sqlite.path -> METERD_STORE_SQLITE_PATH).
const EnvPrefix = "METERD_"

// envNotConfig are METERD_ variables that are not config keys. The KooGallery key is a secret read by the push
// client; it is never part of Config, so it can never be printed with it.
var envNotConfig = map[string]bool{"METERD_KOOGALLERY_KEY": true, "METERD_INGEST_TOKEN": true}

// Load reads the file at path (empty: defaults only), applies the environment overrides found by lookup, and
// validates the result. The error lists every problem. Warnings are returned beside a valid config.
func Load(path string, lookup func(string) (string, bool)) (*Config, []string, error) {
	c := Default()
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, nil, fmt.Errorf("read config: %w", err)
		}
		if err := decode(data, &c); err != nil {
			return nil, nil, fmt.Errorf("config %s: %w", path, err)
		}
	}
	if lookup == nil {
		lookup = os.LookupEnv
	}
	warnings, envErrs := applyEnv(&c, lookup)
	err := c.Validate()
	if envErrs != nil || err != nil {
		if path != "" && err != nil {
			err = fmt.Errorf("config %s:\n%w", path, err)
		}
		return nil, nil, errors.Join(envErrs, err)
	}
	return &c, append(warnings, c.Warnings()...), nil
}

// decode reads YAML strictly: an unknown key is an error with its line, since a misspelt key silently falling back
// to its default is how a billing setting goes wrong unnoticed.
func decode(data []byte, c *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return errors.New("more than one YAML document; the config is one document")
	}
	return nil
}

// EnvVars lists every environment variable that overrides a config key, with its key path, sorted.
func EnvVars() map[string]string {
	out := map[string]string{}
	c := Default()
	walk(reflect.ValueOf(&c).Elem(), "", func(path string, _ reflect.Value) {
		out[envName(path)] = path
	})
	return out
}

func envName(path string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(path, ".", "_"))
}

// applyEnv overrides leaf keys from the environment. Lists (kafka.brokers) are comma-separated.
func applyEnv(c *Config, lookup func(string) (string, bool)) (warnings []string, err error) {
	var errs []error
	known := map[string]bool{}
	walk(reflect.ValueOf(c).Elem(), "", func(path string, v reflect.Value) {
		name := envName(path)
		known[name] = true
		s, ok := lookup(name)
		if !ok {
			return
		}
		if e := setFromEnv(v, s); e != nil {
			errs = append(errs, fmt.Errorf("%s (env %s): %w", path, name, e))
		}
	})
	var unknown []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, EnvPrefix) && !known[name] && !envNotConfig[name] {
			if _, ok := lookup(name); ok {
				unknown = append(unknown, name)
			}
		}
	}
	sort.Strings(unknown)
	for _, n := range unknown {
		warnings = append(warnings, fmt.Sprintf("environment variable %s matches no config key (ignored)", n))
	}
	return warnings, errors.Join(errs...)
}

var (
	durationType = reflect.TypeOf(Duration{})
	byteSizeType = reflect.TypeOf(ByteSize{})
)

// walk calls leaf for every scalar key of v (structs are descended; lists of structs and maps are file-only).
func walk(v reflect.Value, prefix string, leaf func(path string, v reflect.Value)) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || tag == "" || tag == "-" {
			continue
		}
		path := tag
		if prefix != "" {
			path = prefix + "." + tag
		}
		fv := v.Field(i)
		switch {
		case f.Type == durationType || f.Type == byteSizeType:
			leaf(path, fv)
		case f.Type.Kind() == reflect.Struct:
			walk(fv, path, leaf)
		case f.Type.Kind() == reflect.String, f.Type.Kind() == reflect.Int, f.Type.Kind() == reflect.Bool:
			leaf(path, fv)
		case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.String:
			leaf(path, fv)
		}
	}
}

func setFromEnv(v reflect.Value, s string) error {
	// A bad duration or size is reported here, naming the variable, and the key keeps its previous value so that
	// Validate does not report it a second time without the variable's name.
	switch v.Type() {
	case durationType:
		d := v.Addr().Interface().(*Duration)
		prev := *d
		if _ = d.set(s); d.bad != "" {
			bad := d.bad
			*d = prev
			return errors.New(bad)
		}
		return nil
	case byteSizeType:
		b := v.Addr().Interface().(*ByteSize)
		prev := *b
		if _ = b.set(s); b.bad != "" {
			bad := b.bad
			*b = prev
			return errors.New(bad)
		}
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Int:
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("%q is not an integer", s)
		}
		v.SetInt(int64(n))
	case reflect.Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("%q is not a boolean", s)
		}
		v.SetBool(b)
	case reflect.Slice:
		var items []string
		for _, part := range strings.Split(s, ",") {
			if p := strings.TrimSpace(part); p != "" {
				items = append(items, p)
			}
		}
		v.Set(reflect.ValueOf(items))
	}
	return nil
}
