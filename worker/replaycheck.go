package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"

	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/fleetworker"
)

// replayCheckMain is `fleetflow-worker replay-check`: the gate before a new worker version is made current
// (docs/architecture.md, "Worker versioning"). It returns the exit code: 0 when every history replayed, 1
// when one did not (non-determinism), 2 for bad usage or a check that could not run.
func replayCheckMain(args []string, stdout, stderr io.Writer) int {
	cfg := config.FromEnv()
	fs := flag.NewFlagSet("replay-check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.TemporalAddress, "temporal-address", cfg.TemporalAddress, "Temporal frontend (TEMPORAL_ADDRESS or the temporal.toml profile's)")
	fs.StringVar(&cfg.Namespace, "namespace", cfg.Namespace, "Temporal namespace (TEMPORAL_NAMESPACE or the temporal.toml profile's)")
	fs.StringVar(&cfg.TaskQueue, "task-queue", cfg.TaskQueue, `task queue whose workflows to check; "" checks every queue (FLEETFLOW_TASK_QUEUE)`)
	closedWithin := fs.Duration("closed-within", 24*time.Hour, "also check workflows closed this recently; 0: open ones only")
	limit := fs.Int("limit", 0, "check at most this many workflows; 0: all")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	deployment := fs.String("deployment-name", os.Getenv("FLEETFLOW_WORKER_DEPLOYMENT"), "with --promote: the Worker Deployment (FLEETFLOW_WORKER_DEPLOYMENT)")
	buildID := fs.String("build-id", os.Getenv("FLEETFLOW_WORKER_BUILD_ID"), "with --promote: this binary's build id (FLEETFLOW_WORKER_BUILD_ID)")
	promote := fs.Bool("promote", false, "when every history replays, make --build-id the current version of --deployment-name (its workers must be polling)")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: fleetflow-worker replay-check [flags]

Fetch the histories of the open workflows (and those closed within --closed-within) from Temporal and replay
each against this binary's workflow code. Run it with the new binary before making its build current
(--promote, or temporal worker deployment set-current-version): a non-zero exit means the new code would break
a running workflow, which must then finish on the current version first (or the change be guarded with
workflow.GetVersion).

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if *promote && (*deployment == "" || *buildID == "") {
		fmt.Fprintln(stderr, "replay-check: --promote needs --deployment-name and --build-id (FLEETFLOW_WORKER_DEPLOYMENT, FLEETFLOW_WORKER_BUILD_ID)")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	topts, err := config.TemporalClientOptions(cfg.TemporalAddress, cfg.Namespace)
	if err != nil {
		fmt.Fprintln(stderr, "replay-check:", err)
		return 2
	}
	topts.Logger = tlog.NewStructuredLogger(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	c, err := client.Dial(topts)
	if err != nil {
		fmt.Fprintf(stderr, "replay-check: connect to temporal at %s: %v\n", cfg.TemporalAddress, err)
		return 2
	}
	defer c.Close()
	rep, err := fleetworker.ReplayCheck(ctx, c, fleetworker.ReplayCheckOptions{Namespace: topts.Namespace,
		TaskQueue: cfg.TaskQueue, ClosedWithin: *closedWithin, Limit: *limit})
	if err != nil {
		fmt.Fprintln(stderr, "replay-check:", err)
		return 2
	}
	code := printReplayReport(stdout, rep, cfg.TaskQueue)
	if code != 0 || !*promote {
		return code
	}
	// Only a passed check promotes: the running workflows move to this build at their next task.
	if _, err := c.WorkerDeploymentClient().GetHandle(*deployment).SetCurrentVersion(ctx,
		client.WorkerDeploymentSetCurrentVersionOptions{BuildID: *buildID}); err != nil {
		fmt.Fprintf(stderr, "replay-check: make %s current in %s: %v\n", *buildID, *deployment, err)
		return 2
	}
	fmt.Fprintf(stdout, "replay-check: %s is now the current version of %s\n", *buildID, *deployment)
	return 0
}

// printReplayReport writes the check's outcome and returns the exit code.
func printReplayReport(w io.Writer, rep fleetworker.ReplayReport, queue string) int {
	where := "task queue " + queue
	if queue == "" {
		where = "every task queue"
	}
	for _, f := range rep.Failures {
		fmt.Fprintf(w, "FAIL %s %s (run %s): %v\n", f.WorkflowType, f.WorkflowID, f.RunID, f.Err)
	}
	if !rep.OK() {
		fmt.Fprintf(w, "replay-check: %d of %d workflows on %s do not replay on this build: do not make it current\n",
			len(rep.Failures), rep.Checked, where)
		return 1
	}
	fmt.Fprintf(w, "replay-check: %d workflows on %s (%d open) replay on this build\n", rep.Checked, where, rep.Open)
	return 0
}
