package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/internal/twin"
	"github.com/fleetflow/fleetflow/workflows"
)

type configFlags struct {
	target, group, setDesired, setTags string
	priority                           int
	metrics                            []string
	out                                *output
}

// spec builds the configuration the flags describe; its errors are usage errors.
func (f *configFlags) spec(name string) (fleet.ConfigSpec, error) {
	s := fleet.ConfigSpec{Name: name, Priority: f.priority, Target: fleet.Target{Query: f.target, Group: f.group}}
	switch {
	case f.setDesired != "" && f.setTags != "":
		return s, errors.New("give --set-desired or --set-tags, not both")
	case f.setDesired != "":
		s.Section, s.Patch = twin.Desired, json.RawMessage(f.setDesired)
	case f.setTags != "":
		s.Section, s.Patch = twin.Tags, json.RawMessage(f.setTags)
	default:
		return s, errors.New("give what the configuration sets: --set-desired JSON or --set-tags JSON")
	}
	for _, m := range f.metrics {
		n, q, ok := strings.Cut(m, "=")
		if !ok {
			return s, fmt.Errorf("--metric %q: want NAME=QUERY", m)
		}
		s.Metrics = append(s.Metrics, fleet.ConfigMetric{Name: strings.TrimSpace(n), Query: strings.TrimSpace(q)})
	}
	return s, s.Validate()
}

func newConfigCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Declarative configurations: desired properties or tags kept applied to every device a target selects",
		Long: `A declarative configuration keeps a desired-properties or tags patch applied to every device its target
selects — the devices it selects now, and those that join, are retagged into it or come back later — as a
long-running FleetConfiguration workflow. Where configurations overlap, the higher priority wins each key it
sets (equal priorities: the name that sorts first); config status shows the conflicts. Deleting a
configuration stops applying it and leaves devices as they are.`,
		Example: `  fleetflow config apply eu-telemetry --target "SELECT * FROM devices WHERE tags.region = 'eu'" --priority 10 \
      --set-desired '{"telemetryInterval": 30}' --metric "online=SELECT * FROM devices WHERE connectionState = 'connected'"
  fleetflow config status eu-telemetry
  fleetflow config delete eu-telemetry`,
	}
	f := &configFlags{}
	apply := &cobra.Command{
		Use:   "apply NAME (--target QUERY | --group GROUP) --priority N (--set-desired JSON | --set-tags JSON) [--metric NAME=QUERY]...",
		Short: "Create a configuration, or update the one of that name (a new version, applied to every targeted device)",
		Example: `  fleetflow config apply eu-telemetry --target "SELECT * FROM devices WHERE tags.region = 'eu'" --priority 10 --set-desired '{"telemetryInterval": 30}'
  fleetflow config apply canary-ring --target "SELECT * FROM devices WHERE tags.site = 'lab'" --priority 50 --set-tags '{"ring": "canary"}'`,
		Long: `Create a configuration and start its FleetConfiguration workflow (id config-NAME), or, when one of that name
runs, send it the new spec as an update: its validator checks it, and every targeted device is brought up to
the new version. Each --metric counts the targeted devices its query selects (config status, and the
FleetMetrics search attribute).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return applyConfig(cmd, g, f, args[0]) },
	}
	fl := apply.Flags()
	fl.StringVar(&f.target, "target", "", "twin query selecting the devices to configure")
	fl.StringVar(&f.group, "group", "", "device group to configure (instead of --target)")
	fl.IntVar(&f.priority, "priority", 0, "priority: where configurations overlap, the highest wins each key")
	fl.StringVar(&f.setDesired, "set-desired", "", "JSON merge patch of desired properties to keep applied")
	fl.StringVar(&f.setTags, "set-tags", "", "JSON merge patch of tags to keep applied")
	fl.StringArrayVar(&f.metrics, "metric", nil, "custom metric NAME=QUERY: targeted devices the query selects (repeatable)")
	f.out = addOutputFlag(apply)

	var listOut *output
	list := &cobra.Command{Use: "list", Short: "List configurations with their device counts", Args: cobra.NoArgs,
		Long:    "List every configuration, highest priority first, with its version, state, the keys it sets and its device counts.",
		Example: "  fleetflow config list\n  fleetflow config list -o json",
		RunE:    func(cmd *cobra.Command, args []string) error { return listConfigs(cmd, g, listOut) }}
	listOut = addOutputFlag(list)

	var statusOut *output
	var failed bool
	status := &cobra.Command{Use: "status NAME", Short: "Show a configuration: its spec, device counts, metrics and conflicts with others",
		Long: `Show a configuration as the registry holds it: its spec and version, the devices it targets now and of
these how many it is applied to, acknowledged by, failed on or superseded on (higher-ranked configurations
own every key it sets there), its custom metrics, each key it shares with another configuration (on how many
devices, and who wins), and its workflow's state.`,
		Example: "  fleetflow config status eu-telemetry\n  fleetflow config status eu-telemetry --failed -o json",
		Args:    cobra.ExactArgs(1),
		RunE:    func(cmd *cobra.Command, args []string) error { return configStatus(cmd, g, statusOut, args[0], failed) }}
	status.Flags().BoolVar(&failed, "failed", false, "list the devices the registry refused the configuration for")
	statusOut = addOutputFlag(status)

	cmd.AddCommand(apply, list, status,
		configUpdateCmd(g, workflows.UpdatePause, "Stop configuring devices that join or change (what is applied stays)"),
		configUpdateCmd(g, workflows.UpdateResume, "Configure devices again, catching up on what changed while paused"),
		configUpdateCmd(g, workflows.UpdateDelete, "Stop applying the configuration and remove it; devices keep the values it wrote"))
	return cmd
}

