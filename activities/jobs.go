package activities

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/twin"
	"github.com/fleetflow/fleetflow/workflows"
)

// ackPollEvery is how often JobCollectAcks re-checks; acknowledgements arrive within milliseconds of the
// push, so a short period is what makes a desired job finish promptly.
const ackPollEvery = 250 * time.Millisecond

// ackPollPause is the pause after a poll that took took and found acked targets acknowledged and waiting
// still waiting: ackPollEvery, or twice what the next poll is expected to cost when that is longer, so that
// scanning a large job's waiting targets (100,000 twins) takes at most a third of a registry core while the
// devices' acknowledgements are being written. A poll's cost grows with the targets it reads, and the next
// poll reads only those still waiting.
func ackPollPause(took time.Duration, acked, waiting int64) time.Duration {
	next := took
	if read := acked + waiting; read > 0 {
		next = time.Duration(float64(took) * float64(waiting) / float64(read))
	}
	return max(ackPollEvery, 2*next)
}

var errNoChannel = errors.New("this worker has no device channel (FLEETFLOW_NATS_URL)")

// JobBatch applies a job to its targets First..Last-1 that are not finished (so a retried batch skips what an
// earlier attempt did) and returns the counts of the whole range as the registry has them, so that they are
// exact whichever attempt did the work. Each step is recorded so that a retry never repeats it where that
// matters (docs/architecture.md, "The life of an operation"):
//   - desired and tags patches are written in the same transaction as the targets' outcomes (a device is
//     patched once: its section's version goes up by one, one timeline event), then pushed to the devices
//     written (see fleet.DesiredPush); the acknowledgement is collected later (JobCollectAcks);
//   - a direct method is recorded as dispatched before it is sent, and a target an earlier attempt
//     dispatched is never sent again (at most once): its outcome, lost with that attempt, is timed out;
//   - a decommission's factory reset is recorded the same way, and the devices are retired in the same
//     transaction as the targets' outcomes.
func (a *Activities) JobBatch(ctx context.Context, req workflows.JobBatchInput) (fleet.JobCounts, error) {
	var c fleet.JobCounts
	if a.Jobs == nil {
		return c, errNoStore("job")
	}
	stop := keepHeartbeating(ctx)
	defer stop()
	targets, err := a.Jobs.JobTargets(ctx, req.JobID, req.First, req.Last-1)
	if err != nil {
		return c, err
	}
	if err := a.fault(FaultTargetsLoaded); err != nil {
		return c, err
	}
	if err := a.applyBatch(ctx, req, targets); err != nil {
		return c, err
	}
	if c, err = a.Jobs.JobRangeTotals(ctx, req.JobID, req.First, req.Last-1); err != nil {
		return c, err
	}
	if err := a.fault(FaultCounted); err != nil {
		return fleet.JobCounts{}, err
	}
	return c, nil
}

// applyBatch does the job's work on targets (unfinished targets of the batch's range).
func (a *Activities) applyBatch(ctx context.Context, req workflows.JobBatchInput, targets []fleet.JobTarget) error {
	if len(targets) == 0 {
		return nil
	}
	switch req.Kind {
	case fleet.JobRetire:
		return a.retireBatch(ctx, req, targets)
	case fleet.JobSetTags, fleet.JobSetDesired:
		return a.patchBatch(ctx, req, targets)
	case fleet.JobMethod:
		return a.methodBatch(ctx, req, targets)
	case fleet.JobRotate:
		return a.rotateBatch(ctx, req, targets)
	}
	return temporal.NewNonRetryableApplicationError(fmt.Sprintf("unknown job kind %q", req.Kind), workflows.ErrTypeInvalidInput, nil)
}

