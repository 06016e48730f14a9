package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	updatepb "go.temporal.io/api/update/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/spf13/cobra"

	"github.com/fleetflow/fleetflow/workflows"
)

// Operator actions (pause, resume, approve, abort, cancel) are Workflow Updates: the running workflow's
// validator accepts or refuses them, and its handler answers. Both run on a worker, so with no worker the
// server holds an update as admitted, and it takes effect as soon as a worker picks the workflow up. The CLI
// says exactly that ("waiting for a worker", exit 4), never that the action was refused; a refusal quotes
// the validator's reason. Each update gets an id "<update>-<n>" (the first n free on the workflow's current
// run), so that `status` can find the actions still pending by asking the server about those ids.

// updateAnswerWait is how long the CLI waits for a worker to answer an operator action (a variable so that
// tests need not wait this long).
var updateAnswerWait = 30 * time.Second

// maxUpdateSlots bounds the ids probed per update name.
const maxUpdateSlots = 200

// operatorUpdates are the operator actions each kind of operation takes, in the order status lists them.
var operatorUpdates = map[string][]string{
	"job":     {workflows.UpdatePause, workflows.UpdateResume, workflows.UpdateCancel},
	"rollout": {workflows.UpdatePause, workflows.UpdateResume, workflows.UpdateApprove, workflows.UpdateAbort},
}

// pendingError says an operator action reached Temporal but no worker has applied it yet (exit 4): it is
// not refused, and it takes effect when a worker runs.
type pendingError struct{ msg string }

func (e *pendingError) Error() string { return e.msg }

// pendingAction is an operator action the server holds for a workflow that no worker has applied yet.
type pendingAction struct {
	Update   string `json:"update"`
	UpdateID string `json:"updateId"`
	Stage    string `json:"stage"` // admitted: no worker has seen it; accepted: validated, not answered yet
	// WaitingSince is when the workflow's pending workflow task was scheduled: since then no worker has
	// picked the workflow up (zero when the server does not say).
	WaitingSince time.Time `json:"waitingSince,omitzero"`
}

// sendUpdate sends an operator action and returns the workflow's answer. A refusal is an error quoting the
// validator's reason; an action no worker answered within updateAnswerWait is a *pendingError.
func sendUpdate(ctx context.Context, g *globals, noun, id, update string, arg any) (string, error) {
	c, err := dialTemporal(g)
	if err != nil {
		return "", err
	}
	defer c.Close()
	d, err := c.DescribeWorkflow(ctx, id, "")
	if err != nil {
		return "", fmt.Errorf("no %s %q: %w", noun, id, err)
	}
	if st := d.Status; st != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
		return "", fmt.Errorf("%s %s has already finished (%s): nothing to %s", noun, id,
			strings.ToLower(strings.TrimPrefix(st.String(), "WorkflowExecutionStatus")), update)
	}
	uid := freeUpdateID(ctx, c, g.cfg.Namespace, id, update)
	opts := client.UpdateWorkflowOptions{WorkflowID: id, UpdateID: uid, UpdateName: update, WaitForStage: client.WorkflowUpdateStageCompleted}
	if arg != nil {
		opts.Args = []any{arg}
	}
	uctx, cancel := context.WithTimeout(ctx, updateAnswerWait)
	defer cancel()
	var msg string
	h, err := c.UpdateWorkflow(uctx, opts)
	if err == nil {
		err = h.Get(uctx, &msg)
	}
	if err == nil {
		return msg, nil
	}
	return "", updateError(ctx, c, g.cfg.Namespace, noun, id, update, uid, err)
}

// updateError says what became of an operator action that did not answer: refused (the validator's reason),
// still waiting for a worker, interrupted, or failed.
func updateError(ctx context.Context, c client.Client, ns, noun, id, update, uid string, err error) error {
	var app *temporal.ApplicationError
	if errors.As(err, &app) {
		return fmt.Errorf("%s %s: %s refused: %s", noun, id, update, app.Message())
	}
	var timedOut *client.WorkflowUpdateServiceTimeoutOrCanceledError
	if !errors.As(err, &timedOut) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("%s %s: %s failed: %w", noun, id, update, err)
	}
	if ctx.Err() != nil {
		return &interruptedError{fmt.Sprintf("stopped waiting; the %s request may still be pending: see `fleetflow %s status %s`", update, noun, id)}
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	stage, _, derr := describeUpdate(dctx, c, ns, id, uid)
	switch {
	case derr == nil && stage != enumspb.UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_COMPLETED:
		return &pendingError{fmt.Sprintf("%s %s: %s is waiting for a worker: none answered within %s (is `fleetflow worker` running?). "+
			"The request stands: it stays pending and takes effect as soon as a worker picks the %s up; "+
			"`fleetflow %s status %s` shows it while it waits", noun, id, update, updateAnswerWait, noun, noun, id)}
	case derr == nil:
		// Answered just after the wait gave up: say so rather than guess.
		return fmt.Errorf("%s %s: %s was answered just after %s; check `fleetflow %s status %s`", noun, id, update, updateAnswerWait, noun, id)
	}
	return fmt.Errorf("%s %s: %s was not delivered (%v): no worker answered within %s and the server no longer holds it; send it again",
		noun, id, update, derr, updateAnswerWait)
}

