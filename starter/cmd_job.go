package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/internal/twin"
	"github.com/fleetflow/fleetflow/workflows"
)

type jobFlags struct {
	query, group, setDesired, setTags, method, payload string
	rate                                               float64
	timeout                                            time.Duration
	dryRun, detach                                     bool
	batchSize                                          int64
	windows                                            windowFlags
	out                                                *output
}

func newJobCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "job", Short: "Bulk jobs: set desired properties or tags, or call a method, on every device a query selects",
		Long: `Bulk jobs run one change over every device a twin query selects, as a FleetJob workflow: a desired-property
patch (acknowledged when the devices report the new values), a tags patch, or a direct method call. The
target set is frozen when the job starts; pause, resume and cancel act on the running workflow.`,
		Example: `  fleetflow job start --query "SELECT * FROM devices WHERE tags.region = 'eu'" --set-desired '{"telemetryInterval": 30}'
  fleetflow job status job-set-desired-20261127-101500.000 --failed
  fleetflow job pause job-set-desired-20261127-101500.000`,
	}
	f := &jobFlags{}
	start := &cobra.Command{
		Use:   "start (--query QUERY | --group NAME) (--set-desired JSON | --set-tags JSON | --method NAME [--payload JSON])",
		Short: "Start a FleetJob over the devices a twin query selects (the set is frozen at start)",
		Long: `Start a FleetJob over the devices a twin query selects and follow it until it ends (progress on stderr;
--detach returns once it has started). --dry-run only counts the targets. The exit code is 3 when the job
finished but some devices failed, timed out or were offline (list them with job status --failed), and 130
when you interrupt the wait (the job goes on).`,
		Example: `  fleetflow job start --query "SELECT * FROM devices WHERE tags.region = 'eu-west'" --set-desired '{"telemetryInterval": 30}'
  fleetflow job start --query "SELECT * FROM devices" --method reboot --rate 50
  fleetflow job start --query "SELECT * FROM devices" --method reboot --window-from-tags --window "Sun 02:00-04:00" --timezone Europe/Berlin
  fleetflow job start --query "SELECT * FROM devices WHERE tags.ring = 'canary'" --set-tags '{"ring": "beta"}' --detach -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return startJob(cmd.Context(), g, f) },
	}
	fl := start.Flags()
	fl.StringVar(&f.query, "query", "", "twin query selecting the target devices (or --group)")
	_ = start.RegisterFlagCompletionFunc("query", completeQueryPaths(g))
	addGroupFlag(g, start, &f.group)
	fl.StringVar(&f.setDesired, "set-desired", "", "JSON merge patch for the devices' desired properties")
	fl.StringVar(&f.setTags, "set-tags", "", "JSON merge patch for the devices' tags")
	fl.StringVar(&f.method, "method", "", "direct method to call on every device")
	fl.StringVar(&f.payload, "payload", "", "JSON payload of --method (at most 128 KB), or @FILE")
	fl.Float64Var(&f.rate, "rate", 0, "at most N devices per second (0 = as fast as possible)")
	fl.Var(newDurationFlag(&f.timeout, "timeout"), "timeout", "per-device method timeout (default 30s), or how long to wait for devices to acknowledge a desired change (default 2m; any duration, e.g. 48h or 7d)")
	fl.BoolVar(&f.dryRun, "dry-run", false, "print how many devices the query selects and how long the job should take, and start nothing")
	fl.BoolVar(&f.detach, "detach", false, "start the job and return without waiting for it")
	fl.Int64Var(&f.batchSize, "batch-size", 0, "devices per activity (default 1000)")
	addWindowFlags(fl, &f.windows)
	f.out = addOutputFlag(start)

	var failed bool
	var out *output
	status := &cobra.Command{
		Use:   "status ID",
		Short: "Show a job's progress and per-device outcomes (--failed lists the devices that did not succeed)",
		Long: `Show a job: its kind, query and spec, its state (live from the workflow while it runs), and the devices per
outcome. --failed lists the devices that failed, timed out or were offline, with their error.`,
		Example: `  fleetflow job status job-method-reboot-20261127-101500.000
  fleetflow job status job-method-reboot-20261127-101500.000 --failed -o json | jq -r '.devices[].deviceId'`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeFrom(g, registry.CandidateJobs, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return jobStatus(cmd, g, args[0], failed, out)
		},
	}
	status.Flags().BoolVar(&failed, "failed", false, "list the devices that failed, timed out or were offline")
	out = addOutputFlag(status)
	cmd.AddCommand(start, status,
		operatorUpdateCmd(g, "job", workflows.UpdatePause, "Stop dispatching to more devices (batches in flight finish)", registry.CandidateJobs),
		operatorUpdateCmd(g, "job", workflows.UpdateResume, "Continue a paused job", registry.CandidateJobs),
		operatorUpdateCmd(g, "job", workflows.UpdateCancel, "Stop the job; devices not reached yet are marked cancelled", registry.CandidateJobs))
	return cmd
}

// jobSpec validates the flags and returns the kind, the patch or payload, and the acknowledgement keys.
func (f *jobFlags) spec() (kind fleet.JobKind, patch json.RawMessage, keys []string, err error) {
	n := 0
	for _, s := range []string{f.setDesired, f.setTags, f.method} {
		if s != "" {
			n++
		}
	}
	if f.query == "" && f.group == "" {
		return "", nil, nil, errors.New("--query or --group is required, e.g. --query \"SELECT * FROM devices WHERE tags.region = 'eu'\"")
	}
	if _, err := fleet.TargetQuery(f.query, f.group); err != nil {
		return "", nil, nil, err
	}
	if n != 1 && !(n == 0 && f.dryRun) {
		return "", nil, nil, errors.New("give exactly one of --set-desired, --set-tags or --method")
	}
	if f.rate < 0 || math.IsNaN(f.rate) || math.IsInf(f.rate, 0) {
		return "", nil, nil, fmt.Errorf("--rate %v: want a positive number of devices per second", f.rate)
	}
	if f.timeout < 0 {
		return "", nil, nil, errors.New("--timeout must be positive")
	}
	switch {
	case n == 0:
		return "", nil, nil, nil
	case f.setDesired != "", f.setTags != "":
		section, text := twin.Desired, f.setDesired
		kind = fleet.JobSetDesired
		if f.setTags != "" {
			section, text, kind = twin.Tags, f.setTags, fleet.JobSetTags
		}
		obj, err := twin.ParseObject(section, []byte(text))
		if err != nil {
			return "", nil, nil, fmt.Errorf("--set-%s: %w", section, err)
		}
		if len(obj) == 0 {
			return "", nil, nil, fmt.Errorf("--set-%s: the patch is empty; nothing would change", section)
		}
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		return kind, json.RawMessage(text), keys, nil
	default:
		p, err := argOrFile(f.payload)
		if err != nil {
			return "", nil, nil, fmt.Errorf("--payload: %w", err)
		}
		f.payload = p
		if len(f.payload) > channel.MaxMethodPayload {
			return "", nil, nil, fmt.Errorf("--payload is %d bytes; method payloads are limited to %d (128 KB)", len(f.payload), channel.MaxMethodPayload)
		}
		if f.payload != "" && !json.Valid([]byte(f.payload)) {
			return "", nil, nil, errors.New("--payload is not valid JSON")
		}
		return fleet.JobMethod, nil, nil, nil
	}
}

func startJob(ctx context.Context, g *globals, f *jobFlags) error {
	kind, patch, keys, err := f.spec()
	if err != nil {
		return asUsage(err)
	}
	if _, err := f.windows.policy(time.Now()); err != nil {
		return asUsage(err)
	}
	reg, err := openRegistryCtx(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	maint, err := f.windows.policyFor(ctx, reg, time.Now())
	if err != nil {
		return err
	}
	// Read-only checks first: the query compiles and selects something. The job itself (its row and its
	// frozen target set) is created by the workflow's first step, so a CLI killed at any point leaves
	// either nothing or a workflow that finishes the job.
	q, n, err := resolveTargets(ctx, reg, f.query, f.group)
	if err != nil {
		return err
	}
	f.query = q
	if kind == fleet.JobSetTags {
		// A patch that breaks the scheme whatever the device's tags is refused before anything starts; the
		// job checks each device's merged tags again when it writes them (docs/architecture.md, "Metadata
		// scheme").
		if err := checkTagsPatch(ctx, reg, patch); err != nil {
			return asUsage(fmt.Errorf("--set-tags: %w", err))
		}
	}
	if f.dryRun {
		dry := jobDryRun{Query: f.query, Selected: n, Rate: f.rate}
		if f.rate > 0 {
			dry.EstimateSeconds = (time.Duration(float64(n) / f.rate * float64(time.Second))).Round(time.Second).Seconds()
		}
		return f.out.print(os.Stdout, dry, func() error {
			fmt.Printf("the query selects %s devices\n", numfmt.Thousands(n))
			if f.rate > 0 {
				fmt.Printf("at %g devices/s the job should take about %s\n", f.rate, time.Duration(dry.EstimateSeconds*float64(time.Second)))
			} else {
				fmt.Println("without --rate the job runs as fast as the fleet answers (about 10,000 devices in a few seconds)")
			}
			return nil
		})
	}
	if n == 0 {
		return errEmptyJob
	}
	c, err := dialTemporal(g)
	if err != nil {
		return err
	}
	defer c.Close()
	label := strings.ReplaceAll(string(kind), "_", "-")
	if kind == fleet.JobMethod {
		label = "method-" + f.method
	}
	id := fmt.Sprintf("job-%s-%s", label, time.Now().UTC().Format("20060102-150405.000"))
	spec, _ := json.Marshal(map[string]any{"patch": patch, "method": f.method, "payload": json.RawMessage(orEmpty(f.payload)),
		"rate": f.rate, "timeout": f.timeout.String()})
	in := workflows.JobInput{JobID: id, Kind: kind, Query: f.query, Spec: spec, Patch: patch, AckKeys: keys, Method: f.method,
		Payload: json.RawMessage(orEmpty(f.payload)), Rate: f.rate, Timeout: f.timeout, BatchSize: f.batchSize, Maintenance: maint}
	if f.payload == "" {
		in.Payload = nil
	}
	what := map[fleet.JobKind]string{fleet.JobSetDesired: "set desired " + string(patch), fleet.JobSetTags: "set tags " + string(patch),
		fleet.JobMethod: "call " + f.method}[kind]
	crashAt("before-start")
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: id, TaskQueue: g.cfg.TaskQueue,
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE, WorkflowExecutionErrorWhenAlreadyStarted: true,
		StaticSummary: fmt.Sprintf("Job: %s on the devices of a query", what),
		StaticDetails: fmt.Sprintf("Query: `%s`  \nRate: %s", f.query, rateText(f.rate)),
		TypedSearchAttributes: temporal.NewSearchAttributes(searchattr.Op.ValueSet(searchattr.OpJob),
			searchattr.State.ValueSet(searchattr.StateRunning)),
	}, workflows.FleetJob, in)
	if err != nil {
		return fmt.Errorf("start job %s: %w", id, err)
	}
	crashAt("after-start")
	total, err := awaitCreated(ctx, c, run, id, "job", detachLimit(f.detach), jobCreated)
	if err != nil {
		return startedButPending(ctx, err, f.out, operationStarted{ID: id, Summary: what, TemporalURL: workflowURL(g, id)},
			"job", "fleetflow job status "+id)
	}
	started := operationStarted{ID: id, Summary: fmt.Sprintf("%s on %s devices", what, numfmt.Thousands(total)),
		Total: total, TemporalURL: workflowURL(g, id)}
	// The started lines are the text output; with -o json|yaml stdout holds only the final document.
	hints := hintWriter(f.out)
	fmt.Fprintf(hints, "job %s started: %s\n", id, started.Summary)
	fmt.Fprintf(hints, "watch it: %s\n", started.TemporalURL)
	if f.detach {
		return f.out.print(os.Stdout, started, nil)
	}
	crashAt("mid-wait")
	res, waited, err := awaitJob(ctx, c, run, id, "job")
	if !waited || err != nil {
		return err
	}
	if err := f.out.print(os.Stdout, res, func() error {
		printJobCounts(res.State, res.Total, res.Counts)
		if res.Counts.Unsuccessful() > 0 {
			fmt.Printf("list them: fleetflow job status %s --failed\n", id)
		}
		return nil
	}); err != nil {
		return err
	}
	if n := res.Counts.Unsuccessful(); n > 0 {
		return partialf("job %s: %s of %s devices did not succeed", id, numfmt.Thousands(n), numfmt.Thousands(res.Total))
	}
	return nil
}

// errEmptyJob is the answer to a job query that selects nothing.
var errEmptyJob = errors.New("the query selects no devices; nothing to do (check it with `fleetflow devices query`)")

// detachLimit is how long a start waits for the operation's creation step: bounded with --detach.
func detachLimit(detach bool) time.Duration {
	if detach {
		return createdWaitDetached
	}
	return 0
}

// startedButPending handles an operation that was started but whose creation step did not report: an
// interrupted wait (exit 130, the operation goes on), a detached wait that gave up (the operation is
// started; print it without its total), or the creation's own failure (returned as is).
func startedButPending(ctx context.Context, err error, out *output, started operationStarted, noun, follow string) error {
	switch {
	case ctx.Err() != nil:
		return &interruptedError{fmt.Sprintf("stopped waiting; the %s goes on. Follow it with `%s`", noun, follow)}
	case errors.Is(err, errCreationPending):
		fmt.Fprintf(hintWriter(out), "%s %s started: %s (%v)\nwatch it: %s\n", noun, started.ID, started.Summary, err, started.TemporalURL)
		return out.print(os.Stdout, started, nil)
	}
	return err
}

// jobDryRun is what `job start --dry-run -o json|yaml` prints.
type jobDryRun struct {
	Query           string  `json:"query"`
	Selected        int64   `json:"selected"`
	Rate            float64 `json:"rate,omitempty"`
	EstimateSeconds float64 `json:"estimateSeconds,omitempty"`
}

// operationStarted is what a command that starts an operation prints with --detach -o json|yaml.
type operationStarted struct {
	ID          string `json:"id"`
	Summary     string `json:"summary,omitempty"`
	Total       int64  `json:"total,omitempty"`
	TemporalURL string `json:"temporalUrl"`
}

// hintWriter is where a command's lines for the operator go: stdout in text, stderr when stdout holds a
// JSON or YAML document.
func hintWriter(o *output) io.Writer {
	if o != nil && o.structured() {
		return os.Stderr
	}
	return os.Stdout
}

func orEmpty(s string) string {
	if s == "" {
		return "null"
	}
	return s
}

func rateText(r float64) string {
	if r <= 0 {
		return "unlimited"
	}
	return fmt.Sprintf("%g devices/s", r)
}

func printJobCounts(state string, total int64, c fleet.JobCounts) {
	th := numfmt.Thousands
	fmt.Printf("%s: %s devices — succeeded %s, failed %s, timed out %s, offline %s", state, th(total), th(c.Succeeded),
		th(c.Failed), th(c.TimedOut), th(c.Offline))
	if c.Running > 0 {
		fmt.Printf(", awaiting acknowledgement %s", th(c.Running))
	}
	if c.Cancelled > 0 {
		fmt.Printf(", cancelled %s", th(c.Cancelled))
	}
	if c.OutsideWindow > 0 {
		fmt.Printf(", outside their maintenance window %s", th(c.OutsideWindow))
	}
	fmt.Println()
}

// queryError points at the problem in a target query.
func queryError(err error) error {
	return fmt.Errorf("--query: %w", err)
}

func showJobProgress(ctx context.Context, c client.Client, id string) func() {
	return pollProgress(ctx, c, id, func(v interface{ Get(any) error }) string {
		var p workflows.JobProgress
		if v.Get(&p) != nil {
			return ""
		}
		done := p.Counts.Succeeded + p.Counts.Unsuccessful()
		return bar(p.State, done, p.Total, fmt.Sprintf("%s / %s devices done (%s reached)", numfmt.Thousands(done),
			numfmt.Thousands(p.Total), numfmt.Thousands(p.Dispatched)))
	})
}

// jobStatusView is `job status -o json|yaml`: the job's registry record, its devices per outcome, the live
// progress while the workflow runs (null once it has ended) and, with --failed, the devices that failed.
type jobStatusView struct {
	Job      registry.Job           `json:"job"`
	Counts   map[string]int64       `json:"counts"`
	Progress *workflows.JobProgress `json:"progress"`
	Devices  []registry.JobDevice   `json:"devices"`
	// Pending are operator actions no worker has applied yet (pause, resume, cancel).
	Pending []pendingAction `json:"pendingActions,omitempty"`
	// Certificates are the certificate slots of a rotation's renewing devices (docs/architecture.md,
	// "Certificate renewal").
	Certificates []registry.CertificateSlots `json:"certificates,omitempty"`
}

func jobStatus(cmd *cobra.Command, g *globals, id string, failed bool, out *output) error {
	ctx := cmd.Context()
	reg, err := openRegistryCtx(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	j, err := reg.GetJob(ctx, id)
	if errors.Is(err, fleet.ErrNotFound) {
		if p := liveProgress[workflows.JobProgress](ctx, g, id); p != nil && p.State == workflows.JobStateCreating {
			return fmt.Errorf("job %s is being created: its workflow is freezing the target set; try again in a moment", id)
		}
		return fmt.Errorf("no job %q (job ids look like job-set-desired-20261127-101500.000)", id)
	}
	if err != nil {
		return err
	}
	counts, err := reg.JobCounts(ctx, id)
	if err != nil {
		return err
	}
	var devs []registry.JobDevice
	if failed {
		if devs, err = reg.JobDevices(ctx, id, []fleet.JobState{fleet.JobFailed, fleet.JobTimedOut, fleet.JobOffline, fleet.JobOutsideWindow}, 1000); err != nil {
			return err
		}
	}
	live := liveProgress[workflows.JobProgress](ctx, g, id)
	view := jobStatusView{Job: j, Counts: counts, Progress: live, Devices: devs}
	if j.Kind == fleet.JobRotate {
		if view.Certificates, err = reg.RotationCertificates(ctx, id, 100000); err != nil {
			return err
		}
	}
	if j.FinishedAt == nil {
		view.Pending = pendingActions(ctx, g, "job", id)
	}
	return out.print(stdout(cmd), view, func() error { return printJobStatus(view, failed) })
}

// printJobStatus prints a job's status as tables.
func printJobStatus(v jobStatusView, failed bool) error {
	j, counts, live, devs := v.Job, v.Counts, v.Progress, v.Devices
	printPendingActions("job", v.Pending)
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	state := j.State
	if live != nil && j.FinishedAt == nil {
		state = live.State + " (workflow running)"
	}
	fmt.Fprintf(w, "job\t%s\nkind\t%s\nquery\t%s\nspec\t%s\nstate\t%s\ntargets\t%s\n", j.ID, j.Kind, j.Query, compactJSON(j.Spec), state,
		numfmt.Thousands(j.Total))
	for _, s := range []fleet.JobState{fleet.JobSucceeded, fleet.JobRunning, fleet.JobDispatched, fleet.JobPending, fleet.JobFailed, fleet.JobTimedOut,
		fleet.JobOffline, fleet.JobOutsideWindow, fleet.JobCancelled} {
		if counts[string(s)] > 0 {
			fmt.Fprintf(w, "  %s\t%s\n", s, numfmt.Thousands(counts[string(s)]))
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := printCertificateSlots(v.Certificates); err != nil {
		return err
	}
	if failed {
		fmt.Println()
		w = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "DEVICE\tSTATE\tSTATUS\tERROR\tPAYLOAD")
		for _, d := range devs {
			st := ""
			if d.Status != 0 {
				st = fmt.Sprint(d.Status)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", d.DeviceID, d.State, st, d.Error, compactJSON(d.Payload))
		}
		if len(devs) == 0 {
			fmt.Fprintln(w, "(none)\t\t\t\t")
		}
		return w.Flush()
	}
	return nil
}

// operatorUpdateCmd is `job|rollout pause|resume|cancel|approve ID`: a Workflow Update whose validator
// refuses what does not apply, after a check that the operation is still running (a finished workflow
// cannot take updates, and saying so plainly beats the server's error).
func operatorUpdateCmd(g *globals, noun, update, short string, complete registry.Candidates) *cobra.Command {
	var out *output
	id := "job-set-desired-20261127-101500.000" // an example id of noun
	if noun == "rollout" {
		id = "rollout-2.1.0-1"
	}
	c := &cobra.Command{
		Use:   update + " ID",
		Short: short,
		Long: short + ".\n\nThe request is a Temporal Workflow Update: the running " + noun + " validates it and answers; " +
			"a refused request (the answer quotes the reason), or one sent to a " + noun + " that has already finished, fails with exit code 1. " +
			"A request no worker answers within 30 s is not refused: it waits for a worker, takes effect when one runs, " +
			"shows in `" + noun + " status` meanwhile, and exits 4.",
		Example:           fmt.Sprintf("  fleetflow %s %s %s", noun, update, id),
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeFrom(g, complete, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runOperatorUpdate(cmd, g, out, noun, args[0], update, nil)
		},
	}
	out = addOutputFlag(c)
	return c
}

// updateAnswer is what an operator request (pause, resume, cancel, approve, abort) prints with -o json|yaml.
type updateAnswer struct {
	ID     string `json:"id"`
	Update string `json:"update"`
	// State is "done" (the workflow answered Message) or "pending" (no worker has answered yet).
	State   string `json:"state"`
	Message string `json:"message"`
}

// awaitJob shows a job's (or decommission's) progress until it ends. waited is false when the operator
// interrupted the wait (err is then an interruptedError saying how to follow the operation, which goes on).
func awaitJob(ctx context.Context, c client.Client, run client.WorkflowRun, id, noun string) (res workflows.JobResult, waited bool, err error) {
	stop := showJobProgress(ctx, c, id)
	err = run.Get(ctx, &res)
	stop()
	if ctx.Err() != nil {
		return res, false, &interruptedError{fmt.Sprintf("stopped waiting; the %s goes on. Follow it with `fleetflow job status %s`", noun, id)}
	}
	if err != nil {
		return res, true, fmt.Errorf("%s %s: %w", noun, id, err)
	}
	return res, true, nil
}

// printCertificateSlots prints the certificate slots of a rotation's renewing devices, each slot's end
// beside its fingerprint's first bytes; the first 20 devices (-o json lists all).
func printCertificateSlots(cs []registry.CertificateSlots) error {
	if len(cs) == 0 {
		return nil
	}
	fmt.Println()
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "CERTIFICATE DEVICE\tSTATE\tSLOT 1 EXPIRES\tSLOT 2 EXPIRES\tIN USE")
	slot := func(fp string, end *time.Time) string {
		if fp == "" {
			return "(empty)"
		}
		return certExpiry(end) + " (" + fp[:min(len(fp), 12)] + "…)"
	}
	for _, c := range cs[:min(len(cs), 20)] {
		inUse := "-"
		if c.InUse > 0 {
			inUse = fmt.Sprintf("slot %d", c.InUse)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", c.DeviceID, c.State, slot(c.Slot1, c.Slot1NotAfter), slot(c.Slot2, c.Slot2NotAfter), inUse)
	}
	if len(cs) > 20 {
		fmt.Fprintf(w, "… and %d more (-o json lists all)\t\t\t\t\n", len(cs)-20)
	}
	return w.Flush()
}
