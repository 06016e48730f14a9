package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/health"
	"github.com/fleetflow/fleetflow/internal/healthsched"
	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/workflows"
)

// Health rules (docs/architecture.md, "Health rules"): `fleetflow health rule set|list|show|delete`. The CLI
// reads the registry and starts the workflows that write a rule (HealthRuleSave, HealthRuleDelete), then
// puts the rule on its Temporal Schedule or takes it off.

// defaultRuleEvery is a new rule's period when --every is not given.
const defaultRuleEvery = 5 * time.Minute

func newHealthRuleCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "rule", Short: "Health rules: named checks of a query or group, with their own limits and schedule",
		Long: `A health rule is a named health check of the devices a query or a group selects, with its own limits and
its own Temporal Schedule, beside the fleet-wide check (which is the rule "fleet"). Each rule opens and
resolves its own alerts: a device 5 minutes offline is an alert of a 2-minute rule and not of the
fleet-wide 10-minute check. A group's membership is resolved at every check, and a group a rule checks
cannot be deleted until the rule is.`,
		Example: `  fleetflow health rule set critical --group hospital-gw --offline-after 2m --ack-within 5m --every 1m
  fleetflow health rule list
  fleetflow health rule show critical
  fleetflow health run --rule critical
  fleetflow health rule delete critical`,
	}

	var q, group, every string
	var setOut *output
	rf := &healthRuleFlags{}
	set := &cobra.Command{
		Use:   "set NAME (--query Q | --group G) [--offline-after 10m] [--ack-within 10m] [--expiring-within 7d] [--every 5m]",
		Short: "Create a health rule, or change one (flags not given keep their values), and schedule it",
		Long: `Create a health rule over the devices a query or a group selects, with its limits and its period, and put
it on its own Temporal Schedule. On an existing rule, the flags given change it and the others keep their
values. The rule's definition is written by a HealthRuleSave workflow; its schedule names the rule, and
each check reads the rule's current target and limits.`,
		Example: `  fleetflow health rule set critical --group hospital-gw --offline-after 2m --ack-within 5m --every 1m
  fleetflow health rule set eu-sensors --query "SELECT * FROM devices WHERE tags.region = 'eu'" --every 10m
  fleetflow health rule set critical --every 30s`,
		Args: cobra.ExactArgs(1), ValidArgsFunction: completeFrom(g, registry.CandidateHealthRules, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := fleet.ValidateHealthRuleName(name); err != nil {
				return asUsage(err)
			}
			if _, err := fleet.TargetQuery(q, group); err != nil {
				return asUsage(err)
			}
			changed := cmd.Flags().Changed
			limits, err := rf.input()
			if err != nil {
				return asUsage(err)
			}
			var period time.Duration
			if changed("every") {
				if period, err = numfmt.ParseDuration("--every", every); err != nil {
					return asUsage(err)
				}
				if err := healthsched.ValidateEvery(period); err != nil {
					return asUsage(err)
				}
			}
			return setHealthRule(cmd.Context(), g, ruleChange{name: name, query: q, group: group, limits: limits.Rules(), every: period,
				offline: changed("offline-after"), ack: changed("ack-within"), expiring: changed("expiring-within")}, setOut)
		},
	}
	set.Flags().StringVar(&q, "query", "", "twin query selecting the devices the rule checks")
	_ = set.RegisterFlagCompletionFunc("query", completeQueryPaths(g))
	addGroupFlag(g, set, &group)
	set.Flags().StringVar(&every, "every", numfmt.FormatDuration(defaultRuleEvery), "how often to check (at least 10s)")
	rf.add(set)
	setOut = addOutputFlag(set)

	var listOut *output
	list := &cobra.Command{
		Use:   "list [-o text|json|yaml]",
		Short: "List the health rules with their targets, limits, schedules and latest checks",
		Long: `List the health rules by name: each rule's target, period and limits, the state of its schedule (read from
Temporal; unknown when it cannot be reached) and what its latest check found.`,
		Example: `  fleetflow health rule list
  fleetflow health rule list -o json | jq -r '.[] | select(.lastRun.summary.open > 0) | .name'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return listHealthRules(cmd.Context(), g, listOut)
		},
	}
	listOut = addOutputFlag(list)

	var showOut *output
	show := &cobra.Command{
		Use:   "show NAME [-o text|json|yaml]",
		Short: "Show a health rule: its definition, the devices it selects now, its schedule and its latest checks",
		Long: `Show a health rule: its target and how many devices it selects now, its limits, its schedule (period,
next and recent runs, read from Temporal) and the summaries of its latest checks.`,
		Example: `  fleetflow health rule show critical
  fleetflow health rule show critical -o yaml`,
		Args: cobra.ExactArgs(1), ValidArgsFunction: completeFrom(g, registry.CandidateHealthRules, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := fleet.ValidateHealthRuleName(args[0]); err != nil {
				return asUsage(err)
			}
			return showHealthRule(cmd.Context(), g, args[0], showOut)
		},
	}
	showOut = addOutputFlag(show)

	var deleteOut *output
	del := &cobra.Command{
		Use:   "delete NAME [-o text|json|yaml]",
		Short: "Delete a health rule: its schedule, its definition, and its open alerts (resolved)",
		Long: `Delete a health rule: its schedule first (a check in progress finishes), then its definition, through a
HealthRuleDelete workflow that also resolves the rule's open alerts (no check will look at them again) and
frees the group it checked.`,
		Example: `  fleetflow health rule delete critical`,
		Args:    cobra.ExactArgs(1), ValidArgsFunction: completeFrom(g, registry.CandidateHealthRules, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := fleet.ValidateHealthRuleName(args[0]); err != nil {
				return asUsage(err)
			}
			return deleteHealthRule(cmd.Context(), g, args[0], deleteOut)
		},
	}
	deleteOut = addOutputFlag(del)
	cmd.AddCommand(set, list, show, del)
	return cmd
}

// ruleChange is what `health rule set` was given: the flags not given (false) keep an existing rule's values.
type ruleChange struct {
	name, query, group     string
	limits                 health.Rules
	every                  time.Duration // 0: not given
	offline, ack, expiring bool
}

// apply turns the change into the rule to save, over the existing rule (nil: a new one).
func (c ruleChange) apply(old *fleet.HealthRule) (fleet.HealthRule, error) {
	r := fleet.HealthRule{Name: c.name, Rules: c.limits, Every: c.every}
	if r.Every == 0 {
		r.Every = defaultRuleEvery
	}
	if c.query != "" || c.group != "" {
		text, err := fleet.TargetQuery(c.query, c.group)
		if err != nil {
			return r, asUsage(err)
		}
		r.Query, r.Group = text, c.group
	}
	if old == nil {
		if r.Query == "" {
			return r, usagef("--query or --group is required for a new rule, e.g. --group hospital-gw")
		}
		return r, nil
	}
	if r.Query == "" {
		r.Query, r.Group = old.Query, old.Group
	}
	if c.every == 0 {
		r.Every = old.Every
	}
	if !c.offline {
		r.Rules.OfflineAfter = old.Rules.OfflineAfter
	}
	if !c.ack {
		r.Rules.AckWithin = old.Rules.AckWithin
	}
	if !c.expiring {
		r.Rules.ExpiringWithin = old.Rules.ExpiringWithin
	}
	return r, nil
}

// healthRuleSet is what `health rule set -o json|yaml` prints.
type healthRuleSet struct {
	fleet.HealthRule
	Created  bool        `json:"created"` // false: an existing rule was changed
	Devices  int64       `json:"devices"` // selected by the target now
	NextRuns []time.Time `json:"nextRuns"`
	URL      string      `json:"temporalUrl"`
}

func setHealthRule(ctx context.Context, g *globals, ch ruleChange, out *output) error {
	reg, c, err := openBackends(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	defer c.Close()
	var old *fleet.HealthRule
	switch r, err := reg.HealthRule(ctx, ch.name); {
	case err == nil:
		old = &r
	case !errors.Is(err, fleet.ErrHealthRuleNotFound):
		return err
	}
	rule, err := ch.apply(old)
	if err != nil {
		return err
	}
	// Read-only checks, as for any operation's targets: the group exists, the query compiles.
	var n int64
	if ch.query != "" || ch.group != "" {
		if _, n, err = resolveTargets(ctx, reg, ch.query, ch.group); err != nil {
			return err
		}
	} else if n, _, err = reg.PreviewTargets(ctx, rule.Query); err != nil {
		return queryError(err)
	}

	id := fmt.Sprintf("%s-%s-%s", workflows.HealthRuleSaveIDPrefix, rule.Name, time.Now().UTC().Format("20060102-150405.000"))
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: id, TaskQueue: g.cfg.TaskQueue,
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE, WorkflowExecutionErrorWhenAlreadyStarted: true,
		StaticSummary: "Save health rule " + rule.Name,
		TypedSearchAttributes: temporal.NewSearchAttributes(searchattr.Op.ValueSet(searchattr.OpHealthRule),
			searchattr.State.ValueSet(searchattr.StateRunning)),
	}, workflows.HealthRuleSave, workflows.HealthRuleSaveInput{Rule: rule})
	if err != nil {
		return fmt.Errorf("start %s: %w", id, err)
	}
	var saved fleet.HealthRule
	if err := awaitRuleWorkflow(ctx, g, run, id, &saved); err != nil {
		return err
	}
	if err := healthsched.EnsureRuleSchedule(ctx, c, g.cfg.TaskQueue, saved.Name, saved.Every); err != nil {
		return fmt.Errorf("rule %s saved, but not scheduled (run `fleetflow health rule set %s` again): %w", saved.Name, saved.Name, err)
	}
	sid := healthsched.RuleScheduleID(saved.Name)
	v := healthRuleSet{HealthRule: saved, Created: old == nil, Devices: n, NextRuns: []time.Time{}, URL: scheduleURL(g, sid)}
	described := false
	if d, err := healthsched.DescribeRule(ctx, c, saved.Name); err == nil {
		v.NextRuns, described = d.Info.NextActionTimes, true
	}
	return out.print(os.Stdout, v, func() error {
		verb := "created"
		if old != nil {
			verb = "changed"
		}
		fmt.Printf("health rule %s %s: %s devices of %s, checked every %s\n", saved.Name, verb, numfmt.Thousands(n), ruleTarget(saved),
			numfmt.FormatDuration(saved.Every))
		fmt.Printf("limits: %s\n", saved.Rules)
		if described {
			printTimes("next runs", v.NextRuns, 3)
		}
		fmt.Printf("run it now: fleetflow health run --rule %s\nwatch it: %s\n", saved.Name, v.URL)
		return nil
	})
}

// awaitRuleWorkflow waits for a workflow that writes a rule and decodes its result into res; a refusal of
// the rule as written is a usage error.
func awaitRuleWorkflow(ctx context.Context, g *globals, run client.WorkflowRun, id string, res any) error {
	err := run.Get(ctx, res)
	if ctx.Err() != nil {
		return &interruptedError{"stopped waiting; " + id + " goes on (see `fleetflow health rule list`)"}
	}
	if err != nil {
		var ae *temporal.ApplicationError
		if errors.As(err, &ae) && ae.Type() == workflows.ErrTypeInvalidInput {
			return usagef("%s: %s", id, ae.Message())
		}
		return fmt.Errorf("%s: %w (is a worker running on task queue %s?)", id, err, g.cfg.TaskQueue)
	}
	return nil
}

// ruleTarget says what a rule checks: its group, or its query.
func ruleTarget(r fleet.HealthRule) string {
	if r.Group != "" {
		return "group " + r.Group
	}
	return "`" + r.Query + "`"
}

// healthRuleItem is one rule as `health rule list -o json|yaml` prints it.
type healthRuleItem struct {
	registry.HealthRuleView
	// Schedule is active, paused, missing (the rule has no schedule: set it again) or unknown (Temporal
	// cannot be reached).
	Schedule string `json:"schedule"`
}

// ruleScheduleState reads a rule's schedule state from Temporal.
func ruleScheduleState(ctx context.Context, c client.Client, name string) (string, *client.ScheduleDescription) {
	if c == nil {
		return "unknown", nil
	}
	d, err := healthsched.DescribeRule(ctx, c, name)
	switch {
	case errors.Is(err, healthsched.ErrNotScheduled):
		return "missing", nil
	case err != nil:
		return "unknown", nil
	case d.Schedule.State != nil && d.Schedule.State.Paused:
		return "paused", d
	}
	return "active", d
}

func listHealthRules(ctx context.Context, g *globals, out *output) error {
	reg, err := openRegistryCtx(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	rules, err := reg.ListHealthRules(ctx)
	if err != nil {
		return err
	}
	var c client.Client
	if len(rules) > 0 {
		if tc, err := dialTemporal(g); err == nil {
			c = tc
			defer c.Close()
		}
	}
	items := make([]healthRuleItem, len(rules))
	for i, r := range rules {
		items[i].HealthRuleView = r
		items[i].Schedule, _ = ruleScheduleState(ctx, c, r.Name)
	}
	return out.print(os.Stdout, items, func() error {
		if len(items) == 0 {
			fmt.Println("no health rules (create one: fleetflow health rule set critical --group GROUP --offline-after 2m --every 1m)")
			return nil
		}
		th := numfmt.Thousands
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "NAME\tTARGET\tEVERY\tOFFLINE AFTER\tACK WITHIN\tEXPIRING WITHIN\tSCHEDULE\tLAST CHECK\tDEVICES\tPROBLEMS\tOPEN")
		for _, it := range items {
			last, devices, problems, open := "never", "-", "-", "-"
			if r := it.LastRun; r != nil {
				last = r.StartedAt.Local().Format("2006-01-02 15:04:05")
				devices, open = th(r.Summary.Devices), th(r.Summary.Open)
				var p int64
				for _, n := range r.Summary.Problems {
					p += n
				}
				problems = th(p)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", it.Name, clip(ruleTarget(it.HealthRule), 48),
				numfmt.FormatDuration(it.Every), numfmt.FormatDuration(it.Rules.OfflineAfter), numfmt.FormatDuration(it.Rules.AckWithin),
				numfmt.FormatDuration(it.Rules.ExpiringWithin), it.Schedule, last, devices, problems, open)
		}
		return w.Flush()
	})
}

// healthRuleDetail is `health rule show -o json|yaml`.
type healthRuleDetail struct {
	fleet.HealthRule
	Devices  int64                `json:"devices"` // selected by the target now
	Schedule *healthScheduleView  `json:"schedule"`
	State    string               `json:"scheduleState"`
	Runs     []registry.HealthRun `json:"runs"`
}

func showHealthRule(ctx context.Context, g *globals, name string, out *output) error {
	reg, err := openRegistryCtx(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	rule, err := reg.HealthRule(ctx, name)
	if errors.Is(err, fleet.ErrHealthRuleNotFound) {
		return usagef("no health rule %q (fleetflow health rule list shows them)", name)
	}
	if err != nil {
		return err
	}
	v := healthRuleDetail{HealthRule: rule}
	n, warnings, err := reg.PreviewTargets(ctx, rule.Query)
	if err != nil {
		return queryError(err)
	}
	printWarnings(warnings)
	v.Devices = n
	if v.Runs, err = reg.HealthRunsOf(ctx, name, 5); err != nil {
		return err
	}
	var c client.Client
	if tc, err := dialTemporal(g); err == nil {
		c = tc
		defer c.Close()
	}
	var d *client.ScheduleDescription
	v.State, d = ruleScheduleState(ctx, c, name)
	if d != nil {
		v.Schedule = scheduleView(d)
		v.Schedule.ID = healthsched.RuleScheduleID(name)
		v.Schedule.Rules = &rule.Rules
	}
	return out.print(os.Stdout, v, func() error {
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(w, "rule\t%s\n", rule.Name)
		if rule.Group != "" {
			fmt.Fprintf(w, "group\t%s\n", rule.Group)
		}
		fmt.Fprintf(w, "target\t%s (%s devices now)\n", rule.Query, numfmt.Thousands(n))
		fmt.Fprintf(w, "limits\t%s\n", rule.Rules)
		fmt.Fprintf(w, "every\t%s\n", numfmt.FormatDuration(rule.Every))
		fmt.Fprintf(w, "schedule\t%s (%s)\n", v.State, healthsched.RuleScheduleID(name))
		if s := v.Schedule; s != nil {
			var next []string
			for i, t := range s.NextRuns {
				if i == 3 {
					break
				}
				next = append(next, t.Local().Format("2006-01-02 15:04:05"))
			}
			fmt.Fprintf(w, "next runs\t%s\n", orNone(strings.Join(next, ", ")))
			fmt.Fprintf(w, "ui\t%s\n", scheduleURL(g, s.ID))
		}
		fmt.Fprintf(w, "created\t%s (changed %s)\n", rule.CreatedAt.Local().Format("2006-01-02 15:04:05"),
			rule.UpdatedAt.Local().Format("2006-01-02 15:04:05"))
		if err := w.Flush(); err != nil {
			return err
		}
		fmt.Println()
		if len(v.Runs) == 0 {
			fmt.Printf("no check of this rule has run yet (run one now: fleetflow health run --rule %s)\n", name)
			return nil
		}
		return printHealthRuns(v.Runs)
	})
}

func deleteHealthRule(ctx context.Context, g *globals, name string, out *output) error {
	reg, c, err := openBackends(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	defer c.Close()
	if _, err := reg.HealthRule(ctx, name); errors.Is(err, fleet.ErrHealthRuleNotFound) {
		return usagef("no health rule %q (fleetflow health rule list shows them)", name)
	} else if err != nil {
		return err
	}
	// The schedule first: no check of a rule that is gone is started afterwards.
	if err := healthsched.DeleteRuleSchedule(ctx, c, name); err != nil && !errors.Is(err, healthsched.ErrNotScheduled) {
		return err
	}
	id := fmt.Sprintf("%s-%s-%s", workflows.HealthRuleDeleteIDPrefix, name, time.Now().UTC().Format("20060102-150405.000"))
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: id, TaskQueue: g.cfg.TaskQueue,
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE, WorkflowExecutionErrorWhenAlreadyStarted: true,
		StaticSummary: "Delete health rule " + name,
		TypedSearchAttributes: temporal.NewSearchAttributes(searchattr.Op.ValueSet(searchattr.OpHealthRule),
			searchattr.State.ValueSet(searchattr.StateRunning)),
	}, workflows.HealthRuleDelete, workflows.HealthRuleDeleteInput{Name: name})
	if err != nil {
		return fmt.Errorf("start %s: %w", id, err)
	}
	var res workflows.HealthRuleDeleteResult
	if err := awaitRuleWorkflow(ctx, g, run, id, &res); err != nil {
		return err
	}
	doc := struct {
		Name    string `json:"name"`
		Deleted bool   `json:"deleted"`
	}{name, true}
	return out.print(stdout(nil), doc, func() error {
		fmt.Printf("health rule %s deleted: its schedule is gone and its open alerts resolved\n", name)
		return nil
	})
}

// printHealthRuns prints checks' summaries, one a line, with the rule each checked.
func printHealthRuns(runs []registry.HealthRun) error {
	th := numfmt.Thousands
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "STARTED\tRULE\tDEVICES\tONLINE\tOFFLINE\tUNHEALTHY\tPENDING\tFIRMWARE\tCREDS\tOPENED\tRESOLVED\tOPEN\tTOOK\tID")
	for _, r := range runs {
		s := r.Summary
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.StartedAt.Local().Format("2006-01-02 15:04:05"),
			r.Rule, th(s.Devices), th(s.Online), th(s.Problems[health.KindOffline]), th(s.Problems[health.KindUnhealthy]),
			th(s.Problems[health.KindDesiredPending]), th(s.Problems[health.KindFirmwareNoncompliant]),
			th(s.Problems[health.KindCredentialExpiring]), th(s.Opened), th(s.Resolved), th(s.Open),
			s.Duration.Round(time.Millisecond), r.ID)
	}
	return w.Flush()
}