// JobWindowBatch is JobBatch for a job with a maintenance policy (docs/architecture.md, "Maintenance
// windows"): of the range's unfinished targets it reaches only those whose window is open at req.At (the
// workflow's clock when it scheduled the batch), records those whose window does not open before the
// deadline as outside_window (and those whose window tags do not parse as failed, naming the tag), and leaves
// the others pending, returning how many wait and when the first of their windows opens. Targets an earlier
// attempt dispatched go through as in JobBatch (never sent twice).
func (a *Activities) JobWindowBatch(ctx context.Context, req workflows.JobWindowBatchInput) (workflows.JobWindowBatchResult, error) {
	var res workflows.JobWindowBatchResult
	if a.Jobs == nil {
		return res, errNoStore("job")
	}
	stop := keepHeartbeating(ctx)
	defer stop()
	targets, err := a.Jobs.JobTargets(ctx, req.JobID, req.First, req.Last-1)
	if err != nil {
		return res, err
	}
	tags := map[string]map[string]string{}
	if names := req.Policy.TagNames(); names != nil && len(targets) > 0 {
		ids := make([]string, len(targets))
		for i, t := range targets {
			ids[i] = t.DeviceID
		}
		if tags, err = a.Jobs.TargetTags(ctx, ids, names); err != nil {
			return res, err
		}
	}
	var open []fleet.JobTarget
	var outs []fleet.JobOutcome
	for _, t := range targets {
		if t.State == fleet.JobDispatched {
			open = append(open, t)
			continue
		}
		w, ok, err := req.Policy.DeviceWindow(tags[t.DeviceID])
		if err != nil {
			outs = append(outs, fleet.JobOutcome{Seq: t.Seq, State: fleet.JobFailed, Error: "maintenance window: " + err.Error()})
			continue
		}
		switch verdict, next := req.Policy.Decide(w, ok, req.At); verdict {
		case fleet.WindowOpen:
			open = append(open, t)
		case fleet.WindowWait:
			res.Waiting++
			if res.NextOpen.IsZero() || next.Before(res.NextOpen) {
				res.NextOpen = next
			}
		default:
			outs = append(outs, fleet.JobOutcome{Seq: t.Seq, State: fleet.JobOutsideWindow, Error: req.Policy.MissedReason(w, next)})
		}
	}
	if len(outs) > 0 {
		if err := a.Jobs.RecordJobOutcomes(ctx, req.JobID, outs); err != nil {
			return res, err
		}
	}
	if err := a.applyBatch(ctx, req.JobBatchInput, open); err != nil {
		return res, err
	}
	res.Counts, err = a.Jobs.JobRangeTotals(ctx, req.JobID, req.First, req.Last-1)
	return res, err
}

// patchBatch writes a desired or tags patch and the targets' outcomes in one transaction, then pushes desired
// patches. A push that fails only delays the device until its next twin/get, so it is logged, not retried:
// the retry finds the targets finished and pushes nothing, so no device is pushed twice.
func (a *Activities) patchBatch(ctx context.Context, req workflows.JobBatchInput, targets []fleet.JobTarget) error {
	section := twin.Tags
	if req.Kind == fleet.JobSetDesired {
		section = twin.Desired
	}
	var push []fleet.DesiredPush
	err := a.Jobs.PatchJobTargets(ctx, req.JobID, section, targets, req.Patch, func(ts []fleet.JobTarget, results []fleet.PatchResult) ([]fleet.JobOutcome, error) {
		push = push[:0]
		outs := make([]fleet.JobOutcome, len(ts))
		for i, res := range results {
			o := fleet.JobOutcome{Seq: ts[i].Seq, State: fleet.JobSucceeded}
			switch {
			case res.Err != nil:
				o.State, o.Error = fleet.JobFailed, res.Err.Error()
			case section == twin.Desired:
				// Pushed whatever the registry says about the connection (see fleet.DesiredPush).
				o.State = fleet.JobRunning
				push = append(push, fleet.DesiredPush{DeviceID: res.DeviceID, Version: res.Version, Patch: req.Patch})
			}
			outs[i] = o
		}
		return outs, a.fault(FaultInTransaction)
	})
	if err != nil {
		return err
	}
	if err := a.fault(FaultCommitted); err != nil {
		return err
	}
	if _, err := a.push(ctx, push); err != nil {
		activity.GetLogger(ctx).Warn("desired push incomplete; devices catch up on reconnect", "job", req.JobID, "err", err)
	}
	return a.fault(FaultPushed)
}

