package fleetworker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"

	"github.com/fleetflow/fleetflow/workflows"
)

// ReplayCheckOptions choose the workflows a replay check fetches and the code it replays them against.
type ReplayCheckOptions struct {
	// Namespace is the client's namespace, which the visibility query runs in.
	Namespace string
	// TaskQueue limits the check to the workflows of one task queue; "" checks every queue.
	TaskQueue string
	// ClosedWithin adds the workflows closed this recently to the open ones (0: open ones only). A closed
	// workflow cannot break, but its history is the latest record of a shape the open ones may still have.
	ClosedWithin time.Duration
	// Limit caps the number of workflows replayed (0: all of them).
	Limit int
	// Register puts the workflow code to check on the replayer; nil registers this binary's workflows, as
	// the worker does (workflows.All).
	Register func(worker.WorkflowReplayer)
	// Now is the end of the ClosedWithin window (time.Now when zero).
	Now time.Time
}

// ReplayFailure is a workflow whose history this code cannot replay.
type ReplayFailure struct {
	WorkflowID, RunID, WorkflowType string
	Err                             error
}

// ReplayReport is the outcome of a replay check.
type ReplayReport struct {
	// Checked counts the histories replayed, Open of which belong to running workflows.
	Checked, Open int
	Failures      []ReplayFailure
}

// OK reports whether every history replayed.
func (r ReplayReport) OK() bool { return len(r.Failures) == 0 }

// ReplayCheck fetches the histories of the open (and recently closed) workflows from the server and replays
// each against this binary's workflow code: what an operator runs before making a new worker version current
// (docs/architecture.md, "Worker versioning"). A history the code cannot replay — a non-deterministic change,
// a workflow type the code no longer has — is a failure in the report; the error is for the check itself not
// running (the server unreachable, say).
func ReplayCheck(ctx context.Context, c client.Client, o ReplayCheckOptions) (ReplayReport, error) {
	now := o.Now
	if now.IsZero() {
		now = time.Now()
	}
	if strings.ContainsAny(o.TaskQueue, `'"\`) {
		return ReplayReport{}, fmt.Errorf("task queue %q: quotes and backslashes are not supported in a replay check", o.TaskQueue)
	}
	query := replayQuery(o.TaskQueue, o.ClosedWithin, now)
	register := o.Register
	if register == nil {
		register = func(r worker.WorkflowReplayer) {
			for _, wf := range workflows.All() {
				r.RegisterWorkflow(wf)
			}
		}
	}
	// The replayer logs each failure at error level; the report carries them instead.
	logger := tlog.NewStructuredLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	var rep ReplayReport
	var token []byte
	for {
		resp, err := c.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
			Namespace: o.Namespace, Query: query, NextPageToken: token})
		if err != nil {
			return rep, fmt.Errorf("list workflows (%s): %w", query, err)
		}
		for _, x := range resp.Executions {
			if o.Limit > 0 && rep.Checked >= o.Limit {
				return rep, nil
			}
			id, run := x.GetExecution().GetWorkflowId(), x.GetExecution().GetRunId()
			hist, err := fetchHistory(ctx, c, id, run)
			if err != nil {
				return rep, err
			}
			// A replayer per history: a failed replay must not leave state behind for the next one.
			r := worker.NewWorkflowReplayer()
			register(r)
			rep.Checked++
			if x.GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
				rep.Open++
			}
			if err := r.ReplayWorkflowHistory(logger, hist); err != nil {
				rep.Failures = append(rep.Failures, ReplayFailure{WorkflowID: id, RunID: run,
					WorkflowType: x.GetType().GetName(), Err: err})
			}
		}
		if token = resp.NextPageToken; len(token) == 0 {
			return rep, nil
		}
	}
}

// replayQuery is the visibility query of the workflows a check covers.
func replayQuery(taskQueue string, closedWithin time.Duration, now time.Time) string {
	q := "ExecutionStatus = 'Running'"
	if closedWithin > 0 {
		q = fmt.Sprintf("(%s OR CloseTime > '%s')", q, now.Add(-closedWithin).UTC().Format(time.RFC3339Nano))
	}
	if taskQueue != "" {
		q += " AND TaskQueue = '" + taskQueue + "'"
	}
	return q
}

// fetchHistory reads a run's whole history.
func fetchHistory(ctx context.Context, c client.Client, id, run string) (*historypb.History, error) {
	it := c.GetWorkflowHistory(ctx, id, run, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	h := &historypb.History{}
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			return nil, fmt.Errorf("history of %s (run %s): %w", id, run, err)
		}
		h.Events = append(h.Events, ev)
	}
	return h, nil
}
