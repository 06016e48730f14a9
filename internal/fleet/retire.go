package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// RetireOutcome is what retiring one device did.
type RetireOutcome string

// Retire outcomes. Retiring twice is harmless and an unknown id is reported, not an error.
const (
	RetireDone           RetireOutcome = "retired"
	RetireAlreadyRetired RetireOutcome = "already_retired"
	RetireUnknown        RetireOutcome = "unknown"
)

// RetireResult is what happened to one device of a RetireDevices call.
type RetireResult struct {
	DeviceID string
	Outcome  RetireOutcome
}

// ReplaceResult is what a replacement did in the registry.
type ReplaceResult struct {
	Old, New       string
	DesiredVersion int64
	Online         bool
	// Desired is the new device's desired document after the copy.
	Desired json.RawMessage
}

// ErrRetired is returned (wrapped) for a write on, or a replacement by, a retired device.
var ErrRetired = errors.New("device is retired")

// RetireStore is what the retire stage's activities need from the registry.
type RetireStore interface {
	// RetireDevices retires devices in one transaction, one result per id, in order.
	RetireDevices(ctx context.Context, op string, ids []string, reason string) ([]RetireResult, error)
	// RetireJobTargets retires the devices of a decommission's targets and records each target's outcome in
	// the same transaction, so that a retried batch never retires (nor records an event) twice. Only targets
	// still pending or dispatched are retired; outcomes (called inside the transaction, targets[i] with
	// results[i]) says what to record, and an error it returns rolls everything back. Retiring a device
	// cancels its rows in other jobs, never in job.
	RetireJobTargets(ctx context.Context, job string, targets []JobTarget, reason string, outcomes JobOutcomesFunc[RetireResult]) error
	// ReplaceDevice makes nw take over old's tags, desired state and role, and retires old; repeating it is
	// harmless. An unknown device is ErrNotFound, a retired replacement ErrRetired.
	ReplaceDevice(ctx context.Context, op, old, nw string) (ReplaceResult, error)
	// PurgeArchive deletes devices retired longer than olderThan ago and returns how many.
	PurgeArchive(ctx context.Context, olderThan time.Duration) (int64, error)
}