// methodBatch sends a direct method to the batch's targets, at most once each: targets are claimed
// (recorded as dispatched) before the send, and targets an earlier attempt dispatched are closed as timed
// out without being sent again. Calls that did not leave the worker (fleet.StatusNotSent) go back to
// pending and fail the attempt, so that the retry sends them, and only them.
func (a *Activities) methodBatch(ctx context.Context, req workflows.JobBatchInput, targets []fleet.JobTarget) error {
	if a.Channel == nil {
		return temporal.NewNonRetryableApplicationError(errNoChannel.Error(), "NoChannel", nil)
	}
	if err := a.closeLost(ctx, req.JobID, targets, fleet.JobTimedOut); err != nil {
		return err
	}
	claimed, err := a.claim(ctx, req.JobID, targets)
	if err != nil || len(claimed) == 0 {
		return err
	}
	calls := make([]fleet.MethodCall, len(claimed))
	for i, t := range claimed {
		calls[i] = fleet.MethodCall{DeviceID: t.DeviceID, Method: req.Method, Payload: req.Payload}
	}
	results := a.Channel.InvokeMany(ctx, calls, req.Timeout, 0)
	if err := a.fault(FaultInvoked); err != nil {
		return err
	}
	outs := make([]fleet.JobOutcome, 0, len(claimed))
	notSent, why := 0, ""
	for i, res := range results {
		o := fleet.JobOutcome{Seq: claimed[i].Seq, State: fleet.JobState(res.Outcome), Status: res.Status, Payload: res.Payload}
		switch {
		case res.Outcome == fleet.MethodFailed && res.Status == fleet.StatusNotSent:
			// Nothing reached the device: back to pending, and the retry sends it.
			if notSent++; why == "" {
				why = string(res.Payload)
			}
			o = fleet.JobOutcome{Seq: claimed[i].Seq, State: fleet.JobPending}
		case res.Outcome == fleet.MethodOffline:
			o.Error = "device offline"
		case res.Outcome == fleet.MethodTimedOut:
			o.Error = fmt.Sprintf("no response within %s", req.Timeout)
		case res.Outcome == fleet.MethodFailed && res.Status == fleet.StatusInvalid:
			o.Error = "refused before sending: " + string(res.Payload)
		case res.Outcome == fleet.MethodFailed:
			o.Error = fmt.Sprintf("device answered %d", res.Status)
		}
		outs = append(outs, o)
	}
	if err := a.recordSent(ctx, req.JobID, outs); err != nil {
		return err
	}
	if err := a.fault(FaultRecorded); err != nil {
		return err
	}
	if notSent > 0 {
		return fmt.Errorf("job %s: %d method calls not sent (%s); the retry sends them", req.JobID, notSent, why)
	}
	return nil
}

// recordSentTries and recordSentBackoff bound how long an attempt keeps trying to record the answers of
// methods it sent: past that, the retry closes them as lost (they are never sent again), so it is worth
// riding out a short registry outage (a Postgres restart) here.
const recordSentTries = 6

// recordSentBackoff is the first wait between tries (doubling); a variable so that tests need not wait.
var recordSentBackoff = 500 * time.Millisecond

