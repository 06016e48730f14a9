package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/user"
	"strconv"
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

// healthRuleFlags are the rules' flags, kept as text so that a bad value gets our message (with an example)
// rather than pflag's.
type healthRuleFlags struct {
	offlineAfter, ackWithin, expiringWithin string
}

func (f *healthRuleFlags) add(c *cobra.Command) {
	fl := c.Flags()
	fl.StringVar(&f.offlineAfter, "offline-after", numfmt.FormatDuration(health.DefaultOfflineAfter),
		"an active device disconnected for longer than this is offline")
	fl.StringVar(&f.ackWithin, "ack-within", numfmt.FormatDuration(health.DefaultAckWithin),
		"a device must acknowledge a desired change in its reported properties within this")
	fl.StringVar(&f.expiringWithin, "expiring-within", numfmt.FormatDuration(health.DefaultExpiringWithin),
		"credentials that expire within this (or have expired) raise an alert; days allowed, e.g. 7d")
}

// input validates the flags into the workflow's input.
func (f *healthRuleFlags) input() (workflows.HealthCheckInput, error) {
	var in workflows.HealthCheckInput
	var errs []error
	for _, p := range []struct {
		flag, val string
		dst       *time.Duration
	}{{"--offline-after", f.offlineAfter, &in.OfflineAfter}, {"--ack-within", f.ackWithin, &in.AckWithin},
		{"--expiring-within", f.expiringWithin, &in.ExpiringWithin}} {
		d, err := numfmt.ParseDuration(p.flag, p.val)
		errs = append(errs, err)
		*p.dst = d
	}
	return in, errors.Join(errs...)
}

func newHealthCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "health", Short: "The recurring fleet health check: alerts that open and resolve by themselves",
		Long: `The fleet health check: a FleetHealthCheck workflow finds devices offline for too long, reporting failing
health, not acknowledging desired changes, off their rollout's firmware, or with credentials about to
expire. It opens an alert per problem and resolves it when the problem is gone. Run it on a Temporal
Schedule (schedule), or once now (run). Beside the fleet-wide check, health rules (rule) check the
devices of a query or group with limits and a schedule of their own, and keep alerts of their own.`,
		Example: `  fleetflow health schedule --every 5m
  fleetflow health run
  fleetflow health rule set critical --group hospital-gw --offline-after 2m --every 1m
  fleetflow health run --rule critical
  fleetflow health status`,
	}

	var every string
	var scheduleOut, runOut, statusOut *output
	var detach bool
	sf := &healthRuleFlags{}
	schedule := &cobra.Command{
		Use:   "schedule [--every 5m] [--offline-after 10m] [--ack-within 10m] [--expiring-within 7d]",
		Short: "Run FleetHealthCheck on a Temporal Schedule (creates it, or updates the existing one)",
		Long: `Run the health check on a Temporal Schedule every --every, with the given rules. The schedule is created,
or updated in place when it exists; overlapping checks are skipped.`,
		Example: `  fleetflow health schedule --every 5m
  fleetflow health schedule --every 1m --offline-after 3m`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := numfmt.ParseDuration("--every", every)
			if err != nil {
				return asUsage(err)
			}
			if err := healthsched.ValidateEvery(d); err != nil {
				return asUsage(err)
			}
			in, err := sf.input()
			if err != nil {
				return asUsage(err)
			}
			return scheduleHealth(cmd.Context(), g, d, in, scheduleOut)
		},
	}
	schedule.Flags().StringVar(&every, "every", "5m", "how often to check (at least 10s)")
	sf.add(schedule)
	scheduleOut = addOutputFlag(schedule)

	var unscheduleOut *output
	unschedule := &cobra.Command{
		Use:   "unschedule",
		Short: "Delete the health-check schedule (a check in progress finishes)",
		Long: `Delete the health-check schedule. A check in progress finishes; open alerts stay as they are until a check
runs again.`,
		Example: `  fleetflow health unschedule`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := dialTemporal(g)
			if err != nil {
				return err
			}
			defer c.Close()
			if err := healthsched.DeleteHealthSchedule(cmd.Context(), c); err != nil {
				return err
			}
			doc := struct {
				ID      string `json:"id"`
				Deleted bool   `json:"deleted"`
			}{healthsched.ScheduleID, true}
			return unscheduleOut.print(stdout(cmd), doc, func() error {
				fmt.Printf("schedule %s deleted; open alerts stay as they are until a check runs again\n", healthsched.ScheduleID)
				return nil
			})
		},
	}
	unscheduleOut = addOutputFlag(unschedule)

	rf := &healthRuleFlags{}
	var runRule string
	run := &cobra.Command{
		Use:   "run [--rule NAME | --offline-after 10m --ack-within 10m --expiring-within 7d] [--detach]",
		Short: "Run one FleetHealthCheck now (fleet-wide, or a health rule's), wait for it and print the summary",
		Long: `Run one health check now with the given limits, wait for it and print its summary: the fleet's devices,
the problems found, and the alerts opened and resolved. --rule runs a health rule's check instead: its
target and limits are the rule's, and so are the alerts it opens and resolves. --detach returns once it
has started.`,
		Example: `  fleetflow health run
  fleetflow health run --offline-after 2m -o json | jq .open
  fleetflow health run --rule critical`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			in, err := rf.input()
			if err != nil {
				return asUsage(err)
			}
			if runRule != "" && runRule != health.FleetRule {
				for _, f := range []string{"offline-after", "ack-within", "expiring-within"} {
					if cmd.Flags().Changed(f) {
						return usagef("--%s with --rule: the rule's limits apply (change them with `fleetflow health rule set %s --%s …`)", f, runRule, f)
					}
				}
				if err := fleet.ValidateHealthRuleName(runRule); err != nil {
					return asUsage(err)
				}
				in = workflows.HealthCheckInput{Rule: runRule}
			}
			return runHealthNow(cmd.Context(), g, in, runOut, detach)
		},
	}
	rf.add(run)
	run.Flags().StringVar(&runRule, "rule", "", "run this health rule's check (fleetflow health rule list)")
	_ = run.RegisterFlagCompletionFunc("rule", completeFlagFrom(g, registry.CandidateHealthRules))
	run.Flags().BoolVar(&detach, "detach", false, "start the check and return without waiting for it")
	runOut = addOutputFlag(run)

	var statusRule string
	status := &cobra.Command{
		Use:   "status [--rule NAME]",
		Short: "Show the schedule (spec, next and recent runs), the health rules and the last checks' summaries",
		Long: `Show the fleet-wide health-check schedule (interval, limits, next and recent runs; read from Temporal),
each health rule with what its latest check found, and the summaries of the last ten checks of every rule
(read from the registry), each with the rule it checked; --rule shows one rule's checks. When Temporal
cannot be reached the schedule is shown as unknown and the rest still printed.`,
		Example: `  fleetflow health status
  fleetflow health status --rule critical
  fleetflow health status -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return healthStatus(cmd.Context(), g, statusRule, statusOut)
		},
	}
	status.Flags().StringVar(&statusRule, "rule", "", `only this rule's checks ("fleet": the fleet-wide check's)`)
	_ = status.RegisterFlagCompletionFunc("rule", completeFlagFrom(g, registry.CandidateHealthRules))
	statusOut = addOutputFlag(status)
	cmd.AddCommand(schedule, unschedule, run, status, newHealthRuleCmd(g))
	return cmd
}

// scheduleURL links to a schedule in the Temporal UI.
func scheduleURL(g *globals, id string) string {
	return fmt.Sprintf("%s/namespaces/%s/schedules/%s", strings.TrimRight(g.cfg.TemporalUI, "/"),
		url.PathEscape(g.cfg.Namespace), url.PathEscape(id))
}

// healthScheduled is what `health schedule -o json|yaml` prints.
type healthScheduled struct {
	ID        string       `json:"id"`
	Created   bool         `json:"created"` // false: an existing schedule was updated
	Every     string       `json:"every"`
	TaskQueue string       `json:"taskQueue"`
	Rules     health.Rules `json:"rules"`
	NextRuns  []time.Time  `json:"nextRuns"`
	URL       string       `json:"temporalUrl"`
}

func scheduleHealth(ctx context.Context, g *globals, every time.Duration, in workflows.HealthCheckInput, out *output) error {
	c, err := dialTemporal(g)
	if err != nil {
		return err
	}
	defer c.Close()
	existed, err := healthsched.Exists(ctx, c)
	if err != nil {
		return err
	}
	if err := healthsched.EnsureHealthSchedule(ctx, c, g.cfg.TaskQueue, every, in); err != nil {
		return err
	}
	v := healthScheduled{ID: healthsched.ScheduleID, Created: !existed, Every: numfmt.FormatDuration(every),
		TaskQueue: g.cfg.TaskQueue, Rules: in.Rules(), URL: scheduleURL(g, healthsched.ScheduleID)}
	described := false
	if d, err := healthsched.Describe(ctx, c); err == nil {
		v.NextRuns, described = d.Info.NextActionTimes, true
	}
	return out.print(os.Stdout, v, func() error {
		verb := "created"
		if existed {
			verb = "updated"
		}
		fmt.Printf("schedule %s %s: a health check every %s on task queue %s\n", v.ID, verb, v.Every, v.TaskQueue)
		fmt.Printf("rules: %s\n", v.Rules)
		if described {
			printTimes("next runs", v.NextRuns, 3)
		}
		fmt.Printf("watch it: %s\n", v.URL)
		return nil
	})
}

func printTimes(label string, ts []time.Time, n int) {
	var s []string
	for i, t := range ts {
		if i == n {
			break
		}
		s = append(s, t.Local().Format("2006-01-02 15:04:05"))
	}
	if len(s) == 0 {
		s = []string{"none"}
	}
	fmt.Printf("%s: %s\n", label, strings.Join(s, ", "))
}

func runHealthNow(ctx context.Context, g *globals, in workflows.HealthCheckInput, out *output, detach bool) error {
	c, err := dialTemporal(g)
	if err != nil {
		return err
	}
	defer c.Close()
	prefix, summary, what := workflows.HealthCheckIDPrefix, "Fleet health check (run by hand)", in.Rules().String()
	if in.IsRule() {
		if err := checkHealthRuleExists(ctx, g, in.Rule); err != nil {
			return err
		}
		prefix, summary, what = healthsched.RuleWorkflowIDPrefix(in.Rule), "Health rule "+in.Rule+" (run by hand)", "health rule "+in.Rule
	}
	id := prefix + "-" + time.Now().UTC().Format("20060102-150405.000")
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: id, TaskQueue: g.cfg.TaskQueue,
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE, WorkflowExecutionErrorWhenAlreadyStarted: true,
		StaticSummary: summary,
		StaticDetails: what,
		TypedSearchAttributes: temporal.NewSearchAttributes(searchattr.Op.ValueSet(searchattr.OpHealthCheck),
			searchattr.State.ValueSet(searchattr.StateRunning)),
	}, workflows.FleetHealthCheck, in)
	if err != nil {
		return fmt.Errorf("start health check %s: %w", id, err)
	}
	if !out.structured() {
		fmt.Printf("health check %s started (%s)\n", id, what)
		fmt.Printf("watch it: %s\n", workflowURL(g, id))
	}
	if detach {
		return out.print(os.Stdout, operationStarted{ID: id, Summary: what, TemporalURL: workflowURL(g, id)}, nil)
	}
	var res workflows.HealthCheckResult
	err = run.Get(ctx, &res)
	if ctx.Err() != nil {
		return &interruptedError{"stopped waiting; the check goes on. See it with `fleetflow health status`"}
	}
	if err != nil {
		var ae *temporal.ApplicationError
		if errors.As(err, &ae) && ae.Type() == workflows.ErrTypeInvalidInput {
			return usagef("health check %s: %s", id, ae.Message())
		}
		return fmt.Errorf("health check %s: %w (is a worker running on task queue %s?)", id, err, g.cfg.TaskQueue)
	}
	return out.print(os.Stdout, res, func() error {
		printHealthResult(res)
		if res.Open > 0 {
			if res.Rule != "" {
				fmt.Printf("list them: fleetflow alerts list --open --rule %s\n", res.Rule)
			} else {
				fmt.Println("list them: fleetflow alerts list --open")
			}
		}
		return nil
	})
}

// checkHealthRuleExists refuses, before anything starts, a rule the registry does not have.
func checkHealthRuleExists(ctx context.Context, g *globals, name string) error {
	reg, err := openRegistryCtx(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	if _, err := reg.HealthRule(ctx, name); errors.Is(err, fleet.ErrHealthRuleNotFound) {
		return usagef("no health rule %q (fleetflow health rule list shows them)", name)
	} else if err != nil {
		return err
	}
	return nil
}

func printHealthResult(r workflows.HealthCheckResult) {
	th := numfmt.Thousands
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	if r.Rule != "" {
		fmt.Fprintf(w, "rule\t%s: %s\n", r.Rule, r.Target)
		if r.Rules != nil {
			fmt.Fprintf(w, "limits\t%s\n", r.Rules)
		}
	}
	fmt.Fprintf(w, "devices\t%s (%s active, %s disabled; %s retired) — %s online, %s offline\n", th(r.Devices), th(r.Active),
		th(r.Disabled), th(r.Retired), th(r.Online), th(r.Offline))
	p := r.Problems
	fmt.Fprintf(w, "problems\toffline %s · unhealthy %s · desired pending %s · firmware noncompliant %s · credentials expiring %s\n",
		th(p.Offline), th(p.Unhealthy), th(p.DesiredPending), th(p.FirmwareNoncompliant), th(p.CredentialExpiring))
	fmt.Fprintf(w, "alerts\topened %s · resolved %s · open %s\n", th(r.Opened), th(r.Resolved), th(r.Open))
	fmt.Fprintf(w, "took\t%s\n", r.Duration.Round(time.Millisecond))
	_ = w.Flush()
}

// healthScheduleView is the schedule as `health status -o json` shows it.
type healthScheduleView struct {
	ID          string                      `json:"id"`
	Every       string                      `json:"every"`
	Rules       *health.Rules               `json:"rules,omitempty"`
	TaskQueue   string                      `json:"taskQueue"`
	Paused      bool                        `json:"paused"`
	Note        string                      `json:"note,omitempty"`
	NextRuns    []time.Time                 `json:"nextRuns"`
	RecentRuns  []healthRecentRun           `json:"recentRuns"`
	Running     []string                    `json:"running,omitempty"`
	Description *client.ScheduleDescription `json:"-"`
}

type healthRecentRun struct {
	ScheduledAt time.Time `json:"scheduledAt"`
	StartedAt   time.Time `json:"startedAt"`
	WorkflowID  string    `json:"workflowId"`
}

// healthStatusView is `health status -o json|yaml`: the schedule (null when there is none or Temporal is
// unreachable) and the last checks' summaries.
type healthStatusView struct {
	Schedule *healthScheduleView       `json:"schedule"`
	Rules    []registry.HealthRuleView `json:"rules"`
	Runs     []registry.HealthRun      `json:"runs"`
}

func healthStatus(ctx context.Context, g *globals, rule string, out *output) error {
	reg, err := openRegistryCtx(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	runs, err := reg.HealthRunsOf(ctx, rule, 10)
	if err != nil {
		return err
	}
	rules, err := reg.ListHealthRules(ctx)
	if err != nil {
		return err
	}
	var view *healthScheduleView
	var temporalErr error
	if c, err := dialTemporal(g); err != nil {
		temporalErr = err
	} else {
		defer c.Close()
		d, err := healthsched.Describe(ctx, c)
		switch {
		case errors.Is(err, healthsched.ErrNotScheduled):
		case err != nil:
			temporalErr = err
		default:
			view = scheduleView(d)
		}
	}
	if out.structured() {
		return out.print(os.Stdout, healthStatusView{Schedule: view, Rules: rules, Runs: runs}, nil)
	}
	switch {
	case temporalErr != nil:
		fmt.Printf("schedule: unknown (%v)\n", temporalErr)
	case view == nil:
		fmt.Println("no health check is scheduled (schedule one: fleetflow health schedule --every 5m)")
	default:
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		state := "active"
		if view.Paused {
			state = "paused"
			if view.Note != "" {
				state += " (" + view.Note + ")"
			}
		}
		fmt.Fprintf(w, "schedule\t%s: every %s, overlapping checks skipped, %s\n", view.ID, view.Every, state)
		if view.Rules != nil {
			fmt.Fprintf(w, "rules\t%s\n", view.Rules)
		}
		fmt.Fprintf(w, "task queue\t%s\n", view.TaskQueue)
		var next []string
		for i, t := range view.NextRuns {
			if i == 3 {
				break
			}
			next = append(next, t.Local().Format("2006-01-02 15:04:05"))
		}
		fmt.Fprintf(w, "next runs\t%s\n", orNone(strings.Join(next, ", ")))
		if len(view.Running) > 0 {
			fmt.Fprintf(w, "running\t%s\n", strings.Join(view.Running, ", "))
		}
		if len(view.RecentRuns) == 0 {
			fmt.Fprintf(w, "recent runs\tnone yet\n")
		}
		for i, r := range view.RecentRuns {
			label := ""
			if i == 0 {
				label = "recent runs"
			}
			fmt.Fprintf(w, "%s\t%s  %s\n", label, r.StartedAt.Local().Format("2006-01-02 15:04:05"), r.WorkflowID)
		}
		fmt.Fprintf(w, "ui\t%s\n", scheduleURL(g, view.ID))
		if err := w.Flush(); err != nil {
			return err
		}
	}
	fmt.Println()
	if len(rules) > 0 {
		th := numfmt.Thousands
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "RULE\tTARGET\tEVERY\tLAST CHECK\tDEVICES\tOFFLINE\tUNHEALTHY\tPENDING\tFIRMWARE\tCREDS\tOPEN")
		for _, r := range rules {
			last, counts := "never", strings.Repeat("-\t", 6)+"-"
			if l := r.LastRun; l != nil {
				s := l.Summary
				last = l.StartedAt.Local().Format("2006-01-02 15:04:05")
				counts = strings.Join([]string{th(s.Devices), th(s.Problems[health.KindOffline]), th(s.Problems[health.KindUnhealthy]),
					th(s.Problems[health.KindDesiredPending]), th(s.Problems[health.KindFirmwareNoncompliant]),
					th(s.Problems[health.KindCredentialExpiring]), th(s.Open)}, "\t")
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.Name, clip(ruleTarget(r.HealthRule), 40), numfmt.FormatDuration(r.Every), last, counts)
		}
		if err := w.Flush(); err != nil {
			return err
		}
		fmt.Println()
	}
	if len(runs) == 0 {
		fmt.Println("no health check has run yet (run one now: fleetflow health run)")
		return nil
	}
	return printHealthRuns(runs)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// scheduleView reads what an operator wants to know from the schedule's description, newest runs first.
func scheduleView(d *client.ScheduleDescription) *healthScheduleView {
	v := &healthScheduleView{ID: healthsched.ScheduleID, NextRuns: d.Info.NextActionTimes, Description: d}
	if e := healthsched.Every(d); e > 0 {
		v.Every = numfmt.FormatDuration(e)
	} else {
		v.Every = "(custom spec)"
	}
	if in, ok := healthsched.Input(d); ok {
		r := in.Rules()
		v.Rules = &r
	}
	if a, ok := d.Schedule.Action.(*client.ScheduleWorkflowAction); ok {
		v.TaskQueue = a.TaskQueue
	}
	if st := d.Schedule.State; st != nil {
		v.Paused, v.Note = st.Paused, st.Note
	}
	for i := len(d.Info.RecentActions) - 1; i >= 0 && len(v.RecentRuns) < 5; i-- {
		a := d.Info.RecentActions[i]
		r := healthRecentRun{ScheduledAt: a.ScheduleTime, StartedAt: a.ActualTime}
		if a.StartWorkflowResult != nil {
			r.WorkflowID = a.StartWorkflowResult.WorkflowID
		}
		v.RecentRuns = append(v.RecentRuns, r)
	}
	for _, r := range d.Info.RunningWorkflows {
		v.Running = append(v.Running, r.WorkflowID)
	}
	return v
}

func newAlertsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "alerts", Short: "Alerts raised by the health checks (they resolve by themselves)",
		Long: `Alerts raised by the health checks, one per health rule, device and problem (the fleet-wide check's rule is
"fleet"). An alert resolves by itself when a later check of its rule no longer finds the problem;
acknowledging one records that someone is on it.`,
		Example: `  fleetflow alerts list --open
  fleetflow alerts ack 42 --by alice`,
	}
	var f registry.AlertFilter
	var out *output
	list := &cobra.Command{
		Use:   "list [--open] [--device ID] [--rule NAME] [--limit N] [-o text|json|yaml]",
		Short: "List alerts, newest first",
		Long: `List alerts, newest first, with the health rule that raised each and their state (open, acked or
resolved). --open leaves out the resolved ones; --device shows one device's, --rule one rule's.`,
		Example: `  fleetflow alerts list --open
  fleetflow alerts list --open --rule critical
  fleetflow alerts list --device sensor-0042 --limit 0
  fleetflow alerts list --open -o json | jq -r '.[] | select(.kind == "offline") | .deviceId'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.Limit < 0 {
				return usagef("--limit %d: want 0 (all) or more", f.Limit)
			}
			reg, err := openRegistry(cmd, g)
			if err != nil {
				return err
			}
			defer reg.Close()
			alerts, err := reg.ListAlerts(cmd.Context(), f)
			if err != nil {
				return err
			}
			if out.structured() {
				type row struct {
					registry.Alert
					State fleet.AlertState `json:"state"`
				}
				rows := make([]row, len(alerts))
				for i, a := range alerts {
					rows[i] = row{a, a.State()}
				}
				return out.print(stdout(cmd), rows, nil)
			}
			printAlerts(alerts)
			if f.Limit > 0 && len(alerts) == f.Limit {
				fmt.Fprintf(os.Stderr, "(the newest %d; --limit 0 lists all)\n", f.Limit)
			}
			return nil
		},
	}
	list.Flags().BoolVar(&f.Open, "open", false, "only alerts not resolved yet (open or acked)")
	list.Flags().StringVar(&f.DeviceID, "device", "", "only this device's alerts")
	list.Flags().StringVar(&f.Rule, "rule", "", `only this health rule's alerts ("fleet": the fleet-wide check's)`)
	_ = list.RegisterFlagCompletionFunc("rule", completeFlagFrom(g, registry.CandidateHealthRules))
	list.Flags().IntVar(&f.Limit, "limit", 100, "at most this many (0: all)")
	_ = list.RegisterFlagCompletionFunc("device", completeFlagFrom(g, registry.CandidateDevices))
	out = addOutputFlag(list)

	by := defaultAcker()
	var ackOut *output
	ack := &cobra.Command{
		Use:   "ack ID",
		Short: "Acknowledge an alert: record that someone is on it (it still resolves by itself)",
		Long: `Acknowledge an alert: record who is on it and when. It still resolves by itself when the problem is gone.
Acknowledging an acknowledged alert keeps the first acknowledgement and says whose it is.`,
		Example: `  fleetflow alerts ack 42
  fleetflow alerts ack 42 --by alice`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseInt(strings.TrimSpace(args[0]), 10, 64)
			if err != nil || id <= 0 {
				return usagef("alert id %q: want a number like 42 (see `fleetflow alerts list`)", args[0])
			}
			if strings.TrimSpace(by) == "" {
				return usagef("--by: say who acknowledges, e.g. --by alice")
			}
			reg, err := openRegistry(cmd, g)
			if err != nil {
				return err
			}
			defer reg.Close()
			a, err := reg.AckAlert(cmd.Context(), id, by)
			if errors.Is(err, fleet.ErrNotFound) {
				return fmt.Errorf("no alert %d (see `fleetflow alerts list`)", id)
			}
			if err != nil {
				return err
			}
			doc := struct {
				registry.Alert
				State fleet.AlertState `json:"state"`
			}{a, a.State()}
			return ackOut.print(stdout(cmd), doc, func() error {
				what := fmt.Sprintf("%s on %s: %s", a.Kind, a.DeviceID, a.Detail)
				if a.AckedBy != by {
					fmt.Printf("alert %d (%s) was already acknowledged by %s at %s\n", a.ID, what, a.AckedBy, a.AckedAt.Local().Format("2006-01-02 15:04:05"))
				} else {
					fmt.Printf("alert %d (%s) acknowledged by %s\n", a.ID, what, a.AckedBy)
				}
				if a.ResolvedAt != nil {
					fmt.Printf("note: it had already resolved at %s; the problem is gone\n", a.ResolvedAt.Local().Format("2006-01-02 15:04:05"))
				}
				return nil
			})
		},
	}
	ack.Flags().StringVar(&by, "by", by, "who acknowledges (default: the current user)")
	ackOut = addOutputFlag(ack)
	cmd.AddCommand(list, ack)
	return cmd
}

// defaultAcker is the user running the CLI, so that acknowledgements say who without a flag.
func defaultAcker() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return os.Getenv("USER")
}

func printAlerts(alerts []registry.Alert) {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tRULE\tDEVICE\tKIND\tDETAIL\tFIRST SEEN\tLAST SEEN\tSTATE")
	const layout = "2006-01-02 15:04:05"
	for _, a := range alerts {
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.ID, a.Rule, a.DeviceID, a.Kind, clip(a.Detail, 72),
			a.FirstSeen.Local().Format(layout), a.LastSeen.Local().Format(layout), a.State())
	}
	if len(alerts) == 0 {
		fmt.Fprintln(w, "(none)\t\t\t\t\t\t\t")
	}
	_ = w.Flush()
}