func configUpdateCmd(g *globals, update, short string) *cobra.Command {
	var out *output
	c := &cobra.Command{
		Use:   update + " NAME",
		Short: short,
		Long: short + ".\n\nThe request is a Temporal Workflow Update: the configuration's workflow validates it and answers; " +
			"a request no worker answers within 30 s waits for a worker and exits 4.",
		Example: "  fleetflow config " + update + " eu-telemetry",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runOperatorUpdate(cmd, g, out, "config", workflows.ConfigWorkflowID(configName(args[0])), update, nil)
		},
	}
	out = addOutputFlag(c)
	return c
}

// configName accepts a configuration's name or its workflow id.
func configName(arg string) string { return strings.TrimPrefix(arg, "config-") }

// configApplied is what apply prints with -o json|yaml.
type configApplied struct {
	Name        string `json:"name"`
	WorkflowID  string `json:"workflowId"`
	Created     bool   `json:"created"`
	Targeted    int64  `json:"targeted"`
	Message     string `json:"message"`
	TemporalURL string `json:"temporalUrl"`
}

func applyConfig(cmd *cobra.Command, g *globals, f *configFlags, name string) error {
	ctx := cmd.Context()
	spec, err := f.spec(name)
	if err != nil {
		return asUsage(err)
	}
	reg, err := openRegistryCtx(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	// Read-only checks: the target and metric queries compile (the workflow saves the configuration).
	if _, err := reg.TargetSQL(ctx, spec.Target); err != nil {
		flag := "--target"
		if spec.Target.Group != "" {
			flag = "--group"
		}
		return asUsage(fmt.Errorf("%s: %w", flag, err))
	}
	n, err := reg.CountTarget(ctx, spec.Target)
	if err != nil {
		return err
	}
	for _, m := range spec.Metrics {
		if _, err := reg.CountTargets(ctx, m.Query); err != nil {
			return asUsage(fmt.Errorf("--metric %s: %w", m.Name, err))
		}
	}
	c, err := dialTemporal(g)
	if err != nil {
		return err
	}
	defer c.Close()
	id := workflows.ConfigWorkflowID(name)
	res := configApplied{Name: name, WorkflowID: id, Targeted: n, TemporalURL: workflowURL(g, id)}
	_, err = c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: id, TaskQueue: g.cfg.TaskQueue,
		// A deleted configuration's name may be applied again.
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE, WorkflowExecutionErrorWhenAlreadyStarted: true,
		StaticSummary: fmt.Sprintf("Configuration %s: set %s %s (priority %d)", name, spec.Section, spec.Patch, spec.Priority),
		StaticDetails: fmt.Sprintf("Target: `%s`", spec.Target),
		TypedSearchAttributes: temporal.NewSearchAttributes(searchattr.Op.ValueSet(searchattr.OpConfig),
			searchattr.State.ValueSet(searchattr.StateRunning)),
	}, workflows.FleetConfiguration, workflows.ConfigInput{Spec: spec, Version: 1})
	var started *serviceerror.WorkflowExecutionAlreadyStarted
	switch {
	case err == nil:
		res.Created = true
		res.Message = fmt.Sprintf("configuration %s applied: it targets %s devices now, and devices that join or change later", name, numfmt.Thousands(n))
	case errors.As(err, &started) || temporal.IsWorkflowExecutionAlreadyStartedError(err):
		msg, uerr := sendUpdate(ctx, g, "config", id, workflows.UpdateApply, spec)
		if uerr != nil {
			return uerr
		}
		res.Message = msg + fmt.Sprintf(" (%s devices targeted now)", numfmt.Thousands(n))
	default:
		return fmt.Errorf("start configuration %s: %w", name, err)
	}
	return f.out.print(stdout(cmd), res, func() error {
		fmt.Fprintln(stdout(cmd), res.Message)
		fmt.Fprintf(stdout(cmd), "follow it: fleetflow config status %s  (%s)\n", name, res.TemporalURL)
		return nil
	})
}