// recordSent records the outcomes of calls this attempt sent, retrying a failing registry with backoff.
func (a *Activities) recordSent(ctx context.Context, job string, outs []fleet.JobOutcome) error {
	wait := recordSentBackoff
	for try := 1; ; try++ {
		err := a.Jobs.RecordJobOutcomes(ctx, job, outs)
		if err == nil || try == recordSentTries {
			return err
		}
		activityLogger(ctx).Warn("recording method answers failed; trying again", "job", job, "try", try, "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// closeLost records the targets an earlier attempt dispatched (and whose answer it lost) as state, with the
// reason; they are never sent again.
func (a *Activities) closeLost(ctx context.Context, job string, targets []fleet.JobTarget, state fleet.JobState) error {
	var lost []fleet.JobOutcome
	for _, t := range targets {
		if t.State == fleet.JobDispatched {
			lost = append(lost, fleet.JobOutcome{Seq: t.Seq, State: state, Error: fleet.LostAnswerReason})
		}
	}
	if len(lost) == 0 {
		return nil
	}
	if err := a.Jobs.RecordJobOutcomes(ctx, job, lost); err != nil {
		return err
	}
	return a.fault(FaultLostClosed)
}

// claim records the pending targets as dispatched and returns those this attempt claimed, in seq order.
func (a *Activities) claim(ctx context.Context, job string, targets []fleet.JobTarget) ([]fleet.JobTarget, error) {
	var seqs []int64
	bySeq := map[int64]fleet.JobTarget{}
	for _, t := range targets {
		if t.State == fleet.JobPending {
			seqs = append(seqs, t.Seq)
			bySeq[t.Seq] = t
		}
	}
	if len(seqs) == 0 {
		return nil, nil
	}
	got, err := a.Jobs.ClaimJobTargets(ctx, job, seqs)
	if err != nil {
		return nil, err
	}
	claimed := make([]fleet.JobTarget, len(got))
	for i, seq := range got {
		claimed[i] = bySeq[seq]
		claimed[i].State = fleet.JobDispatched
	}
	return claimed, a.fault(FaultClaimed)
}

// push sends desired patches to their devices and returns how many the broker accepted.
func (a *Activities) push(ctx context.Context, msgs []fleet.DesiredPush) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	if a.Channel == nil {
		return 0, errNoChannel
	}
	return a.Channel.PublishDesired(ctx, msgs)
}

// JobCollectAcks marks the devices that have acknowledged a desired change, polling until none is waiting
// or MaxWait passes.
func (a *Activities) JobCollectAcks(ctx context.Context, req workflows.JobCollectAcksInput) (workflows.JobCollectAcksResult, error) {
	var st workflows.JobCollectAcksResult
	if a.Jobs == nil {
		return st, errNoStore("job")
	}
	if req.Kind == fleet.JobRotate && a.Rotate == nil {
		return st, errNoStore("credential rotation")
	}
	deadline := time.Now().Add(req.MaxWait)
	for {
		start := time.Now()
		var p fleet.AckProgress
		var err error
		if req.Kind == fleet.JobRotate {
			p, err = a.Rotate.CollectRotations(ctx, req.JobID, req.CredentialValidity)
		} else {
			p, err = a.Jobs.CollectAcks(ctx, req.JobID, req.Keys)
		}
		took := time.Since(start)
		if err != nil {
			return st, err
		}
		st.Acked += p.Acked
		st.Waiting, st.WaitingOnline = p.Waiting, p.WaitingOnline
		// Waiting only for offline devices is the workflow's call (it gives connection state time to settle).
		if p.Waiting == 0 || !time.Now().Before(deadline) {
			return st, nil
		}
		if activity.IsActivity(ctx) {
			activity.RecordHeartbeat(ctx, st)
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-workerStopping(ctx):
			return st, nil
		case <-time.After(min(ackPollPause(took, p.Acked, p.Waiting), time.Until(deadline))):
		}
	}
}

// JobClose ends a job in the registry and returns its final counts.
func (a *Activities) JobClose(ctx context.Context, req workflows.JobCloseInput) (fleet.JobCounts, error) {
	if a.Jobs == nil {
		return fleet.JobCounts{}, errNoStore("job")
	}
	if err := a.Jobs.CloseJob(ctx, req.JobID, req.State); err != nil {
		return fleet.JobCounts{}, err
	}
	return a.Jobs.JobTotals(ctx, req.JobID)
}