// describeUpdate asks the server where update uid of workflow id stands, without waiting.
func describeUpdate(ctx context.Context, c client.Client, ns, id, uid string) (enumspb.UpdateWorkflowExecutionLifecycleStage, *updatepb.Outcome, error) {
	resp, err := c.WorkflowService().PollWorkflowExecutionUpdate(ctx, &workflowservice.PollWorkflowExecutionUpdateRequest{
		Namespace:  ns,
		UpdateRef:  &updatepb.UpdateRef{WorkflowExecution: &commonpb.WorkflowExecution{WorkflowId: id}, UpdateId: uid},
		WaitPolicy: &updatepb.WaitPolicy{LifecycleStage: enumspb.UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_ADMITTED},
	})
	if err != nil {
		return enumspb.UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_UNSPECIFIED, nil, err
	}
	return resp.GetStage(), resp.GetOutcome(), nil
}

// freeUpdateID returns "<update>-<n>" for the first n the workflow's current run does not know: ids of
// completed updates are remembered by the server (reusing one would return the old answer), refused ones are
// not. When the server cannot say (or past the bound) the id is unique instead, and status does not list it.
func freeUpdateID(ctx context.Context, c client.Client, ns, id, update string) string {
	for n := 1; n <= maxUpdateSlots; n++ {
		uid := update + "-" + strconv.Itoa(n)
		_, _, err := describeUpdate(ctx, c, ns, id, uid)
		var nf *serviceerror.NotFound
		if errors.As(err, &nf) {
			return uid
		}
		if err != nil {
			break
		}
	}
	return fmt.Sprintf("%s-%d", update, time.Now().UnixNano())
}

// pendingActions lists the operator actions of the noun's workflow id that the server holds and no worker
// has answered, with how long the workflow has been waiting for a worker. Best effort: nil when Temporal
// cannot say.
func pendingActions(ctx context.Context, g *globals, noun, id string) []pendingAction {
	c, err := dialTemporal(g)
	if err != nil {
		return nil
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	d, err := c.DescribeWorkflow(ctx, id, "")
	if err != nil || d.Status != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
		return nil
	}
	var since time.Time
	if wt := d.RawResponse.GetPendingWorkflowTask(); wt != nil && wt.GetScheduledTime() != nil {
		since = wt.GetScheduledTime().AsTime()
	}
	var out []pendingAction
	for _, update := range operatorUpdates[noun] {
		for n := 1; n <= maxUpdateSlots; n++ {
			uid := update + "-" + strconv.Itoa(n)
			stage, _, err := describeUpdate(ctx, c, g.cfg.Namespace, id, uid)
			if err != nil {
				break
			}
			if stage != enumspb.UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_COMPLETED {
				out = append(out, pendingAction{Update: update, UpdateID: uid, WaitingSince: since,
					Stage: strings.ToLower(strings.TrimPrefix(stage.String(), "UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_"))})
			}
		}
	}
	return out
}

// printPendingActions prints the pending operator actions under a status, one line each.
func printPendingActions(noun string, pending []pendingAction) {
	for _, p := range pending {
		since := ""
		if !p.WaitingSince.IsZero() {
			since = fmt.Sprintf(" since %s (%s ago)", p.WaitingSince.Local().Format(time.DateTime), time.Since(p.WaitingSince).Round(time.Second))
		}
		fmt.Printf("pending: %s (%s) — waiting for a worker%s; it takes effect when a worker picks the %s up\n", p.Update, p.Stage, since, noun)
	}
}

// runOperatorUpdate sends an operator action and prints the answer; an action still waiting for a worker is
// printed as pending (with -o json|yaml, state "pending") and exits 4.
func runOperatorUpdate(cmd *cobra.Command, g *globals, out *output, noun, id, update string, arg any) error {
	msg, err := sendUpdate(cmd.Context(), g, noun, id, update, arg)
	var pe *pendingError
	switch {
	case errors.As(err, &pe):
		if out.structured() {
			if perr := out.print(stdout(cmd), updateAnswer{ID: id, Update: update, State: "pending", Message: pe.msg}, nil); perr != nil {
				return perr
			}
		}
		return err
	case err != nil:
		return err
	}
	return out.print(stdout(cmd), updateAnswer{ID: id, Update: update, State: "done", Message: msg}, func() error {
		fmt.Fprintln(stdout(cmd), msg)
		return nil
	})
}
