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

var errNoChannel = errors.New("this worker has no device channel (FLEETFLOW_NATS_URL)")

// JobBatch applies a job to its targets First..Last-1 that are still pending (so a retried batch skips what
// it already did) and records each device's outcome. Desired patches are written in one transaction and
// pushed to every device written (see fleet.DesiredPush); the device's acknowledgement is collected
// later (JobCollectAcks).
func (a *Activities) JobBatch(ctx context.Context, req workflows.JobBatchInput) (fleet.JobCounts, error) {
	var c fleet.JobCounts
	if a.Jobs == nil {
		return c, errNoStore("job")
	}
	stop := keepHeartbeating(ctx)
	defer stop()
	targets, err := a.Jobs.JobTargets(ctx, req.JobID, req.First, req.Last-1)
	if err != nil || len(targets) == 0 {
		return c, err
	}
	outs := make([]fleet.JobOutcome, 0, len(targets))
	switch req.Kind {
	case fleet.JobRetire:
		if outs, err = a.retireBatch(ctx, req, targets); err != nil {
			return c, err
		}
	case fleet.JobSetTags, fleet.JobSetDesired:
		section := twin.Tags
		if req.Kind == fleet.JobSetDesired {
			section = twin.Desired
		}
		patches := make([]fleet.DevicePatch, len(targets))
		for i, t := range targets {
			patches[i] = fleet.DevicePatch{DeviceID: t.DeviceID, Patch: req.Patch}
		}
		results, err := a.Jobs.PatchTwins(ctx, section, patches)
		if err != nil {
			return c, err
		}
		var push []fleet.DesiredPush
		for i, res := range results {
			o := fleet.JobOutcome{Seq: targets[i].Seq, State: fleet.JobSucceeded}
			switch {
			case res.Err != nil:
				o.State, o.Error = fleet.JobFailed, res.Err.Error()
			case section == twin.Desired:
				// Pushed whatever the registry says about the connection (see fleet.DesiredPush).
				o.State = fleet.JobRunning
				push = append(push, fleet.DesiredPush{DeviceID: res.DeviceID, Version: res.Version, Patch: req.Patch})
			}
			outs = append(outs, o)
		}
		// The desired state is committed: a push that fails only delays the device until its next twin/get,
		// so it is logged, not retried (a retry would find no pending target and push nothing).
		if _, err := a.push(ctx, push); err != nil {
			activity.GetLogger(ctx).Warn("desired push incomplete; devices catch up on reconnect", "job", req.JobID, "err", err)
		}
	case fleet.JobMethod:
		if a.Channel == nil {
			return c, temporal.NewNonRetryableApplicationError(errNoChannel.Error(), "NoChannel", nil)
		}
		calls := make([]fleet.MethodCall, len(targets))
		for i, t := range targets {
			calls[i] = fleet.MethodCall{DeviceID: t.DeviceID, Method: req.Method, Payload: req.Payload}
		}
		notSent, why := 0, ""
		for i, res := range a.Channel.InvokeMany(ctx, calls, req.Timeout, 0) {
			if res.Outcome == fleet.MethodFailed && res.Status == fleet.StatusNotSent {
				// Nothing reached the device: it stays pending, and the retry sends it (and only it: the
				// outcomes of the calls that were sent are recorded below, so no device runs a method twice).
				if notSent++; why == "" {
					why = string(res.Payload)
				}
				continue
			}
			o := fleet.JobOutcome{Seq: targets[i].Seq, State: fleet.JobState(res.Outcome), Status: res.Status, Payload: res.Payload}
			switch {
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
		if notSent > 0 {
			if len(outs) > 0 {
				if err := a.Jobs.RecordJobOutcomes(ctx, req.JobID, outs); err != nil {
					return c, err
				}
			}
			return c, fmt.Errorf("job %s: %d method calls not sent (%s); the retry sends them", req.JobID, notSent, why)
		}
	default:
		return c, temporal.NewNonRetryableApplicationError(fmt.Sprintf("unknown job kind %q", req.Kind), workflows.ErrTypeInvalidInput, nil)
	}
	if err := a.Jobs.RecordJobOutcomes(ctx, req.JobID, outs); err != nil {
		return c, err
	}
	for _, o := range outs {
		c.AddState(o.State, 1)
	}
	return c, nil
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
	deadline := time.Now().Add(req.MaxWait)
	for {
		p, err := a.Jobs.CollectAcks(ctx, req.JobID, req.Keys)
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
		case <-time.After(min(ackPollEvery, time.Until(deadline))):
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
