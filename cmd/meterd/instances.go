package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/config"
)

func newInstancesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "instances",
		Short: "Register pay-per-use instances and list them",
	}
	cmd.AddCommand(newInstancesApplyCmd(), newInstancesListCmd())
	return cmd
}

func newInstancesApplyCmd() *cobra.Command {
	var configPath, file string
	cmd := &cobra.Command{
		Use:   "apply --config FILE [-f instances.yaml]",
		Short: "Create or change instances in the configured store",
		Long: `Apply instance specs to the configured store: the config's own instances, or those of -f FILE (a YAML or
JSON list of specs, or a mapping with an instances: list; - reads standard input). Prints one line per instance:
created, changed or unchanged. Applying the same file again changes nothing.

Lifecycle rules: meter, subject, sku and started_at are fixed at creation; ACTIVE <-> FROZEN records a freeze or
an unfreeze at the current time; RELEASED needs released_at and is final; two instances of one subject and meter
may not have overlapping lives. Invalid specs apply nothing; a refused spec does not stop the others. Either
exits 2 listing every problem. It is safe to run while serve runs on the same store.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, configPath, false)
			if err != nil {
				return err
			}
			specs, source := cfg.Instances, "config "+configPath
			if file != "" {
				if specs, err = readInstanceFile(file, cmd.InOrStdin()); err != nil {
					return usagef("-f %s: %v", file, err)
				}
				source = file
			}
			if len(specs) == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "meterd: no instances in %s\n", source)
				return nil
			}
			return withInstanceRegistry(cmd.Context(), cfg, func(reg *instance.Registry) error {
				results, err := reg.ApplyAll(cmd.Context(), specs, "instances")
				w := cmd.OutOrStdout()
				for _, r := range results {
					if r.Instance.ID != "" {
						fmt.Fprintln(w, describeResult(r))
					}
				}
				if err != nil {
					err = fmt.Errorf("instances of %s:\n%w", source, err)
					if isInstanceProblem(err) {
						return usageError{err}
					}
				}
				return err
			})
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "config file: the store, meters and plans, and the instances applied without -f (required)")
	cmd.Flags().StringVarP(&file, "file", "f", "", "instance specs to apply instead of the config's (YAML or JSON; - for stdin)")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func newInstancesListCmd() *cobra.Command {
	var configPath, output, subject, meterKey, status string
	cmd := &cobra.Command{
		Use:   "list --config FILE [--output text|json]",
		Short: "List the instances of the configured store",
		Long: `List the registered instances, ordered by subject, meter and start. --output json prints
{"instances": [...]}, the form of GET /v1/instances, with each instance's history of changes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return usagef("--output: %q must be text or json", output)
			}
			f := instance.Filter{Subject: subject, Meter: meterKey}
			if status != "" {
				st, err := instance.ParseStatus(status)
				if err != nil {
					return usagef("--status: %v", err)
				}
				f.Status = st
			}
			cfg, err := loadConfig(cmd, configPath, false)
			if err != nil {
				return err
			}
			return withInstanceRegistry(cmd.Context(), cfg, func(reg *instance.Registry) error {
				list, err := reg.List(cmd.Context(), f)
				if err != nil {
					return err
				}
				return printInstances(cmd.OutOrStdout(), list, output)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "config file with the store (required)")
	f.StringVar(&output, "output", "text", "text or json")
	f.StringVar(&subject, "subject", "", "only instances of this subject")
	f.StringVar(&meterKey, "meter", "", "only instances of this meter")
	f.StringVar(&status, "status", "", "only instances in this status: ACTIVE, FROZEN or RELEASED")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

// newInstanceRegistry returns the registry over store, checking specs against cfg's meters, plans and sites.
func newInstanceRegistry(cfg *config.Config, store instance.Store) (*instance.Registry, error) {
	sites := slices.Sorted(maps.Keys(cfg.KooGallery.Sites))
	return instance.NewRegistry(store, instance.NewRefs(cfg.MeterSet(), cfg.Catalog(), sites), time.Now)
}

// withInstanceRegistry opens the configured store for one command, runs fn with a registry over it, and closes
// the store. Another process (serve) may use the store at the same time: each apply is its own transaction.
func withInstanceRegistry(ctx context.Context, cfg *config.Config, fn func(*instance.Registry) error) error {
	store, err := openStore(ctx, cfg, storeOptions{})
	if err != nil {
		return err
	}
	reg, err := newInstanceRegistry(cfg, store)
	if err == nil {
		err = fn(reg)
	}
	if cerr := store.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("close store: %w", cerr))
	}
	return err
}

