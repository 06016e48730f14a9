// Package activities holds the I/O of fleetflow's workflows: thin, batched and idempotent methods on a struct
// that carries its dependencies as interfaces, built once per worker process (worker/).
package activities

import (
	"context"
	"log/slog"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/workflows"
)

// Activities are registered with the worker as one struct; each exported method is an activity whose name
// is the method name (workflows.Activities declares them all). Each stage reaches the registry through its
// own small store interface, so a worker or a test provides only what it runs; a stage whose store is nil
// fails its activities without retrying.
type Activities struct {
	Provision fleet.ProvisionStore
	Jobs      fleet.JobStore
	Rollouts  fleet.RolloutStore
	Retire    fleet.RetireStore
	Monitor   fleet.MonitorStore
	// HealthRules keeps the health rules' definitions and runs their checks (docs/architecture.md, "Health
	// rules").
	HealthRules fleet.HealthRuleStore
	Configs     fleet.ConfigStore
	// Changes wakes configuration reconcilers early (nil: they only poll).
	Changes fleet.DeviceChanges
	// Scheme checks the fleet against the metadata scheme (docs/architecture.md, "Metadata scheme").
	Scheme fleet.SchemeStore
	Enroll fleet.EnrollStore
	Rotate fleet.RotateStore
	// CA signs certificate renewals with the fleet CA (docs/architecture.md, "Certificate renewal"); nil:
	// certificate devices in a rotation are reported as not renewed.
	CA fleet.CertificateSigner
	// Channel reaches devices; nil when the worker has no broker configured, in which case desired changes
	// still land in the registry (devices read them on reconnect) and method jobs fail.
	Channel fleet.Channel
	// PollInterval is how often WaitConnected re-counts; zero means one second.
	PollInterval time.Duration
	// Fault, when set, is called at every step boundary of the batch activities (the Fault… points) and an
	// error it returns ends the attempt there, as a worker crash or a lost connection would. Tests set it to
	// show that a retry from any point does nothing twice; production leaves it nil.
	Fault func(point string) error
}

// Fault points: the step boundaries of the batch activities, in the order a batch passes them.
const (
	FaultTargetsLoaded = "targets-loaded" // the batch's unfinished targets are read
	FaultLostClosed    = "lost-closed"    // targets an earlier attempt dispatched are closed
	FaultRequested     = "requested"      // certificate requests answered and signed, nothing staged yet
	FaultClaimed       = "claimed"        // targets are recorded as dispatched, nothing sent yet
	FaultInvoked       = "invoked"        // the method or factory reset was sent, its outcomes not recorded
	FaultInTransaction = "in-transaction" // inside the batch transaction, after its writes (rolls them back)
	FaultCommitted     = "committed"      // the batch transaction committed, desired patches not pushed yet
	FaultPushed        = "pushed"         // desired patches pushed
	FaultRecorded      = "recorded"       // method outcomes recorded
	FaultCounted       = "counted"        // the range's counts read, the activity about to return
)

// fault is the fault point named point: nil unless a test set Fault.
func (a *Activities) fault(point string) error {
	if a.Fault == nil {
		return nil
	}
	return a.Fault(point)
}

// The compiler checks that the activities are what workflows call.
var _ workflows.Activities = (*Activities)(nil)

// New returns activities over a store that plays every role (the registry) and a channel (nil: none).
func New(store interface {
	fleet.ProvisionStore
	fleet.JobStore
	fleet.RolloutStore
	fleet.RetireStore
	fleet.MonitorStore
	fleet.HealthRuleStore
	fleet.ConfigStore
	fleet.SchemeStore
	fleet.EnrollStore
	fleet.RotateStore
}, ch fleet.Channel) *Activities {
	return &Activities{Provision: store, Jobs: store, Rollouts: store, Retire: store, Monitor: store, HealthRules: store, Configs: store, Scheme: store,
		Enroll: store, Rotate: store, Channel: ch}
}

// errNoStore is the permanent failure of an activity whose stage this worker was not given a store for.
func errNoStore(stage string) error {
	return temporal.NewNonRetryableApplicationError("this worker has no "+stage+" store", "NoStore", nil)
}

// heartbeatEvery keeps a long batch transaction visibly alive, so a crashed worker's batch is retried after
// the heartbeat timeout instead of the much longer start-to-close timeout.
const heartbeatEvery = 2 * time.Second

// keepHeartbeating heartbeats in the background until stop is called. Activities that run one long
// transaction cannot heartbeat from their own goroutine.
func keepHeartbeating(ctx context.Context) (stop func()) {
	if !activity.IsActivity(ctx) {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(heartbeatEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				activity.RecordHeartbeat(ctx)
			}
		}
	}()
	return func() { close(done) }
}

// workerStopping is closed when the activity's worker begins to stop (never outside an activity). The
// polling waits return their latest observation then, as if their poll period had ended: the workflow
// schedules the next poll at once, on another worker, instead of after a heartbeat timeout
// (docs/architecture.md, "Workers").
func workerStopping(ctx context.Context) <-chan struct{} {
	if !activity.IsActivity(ctx) {
		return nil
	}
	return activity.GetWorkerStopChannel(ctx)
}

// activityLogger is the activity's logger, or slog's default outside an activity (tests call activities
// directly).
func activityLogger(ctx context.Context) interface {
	Warn(string, ...any)
	Info(string, ...any)
} {
	if activity.IsActivity(ctx) {
		return activity.GetLogger(ctx)
	}
	return slog.Default()
}
