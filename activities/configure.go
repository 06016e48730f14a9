package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/rollout"
	"github.com/fleetflow/fleetflow/internal/twin"
	"github.com/fleetflow/fleetflow/workflows"
)

// ConfigureStore is what jobs and rollouts need from the registry (implemented by *registry.Registry).
type ConfigureStore interface {
	JobTargets(ctx context.Context, job string, first, last int64) ([]registry.JobTarget, error)
	RecordJobOutcomes(ctx context.Context, job string, outs []registry.JobOutcome) error
	PatchTwins(ctx context.Context, section twin.Section, patches []registry.DevicePatch) ([]registry.PatchResult, error)
	CollectAcks(ctx context.Context, job string, keys []string) (registry.AckProgress, error)
	CloseJob(ctx context.Context, job, state string) error
	JobCounts(ctx context.Context, job string) (map[string]int64, error)

	DispatchWave(ctx context.Context, rollout string, wave int, cutoff int64, fw registry.Firmware, limit int) ([]registry.DesiredPush, int64, bool, error)
	ObserveRollout(ctx context.Context, rollout, job string, phases []string) ([]registry.RolloutObservation, error)
	UpdateRolloutPhases(ctx context.Context, rollout string, ups []registry.PhaseUpdate) error
	RolloutCounts(ctx context.Context, rollout string) ([]registry.PhaseCount, error)
	StartRollback(ctx context.Context, rollout, job string, limit int) ([]registry.DesiredPush, bool, error)
	FinishRollout(ctx context.Context, id, state string, result json.RawMessage) error
	DesiredDocs(ctx context.Context, ids []string) ([]registry.DesiredPush, error)
	RolloutDevices(ctx context.Context, rollout string, phases []string, limit int) ([]registry.RolloutDevice, error)
}

// Channel is the MQTT device channel as activities use it (implemented by *channel.Channel).
type Channel interface {
	PublishDesired(ctx context.Context, msgs []channel.DesiredMessage) (int, error)
	InvokeMany(ctx context.Context, calls []channel.MethodCall, timeout time.Duration, rate float64) []channel.MethodResult
}

// ackPollEvery is how often JobCollectAcks re-checks; acknowledgements arrive within milliseconds of the
// push, so a short period is what makes a desired job finish promptly.
const ackPollEvery = 250 * time.Millisecond

// dispatchChunk is how many devices one registry transaction of a wave or rollback covers.
const dispatchChunk = 2000

// failureSample is how many failing devices a rollout's result lists; the CLI reads the rest from Postgres.
const failureSample = 20

var errNoChannel = errors.New("this worker has no MQTT channel (FLEETFLOW_MQTT_URL / FLEETFLOW_SERVICE_TOKEN)")

