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
	"github.com/fleetflow/fleetflow/workflows"
)

// RetireStore is what the retire stage needs from the registry (implemented by *registry.Registry).
type RetireStore interface {
	RetireDevices(ctx context.Context, op string, ids []string, reason string) ([]registry.RetireResult, error)
	ReplaceDevice(ctx context.Context, op, old, nw string) (registry.ReplaceResult, error)
	PurgeArchive(ctx context.Context, olderThan time.Duration) (int64, error)
}

// WipeMethod is the direct method a decommission with --wipe calls before it revokes the device.
const WipeMethod = "factoryReset"

// retireBatch is JobBatch for a decommission: an optional best-effort factory reset of the batch's devices
// (sent while their sessions still exist), then one registry transaction that retires them all.
func (a *Activities) retireBatch(ctx context.Context, req workflows.JobBatchRequest, targets []registry.JobTarget) ([]registry.JobOutcome, error) {
	if a.Retire == nil {
		return nil, temporal.NewNonRetryableApplicationError("this worker has no retire store", "NoRetireStore", nil)
	}
	ids := make([]string, len(targets))
	for i, t := range targets {
		ids[i] = t.DeviceID
	}
	wiped := map[string]string{}
	if req.Wipe {
		if a.Channel == nil {
			activity.GetLogger(ctx).Warn("no MQTT channel: retiring without the factory reset", "job", req.JobID)
		} else {
			calls := make([]channel.MethodCall, len(ids))
			for i, id := range ids {
				calls[i] = channel.MethodCall{DeviceID: id, Method: WipeMethod, Payload: []byte(`{"reason":"decommissioned"}`)}
			}
			for _, r := range a.Channel.InvokeMany(ctx, calls, req.Timeout, 0) {
				wiped[r.DeviceID] = string(r.Outcome)
			}
		}
	}
	results, err := a.Retire.RetireDevices(ctx, req.JobID, ids, req.Reason)
	if err != nil {
		return nil, err
	}
	outs := make([]registry.JobOutcome, len(results))
	for i, r := range results {
		o := registry.JobOutcome{Seq: targets[i].Seq, State: registry.JobSucceeded}
		detail := map[string]string{"result": r.Outcome}
		if w, ok := wiped[r.DeviceID]; ok {
			detail["wipe"] = w
		}
		switch r.Outcome {
		case registry.RetireUnknown:
			o.State, o.Error = registry.JobFailed, "no such device"
		case registry.RetireAlreadyRetired:
			o.Error = "already retired"
		}
		o.Payload, _ = json.Marshal(detail)
		outs[i] = o
	}
	return outs, nil
}

// ReplaceDevice copies the old device's tags and desired state to the new one, records the lineage, retires
// the old one, and pushes the desired state to the new device (if it is connected it gets it at once;
// otherwise it reads it on connect).
func (a *Activities) ReplaceDevice(ctx context.Context, req workflows.ReplaceRequest) (workflows.ReplaceResult, error) {
	out := workflows.ReplaceResult{Old: req.Old, New: req.New}
	if a.Retire == nil {
		return out, temporal.NewNonRetryableApplicationError("this worker has no retire store", "NoRetireStore", nil)
	}
	res, err := a.Retire.ReplaceDevice(ctx, req.Op, req.Old, req.New)
	if errors.Is(err, registry.ErrNotFound) || errors.Is(err, registry.ErrRetired) {
		return out, temporal.NewNonRetryableApplicationError(err.Error(), workflows.ErrTypeReplaceRefused, err)
	}
	if err != nil {
		return out, err
	}
	out.DesiredVersion = res.DesiredVersion
	if len(res.Desired) > 2 { // more than {}
		n, err := a.push(ctx, []channel.DesiredMessage{{DeviceID: req.New, Version: res.DesiredVersion, Patch: res.Desired}})
		if err != nil {
			activity.GetLogger(ctx).Warn("desired push to the replacement failed; it reads its desired state on connect",
				"device", req.New, "err", err)
		}
		out.Pushed = n > 0
	}
	return out, nil
}

// PurgeArchive deletes retired devices past retention.
func (a *Activities) PurgeArchive(ctx context.Context, in workflows.PurgeInput) (workflows.PurgeResult, error) {
	if a.Retire == nil {
		return workflows.PurgeResult{}, temporal.NewNonRetryableApplicationError("this worker has no retire store", "NoRetireStore", nil)
	}
	stop := keepHeartbeating(ctx)
	defer stop()
	n, err := a.Retire.PurgeArchive(ctx, in.OlderThan)
	if err != nil {
		return workflows.PurgeResult{}, fmt.Errorf("purge: %w", err)
	}
	return workflows.PurgeResult{Purged: n}, nil
}