// configView is one configuration as list and status print it.
type configView struct {
	registry.Config
	Counts    fleet.ConfigCounts      `json:"counts"`
	Workflow  string                  `json:"workflow,omitempty"` // the workflow's state: active, paused, deleting, or not running
	Conflicts []fleet.ConfigConflict  `json:"conflicts,omitempty"`
	Failed    []registry.ConfigDevice `json:"failedDevices,omitempty"`
}

func listConfigs(cmd *cobra.Command, g *globals, out *output) error {
	ctx := cmd.Context()
	reg, err := openRegistry(cmd, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	cfgs, err := reg.ListConfigs(ctx)
	if err != nil {
		return err
	}
	views := make([]configView, 0, len(cfgs))
	for _, c := range cfgs {
		cnt, err := reg.ConfigCounts(ctx, c.Spec.Name)
		if err != nil {
			return err
		}
		views = append(views, configView{Config: c, Counts: cnt})
	}
	return out.print(stdout(cmd), views, func() error {
		if len(views) == 0 {
			fmt.Fprintln(stdout(cmd), "no configurations (create one with `fleetflow config apply`)")
			return nil
		}
		tw := tabwriter.NewWriter(stdout(cmd), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tPRIORITY\tVERSION\tSTATE\tSETS\tTARGETED\tAPPLIED\tACKED\tFAILED\tSUPERSEDED")
		for _, v := range views {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s %s\t%s\t%s\t%s\t%s\t%s\n", v.Spec.Name, v.Spec.Priority, v.Version, v.State,
				v.Spec.Section, strings.Join(v.Keys, ","), numfmt.Thousands(v.Counts.Targeted), numfmt.Thousands(v.Counts.Applied),
				numfmt.Thousands(v.Counts.Acked), numfmt.Thousands(v.Counts.Failed), numfmt.Thousands(v.Counts.Superseded))
		}
		return tw.Flush()
	})
}

func configStatus(cmd *cobra.Command, g *globals, out *output, arg string, failed bool) error {
	ctx := cmd.Context()
	name := configName(arg)
	reg, err := openRegistry(cmd, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	cfg, err := reg.GetConfig(ctx, name)
	if errors.Is(err, fleet.ErrNotFound) {
		return fmt.Errorf("no configuration %s (deleted, or its workflow has not saved it yet: `fleetflow config list`)", name)
	}
	if err != nil {
		return err
	}
	v := configView{Config: cfg}
	if v.Counts, err = reg.ConfigCounts(ctx, name); err != nil {
		return err
	}
	if v.Conflicts, err = reg.ConfigConflicts(ctx, name); err != nil {
		return err
	}
	if failed {
		if v.Failed, err = reg.ConfigDevices(ctx, name, []fleet.ConfigDeviceState{fleet.ConfigFailed}, 1000); err != nil {
			return err
		}
	}
	v.Workflow = configWorkflowState(ctx, g, name)
	w := stdout(cmd)
	return out.print(w, v, func() error {
		fmt.Fprintf(w, "configuration %s  version %d  priority %d  %s (workflow: %s)\n", name, v.Version, v.Spec.Priority, v.State, v.Workflow)
		fmt.Fprintf(w, "target:  %s\n", v.Spec.Target)
		fmt.Fprintf(w, "sets:    %s %s\n", v.Spec.Section, v.Spec.Patch)
		c := v.Counts
		fmt.Fprintf(w, "devices: targeted %s · applied %s · acknowledged %s · failed %s · superseded %s\n", numfmt.Thousands(c.Targeted),
			numfmt.Thousands(c.Applied), numfmt.Thousands(c.Acked), numfmt.Thousands(c.Failed), numfmt.Thousands(c.Superseded))
		for _, m := range c.Metrics {
			fmt.Fprintf(w, "metric:  %s %s\n", m.Name, numfmt.Thousands(m.Count))
		}
		if len(v.Conflicts) == 0 {
			fmt.Fprintln(w, "conflicts: none")
		}
		for _, k := range v.Conflicts {
			fmt.Fprintf(w, "conflict: key %q is also set by %s (priority %d) on %s devices: %s wins\n", k.Key, k.Other, k.OtherPr,
				numfmt.Thousands(k.Devices), k.Winner)
		}
		for _, d := range v.Failed {
			fmt.Fprintf(w, "failed:  %s  %s\n", d.DeviceID, d.Error)
		}
		return nil
	})
}

// configWorkflowState asks the configuration's workflow where it stands; the registry row is what the
// workflow saved last, this says whether it still runs.
func configWorkflowState(ctx context.Context, g *globals, name string) string {
	c, err := dialTemporal(g)
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	defer c.Close()
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := c.QueryWorkflow(qctx, workflows.ConfigWorkflowID(name), "", workflows.QueryProgress)
	if err != nil {
		return "not answering (" + err.Error() + ")"
	}
	var p workflows.ConfigProgress
	if err := v.Get(&p); err != nil {
		return "unknown"
	}
	return p.State
}