// JobBatch applies a job to its targets First..Last-1 that are still pending (so a retried batch skips what
// it already did) and records each device's outcome. Desired patches are written in one transaction and
// pushed to every device written (see registry.DesiredPush); the device's acknowledgement is collected
// later (JobCollectAcks).
func (a *Activities) JobBatch(ctx context.Context, req workflows.JobBatchRequest) (workflows.JobCounts, error) {
	stop := keepHeartbeating(ctx)
	defer stop()
	var c workflows.JobCounts
	targets, err := a.Configure.JobTargets(ctx, req.JobID, req.First, req.Last-1)
	if err != nil || len(targets) == 0 {
		return c, err
	}
	outs := make([]registry.JobOutcome, 0, len(targets))
	switch req.Kind {
	case workflows.JobRetire:
		if outs, err = a.retireBatch(ctx, req, targets); err != nil {
			return c, err
		}
	case workflows.JobSetTags, workflows.JobSetDesired:
		section := twin.Tags
		if req.Kind == workflows.JobSetDesired {
			section = twin.Desired
		}
		patches := make([]registry.DevicePatch, len(targets))
		for i, t := range targets {
			patches[i] = registry.DevicePatch{DeviceID: t.DeviceID, Patch: req.Patch}
		}
		results, err := a.Configure.PatchTwins(ctx, section, patches)
		if err != nil {
			return c, err
		}
		var push []channel.DesiredMessage
		for i, res := range results {
			o := registry.JobOutcome{Seq: targets[i].Seq, State: registry.JobSucceeded}
			switch {
			case res.Err != nil:
				o.State, o.Error = registry.JobFailed, res.Err.Error()
			case section == twin.Desired:
				// Pushed whatever the registry says about the connection (see registry.DesiredPush).
				o.State = registry.JobRunning
				push = append(push, channel.DesiredMessage{DeviceID: res.DeviceID, Version: res.Version, Patch: req.Patch})
			}
			outs = append(outs, o)
		}
		// The desired state is committed: a push that fails only delays the device until its next twin/get,
		// so it is logged, not retried (a retry would find no pending target and push nothing).
		if _, err := a.push(ctx, push); err != nil {
			activity.GetLogger(ctx).Warn("desired push incomplete; devices catch up on reconnect", "job", req.JobID, "err", err)
		}
	case workflows.JobMethod:
		if a.Channel == nil {
			return c, temporal.NewNonRetryableApplicationError(errNoChannel.Error(), "NoChannel", nil)
		}
		calls := make([]channel.MethodCall, len(targets))
		for i, t := range targets {
			calls[i] = channel.MethodCall{DeviceID: t.DeviceID, Method: req.Method, Payload: req.Payload}
		}
		notSent, why := 0, ""
		for i, res := range a.Channel.InvokeMany(ctx, calls, req.Timeout, 0) {
			if res.Outcome == channel.Failed && res.Status == channel.StatusNotSent {
				// Nothing reached the device: it stays pending, and the retry sends it (and only it: the
				// outcomes of the calls that were sent are recorded below, so no device runs a method twice).
				if notSent++; why == "" {
					why = string(res.Payload)
				}
				continue
			}
			o := registry.JobOutcome{Seq: targets[i].Seq, State: string(res.Outcome), Status: res.Status, Payload: res.Payload}
			switch {
			case res.Outcome == channel.Offline:
				o.Error = "device offline"
			case res.Outcome == channel.TimedOut:
				o.Error = fmt.Sprintf("no response within %s", req.Timeout)
			case res.Outcome == channel.Failed && res.Status == channel.StatusInvalid:
				o.Error = "refused before sending: " + string(res.Payload)
			case res.Outcome == channel.Failed:
				o.Error = fmt.Sprintf("device answered %d", res.Status)
			}
			outs = append(outs, o)
		}
		if notSent > 0 {
			if len(outs) > 0 {
				if err := a.Configure.RecordJobOutcomes(ctx, req.JobID, outs); err != nil {
					return c, err
				}
			}
			return c, fmt.Errorf("job %s: %d method calls not sent (%s); the retry sends them", req.JobID, notSent, why)
		}
	default:
		return c, temporal.NewNonRetryableApplicationError(fmt.Sprintf("unknown job kind %q", req.Kind), workflows.ErrTypeInvalidInput, nil)
	}
	if err := a.Configure.RecordJobOutcomes(ctx, req.JobID, outs); err != nil {
		return c, err
	}
	for _, o := range outs {
		addJobState(&c, o.State, 1)
	}
	return c, nil
}

func addJobState(c *workflows.JobCounts, state string, n int64) {
	switch state {
	case registry.JobSucceeded:
		c.Succeeded += n
	case registry.JobFailed:
		c.Failed += n
	case registry.JobTimedOut:
		c.TimedOut += n
	case registry.JobOffline:
		c.Offline += n
	case registry.JobRunning:
		c.Running += n
	case registry.JobCancelled:
		c.Cancelled += n
	}
}

