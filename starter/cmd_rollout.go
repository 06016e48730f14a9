package main

import (
	"context"
	"encoding/json"
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
	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/query"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/rollout"
	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/internal/window"
	"github.com/fleetflow/fleetflow/workflows"
)

func newFirmwareCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "firmware", Short: "The firmware catalogue",
		Long: `The firmware catalogue: the images a rollout can install, each a version with the URL devices download
it from and its SHA-256, which devices verify before installing.`,
		Example: `  fleetflow firmware add --version 2.1.0 --url https://fw.example.com/2.1.0.bin --sha256 "$(sha256sum 2.1.0.bin | cut -d' ' -f1)"
  fleetflow firmware list`,
	}
	var f fleet.Firmware
	var addOut *output
	add := &cobra.Command{
		Use:   "add --version V --url URL --sha256 HEX [--notes TEXT]",
		Short: "Add a firmware image to the catalogue (entries are immutable)",
		Long: `Add a firmware image to the catalogue. Entries are immutable: a version is added once, and a new build
gets a new version. The URL must be http or https; the SHA-256 is 64 hex digits.`,
		Example: `  fleetflow firmware add --version 2.1.0 --url https://fw.example.com/2.1.0.bin --sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 --notes "fixes the modem reset"`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			reg, err := openRegistry(cmd, g)
			if err != nil {
				return err
			}
			defer reg.Close()
			out, err := reg.AddFirmware(cmd.Context(), f)
			if err != nil {
				return err
			}
			return addOut.print(stdout(cmd), out, func() error {
				fmt.Printf("firmware %s added (%s)\n", out.Version, out.URL)
				return nil
			})
		},
	}
	addOut = addOutputFlag(add)
	add.Flags().StringVar(&f.Version, "version", "", "version, e.g. 2.1.0")
	add.Flags().StringVar(&f.URL, "url", "", "where devices download the image (http or https)")
	add.Flags().StringVar(&f.SHA256, "sha256", "", "SHA-256 of the image, 64 hex digits")
	add.Flags().StringVar(&f.Notes, "notes", "", "release notes")
	var listOut *output
	list := &cobra.Command{
		Use:   "list",
		Short: "List the catalogue, newest first, with how many devices run each version",
		Long: `List the firmware catalogue, newest first, with how many devices report running each version (one
GROUP BY over the fleet).`,
		Example: `  fleetflow firmware list
  fleetflow firmware list -o json | jq -r '.[] | select(.devices == 0) | .version'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			reg, err := openRegistry(cmd, g)
			if err != nil {
				return err
			}
			defer reg.Close()
			fws, err := reg.ListFirmware(cmd.Context())
			if err != nil {
				return err
			}
			// One GROUP BY over the fleet, through the twin query language, rather than a count per version.
			running := map[string]int64{}
			res, err := reg.Query(cmd.Context(), "SELECT properties.reported.firmware.version AS v, COUNT() AS n FROM devices GROUP BY properties.reported.firmware.version", query.Options{})
			if err != nil {
				return err
			}
			for _, row := range res.Rows {
				var v string
				if json.Unmarshal(asJSON(row[0]), &v) == nil {
					n, _ := row[1].(int64)
					running[v] = n
				}
			}
			type entry struct {
				fleet.Firmware
				Devices int64 `json:"devices"`
			}
			out := make([]entry, len(fws))
			for i, f := range fws {
				out[i] = entry{f, running[f.Version]}
			}
			return listOut.print(stdout(cmd), out, func() error {
				w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "VERSION\tDEVICES\tADDED\tSHA256\tURL\tNOTES")
				for _, f := range fws {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s…\t%s\t%s\n", f.Version, numfmt.Thousands(running[f.Version]),
						f.CreatedAt.Format("2006-01-02 15:04"), f.SHA256[:12], f.URL, f.Notes)
				}
				return w.Flush()
			})
		},
	}
	listOut = addOutputFlag(list)
	cmd.AddCommand(add, list)
	return cmd
}

type rolloutFlags struct {
	version, query, group, waves, maxFailures string
	bake, deviceTimeout                       time.Duration
	approveEach, detach                       bool
	windows                                   windowFlags
	out                                       *output
}

// parsed validates the flags into the workflow's terms.
func (f *rolloutFlags) parsed() ([]rollout.Wave, rollout.Threshold, error) {
	if f.version == "" {
		return nil, rollout.Threshold{}, usagef("--firmware is required (see `fleetflow firmware list`)")
	}
	if f.query == "" && f.group == "" {
		return nil, rollout.Threshold{}, usagef("--query or --group is required, e.g. --query \"SELECT * FROM devices WHERE tags.region = 'eu'\"")
	}
	if _, err := fleet.TargetQuery(f.query, f.group); err != nil {
		return nil, rollout.Threshold{}, asUsage(err)
	}
	waves, err := rollout.ParseWaves(f.waves)
	if err != nil {
		return nil, rollout.Threshold{}, usagef("--waves: %w", err)
	}
	th, err := rollout.ParseThreshold(f.maxFailures)
	if err != nil {
		return nil, rollout.Threshold{}, usagef("--max-failures: %w", err)
	}
	if f.bake < 0 || f.deviceTimeout < 0 {
		return nil, rollout.Threshold{}, usagef("--bake and --device-timeout must not be negative")
	}
	return waves, th, nil
}

func newRolloutCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "rollout", Short: "Staged firmware rollouts with automatic rollback",
		Long: `Staged firmware rollouts: a FirmwareRollout workflow updates the devices a query selects in cumulative
waves, watches each wave's failures against a threshold, and rolls every touched device back when it is
exceeded. plan shows the waves without changing anything; pause, resume, approve and abort act on a running
rollout.`,
		Example: `  fleetflow rollout plan --firmware 2.1.0 --query "SELECT * FROM devices WHERE tags.region = 'eu'"
  fleetflow rollout start --firmware 2.1.0 --query "SELECT * FROM devices WHERE tags.region = 'eu'" --waves 1%,10%,100%
  fleetflow rollout status rollout-2.1.0-1`,
	}
	f := &rolloutFlags{}
	addFlags := func(c *cobra.Command) {
		fl := c.Flags()
		fl.StringVar(&f.version, "firmware", "", "firmware version from the catalogue (required)")
		fl.StringVar(&f.query, "query", "", "twin query selecting the target devices (or --group)")
		_ = c.RegisterFlagCompletionFunc("query", completeQueryPaths(g))
		addGroupFlag(g, c, &f.group)
		fl.StringVar(&f.waves, "waves", "1%,10%,50%,100%", "cumulative waves: percentages of the targets or device counts; the last is 100%")
		fl.StringVar(&f.maxFailures, "max-failures", "5%", "stop and roll back when failures exceed this count or percentage of dispatched devices")
		fl.DurationVar(&f.bake, "bake", 0, "how long a device must stay healthy on the new version to count as succeeded")
		fl.DurationVar(&f.deviceTimeout, "device-timeout", workflows.DefaultDeviceTimeout, "a device that does not run the new version within this fails")
		fl.BoolVar(&f.approveEach, "approve-each-wave", false, "wait for `fleetflow rollout approve` before each wave after the first")
		addWindowFlags(fl, &f.windows)
		_ = c.RegisterFlagCompletionFunc("firmware", completeFlagFrom(g, registry.CandidateFirmware))
	}
	var planOut *output
	plan := &cobra.Command{
		Use:   "plan --firmware V (--query QUERY | --group NAME) [--waves ...]",
		Short: "Show the waves a rollout would run, their device counts and an estimate; changes nothing",
		Long: `Show what rollout start would do with the same flags: how many of the selected devices already run the
version or are inactive, the devices of each wave, the failure threshold and a duration estimate. It also
says when another running rollout holds some of the devices. Nothing is written.`,
		Example: `  fleetflow rollout plan --firmware 2.1.0 --query "SELECT * FROM devices"
  fleetflow rollout plan --firmware 2.1.0 --query "SELECT * FROM devices" --waves 100,1000,100% --bake 10m -o yaml
  fleetflow rollout plan --firmware 2.1.0 --query "SELECT * FROM devices" --window "Sun 02:00-04:00" --timezone Europe/Berlin --window-from-tags`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, _, err := planRollout(cmd.Context(), g, f, planOut)
			return err
		},
	}
	addFlags(plan)
	planOut = addOutputFlag(plan)
	start := &cobra.Command{
		Use:   "start --firmware V (--query QUERY | --group NAME) [--waves 1%,10%,50%,100%] [--max-failures 5%] [--bake 2m]",
		Short: "Start a FirmwareRollout workflow",
		Long: `Start a FirmwareRollout workflow and follow it until it ends (progress on stderr; --detach returns once it
has started). The exit code is 3 when the rollout finished with failed devices (it rolled back, or stayed
under the threshold), and 130 when you interrupt the wait (the rollout goes on).

With --window the waves start inside the operation's maintenance window. With --window-from-tags each device
of a wave is dispatched only while its own window (from its tags, else --window) is open; the others wait,
and a device whose window does not open before --deadline is reported as outside_window. A rollback does
not wait for windows.`,
		Example: `  fleetflow rollout start --firmware 2.1.0 --query "SELECT * FROM devices WHERE tags.region = 'eu'"
  fleetflow rollout start --firmware 2.1.0 --query "SELECT * FROM devices" --waves 1%,10%,50%,100% --max-failures 2% --bake 10m --detach
  fleetflow rollout start --firmware 2.1.0 --query "SELECT * FROM devices" --approve-each-wave
  fleetflow rollout start --firmware 2.1.0 --query "SELECT * FROM devices" --window "Sat,Sun 01:00-05:00" --timezone Europe/Berlin --deadline 14d
  fleetflow rollout start --firmware 2.1.0 --query "SELECT * FROM devices" --window-from-tags --window "Sun 02:00-04:00" --deadline 7d`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return startRollout(cmd.Context(), g, f) },
	}
	addFlags(start)
	f.out = addOutputFlag(start)
	start.Flags().BoolVar(&f.detach, "detach", false, "start the rollout and return without waiting for it")
	var statusOut *output
	status := &cobra.Command{
		Use:   "status ID",
		Short: "Show a rollout's wave, counts per phase, last decision and failing devices",
		Long: `Show a rollout: its firmware, query and state (live from the workflow while it runs, with the current
wave and the last decision), its devices per wave and phase, and up to 50 devices that failed with their
reason.`,
		Example: `  fleetflow rollout status rollout-2.1.0-1
  fleetflow rollout status rollout-2.1.0-1 -o json | jq .progress.wave`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeFrom(g, registry.CandidateRollouts, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return rolloutStatus(cmd, g, args[0], statusOut)
		},
	}
	statusOut = addOutputFlag(status)
	var rollback, noRollback bool
	var reason string
	var abortOut *output
	abort := &cobra.Command{
		Use:   "abort ID (--rollback | --no-rollback)",
		Short: "Stop a rollout; with --rollback every touched device goes back to its previous firmware",
		Long: `Stop a running rollout: no more devices are dispatched. Say what happens to the devices already updated:
--rollback sends them back to their previous firmware, --no-rollback leaves them as they are.`,
		Example: `  fleetflow rollout abort rollout-2.1.0-1 --rollback --reason "battery drain in the field"
  fleetflow rollout abort rollout-2.1.0-1 --no-rollback`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeFrom(g, registry.CandidateRollouts, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if rollback == noRollback {
				return usagef("say what happens to the devices already updated: --rollback or --no-rollback")
			}
			return runOperatorUpdate(cmd, g, abortOut, "rollout", args[0], workflows.UpdateAbort,
				workflows.AbortInput{Rollback: rollback, Reason: reason})
		},
	}
	abortOut = addOutputFlag(abort)
	abort.Flags().BoolVar(&rollback, "rollback", false, "send touched devices back to their previous firmware")
	abort.Flags().BoolVar(&noRollback, "no-rollback", false, "leave devices on the firmware they have now")
	abort.Flags().StringVar(&reason, "reason", "", "why, for the record")
	cmd.AddCommand(plan, start, status, abort,
		operatorUpdateCmd(g, "rollout", workflows.UpdatePause, "Hold the next wave (the current wave's devices go on)", registry.CandidateRollouts),
		operatorUpdateCmd(g, "rollout", workflows.UpdateResume, "Continue a paused rollout", registry.CandidateRollouts),
		operatorUpdateCmd(g, "rollout", workflows.UpdateApprove, "Let a rollout started with --approve-each-wave start its next wave", registry.CandidateRollouts))
	return cmd
}

// typicalInstall is the per-wave time the plan's estimate assumes for download, install and reboot.
const typicalInstall = 2 * time.Minute

// planRollout validates everything a start needs and prints (when out is not nil) the plan.
func planRollout(ctx context.Context, g *globals, f *rolloutFlags, out *output) (fleet.Firmware, registry.RolloutPlan, error) {
	var plan registry.RolloutPlan
	waves, th, err := f.parsed()
	if err != nil {
		return fleet.Firmware{}, plan, err
	}
	reg, err := openRegistryCtx(ctx, g)
	if err != nil {
		return fleet.Firmware{}, plan, err
	}
	defer reg.Close()
	fw, err := reg.GetFirmware(ctx, f.version)
	if err != nil {
		return fw, plan, err
	}
	if f.query, _, err = resolveTargets(ctx, reg, f.query, f.group); err != nil {
		return fw, plan, err
	}
	f.group = ""
	plan, err = reg.PlanRollout(ctx, f.version, f.query)
	if err != nil {
		return fw, plan, queryError(err)
	}
	if out == nil {
		return fw, plan, nil
	}
	cut := rollout.Cutoffs(waves, plan.Eligible)
	view := rolloutPlanView{Firmware: fw.Version, Query: f.query, RolloutPlan: plan, MaxFailures: th.String(),
		Bake: f.bake.String(), DeviceTimeout: f.deviceTimeout.String(), ApproveEachWave: f.approveEach,
		EstimateSeconds: rollout.Estimate(cut, f.bake, typicalInstall).Round(time.Second).Seconds()}
	prev := int64(0)
	for i, c := range cut {
		view.Waves = append(view.Waves, plannedWave{Wave: i + 1, Share: waves[i].String(), Devices: c - prev, Cumulative: c})
		prev = c
	}
	if plan.Conflict != nil {
		view.Conflict = plan.Conflict.Error()
	}
	if err := planWindows(ctx, reg, f, &view); err != nil {
		return fw, plan, err
	}
	return fw, plan, out.print(os.Stdout, view, func() error { return printRolloutPlan(view) })
}

// rolloutPlanView is `rollout plan -o json|yaml`.
type rolloutPlanView struct {
	Firmware string `json:"firmware"`
	Query    string `json:"query"`
	registry.RolloutPlan
	Waves           []plannedWave `json:"waves"`
	MaxFailures     string        `json:"maxFailures"`
	Bake            string        `json:"bake"`
	DeviceTimeout   string        `json:"deviceTimeout"`
	ApproveEachWave bool          `json:"approveEachWave"`
	EstimateSeconds float64       `json:"estimateSeconds"`
	Conflict        string        `json:"conflict,omitempty"` // why the rollout cannot start now
	// Deadline and Windows are the maintenance windows (--window, --window-from-tags): how many devices
	// each window holds and when it next opens.
	Deadline *time.Time      `json:"deadline,omitempty"`
	Windows  []plannedWindow `json:"windows,omitempty"`
}

// plannedWindow is one maintenance window of a plan and the devices it holds.
type plannedWindow struct {
	Window   string    `json:"window"` // "" for devices without a window of their own
	Timezone string    `json:"timezone,omitempty"`
	Devices  int64     `json:"devices"`
	Source   string    `json:"source"` // "tags", "operation" or "none" (any time)
	NextOpen time.Time `json:"nextOpen,omitzero"`
	Problem  string    `json:"problem,omitempty"` // a window that does not parse, or does not open before the deadline
}

// plannedWave is one wave of a rollout plan.
type plannedWave struct {
	Wave       int    `json:"wave"`
	Share      string `json:"share"`
	Devices    int64  `json:"devices"`
	Cumulative int64  `json:"cumulative"`
	// CanStart is the earliest the wave can start under the operation's window (zero without one, or with
	// devices' own windows): the window's next opening after the previous wave's estimated end.
	CanStart time.Time `json:"canStart,omitzero"`
	// DeviceWindows, with --window-from-tags, says when the wave's devices' windows open and how many would
	// be reported outside their window.
	DeviceWindows *waveWindows `json:"deviceWindows,omitempty"`
}

func printRolloutPlan(v rolloutPlanView) error {
	th2 := numfmt.Thousands
	fmt.Printf("firmware %s to the devices of: %s\n", v.Firmware, v.Query)
	fmt.Printf("selected %s: %s already on %s, %s disabled or retired, %s to update\n", th2(v.Selected), th2(v.OnVersion),
		v.Firmware, th2(v.Inactive), th2(v.Eligible))
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	timed := len(v.Waves) > 0 && !v.Waves[0].CanStart.IsZero()
	perDevice := len(v.Waves) > 0 && v.Waves[0].DeviceWindows != nil
	if perDevice {
		fmt.Fprintln(w, "WAVE\tSHARE\tDEVICES\tCUMULATIVE\tWINDOWS OPEN (UTC, FIRST - LAST)\tOUTSIDE WINDOW")
	} else if timed {
		fmt.Fprintln(w, "WAVE\tSHARE\tDEVICES\tCUMULATIVE\tCAN START (UTC)")
	} else {
		fmt.Fprintln(w, "WAVE\tSHARE\tDEVICES\tCUMULATIVE")
	}
	for _, wv := range v.Waves {
		if dw := wv.DeviceWindows; dw != nil {
			const layout = "Mon 01-02 15:04"
			opens := "-"
			if !dw.FirstOpens.IsZero() {
				opens = dw.FirstOpens.UTC().Format(layout) + " - " + dw.LastOpens.UTC().Format(layout)
			}
			outside := th2(dw.OutsideWindow)
			if dw.BadWindow > 0 {
				outside += fmt.Sprintf(" (+%s with window tags that do not parse)", th2(dw.BadWindow))
			}
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\n", wv.Wave, wv.Share, th2(wv.Devices), th2(wv.Cumulative), opens, outside)
			continue
		}
		if timed {
			when := wv.CanStart.UTC().Format("Mon 2006-01-02 15:04")
			if v.Deadline != nil && !wv.CanStart.Before(*v.Deadline) {
				when += " (after the deadline: not run)"
			}
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", wv.Wave, wv.Share, th2(wv.Devices), th2(wv.Cumulative), when)
			continue
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", wv.Wave, wv.Share, th2(wv.Devices), th2(wv.Cumulative))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if len(v.Windows) > 0 {
		fmt.Printf("maintenance windows of the selected devices (deadline %s):\n", v.Deadline.UTC().Format(time.RFC3339))
		w = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "WINDOW\tTIME ZONE\tFROM\tDEVICES\tNEXT OPENS (UTC)")
		for _, pw := range v.Windows {
			name, next := pw.Window, "-"
			if name == "" {
				name = "(any time)"
			}
			if !pw.NextOpen.IsZero() {
				next = pw.NextOpen.UTC().Format("Mon 2006-01-02 15:04")
			}
			if pw.Problem != "" {
				next = pw.Problem
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", name, orDash(pw.Timezone), pw.Source, th2(pw.Devices), next)
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	fmt.Printf("stops and rolls back when failures exceed %s; bake %s; device timeout %s\n", v.MaxFailures, v.Bake, v.DeviceTimeout)
	fmt.Printf("estimate: about %s (assuming %s per wave to download, install and reboot)",
		time.Duration(v.EstimateSeconds*float64(time.Second)), typicalInstall)
	if v.ApproveEachWave {
		fmt.Print(", plus the time you take to approve each wave")
	}
	fmt.Println()
	if v.Conflict != "" {
		fmt.Printf("cannot start now: %s\n", v.Conflict)
	}
	return nil
}

// planWindows adds the maintenance windows to a plan: when each wave can start under the operation's window,
// and how many of the selected devices each window holds (their own, from tags, or the operation's) with its
// next opening; a window that does not parse or does not open before the deadline says so.
func planWindows(ctx context.Context, reg *registry.Registry, f *rolloutFlags, v *rolloutPlanView) error {
	now := time.Now()
	maint, err := f.windows.policyFor(ctx, reg, now)
	if err != nil || maint == nil {
		return err
	}
	v.Deadline = &maint.Deadline
	if maint.WindowTag != "" {
		if err := planDeviceWindows(ctx, reg, f, maint, v, now); err != nil {
			return err
		}
	} else if maint.Window != "" {
		op, err := window.Parse(maint.Window, maint.Timezone)
		if err != nil {
			return asUsage(fmt.Errorf("--window: %w", err))
		}
		t := now
		for i := range v.Waves {
			v.Waves[i].CanStart = op.NextOpen(t)
			t = v.Waves[i].CanStart.Add(f.bake + typicalInstall)
		}
	}
	if maint.WindowTag == "" {
		op, _, _ := maint.DeviceWindow(nil)
		_, next := maint.Decide(op, true, now)
		v.Windows = []plannedWindow{{Window: maint.Window, Timezone: op.Zone(), Devices: v.Selected, Source: "operation", NextOpen: next}}
		return nil
	}
	counts, err := reg.WindowCounts(ctx, f.query, maint.WindowTag, maint.TimezoneTag)
	if err != nil {
		return queryError(err)
	}
	for _, c := range counts {
		pw := plannedWindow{Window: c.Window, Timezone: c.Timezone, Devices: c.Devices, Source: "tags"}
		win, ok, err := maint.DeviceWindow(map[string]string{maint.WindowTag: c.Window, maint.TimezoneTag: c.Timezone})
		switch {
		case err != nil:
			pw.Problem = err.Error()
		case !ok:
			pw.Source = "none"
		default:
			if c.Window == "" {
				pw.Window, pw.Timezone, pw.Source = maint.Window, win.Zone(), "operation"
			}
			verdict, next := maint.Decide(win, ok, now)
			pw.NextOpen = next
			if verdict == fleet.WindowMissed {
				pw.Problem = "does not open before the deadline: these devices would be reported outside their window"
			}
		}
		v.Windows = append(v.Windows, pw)
	}
	return nil
}

// planDeviceWindows adds to each wave of a plan when its devices' own windows open and how many would be
// outside their window, for the devices as the next rollout of the version would rank them.
func planDeviceWindows(ctx context.Context, reg *registry.Registry, f *rolloutFlags, maint *fleet.MaintenancePolicy,
	v *rolloutPlanView, now time.Time) error {
	n, err := reg.CountRollouts(ctx, v.Firmware)
	if err != nil {
		return err
	}
	cutoffs := make([]int64, len(v.Waves))
	for i, w := range v.Waves {
		cutoffs[i] = w.Cumulative
	}
	counts, err := reg.WaveWindowCounts(ctx, f.query, v.Firmware, fmt.Sprintf("rollout-%s-%d", v.Firmware, n+1), cutoffs,
		maint.WindowTag, maint.TimezoneTag)
	if err != nil {
		return queryError(err)
	}
	for i, ww := range planWaveWindows(*maint, counts, len(v.Waves), now, f.bake+typicalInstall) {
		v.Waves[i].DeviceWindows = &ww
	}
	return nil
}

func startRollout(ctx context.Context, g *globals, f *rolloutFlags) error {
	waves, th, err := f.parsed()
	if err != nil {
		return err
	}
	if _, err := f.windows.policy(time.Now()); err != nil {
		return asUsage(err)
	}
	fw, plan, err := planRollout(ctx, g, f, nil)
	if err != nil {
		return err
	}
	if plan.Conflict != nil {
		return plan.Conflict
	}
	if plan.Eligible == 0 {
		return fmt.Errorf("nothing to do: of the %d devices the query selects, none needs %s (%d already run it, %d are disabled or retired)",
			plan.Selected, f.version, plan.OnVersion, plan.Inactive)
	}
	reg, c, err := openBackends(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	defer c.Close()
	// The deadline counts from now; with devices' own windows the tag names are settled against the scheme.
	maint, err := f.windows.policyFor(ctx, reg, time.Now())
	if err != nil {
		return err
	}
	n, err := reg.CountRollouts(ctx, fw.Version)
	if err != nil {
		return err
	}
	// rollout-<version>-<n>: the next number the registry has not used, and that Temporal has not seen either
	// (a registry rebuilt next to an old Temporal namespace must not attach to an old run, and a rollout
	// started a moment ago has a workflow before its row exists).
	id := fmt.Sprintf("rollout-%s-%d", fw.Version, n+1)
	for i := n + 2; i < n+1000; i++ {
		if _, err := c.DescribeWorkflow(ctx, id, ""); err != nil {
			break
		}
		id = fmt.Sprintf("rollout-%s-%d", fw.Version, i)
	}
	specMap := map[string]any{"waves": f.waves, "maxFailures": th.String(), "bake": f.bake.String(),
		"deviceTimeout": f.deviceTimeout.String(), "approveEachWave": f.approveEach}
	if maint != nil {
		specMap["maintenance"] = maint
	}
	spec, _ := json.Marshal(specMap)
	// The rollout row and its claims are made by the workflow's first step (RolloutCreate), never here: a
	// CLI killed at any point leaves either nothing or a rollout whose workflow releases its claims.
	in := workflows.RolloutInput{RolloutID: id, Firmware: workflows.FirmwareRef{Version: fw.Version, URL: fw.URL, SHA256: fw.SHA256},
		Query: f.query, Spec: spec, Waves: waves, MaxFailures: th, Bake: f.bake, DeviceTimeout: f.deviceTimeout, ApproveEachWave: f.approveEach,
		Maintenance: maint}
	crashAt("before-start")
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: id, TaskQueue: g.cfg.TaskQueue,
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE, WorkflowExecutionErrorWhenAlreadyStarted: true,
		StaticSummary: fmt.Sprintf("Rollout of firmware %s in waves %s", fw.Version, f.waves),
		StaticDetails: fmt.Sprintf("Query: `%s`  \nMax failures: %s  \nBake: %s, device timeout: %s  \nApprove each wave: %v", f.query, th,
			f.bake, f.deviceTimeout, f.approveEach),
		TypedSearchAttributes: temporal.NewSearchAttributes(searchattr.Op.ValueSet(searchattr.OpRollout),
			searchattr.State.ValueSet(searchattr.StateRunning), searchattr.Stage.ValueSet("starting")),
	}, workflows.FirmwareRollout, in)
	if err != nil {
		return fmt.Errorf("start rollout %s: %w", id, err)
	}
	crashAt("after-start")
	summary := fmt.Sprintf("firmware %s, waves %s, max failures %s", fw.Version, f.waves, th)
	total, err := awaitCreated(ctx, c, run, id, "rollout", detachLimit(f.detach), rolloutCreated)
	if err != nil {
		return startedButPending(ctx, err, f.out, operationStarted{ID: id, Summary: summary, TemporalURL: workflowURL(g, id)},
			"rollout", "fleetflow rollout status "+id)
	}
	started := operationStarted{ID: id, Summary: fmt.Sprintf("firmware %s to %s devices, waves %s, max failures %s", fw.Version,
		numfmt.Thousands(total), f.waves, th), Total: total, TemporalURL: workflowURL(g, id)}
	hints := hintWriter(f.out)
	fmt.Fprintf(hints, "rollout %s started: %s\n", id, started.Summary)
	fmt.Fprintf(hints, "watch it: %s\n", started.TemporalURL)
	if f.detach {
		return f.out.print(os.Stdout, started, nil)
	}
	crashAt("mid-wait")
	stop := pollProgress(ctx, c, id, func(v interface{ Get(any) error }) string {
		var p workflows.RolloutProgress
		if v.Get(&p) != nil {
			return ""
		}
		c := p.Counts
		return bar(fmt.Sprintf("wave %d/%d", p.Wave, len(p.Waves)), c.Succeeded+c.Failed+c.Skipped+c.OutsideWindow, p.Total,
			strings.ReplaceAll(p.State, "_", " ")+": "+c.String())
	})
	var res workflows.RolloutResult
	err = run.Get(ctx, &res)
	stop()
	if ctx.Err() != nil {
		return &interruptedError{fmt.Sprintf("stopped waiting; the rollout goes on. Follow it with `fleetflow rollout status %s`", id)}
	}
	if err != nil {
		return fmt.Errorf("rollout %s: %w", id, err)
	}
	if err := f.out.print(os.Stdout, res, func() error { printRolloutResult(res); return nil }); err != nil {
		return err
	}
	if failed := res.Counts.Failed + res.Counts.RollbackFailed; failed > 0 || len(res.Failures) > 0 || res.State == "rolled_back" {
		return partialf("rollout %s %s with %s failed devices", id, strings.ReplaceAll(res.State, "_", " "),
			numfmt.Thousands(max(failed, int64(len(res.Failures)))))
	}
	if n := res.Counts.OutsideWindow; n > 0 {
		// As a job's: devices the rollout could not reach in their window were not updated.
		return partialf("rollout %s %s; %s devices were outside their maintenance window (`fleetflow rollout status %s` lists them)",
			id, strings.ReplaceAll(res.State, "_", " "), numfmt.Thousands(n), id)
	}
	return nil
}

func printRolloutResult(res workflows.RolloutResult) {
	fmt.Printf("rollout %s: %s after wave %d/%d — %s\n", res.RolloutID, strings.ReplaceAll(res.State, "_", " "), res.WavesDone, res.Waves, res.Counts)
	for _, r := range res.Reasons {
		fmt.Printf("  · %s\n", r)
	}
	if len(res.Failures) > 0 {
		fmt.Println("devices that failed:")
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		for _, d := range res.Failures {
			fmt.Fprintf(w, "  %s\twave %d\t%s\t%s\n", d.DeviceID, d.Wave, d.Phase, d.Reason)
		}
		_ = w.Flush()
	}
}

// rolloutStatusView is `rollout status -o json|yaml`: the rollout's registry record, its devices per wave and
// phase, the live progress while the workflow runs (null once it has ended) and up to 50 failed devices.
type rolloutStatusView struct {
	Rollout  registry.Rollout           `json:"rollout"`
	Counts   []fleet.PhaseCount         `json:"counts"`
	Progress *workflows.RolloutProgress `json:"progress"`
	Failing  []fleet.RolloutDevice      `json:"failing"`
	// OutsideWindow are devices never dispatched because their maintenance window did not open before the
	// deadline, each with the window, the deadline and the next opening (at most 50).
	OutsideWindow []fleet.RolloutDevice `json:"outsideWindow,omitempty"`
	// Pending are operator actions no worker has applied yet (pause, resume, approve, abort).
	Pending []pendingAction `json:"pendingActions,omitempty"`
}

func rolloutStatus(cmd *cobra.Command, g *globals, id string, out *output) error {
	ctx := cmd.Context()
	reg, err := openRegistryCtx(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	ro, err := reg.GetRollout(ctx, id)
	if errors.Is(err, fleet.ErrNotFound) {
		if p := liveProgress[workflows.RolloutProgress](ctx, g, id); p != nil && p.State == workflows.RolloutStateCreating {
			return fmt.Errorf("rollout %s is being created: its workflow is claiming the devices; try again in a moment", id)
		}
		return fmt.Errorf("no rollout %q (rollout ids look like rollout-2.1.0-1)", id)
	}
	if err != nil {
		return err
	}
	counts, err := reg.RolloutCounts(ctx, id)
	if err != nil {
		return err
	}
	// Devices that failed, including those rolled back since (they keep the reason they failed).
	var failing []fleet.RolloutDevice
	devs, err := reg.RolloutDevices(ctx, id, []rollout.Phase{rollout.Failed, rollout.RollbackFailed, rollout.RolledBack}, 1000)
	if err != nil {
		return err
	}
	for _, d := range devs {
		if d.Reason != "" && len(failing) < 50 {
			failing = append(failing, d)
		}
	}
	outside, err := reg.RolloutDevices(ctx, id, []rollout.Phase{rollout.OutsideWindow}, 50)
	if err != nil {
		return err
	}
	live := liveProgress[workflows.RolloutProgress](ctx, g, id)
	view := rolloutStatusView{Rollout: ro, Counts: counts, Progress: live, Failing: failing, OutsideWindow: outside}
	if ro.FinishedAt == nil {
		view.Pending = pendingActions(ctx, g, "rollout", id)
	}
	return out.print(stdout(cmd), view, func() error { return printRolloutStatus(view) })
}

// printRolloutStatus prints a rollout's status as tables.
func printRolloutStatus(v rolloutStatusView) error {
	ro, counts, live, failing := v.Rollout, v.Counts, v.Progress, v.Failing
	printPendingActions("rollout", v.Pending)
	var total rollout.Counts
	for _, pc := range counts {
		total.Add(rollout.Phase(pc.Phase), pc.N)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	state := ro.State
	if live != nil && ro.FinishedAt == nil {
		state = live.State
	}
	if live != nil {
		if live.Wave > 0 {
			state += fmt.Sprintf(", wave %d/%d (%s)", live.Wave, len(live.Waves), live.Waves[live.Wave-1])
		}
	}
	fmt.Fprintf(w, "rollout\t%s\nfirmware\t%s\nquery\t%s\nstate\t%s\ndevices\t%s claimed: %s\n", ro.ID, ro.Version, ro.Query, state,
		numfmt.Thousands(ro.Total), total)
	if live != nil && live.WindowWaiting > 0 && ro.FinishedAt == nil {
		fmt.Fprintf(w, "waiting\t%s devices of the wave wait for their maintenance window; the next opens %s\n",
			numfmt.Thousands(live.WindowWaiting), live.NextOpen.UTC().Format(time.RFC3339))
	}
	if live != nil && live.Decision != "" {
		fmt.Fprintf(w, "last decision\t%s\n", live.Decision)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if len(ro.Result) > 0 {
		fmt.Printf("result: %s\n", compactJSON(ro.Result))
	}
	fmt.Println()
	w = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "WAVE\tPHASE\tDEVICES")
	for _, pc := range counts {
		wave := "-"
		if pc.Wave >= 0 {
			wave = fmt.Sprint(pc.Wave + 1)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\n", wave, pc.Phase, numfmt.Thousands(pc.N))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if len(v.OutsideWindow) > 0 {
		fmt.Println("\noutside their maintenance window:")
		w = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		for _, d := range v.OutsideWindow {
			fmt.Fprintf(w, "  %s\twave %d\t%s\n", d.DeviceID, d.Wave+1, d.Reason)
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	if len(failing) > 0 {
		fmt.Println("\nfailing devices:")
		w = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		for _, d := range failing {
			fmt.Fprintf(w, "  %s\twave %d\t%s\t%s\n", d.DeviceID, d.Wave+1, d.Phase, d.Reason)
		}
		return w.Flush()
	}
	return nil
}

// asJSON returns a query cell as JSON bytes (jsonb cells scan as raw JSON or decoded values).
func asJSON(v any) []byte {
	switch x := v.(type) {
	case []byte:
		return x
	case json.RawMessage:
		return x
	case string:
		b, _ := json.Marshal(x)
		return b
	}
	b, _ := json.Marshal(v)
	return b
}