// startInstances is serve's part of the registry: it applies the config's instances to the store and registers
// the instance API on api. A config instance that is invalid or that the stored lifecycle refuses stops the
// start with every problem listed (exit 2), rather than serving with a registry that contradicts the config.
func startInstances(ctx context.Context, cfg *config.Config, store instance.Store, log *slog.Logger, api *http.ServeMux) (*instance.Registry, error) {
	reg, err := newInstanceRegistry(cfg, store)
	if err != nil {
		return nil, err
	}
	// At start, the config only creates instances the registry does not know. Lifecycle changes arrive at run time
	// (KooGallery's freeze, unfreeze and release calls, through the API or the CLI); re-applying the config over
	// them would silently undo a freeze, and the push would then send usage KooGallery rejects (013). A config
	// that disagrees with the registry is reported; `meterd instances apply` applies it on purpose.
	var missing []instance.Spec
	for i, spec := range cfg.Instances {
		cur, ok, err := reg.Get(ctx, spec.InstanceID)
		if err != nil {
			return nil, err
		}
		if !ok {
			missing = append(missing, spec)
			continue
		}
		want := instance.Active
		if spec.Status != "" {
			want = instance.Status(spec.Status)
		}
		if cur.Status != want {
			log.Warn("config instance differs from the registry: the registry is kept; run `meterd instances apply` to apply the config",
				"path", fmt.Sprintf("instances[%d]", i), "instance_id", spec.InstanceID, "config_status", want, "registry_status", cur.Status)
		}
	}
	results, err := reg.ApplyAll(ctx, missing, "instances")
	for _, r := range results {
		if r.Created {
			log.Info("instance created from config", "instance_id", r.Instance.ID, "status", r.Instance.Status)
		}
	}
	if err != nil {
		err = fmt.Errorf("create the config's instances:\n%w", err)
		if isInstanceProblem(err) {
			return nil, usageError{err}
		}
		return nil, err
	}
	h, err := instance.NewHandler(reg, log)
	if err != nil {
		return nil, err
	}
	h.Register(api)
	return reg, nil
}

// isInstanceProblem tells a spec's mistake or a lifecycle refusal (exit 2) from a runtime failure (exit 1).
func isInstanceProblem(err error) bool {
	var inv *instance.InvalidError
	var conflict *instance.ConflictError
	return errors.As(err, &inv) || errors.As(err, &conflict)
}

func describeResult(r instance.Result) string {
	outcome := "unchanged"
	switch {
	case r.Created:
		outcome = "created"
	case r.Changed:
		outcome = "changed"
	}
	line := fmt.Sprintf("%s %s %s", outcome, r.Instance.ID, r.Instance.Status)
	var recorded []string
	for _, c := range r.New {
		if c.Kind != instance.KindCreated {
			recorded = append(recorded, fmt.Sprintf("%s at %s", c.Kind, instance.FormatTime(c.At)))
		}
	}
	if len(recorded) > 0 {
		line += " (" + strings.Join(recorded, ", ") + ")"
	}
	return line
}

// readInstanceFile reads the specs of -f: a YAML (or JSON) list of specs, or a mapping with an instances: list,
// decoded strictly, since a misspelt key silently dropped (released_at, say) would leave an instance billing.
func readInstanceFile(path string, stdin io.Reader) ([]instance.Spec, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(stdin)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	var probe yaml.Node
	if err := yaml.Unmarshal(data, &probe); err != nil {
		return nil, err
	}
	if len(probe.Content) == 0 {
		return nil, nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var specs []instance.Spec
	switch probe.Content[0].Kind {
	case yaml.SequenceNode:
		err = dec.Decode(&specs)
	case yaml.MappingNode:
		var doc struct {
			Instances []instance.Spec `yaml:"instances"`
		}
		err = dec.Decode(&doc)
		specs = doc.Instances
	default:
		return nil, errors.New("want a list of instance specs, or a mapping with an instances: list")
	}
	if err != nil {
		return nil, err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document")
	}
	return specs, nil
}

func printInstances(w io.Writer, list []instance.Instance, output string) error {
	if output == "json" {
		if list == nil {
			list = []instance.Instance{}
		}
		return json.NewEncoder(w).Encode(struct {
			Instances []instance.Instance `json:"instances"`
		}{list})
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE_ID\tSUBJECT\tMETER\tSKU\tSTATUS\tSTARTED_AT\tRELEASED_AT")
	for _, in := range list {
		rel := "-"
		if !in.ReleasedAt.IsZero() {
			rel = instance.FormatTime(in.ReleasedAt)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", in.ID, in.Subject, in.Meter, in.SKU, in.Status,
			instance.FormatTime(in.StartedAt), rel)
	}
	return tw.Flush()
}
