package activities

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.temporal.io/sdk/activity"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/rollout"
	"github.com/fleetflow/fleetflow/internal/window"
	"github.com/fleetflow/fleetflow/workflows"
)

// dispatchChunk is how many devices one registry transaction of a wave or rollback covers.
const dispatchChunk = 2000

// failureSample is how many failing devices a rollout's result lists; the CLI reads the rest from Postgres.
const failureSample = 20

// RolloutDispatch starts a wave: it moves the wave's devices into dispatch in chunks (each one registry
// transaction that writes desired.firmware and the devices' phases) and pushes the patch to those online.
// A retry continues with the devices still queued.
func (a *Activities) RolloutDispatch(ctx context.Context, req workflows.RolloutDispatchInput) (workflows.RolloutDispatchResult, error) {
	if a.Rollouts == nil {
		return workflows.RolloutDispatchResult{}, errNoStore("rollout")
	}
	stop := keepHeartbeating(ctx)
	defer stop()
	if req.Policy != nil && req.Policy.WindowTag != "" {
		return a.dispatchWindowed(ctx, req)
	}
	var res workflows.RolloutDispatchResult
	fw := fleet.Firmware{Version: req.Firmware.Version, URL: req.Firmware.URL, SHA256: req.Firmware.SHA256}
	for {
		pushes, skipped, more, err := a.Rollouts.DispatchWave(ctx, req.RolloutID, req.Wave, req.Cutoff, fw, dispatchChunk)
		if err != nil {
			return res, err
		}
		res.Skipped += skipped
		res.Dispatched += int64(len(pushes))
		// The chunk's desired firmware and phases are committed: a retry continues with the devices still
		// queued, so a device is never written twice; one whose push is lost here is re-sent by the
		// observation (RepushAfter) or reads its desired state on reconnect.
		if err := a.fault(FaultCommitted); err != nil {
			return res, err
		}
		n, err := a.push(ctx, pushes)
		res.Pushed += int64(n)
		if err != nil {
			activity.GetLogger(ctx).Warn("firmware push incomplete; devices catch up on reconnect", "rollout", req.RolloutID, "err", err)
		}
		if err := a.fault(FaultPushed); err != nil {
			return res, err
		}
		if !more {
			return res, nil
		}
	}
}

// dispatchWindowed is one pass of RolloutDispatch over a wave whose devices have their own maintenance
// windows (docs/architecture.md, "Maintenance windows"): chunk by chunk, each queued device of the wave is
// judged by its window (its own from its tags, else the operation's) at req.At, the workflow's clock, so
// that a retry of the pass decides as the first attempt did. Open: dispatched as in a wave without windows.
// Not opening before the deadline: recorded as outside_window with the window, the deadline and the next
// opening. Window tags that do not parse: failed, naming the tags. Otherwise the device stays queued and is
// counted as waiting, with the earliest opening returned for the workflow's timer.
func (a *Activities) dispatchWindowed(ctx context.Context, req workflows.RolloutDispatchInput) (workflows.RolloutDispatchResult, error) {
	var res workflows.RolloutDispatchResult
	fw := fleet.Firmware{Version: req.Firmware.Version, URL: req.Firmware.URL, SHA256: req.Firmware.SHA256}
	pol := *req.Policy
	var waiting, outside, failed int64
	var nextOpen time.Time
	// Devices share a handful of windows: each distinct pair of tag values is parsed once per pass (a parse
	// loads its time zone from the zone database).
	type parsed struct {
		w   window.Window
		ok  bool
		err error
	}
	names := pol.TagNames()
	cache := map[[2]string]parsed{}
	decide := func(_ string, tags map[string]string) (bool, rollout.Phase, string) {
		key := [2]string{tags[names[0]], tags[names[1]]}
		p, seen := cache[key]
		if !seen {
			p.w, p.ok, p.err = pol.DeviceWindow(tags)
			cache[key] = p
		}
		w, ok, err := p.w, p.ok, p.err
		if err != nil {
			failed++
			return false, rollout.Failed, "maintenance window: " + err.Error()
		}
		switch verdict, next := pol.Decide(w, ok, req.At); verdict {
		case fleet.WindowOpen:
			return true, "", ""
		case fleet.WindowWait:
			waiting++
			if nextOpen.IsZero() || next.Before(nextOpen) {
				nextOpen = next
			}
			return false, "", ""
		default:
			outside++
			return false, rollout.OutsideWindow, pol.MissedReason(w, next)
		}
	}
	after := int64(-1)
	for {
		chunk, err := a.Rollouts.DispatchWaveWindowed(ctx, req.RolloutID, req.Wave, after, req.Cutoff, fw, dispatchChunk, names, decide)
		if err != nil {
			return res, err
		}
		after = chunk.Last
		res.Skipped += chunk.Skipped
		res.Dispatched += int64(len(chunk.Pushes))
		// As in RolloutDispatch: the chunk is committed, so a retry of the pass finds these devices dispatched
		// or recorded, and judges only those still queued.
		if err := a.fault(FaultCommitted); err != nil {
			return res, err
		}
		n, err := a.push(ctx, chunk.Pushes)
		res.Pushed += int64(n)
		if err != nil {
			activity.GetLogger(ctx).Warn("firmware push incomplete; devices catch up on reconnect", "rollout", req.RolloutID, "err", err)
		}
		if err := a.fault(FaultPushed); err != nil {
			return res, err
		}
		if !chunk.More {
			break
		}
	}
	res.Waiting, res.NextOpen, res.OutsideWindow, res.Failed = waiting, nextOpen, outside, failed
	return res, nil
}

