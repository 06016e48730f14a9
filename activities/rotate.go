package activities

import (
	"context"
	"fmt"
	"slices"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/workflows"
)

// rotateBatch gives a rotation batch's targets new secrets (docs/architecture.md, "Credential rotation"):
//
//  1. a secret is generated for each target here, in the activity's memory: it never enters a workflow
//     payload, a history, a heartbeat or a log line, and is gone when the attempt ends;
//  2. its digest is written into the device's free slot and the target marked dispatched, in one
//     transaction, before anything is sent (StageRotation), so the registry knows every secret a device
//     may receive;
//  3. the secret is delivered with the rotateCredentials method, over the device's authenticated session;
//  4. the outcomes are recorded, and the slots of secrets that did not reach their device cleared again,
//     in one transaction (FinishRotationSends). A device that stored its secret waits, as running, until
//     JobCollectAcks sees it connect with it.
//
// A retried attempt cannot resend the secret an earlier one generated (it is gone): a target that attempt
// staged gets a new secret in the same slot, unless its device has already connected with the first one.
// A device that stored the first secret and then sees it replaced falls back to its other slot, which the
// rotation leaves alone until the new one is confirmed: no step of a retry leaves a device without a
// secret the registry knows.
func (a *Activities) rotateBatch(ctx context.Context, req workflows.JobBatchInput, targets []fleet.JobTarget) error {
	if a.Rotate == nil {
		return errNoStore("credential rotation")
	}
	if a.Channel == nil {
		return temporal.NewNonRetryableApplicationError(errNoChannel.Error(), "NoChannel", nil)
	}
	if slices.ContainsFunc(targets, func(t fleet.JobTarget) bool { return t.State == fleet.JobDispatched }) && rotateSettle > 0 {
		// An earlier attempt sent secrets and stopped before recording the answers. Its devices reconnect
		// with them at once, and the gateway records those sessions within a flush interval: waiting that
		// long lets StageRotation see them, instead of replacing a secret a device has just started to use
		// (safe, but the device then has to come back with its old one and may miss the new delivery).
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(rotateSettle):
		}
	}
	writes := make([]fleet.RotationWrite, len(targets))
	secrets := make(map[int64]string, len(targets))
	for i, t := range targets {
		s, err := creds.NewSecret()
		if err != nil {
			return err
		}
		secrets[t.Seq] = s
		writes[i] = fleet.RotationWrite{Target: t, Digest: creds.Digest(s)}
	}
	staged, err := a.Rotate.StageRotation(ctx, req.JobID, writes)
	if err != nil {
		return err
	}
	if err := a.fault(FaultClaimed); err != nil {
		return err
	}
	var calls []fleet.MethodCall
	var sent []fleet.RotationStaged
	for _, st := range staged {
		if !st.Send {
			continue
		}
		payload := protocol.RotateCredentials{Slot: st.Slot, Secret: secrets[st.Seq]}.Payload()
		calls = append(calls, fleet.MethodCall{DeviceID: st.DeviceID, Method: protocol.MethodRotateCredentials, Payload: payload})
		sent = append(sent, st)
	}
	clear(secrets)
	if len(calls) == 0 {
		return nil
	}
	results := a.Channel.InvokeMany(ctx, calls, req.Timeout, 0)
	for i := range calls {
		calls[i].Payload = nil // the only other copies of the secrets; the channel is done with them
	}
	if err := a.fault(FaultInvoked); err != nil {
		return err
	}
	outs := make([]fleet.JobOutcome, 0, len(sent))
	var undos []fleet.RotationUndo
	notSent, why := 0, ""
	for i, res := range results {
		st := sent[i]
		// The device's answer is recorded as its status only: a rotation's answer carries nothing an
		// operator needs, and a confused device could echo its request.
		o := fleet.JobOutcome{Seq: st.Seq, Status: res.Status}
		undo := false
		switch {
		case res.Outcome == fleet.MethodSucceeded:
			o.State = fleet.JobRunning // stored; its connect with the new secret confirms it
		case res.Outcome == fleet.MethodTimedOut:
			// It may have stored it: wait for its connect like the others, within the grace.
			o.State = fleet.JobRunning
		case res.Outcome == fleet.MethodFailed && res.Status == fleet.StatusNotSent:
			// Nothing reached the device: back to pending, and the retry stages and sends it again.
			if notSent++; why == "" {
				why = string(res.Payload)
			}
			o = fleet.JobOutcome{Seq: st.Seq, State: fleet.JobPending}
		case res.Outcome == fleet.MethodOffline:
			o.State, o.Error, undo = fleet.JobOffline, fleet.RotateOffline, true
		case res.Outcome == fleet.MethodFailed && res.Status == 404:
			o.State, o.Error, undo = fleet.JobFailed, "the device does not support credential rotation (no rotateCredentials method); it keeps its secret", true
		default:
			o.State, o.Error, undo = fleet.JobFailed, fmt.Sprintf("the device refused the new secret (%d: %s); it keeps its old one", res.Status,
				protocol.ParseError(res.Payload).Error), true
		}
		if undo {
			undos = append(undos, fleet.RotationUndo{DeviceID: st.DeviceID, Slot: st.Slot, Digest: writes[indexOfSeq(writes, st.Seq)].Digest})
		}
		outs = append(outs, o)
	}
	if err := a.finishRotationSends(ctx, req.JobID, outs, undos); err != nil {
		return err
	}
	if err := a.fault(FaultRecorded); err != nil {
		return err
	}
	if notSent > 0 {
		return fmt.Errorf("job %s: %d new secrets not sent (%s); the retry sends new ones", req.JobID, notSent, why)
	}
	return nil
}

// rotateSettle is how long a retried rotation batch waits for the connects of devices an earlier attempt
// delivered to be recorded (ten gateway flush intervals); a variable so that tests need not wait.
var rotateSettle = 2 * time.Second

// indexOfSeq finds the write of target seq (writes are in target order, which is seq order).
func indexOfSeq(writes []fleet.RotationWrite, seq int64) int {
	lo, hi := 0, len(writes)
	for lo < hi {
		m := (lo + hi) / 2
		if writes[m].Target.Seq < seq {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// finishRotationSends records a batch's delivery outcomes, retrying a failing registry as recordSent does:
// a secret delivered but not recorded is confirmed all the same when its device connects, so the retry is
// only about the report.
func (a *Activities) finishRotationSends(ctx context.Context, job string, outs []fleet.JobOutcome, undos []fleet.RotationUndo) error {
	wait := recordSentBackoff
	for try := 1; ; try++ {
		err := a.Rotate.FinishRotationSends(ctx, job, outs, undos)
		if err == nil || try == recordSentTries {
			return err
		}
		activityLogger(ctx).Warn("recording rotation deliveries failed; trying again", "job", job, "try", try, "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait *= 2
	}
}
