package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/workflows"
)

// An operation's writes (the job and its frozen targets, the rollout and its claims) are made by its
// workflow's first activity, never by the CLI (docs/architecture.md, "The life of an operation"). The CLI
// starts the workflow and then waits here until the workflow has passed that step, to tell the operator the
// total — or, when the step failed, the same message and exit code the CLI gave when it did the writes
// itself. It polls the workflow's progress query (state "creating" until the step is done) and, when the
// query cannot answer, whether the workflow has ended: polling needs nothing from the server beyond what
// every other command uses, and works for a workflow started by an older CLI too.

// createdWaitDetached bounds the wait with --detach: a worker that is down must not hang a command that
// promises to return at once. Without --detach the CLI waits for the operation anyway.
const createdWaitDetached = 30 * time.Second

// errCreationPending says the workflow had not passed its creation step when a detached wait gave up.
var errCreationPending = errors.New("the workflow has not created the operation yet (is a worker running?)")

// awaitCreated waits until workflow id has passed its creation step and returns the total it reports.
// created reads a progress answer: the total, and whether the creation step is behind the workflow. A
// workflow that failed is returned as creationError maps it (noun names the operation in messages).
func awaitCreated[P any](ctx context.Context, c client.Client, run client.WorkflowRun, id, noun string, limit time.Duration,
	created func(P) (int64, bool)) (int64, error) {
	if limit > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, limit)
		defer cancel()
	}
	wait := 50 * time.Millisecond
	for {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		v, err := c.QueryWorkflow(qctx, id, "", workflows.QueryProgress)
		cancel()
		if err == nil {
			var p P
			if v.Get(&p) == nil {
				if total, ok := created(p); ok {
					return total, nil
				}
			}
		}
		d, err := c.DescribeWorkflow(ctx, id, "")
		if err == nil && d.Status != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
			// Ended during (or right after) creation: its error says why.
			if err := run.Get(ctx, nil); err != nil {
				return 0, creationError(err, id, noun)
			}
			return 0, fmt.Errorf("%s %s ended before it reported its total", noun, id)
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return 0, errCreationPending
			}
			return 0, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// creationError turns a workflow that failed in its creation step into the message and exit code the
// operator got when the CLI created operations itself: an empty target set and a rollout conflict exit 1
// with their plain messages, a query the worker could not compile exits 2.
func creationError(err error, id, noun string) error {
	var app *temporal.ApplicationError
	if !errors.As(err, &app) {
		return fmt.Errorf("%s %s: %w", noun, id, err)
	}
	switch app.Type() {
	case workflows.ErrTypeEmptyTarget:
		switch noun {
		case "decommission":
			return errEmptyRetire
		case "rollout":
			return errors.New("nothing to do: none of the devices the query selects needs this firmware (all run it already, or are disabled)")
		}
		return errEmptyJob
	case workflows.ErrTypeRolloutConflict:
		var conflict fleet.RolloutConflictError
		if app.HasDetails() && app.Details(&conflict) == nil && conflict.Rollout != "" {
			return &conflict
		}
		return errors.New(app.Message())
	case workflows.ErrTypeInvalidQuery:
		return queryError(asUsage(errors.New(app.Message())))
	case workflows.ErrTypeUnknownFirmware:
		return errors.New(app.Message())
	}
	return fmt.Errorf("%s %s: %w", noun, id, err)
}

// jobCreated reads a job's (or decommission's) progress: created once it has left the creating state.
func jobCreated(p workflows.JobProgress) (int64, bool) {
	return p.Total, p.State != workflows.JobStateCreating && p.Total > 0
}

// rolloutCreated reads a rollout's progress: created once it has left the creating state.
func rolloutCreated(p workflows.RolloutProgress) (int64, bool) {
	return p.Total, p.State != workflows.RolloutStateCreating && p.Total > 0
}

// crashAt is a test hook, not a feature: when FLEETFLOW_CRASH_AT names point, the CLI kills its own process
// with SIGKILL there, so that internal/e2e can show what an operator's kill -9 (or a lost laptop) leaves
// behind at each point of an operation's start: "before-start" (after the read-only checks and any
// staging, before the workflow starts), "after-start" (the workflow has started; the CLI has not waited
// for anything), "mid-wait" (the operation is created and the CLI is waiting for its end).
func crashAt(point string) {
	if os.Getenv("FLEETFLOW_CRASH_AT") == point {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not delivered synchronously; never go on past the point
	}
}
