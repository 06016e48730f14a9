// Package fleetworker builds a Temporal worker with every fleetflow workflow and activity registered. The
// worker binary and the integration tests share it so that tests run exactly what production runs.
package fleetworker

import (
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/workflows"
)

// DefaultStopTimeout is how long a stopping worker lets its running activities finish before it cancels
// them. Long activities heartbeat, so one cancelled at the deadline is retried by another worker.
const DefaultStopTimeout = 30 * time.Second

// HeartbeatThrottle is the longest the SDK holds an activity's heartbeat before sending it to the server. Its
// own default is 80 % of the activity's heartbeat timeout: with the 20 s of a job's batches a heartbeat left
// every 16 s, so a send delayed 4 s on a saturated machine (a starved worker or server) would time a live
// batch out and restart it, holding back its devices. Every 5 s leaves three quarters of the timeout as
// margin, for one small request per running activity every 5 s. (It did not remove the heartbeat timeouts
// of the 100,000-device job over TLS, whose first attempts never heartbeated at all: docs/benchmarks.md.)
const HeartbeatThrottle = 5 * time.Second

// Options size a worker and bound its shutdown (docs/architecture.md, "Workers").
type Options struct {
	// PoolSize is the registry pool's maximum number of connections; it bounds the activity slots.
	PoolSize int
	// MaxActivities is the number of activities the worker runs at once; 0 derives it from PoolSize
	// (see Slots). It may not exceed PoolSize.
	MaxActivities int
	// MaxWorkflowTasks is the number of workflow tasks the worker runs at once; 0 means PoolSize.
	MaxWorkflowTasks int
	// StopTimeout is how long Stop waits for running activities; 0 means DefaultStopTimeout.
	StopTimeout time.Duration
	// Running, when set, counts the running activities (what a stopping worker waits for).
	Running *Running
	// Deployment and BuildID, when set, make the worker a version of a Temporal Worker Deployment
	// (docs/architecture.md, "Worker versioning"): it then takes only the tasks the server routes to that
	// version, and its workflows move to a newer version once that is made current (auto-upgrade). Both or
	// neither.
	Deployment, BuildID string
	// OnFatalError, when set, is told why the worker stopped on its own (the namespace is gone, say), so that
	// a process that started it with Start rather than Run can exit.
	OnFatalError func(error)
}

// ErrSlots reports slot settings that do not fit the registry pool.
var ErrSlots = errors.New("worker slots")

// Slots derives the worker's activity and workflow task slots from the registry pool. An activity holds a
// registry connection while it runs, and a few hold two (a transaction plus a read beside it), so by default a
// quarter of the pool (at least one connection) is left as headroom: a worker never queues its own activities on the pool. An explicit
// activity count up to the pool size is accepted (the operator knows the mix); above it is an error, since
// the extra activities could only wait for connections while their timeouts run. Workflow tasks hold no
// connection; they default to the pool size so that a worker's share of workflows grows with its share of
// the database.
func Slots(pool, maxActivities, maxWorkflowTasks int) (acts, wfTasks int, err error) {
	if pool < 1 {
		return 0, 0, fmt.Errorf("%w: registry pool size %d: want at least 1", ErrSlots, pool)
	}
	switch {
	case maxActivities < 0:
		return 0, 0, fmt.Errorf("%w: max activities %d: want 0 (derived from the pool) or more", ErrSlots, maxActivities)
	case maxActivities > pool:
		return 0, 0, fmt.Errorf("%w: max activities %d exceeds the registry pool of %d connections: raise the pool (--db-pool, FLEETFLOW_DATABASE_POOL or pool_max_conns in the database URL) or lower the activities", ErrSlots, maxActivities, pool)
	case maxActivities == 0:
		acts = max(1, pool-max(1, pool/4))
	default:
		acts = maxActivities
	}
	switch {
	case maxWorkflowTasks < 0:
		return 0, 0, fmt.Errorf("%w: max workflow tasks %d: want 0 (the pool size) or more", ErrSlots, maxWorkflowTasks)
	case maxWorkflowTasks == 0:
		// The SDK needs at least two: one for sticky and one for normal workflow task polls.
		wfTasks = max(2, pool)
	default:
		wfTasks = max(2, maxWorkflowTasks)
	}
	return acts, wfTasks, nil
}

// WorkerOptions turns o into the SDK's worker options, or explains why the slots do not fit the pool.
func (o Options) WorkerOptions() (worker.Options, error) {
	acts, wf, err := Slots(o.PoolSize, o.MaxActivities, o.MaxWorkflowTasks)
	if err != nil {
		return worker.Options{}, err
	}
	stop := o.StopTimeout
	if stop == 0 {
		stop = DefaultStopTimeout
	}
	if stop < 0 {
		return worker.Options{}, fmt.Errorf("worker stop timeout %s: want 0 or more", stop)
	}
	wo := worker.Options{
		MaxConcurrentActivityExecutionSize:     acts,
		MaxConcurrentWorkflowTaskExecutionSize: wf,
		WorkerStopTimeout:                      stop,
		OnFatalError:                           o.OnFatalError,
		MaxHeartbeatThrottleInterval:           HeartbeatThrottle,
	}
	if o.Deployment != "" || o.BuildID != "" {
		if o.Deployment == "" || o.BuildID == "" {
			return worker.Options{}, fmt.Errorf("worker versioning needs both a deployment name and a build id (got %q and %q)", o.Deployment, o.BuildID)
		}
		wo.DeploymentOptions = worker.DeploymentOptions{
			UseVersioning: true,
			Version:       worker.WorkerDeploymentVersion{DeploymentName: o.Deployment, BuildID: o.BuildID},
			// Auto-upgrade, not pinned: a rollout may run for weeks, and pinning would keep its old worker
			// version alive as long. The workflows stay replay-compatible instead (GetVersion markers, the
			// recorded-history tests), and the replay check verifies that before a version is made current.
			DefaultVersioningBehavior: workflow.VersioningBehaviorAutoUpgrade,
		}
	}
	if o.Running != nil {
		wo.Interceptors = []interceptor.WorkerInterceptor{o.Running}
	}
	return wo, nil
}

// New builds a worker on taskQueue with fleetflow's workflows and acts registered, with the SDK's default
// slots; production workers use NewWithOptions.
func New(c client.Client, taskQueue string, acts *activities.Activities) worker.Worker {
	w := worker.New(c, taskQueue, worker.Options{})
	Register(w, acts)
	return w
}

// NewWithOptions builds a worker like New, with its slots sized from the registry pool and its stop timeout
// set by o.
func NewWithOptions(c client.Client, taskQueue string, acts *activities.Activities, o Options) (worker.Worker, error) {
	wo, err := o.WorkerOptions()
	if err != nil {
		return nil, err
	}
	w := worker.New(c, taskQueue, wo)
	Register(w, acts)
	return w, nil
}

// Register adds fleetflow's workflows, and the activities when acts is not nil, to a worker or replayer.
// Renamed activities stay registered under their former names too, for workflows started before the rename
// (see workflows.LegacyActReplaceDevice).
func Register(w worker.Registry, acts *activities.Activities) {
	for _, wf := range workflows.All() {
		w.RegisterWorkflow(wf)
	}
	if acts != nil {
		w.RegisterActivity(acts)
		w.RegisterActivityWithOptions(acts.ReplaceDeviceRecord, activity.RegisterOptions{Name: workflows.LegacyActReplaceDevice})
		w.RegisterActivityWithOptions(acts.PurgeArchivedDevices, activity.RegisterOptions{Name: workflows.LegacyActPurgeArchive})
	}
}
