package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/scheme"
	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/workflows"
)

// schemeShowViolations is how many violating devices `scheme check` prints by default.
const schemeShowViolations = 20

func newSchemeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "scheme", Short: "The metadata scheme: a JSON Schema every device's tags must satisfy",
		Long: `The metadata scheme is a JSON Schema (draft 2020-12) for device tags, and optionally one for reported
properties. Provisioning refuses manifest rows whose tags violate it (reported by line), twin set-tags and
tag jobs refuse patches that would break it, and queries warn about tag paths it does not declare and compare
literals as the types it declares. Every scheme set is a new version; the history is kept.`,
		Example: `  fleetflow scheme set tags.schema.json
  fleetflow scheme set tags.schema.json --reported reported.schema.json --allow-existing-violations
  fleetflow scheme show
  fleetflow scheme check --show`,
	}
	var reported string
	var allow, detach bool
	var setOut *output
	set := &cobra.Command{
		Use:   "set FILE [--reported FILE] [--allow-existing-violations]",
		Short: "Set a new scheme version: checked against the whole fleet first, refused if the fleet violates it",
		Long: `Set a new scheme version from FILE (a JSON Schema, draft 2020-12, for the tags object). A SchemeCheck
workflow records the version, checks every device of the fleet against it in batches, and makes it the
scheme in force — unless devices violate it, in which case it is refused and the violations listed, or
--allow-existing-violations is given, in which case it is set and scheme check --show lists the debt.
The exit code is 3 when the version was refused (or set with violations allowed).`,
		Example: `  fleetflow scheme set tags.schema.json
  fleetflow scheme set tags.schema.json --reported reported.schema.json
  fleetflow scheme set tags.schema.json --allow-existing-violations && fleetflow scheme check --show`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tags, err := readScheme(args[0])
			if err != nil {
				return err
			}
			var rep []byte
			if reported != "" {
				if rep, err = readScheme(reported); err != nil {
					return err
				}
			}
			if _, err := scheme.Compile(0, tags, rep); err != nil {
				return asUsage(err)
			}
			id := workflows.SchemeSetPrefix + time.Now().UTC().Format("20060102-150405.000")
			in := workflows.SchemeCheckInput{CheckID: id, Tags: tags, Reported: rep, AllowViolations: allow, Set: true}
			return runSchemeCheck(cmd.Context(), g, in, "Set scheme from "+args[0], detach, setOut)
		},
	}
	set.Flags().StringVar(&reported, "reported", "", "JSON Schema for the devices' reported properties")
	set.Flags().BoolVar(&allow, "allow-existing-violations", false, "set the scheme even if devices violate it (scheme check --show lists them)")
	set.Flags().BoolVar(&detach, "detach", false, "start and return without waiting for the check")
	setOut = addOutputFlag(set)

	var version int64
	var showOut *output
	show := &cobra.Command{
		Use: "show [--version N]", Short: "Print the scheme in force (or version N)", Args: cobra.NoArgs,
		Long:    "Print the scheme in force (or --version N): its version, state, the tag paths it declares and its schemas.",
		Example: "  fleetflow scheme show\n  fleetflow scheme show --version 3 -o json | jq .tags",
		RunE: func(cmd *cobra.Command, args []string) error {
			reg, err := openRegistry(cmd, g)
			if err != nil {
				return err
			}
			defer reg.Close()
			v, err := reg.SchemeVersion(cmd.Context(), version)
			if errors.Is(err, fleet.ErrNoScheme) {
				return fmt.Errorf("%w: tags are free-form (set one with fleetflow scheme set FILE)", err)
			}
			if err != nil {
				return err
			}
			return showOut.print(stdout(cmd), v, func() error {
				fmt.Printf("scheme version %d (%s), set %s by %s\n", v.Version, v.State, v.CreatedAt.Local().Format("2006-01-02 15:04:05"), v.SetBy)
				if s, err := scheme.Compile(v.Version, v.Tags, v.Reported); err == nil {
					fmt.Printf("tag paths: %s\n", strings.Join(s.TagPaths(), ", "))
				}
				fmt.Printf("tags schema:\n%s\n", indentJSON(v.Tags))
				if len(v.Reported) > 0 {
					fmt.Printf("reported schema:\n%s\n", indentJSON(v.Reported))
				}
				return nil
			})
		},
	}
	show.Flags().Int64Var(&version, "version", 0, "show this version instead of the one in force")
	showOut = addOutputFlag(show)

	var histOut *output
	history := &cobra.Command{
		Use: "history", Short: "List every scheme version, newest first", Args: cobra.NoArgs,
		Long:    "List every scheme version, newest first: its state (candidate while its check runs, active, or refused),\nwhen and by which workflow it was set, and whether existing violations were allowed. The newest active\nversion is the one in force.",
		Example: "  fleetflow scheme history",
		RunE: func(cmd *cobra.Command, args []string) error {
			reg, err := openRegistry(cmd, g)
			if err != nil {
				return err
			}
			defer reg.Close()
			vs, err := reg.SchemeVersions(cmd.Context())
			if err != nil {
				return err
			}
			return histOut.print(stdout(cmd), vs, func() error {
				w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "VERSION\tSTATE\tSET\tBY\tVIOLATIONS ALLOWED")
				for _, v := range vs {
					fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%v\n", v.Version, v.State, v.CreatedAt.Local().Format("2006-01-02 15:04:05"), v.SetBy, v.AllowViolations)
				}
				return w.Flush()
			})
		},
	}
	histOut = addOutputFlag(history)

	var showCheck bool
	var checkID string
	var limit int
	var checkOut *output
	check := &cobra.Command{
		Use:   "check [--show [--id CHECK]]",
		Short: "Check the fleet against the scheme in force (a SchemeCheck workflow); --show lists the last check's violations",
		Long: `Without --show, start a SchemeCheck workflow that checks every device (not retired) against the scheme in
force, in batches, and records each violating device with its violations. --show prints the newest check
(or --id CHECK) without starting one. The exit code is 3 when devices violate the scheme.`,
		Example: `  fleetflow scheme check
  fleetflow scheme check --show --limit 100
  fleetflow scheme check --show -o json | jq -r '.devices[].deviceId'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if showCheck {
				reg, err := openRegistry(cmd, g)
				if err != nil {
					return err
				}
				defer reg.Close()
				return printSchemeCheck(cmd.Context(), reg, checkID, limit, checkOut)
			}
			id := workflows.SchemeCheckPrefix + time.Now().UTC().Format("20060102-150405.000")
			return runSchemeCheck(cmd.Context(), g, workflows.SchemeCheckInput{CheckID: id}, "Check the fleet against the scheme", detach, checkOut)
		},
	}
	check.Flags().BoolVar(&showCheck, "show", false, "print the newest check's counts and violating devices; start nothing")
	check.Flags().StringVar(&checkID, "id", "", "with --show: this check instead of the newest")
	check.Flags().IntVar(&limit, "limit", schemeShowViolations, "how many violating devices to list")
	check.Flags().BoolVar(&detach, "detach", false, "start and return without waiting for the check")
	checkOut = addOutputFlag(check)
	cmd.AddCommand(set, show, history, check)
	return cmd
}

// readScheme reads a scheme file (or - for stdin), refusing what cannot be a scheme before anything starts.
func readScheme(path string) ([]byte, error) {
	var in io.Reader = os.Stdin
	if path != "-" {
		fh, err := os.Open(path)
		if err != nil {
			return nil, usagef("read scheme: %w", err)
		}
		defer fh.Close()
		in = fh
	}
	b, err := io.ReadAll(io.LimitReader(in, scheme.MaxBytes+1))
	if err != nil {
		return nil, usagef("read scheme %s: %w", path, err)
	}
	if len(b) > scheme.MaxBytes {
		return nil, usagef("%s: a scheme is at most %d bytes", path, scheme.MaxBytes)
	}
	c, err := scheme.Canonical(b)
	if err != nil {
		return nil, usagef("%s: %w", path, err)
	}
	return c, nil
}

func indentJSON(b []byte) string {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return string(b)
	}
	out, err := json.MarshalIndent(v, "  ", "  ")
	if err != nil {
		return string(b)
	}
	return "  " + string(out)
}

// runSchemeCheck starts a SchemeCheck workflow and, unless detached, waits for it and prints its outcome.
func runSchemeCheck(ctx context.Context, g *globals, in workflows.SchemeCheckInput, summary string, detach bool, out *output) error {
	reg, c, err := openBackends(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	defer c.Close()
	if !in.Set {
		// Read-only: a check needs a scheme in force; say so here rather than through a failed workflow.
		if _, err := reg.ActiveSchemeVersion(ctx); err != nil {
			if errors.Is(err, fleet.ErrNoScheme) {
				return asUsage(fmt.Errorf("%w (set one with fleetflow scheme set FILE)", err))
			}
			return err
		}
	}
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: in.CheckID, TaskQueue: g.cfg.TaskQueue,
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE, WorkflowExecutionErrorWhenAlreadyStarted: true,
		StaticSummary: summary,
		TypedSearchAttributes: temporal.NewSearchAttributes(searchattr.Op.ValueSet(searchattr.OpSchemeCheck),
			searchattr.State.ValueSet(searchattr.StateRunning)),
	}, workflows.SchemeCheck, in)
	if err != nil {
		return fmt.Errorf("start %s: %w", in.CheckID, err)
	}
	hints := hintWriter(out)
	fmt.Fprintf(hints, "%s started\nwatch it: %s\n", in.CheckID, workflowURL(g, in.CheckID))
	if detach {
		return out.print(os.Stdout, operationStarted{ID: in.CheckID, Summary: summary, TemporalURL: workflowURL(g, in.CheckID)}, nil)
	}
	var res workflows.SchemeCheckResult
	err = run.Get(ctx, &res)
	if ctx.Err() != nil {
		return &interruptedError{"stopped waiting; the check goes on. See it with `fleetflow scheme check --show --id " + in.CheckID + "`"}
	}
	if err != nil {
		var ae *temporal.ApplicationError
		if errors.As(err, &ae) && (ae.Type() == workflows.ErrTypeInvalidInput || ae.Type() == workflows.ErrTypeNoScheme) {
			return usagef("%s: %s", in.CheckID, ae.Message())
		}
		return fmt.Errorf("%s: %w (is a worker running on task queue %s?)", in.CheckID, err, g.cfg.TaskQueue)
	}
	viol, err := reg.SchemeCheckViolations(ctx, in.CheckID, schemeShowViolations)
	if err != nil {
		return err
	}
	view := schemeCheckView{Check: registry.SchemeCheck{ID: res.CheckID, Version: res.Version, Checked: res.Checked, Violating: res.Violating},
		State: res.State, Devices: viol}
	if err := out.print(os.Stdout, view, func() error {
		printSchemeOutcome(in.Set, res)
		printViolations(viol, res.Violating)
		return nil
	}); err != nil {
		return err
	}
	switch {
	case in.Set && res.State == fleet.SchemeRefused:
		return partialf("scheme version %d refused: %s devices violate it (fix them, or set it with --allow-existing-violations)",
			res.Version, numfmt.Thousands(res.Violating))
	case res.Violating > 0:
		return partialf("%s devices violate scheme version %d", numfmt.Thousands(res.Violating), res.Version)
	}
	return nil
}

// schemeCheckView is `scheme check -o json|yaml` (and `scheme set`'s).
type schemeCheckView struct {
	Check   registry.SchemeCheck     `json:"check"`
	State   fleet.SchemeState        `json:"versionState,omitempty"`
	Devices []fleet.DeviceViolations `json:"devices"`
}

func printSchemeOutcome(set bool, r workflows.SchemeCheckResult) {
	th := numfmt.Thousands
	if !set {
		fmt.Printf("scheme version %d: %s devices checked, %s violate it\n", r.Version, th(r.Checked), th(r.Violating))
		return
	}
	switch {
	case r.State == fleet.SchemeActive && r.Violating == 0:
		fmt.Printf("scheme version %d is in force: all %s devices satisfy it\n", r.Version, th(r.Checked))
	case r.State == fleet.SchemeActive:
		fmt.Printf("scheme version %d is in force, with %s of %s devices violating it (allowed); list them: fleetflow scheme check --show\n",
			r.Version, th(r.Violating), th(r.Checked))
	default:
		fmt.Printf("scheme version %d refused: %s of %s devices violate it\n", r.Version, th(r.Violating), th(r.Checked))
	}
}

func printViolations(devs []fleet.DeviceViolations, total int64) {
	for _, d := range devs {
		var vs []string
		for _, v := range d.Violations {
			vs = append(vs, v.Path+": "+v.Rule)
		}
		fmt.Printf("  %s: %s\n", d.DeviceID, strings.Join(vs, "; "))
	}
	if more := total - int64(len(devs)); more > 0 && len(devs) > 0 {
		fmt.Printf("  … and %s more\n", numfmt.Thousands(more))
	}
}

// printSchemeCheck prints a recorded check: `scheme check --show`.
func printSchemeCheck(ctx context.Context, reg *registry.Registry, id string, limit int, out *output) error {
	chk, err := reg.GetSchemeCheck(ctx, id)
	if errors.Is(err, fleet.ErrNotFound) {
		if id == "" {
			return usagef("no scheme check yet (fleetflow scheme check starts one)")
		}
		return usagef("no scheme check %q", id)
	}
	if err != nil {
		return err
	}
	devs, err := reg.SchemeCheckViolations(ctx, chk.ID, limit)
	if err != nil {
		return err
	}
	return out.print(os.Stdout, schemeCheckView{Check: chk, Devices: devs}, func() error {
		state := "running"
		if chk.FinishedAt != nil {
			state = "finished " + chk.FinishedAt.Local().Format("2006-01-02 15:04:05")
		}
		fmt.Printf("check %s of scheme version %d (%s): %s devices checked, %s violate it\n", chk.ID, chk.Version, state,
			numfmt.Thousands(chk.Checked), numfmt.Thousands(chk.Violating))
		printViolations(devs, chk.Violating)
		return nil
	})
}

// checkTagsPatch refuses a tags patch that breaks the scheme in force whatever the device's tags
// (docs/architecture.md, "Metadata scheme"); no scheme accepts everything.
func checkTagsPatch(ctx context.Context, reg *registry.Registry, patch []byte) error {
	s, err := reg.ActiveScheme(ctx)
	if err != nil || s == nil {
		return err
	}
	return s.CheckTagsPatch(patch)
}