// forwardPhases are the phases the forward observation evaluates.
var forwardPhases = []rollout.Phase{rollout.Dispatched, rollout.Downloading, rollout.Installing, rollout.Rebooting, rollout.Baking}

// RolloutObserve applies the rules of internal/rollout to what the rollout's undecided devices report,
// records the phases that changed, and returns the counts. It polls every PollInterval until the current
// wave is decided, the failure threshold is exceeded, or MaxWait passes, so that one activity covers many
// polls and the workflow's history stays small.
func (a *Activities) RolloutObserve(ctx context.Context, req workflows.RolloutObserveInput) (workflows.RolloutObserveResult, error) {
	if a.Rollouts == nil {
		return workflows.RolloutObserveResult{}, errNoStore("rollout")
	}
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
		case <-workerStopping(ctx):
			return obs, nil
		case <-time.After(min(poll, time.Until(deadline))):
		}
	}
}

func (a *Activities) observeOnce(ctx context.Context, req workflows.RolloutObserveInput, repushed map[string]bool) (workflows.RolloutObserveResult, error) {
	var obs workflows.RolloutObserveResult
	phases := forwardPhases
	if req.Rollback {
		phases = []rollout.Phase{rollout.RollingBack}
	}
	devs, err := a.Rollouts.ObserveRollout(ctx, req.RolloutID, req.JobID, phases)
	if err != nil {
		return obs, err
	}
	now := time.Now()
	var ups []fleet.PhaseUpdate
	var stuck []string
	for _, d := range devs {
		// An online device that has shown no progress long after its dispatch may have missed the push
		// (e.g. it reconnected between its twin/get and the write): send its desired state again, once per
		// observation activity. A device that did get it ignores a version it already has.
		if !req.Rollback && req.RepushAfter > 0 && d.Phase == rollout.Dispatched && d.JobStatus == "" && d.Online &&
			now.Sub(d.DispatchedAt) >= req.RepushAfter && !repushed[d.DeviceID] {
			repushed[d.DeviceID] = true
			stuck = append(stuck, d.DeviceID)
		}
		var dec rollout.Decision
		if req.Rollback {
			dec = rollout.EvaluateRollback(rollout.RollbackObservation{PrevVersion: d.PrevVersion, ReportedVersion: d.ReportedVersion,
				JobStatus: d.JobStatus, JobReason: d.JobReason, StartedAt: d.RollbackAt}, req.Policy.DeviceTimeout, now)
		} else {
			dec = rollout.Evaluate(rollout.Observation{Phase: d.Phase, DispatchedAt: d.DispatchedAt, BakeSince: d.BakeSince,
				JobStatus: d.JobStatus, JobReason: d.JobReason, ReportedVersion: d.ReportedVersion, Health: d.Health,
				HealthReason: d.HealthReason, Online: d.Online, LastSeen: d.LastSeen}, req.Policy, now)
		}
		bakeChanged := !dec.BakeSince.IsZero() && !dec.BakeSince.Equal(d.BakeSince)
		if dec.Phase != d.Phase || bakeChanged {
			u := fleet.PhaseUpdate{Rank: d.Rank, Phase: dec.Phase, Reason: dec.Reason}
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
	if err := a.Rollouts.UpdateRolloutPhases(ctx, req.RolloutID, ups); err != nil {
		return obs, err
	}
	if len(stuck) > 0 {
		a.repush(ctx, req.RolloutID, stuck)
	}
	counts, err := a.Rollouts.RolloutCounts(ctx, req.RolloutID)
	if err != nil {
		return obs, err
	}
	for _, pc := range counts {
		obs.Counts.Add(pc.Phase, pc.N)
		if pc.Wave == req.Wave {
			obs.Wave.Add(pc.Phase, pc.N)
		}
	}
	return obs, nil
}

// RolloutRollback sends every touched device of the rollout back to its previous firmware, in chunks.
func (a *Activities) RolloutRollback(ctx context.Context, req workflows.RolloutRollbackInput) (int64, error) {
	if a.Rollouts == nil {
		return 0, errNoStore("rollout")
	}
	stop := keepHeartbeating(ctx)
	defer stop()
	var n int64
	for {
		pushes, more, err := a.Rollouts.StartRollback(ctx, req.RolloutID, req.JobID, dispatchChunk)
		if err != nil {
			return n, err
		}
		n += int64(len(pushes))
		if err := a.fault(FaultCommitted); err != nil {
			return n, err
		}
		if _, err := a.push(ctx, pushes); err != nil {
			activity.GetLogger(ctx).Warn("rollback push incomplete; devices catch up on reconnect", "rollout", req.RolloutID, "err", err)
		}
		if err := a.fault(FaultPushed); err != nil {
			return n, err
		}
		if !more {
			return n, nil
		}
	}
}

// RolloutFinish records the rollout's end and returns its final counts and a sample of failing devices.
func (a *Activities) RolloutFinish(ctx context.Context, req workflows.RolloutFinishInput) (workflows.RolloutFinishResult, error) {
	if a.Rollouts == nil {
		return workflows.RolloutFinishResult{}, errNoStore("rollout")
	}
	var res workflows.RolloutFinishResult
	summary, err := json.Marshal(req.Summary)
	if err != nil {
		return res, fmt.Errorf("encode the summary of %s: %w", req.RolloutID, err)
	}
	if err := a.Rollouts.FinishRollout(ctx, req.RolloutID, req.State, summary); err != nil {
		return res, err
	}
	counts, err := a.Rollouts.RolloutCounts(ctx, req.RolloutID)
	if err != nil {
		return res, err
	}
	for _, pc := range counts {
		res.Counts.Add(pc.Phase, pc.N)
	}
	devs, err := a.Rollouts.RolloutDevices(ctx, req.RolloutID, []rollout.Phase{rollout.Failed, rollout.RollbackFailed,
		rollout.RolledBack, rollout.RollingBack}, failureSample*4)
	if err != nil {
		return res, err
	}
	for _, d := range devs {
		if d.Reason == "" || len(res.Failures) >= failureSample {
			continue
		}
		res.Failures = append(res.Failures, workflows.DeviceIssue{DeviceID: d.DeviceID, Wave: d.Wave + 1, Phase: string(d.Phase), Reason: d.Reason})
	}
	return res, nil
}

// repush sends devices their whole desired document again under its current version. It is best effort: a
// failure only leaves the device to its next reconnect or the device timeout.
func (a *Activities) repush(ctx context.Context, rolloutID string, ids []string) {
	docs, err := a.Rollouts.DesiredDocs(ctx, ids)
	if err == nil {
		_, err = a.push(ctx, docs)
	}
	if err != nil && activity.IsActivity(ctx) {
		activity.GetLogger(ctx).Warn("re-sending desired state failed", "rollout", rolloutID, "devices", len(ids), "err", err)
	}
}
