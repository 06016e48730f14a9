package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/workflows"
)

// WipeMethod is the direct method a decommission with --wipe calls before it revokes the device.
const WipeMethod = "factoryReset"

// retireBatch is JobBatch for a decommission: an optional best-effort factory reset of the batch's devices
// (sent while their sessions still exist, recorded as dispatched before it is sent so that no retry sends it
// twice), then one registry transaction that retires them all and records their outcomes.
func (a *Activities) retireBatch(ctx context.Context, req workflows.JobBatchInput, targets []fleet.JobTarget) error {
	if a.Retire == nil {
		return errNoStore("retire")
	}
	wiped := map[string]string{}
	if req.Wipe {
		for _, t := range targets {
			if t.State == fleet.JobDispatched {
				wiped[t.DeviceID] = "unknown: an earlier attempt may have sent it and stopped before the answer; not sent again"
			}
		}
		if a.Channel == nil {
			activity.GetLogger(ctx).Warn("no MQTT channel: retiring without the factory reset", "job", req.JobID)
		} else {
			claimed, err := a.claim(ctx, req.JobID, targets)
			if err != nil {
				return err
			}
			calls := make([]fleet.MethodCall, len(claimed))
			for i, t := range claimed {
				calls[i] = fleet.MethodCall{DeviceID: t.DeviceID, Method: WipeMethod, Payload: []byte(`{"reason":"decommissioned"}`)}
			}
			if len(calls) > 0 {
				for _, r := range a.Channel.InvokeMany(ctx, calls, req.Timeout, 0) {
					wiped[r.DeviceID] = string(r.Outcome)
				}
				if err := a.fault(FaultInvoked); err != nil {
					return err
				}
			}
		}
	}
	err := a.Retire.RetireJobTargets(ctx, req.JobID, targets, req.Reason, func(ts []fleet.JobTarget, results []fleet.RetireResult) ([]fleet.JobOutcome, error) {
		outs := make([]fleet.JobOutcome, len(results))
		for i, r := range results {
			o := fleet.JobOutcome{Seq: ts[i].Seq, State: fleet.JobSucceeded}
			detail := map[string]string{"result": string(r.Outcome)}
			if w, ok := wiped[r.DeviceID]; ok {
				detail["wipe"] = w
			}
			switch r.Outcome {
			case fleet.RetireUnknown:
				o.State, o.Error = fleet.JobFailed, "no such device"
			case fleet.RetireAlreadyRetired:
				o.Error = "already retired"
			}
			o.Payload, _ = json.Marshal(detail)
			outs[i] = o
		}
		return outs, a.fault(FaultInTransaction)
	})
	if err != nil {
		return err
	}
	return a.fault(FaultCommitted)
}

// ReplaceDeviceRecord copies the old device's tags and desired state to the new one, records the lineage, retires
// the old one, and pushes the desired state to the new device (if it is connected it gets it at once;
// otherwise it reads it on connect).
func (a *Activities) ReplaceDeviceRecord(ctx context.Context, req workflows.ReplaceDeviceRecordInput) (workflows.ReplaceResult, error) {
	out := workflows.ReplaceResult{Old: req.Old, New: req.New}
	if a.Retire == nil {
		return out, errNoStore("retire")
	}
	res, err := a.Retire.ReplaceDevice(ctx, req.Op, req.Old, req.New)
	if errors.Is(err, fleet.ErrNotFound) || errors.Is(err, fleet.ErrRetired) {
		return out, temporal.NewNonRetryableApplicationError(err.Error(), workflows.ErrTypeReplaceRefused, err)
	}
	if err != nil {
		return out, err
	}
	out.DesiredVersion = res.DesiredVersion
	if len(res.Desired) > 2 { // more than {}
		n, err := a.push(ctx, []fleet.DesiredPush{{DeviceID: req.New, Version: res.DesiredVersion, Patch: res.Desired}})
		if err != nil {
			activity.GetLogger(ctx).Warn("desired push to the replacement failed; it reads its desired state on connect",
				"device", req.New, "err", err)
		}
		out.Pushed = n > 0
	}
	return out, nil
}

// PurgeArchivedDevices deletes retired devices past retention.
func (a *Activities) PurgeArchivedDevices(ctx context.Context, in workflows.PurgeInput) (workflows.PurgeResult, error) {
	if a.Retire == nil {
		return workflows.PurgeResult{}, errNoStore("retire")
	}
	stop := keepHeartbeating(ctx)
	defer stop()
	n, err := a.Retire.PurgeArchive(ctx, in.OlderThan)
	if err != nil {
		return workflows.PurgeResult{}, fmt.Errorf("purge: %w", err)
	}
	return workflows.PurgeResult{Purged: n}, nil
}