// push sends desired patches to their devices and returns how many the broker accepted.
func (a *Activities) push(ctx context.Context, msgs []channel.DesiredMessage) (int, error) {
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
func (a *Activities) JobCollectAcks(ctx context.Context, req workflows.JobAckRequest) (workflows.JobAckStatus, error) {
	var st workflows.JobAckStatus
	deadline := time.Now().Add(req.MaxWait)
	for {
		p, err := a.Configure.CollectAcks(ctx, req.JobID, req.Keys)
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
func (a *Activities) JobClose(ctx context.Context, req workflows.JobCloseRequest) (workflows.JobCounts, error) {
	var c workflows.JobCounts
	if err := a.Configure.CloseJob(ctx, req.JobID, req.State); err != nil {
		return c, err
	}
	m, err := a.Configure.JobCounts(ctx, req.JobID)
	if err != nil {
		return c, err
	}
	for state, n := range m {
		addJobState(&c, state, n)
	}
	return c, nil
}

// RolloutDispatch starts a wave: it moves the wave's devices into dispatch in chunks (each one registry
// transaction that writes desired.firmware and the devices' phases) and pushes the patch to those online.
// A retry continues with the devices still queued.
func (a *Activities) RolloutDispatch(ctx context.Context, req workflows.RolloutDispatchRequest) (workflows.RolloutDispatchResult, error) {
	stop := keepHeartbeating(ctx)
	defer stop()
	var res workflows.RolloutDispatchResult
	fw := registry.Firmware{Version: req.Firmware.Version, URL: req.Firmware.URL, SHA256: req.Firmware.SHA256}
	for {
		pushes, skipped, more, err := a.Configure.DispatchWave(ctx, req.RolloutID, req.Wave, req.Cutoff, fw, dispatchChunk)
		if err != nil {
			return res, err
		}
		res.Skipped += skipped
		res.Dispatched += int64(len(pushes))
		n, err := a.push(ctx, desiredMessages(pushes))
		res.Pushed += int64(n)
		if err != nil {
			activity.GetLogger(ctx).Warn("firmware push incomplete; devices catch up on reconnect", "rollout", req.RolloutID, "err", err)
		}
		if !more {
			return res, nil
		}
	}
}

func desiredMessages(pushes []registry.DesiredPush) []channel.DesiredMessage {
	msgs := make([]channel.DesiredMessage, len(pushes))
	for i, p := range pushes {
		msgs[i] = channel.DesiredMessage{DeviceID: p.DeviceID, Version: p.Version, Patch: p.Patch}
	}
	return msgs
}

// forwardPhases are the phases the forward observation evaluates.
var forwardPhases = []string{string(rollout.Dispatched), string(rollout.Downloading), string(rollout.Installing),
	string(rollout.Rebooting), string(rollout.Baking)}

// RolloutObserve applies the rules of internal/rollout to what the rollout's undecided devices report,
// records the phases that changed, and returns the counts. It polls every PollInterval until the current
// wave is decided, the failure threshold is exceeded, or MaxWait passes, so that one activity covers many
// polls and the workflow's history stays small.
func (a *Activities) RolloutObserve(ctx context.Context, req workflows.RolloutObserveRequest) (workflows.RolloutObservation, error) {
	poll := req.PollInterval
	if poll <= 0 {
		poll = time.Second
	}
	deadline := time.Now().Add(req.MaxWait)
	repushed := map[string]bool{}
	for {
		obs, err := a.observeOnce(ctx, req, repushed)
		if err != nil {
			return obs, err
		}
		decided := obs.Wave.Pending() == 0
		if req.Rollback {
			decided = obs.Counts.RollingBack == 0
		} else if req.MaxFailures.Exceeded(obs.Counts.Failed, obs.Counts.Touched()) {
			decided = true
		}
		if decided || !time.Now().Before(deadline) {
			return obs, nil
		}
		if activity.IsActivity(ctx) {
			activity.RecordHeartbeat(ctx, obs.Counts)
		}
		select {
		case <-ctx.Done():
			return obs, ctx.Err()
		case <-time.After(min(poll, time.Until(deadline))):
		}
	}
}

func (a *Activities) observeOnce(ctx context.Context, req workflows.RolloutObserveRequest, repushed map[string]bool) (workflows.RolloutObservation, error) {
	var obs workflows.RolloutObservation
	phases := forwardPhases
	if req.Rollback {
		phases = []string{string(rollout.RollingBack)}
	}
	devs, err := a.Configure.ObserveRollout(ctx, req.RolloutID, req.JobID, phases)
	if err != nil {
		return obs, err
	}
	now := time.Now()
	var ups []registry.PhaseUpdate
	var stuck []string
	for _, d := range devs {
		// An online device that has shown no progress long after its dispatch may have missed the push
		// (e.g. it reconnected between its twin/get and the write): send its desired state again, once per
		// observation activity. A device that did get it ignores a version it already has.
		if !req.Rollback && req.RepushAfter > 0 && d.Phase == string(rollout.Dispatched) && d.JobStatus == "" && d.Online &&
			now.Sub(d.DispatchedAt) >= req.RepushAfter && !repushed[d.DeviceID] {
			repushed[d.DeviceID] = true
			stuck = append(stuck, d.DeviceID)
		}
		var dec rollout.Decision
		if req.Rollback {
			dec = rollout.EvaluateRollback(rollout.RollbackObservation{PrevVersion: d.PrevVersion, ReportedVersion: d.ReportedVersion,
				JobStatus: d.JobStatus, JobReason: d.JobReason, StartedAt: d.RollbackAt}, req.Policy.DeviceTimeout, now)
		} else {
			dec = rollout.Evaluate(rollout.Observation{Phase: rollout.Phase(d.Phase), DispatchedAt: d.DispatchedAt, BakeSince: d.BakeSince,
				JobStatus: d.JobStatus, JobReason: d.JobReason, ReportedVersion: d.ReportedVersion, Health: d.Health,
				HealthReason: d.HealthReason, Online: d.Online, LastSeen: d.LastSeen}, req.Policy, now)
		}
		bakeChanged := !dec.BakeSince.IsZero() && !dec.BakeSince.Equal(d.BakeSince)
		if string(dec.Phase) != d.Phase || bakeChanged {
			u := registry.PhaseUpdate{Rank: d.Rank, Phase: string(dec.Phase), Reason: dec.Reason}
			if dec.Phase == rollout.RolledBack && d.PrevVersion != "" {
				// Keep why the device failed forward (if it did): that is what operators look for after a
				// rollback; "back on the previous version" is what rolled_back already says.
				u.Reason = ""
			}
			if bakeChanged {
				u.BakeSince = dec.BakeSince
			}
			ups = append(ups, u)
		}
	}
	if err := a.Configure.UpdateRolloutPhases(ctx, req.RolloutID, ups); err != nil {
		return obs, err
	}
	if len(stuck) > 0 {
		a.repush(ctx, req.RolloutID, stuck)
	}
	counts, err := a.Configure.RolloutCounts(ctx, req.RolloutID)
	if err != nil {
		return obs, err
	}
	for _, pc := range counts {
		obs.Counts.Add(rollout.Phase(pc.Phase), pc.N)
		if pc.Wave == req.Wave {
			obs.Wave.Add(rollout.Phase(pc.Phase), pc.N)
		}
	}
	return obs, nil
}

// RolloutRollback sends every touched device of the rollout back to its previous firmware, in chunks.
func (a *Activities) RolloutRollback(ctx context.Context, req workflows.RolloutRollbackRequest) (int64, error) {
	stop := keepHeartbeating(ctx)
	defer stop()
	var n int64
	for {
		pushes, more, err := a.Configure.StartRollback(ctx, req.RolloutID, req.JobID, dispatchChunk)
		if err != nil {
			return n, err
		}
		n += int64(len(pushes))
		if _, err := a.push(ctx, desiredMessages(pushes)); err != nil {
			activity.GetLogger(ctx).Warn("rollback push incomplete; devices catch up on reconnect", "rollout", req.RolloutID, "err", err)
		}
		if !more {
			return n, nil
		}
	}
}

// RolloutFinish records the rollout's end and returns its final counts and a sample of failing devices.
func (a *Activities) RolloutFinish(ctx context.Context, req workflows.RolloutFinishRequest) (workflows.RolloutFinishResult, error) {
	var res workflows.RolloutFinishResult
	summary, err := json.Marshal(req.Summary)
	if err != nil {
		return res, fmt.Errorf("encode the summary of %s: %w", req.RolloutID, err)
	}
	if err := a.Configure.FinishRollout(ctx, req.RolloutID, req.State, summary); err != nil {
		return res, err
	}
	counts, err := a.Configure.RolloutCounts(ctx, req.RolloutID)
	if err != nil {
		return res, err
	}
	for _, pc := range counts {
		res.Counts.Add(rollout.Phase(pc.Phase), pc.N)
	}
	devs, err := a.Configure.RolloutDevices(ctx, req.RolloutID, []string{string(rollout.Failed), string(rollout.RollbackFailed),
		string(rollout.RolledBack), string(rollout.RollingBack)}, failureSample*4)
	if err != nil {
		return res, err
	}
	for _, d := range devs {
		if d.Reason == "" || len(res.Failures) >= failureSample {
			continue
		}
		res.Failures = append(res.Failures, workflows.DeviceIssue{DeviceID: d.DeviceID, Wave: d.Wave + 1, Phase: d.Phase, Reason: d.Reason})
	}
	return res, nil
}

// repush sends devices their whole desired document again under its current version. It is best effort: a
// failure only leaves the device to its next reconnect or the device timeout.
func (a *Activities) repush(ctx context.Context, rolloutID string, ids []string) {
	docs, err := a.Configure.DesiredDocs(ctx, ids)
	if err == nil {
		_, err = a.push(ctx, desiredMessages(docs))
	}
	if err != nil && activity.IsActivity(ctx) {
		activity.GetLogger(ctx).Warn("re-sending desired state failed", "rollout", rolloutID, "devices", len(ids), "err", err)
	}
}
