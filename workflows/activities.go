package workflows

import (
	"time"

	"context"
	"reflect"
	"runtime"
	"strings"

	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// Activities declares every activity as the workflows call it. The activities package implements it
// (*activities.Activities, asserted there at compile time), and workflows call an activity through a method
// expression of this interface (executeActivity(ctx, Activities.JobBatch, in)): the compiler checks the
// input and result types on both sides, and the registered name is the method's name. This package does not
// import the activities package, which would link the database and MQTT adapters into workflow code.
type Activities interface {
	ProvisionBatch(ctx context.Context, in ProvisionBatchInput) (fleet.ProvisionCounts, error)
	AwaitStaged(ctx context.Context, in AwaitStagedInput) (fleet.Staged, error)
	WaitConnected(ctx context.Context, in WaitConnectedInput) (fleet.ConnectProgress, error)
	// FinishProvision takes the operation id.
	FinishProvision(ctx context.Context, op string) (FinishProvisionResult, error)

	JobCreate(ctx context.Context, in JobCreateInput) (JobCreateResult, error)
	JobBatch(ctx context.Context, in JobBatchInput) (fleet.JobCounts, error)
	JobWindowBatch(ctx context.Context, in JobWindowBatchInput) (JobWindowBatchResult, error)
	JobCollectAcks(ctx context.Context, in JobCollectAcksInput) (JobCollectAcksResult, error)
	JobClose(ctx context.Context, in JobCloseInput) (fleet.JobCounts, error)

	RolloutCreate(ctx context.Context, in RolloutCreateInput) (RolloutCreateResult, error)
	RolloutDispatch(ctx context.Context, in RolloutDispatchInput) (RolloutDispatchResult, error)
	RolloutObserve(ctx context.Context, in RolloutObserveInput) (RolloutObserveResult, error)
	// RolloutRollback returns how many devices were sent back.
	RolloutRollback(ctx context.Context, in RolloutRollbackInput) (int64, error)
	RolloutFinish(ctx context.Context, in RolloutFinishInput) (RolloutFinishResult, error)

	ReplaceDeviceRecord(ctx context.Context, in ReplaceDeviceRecordInput) (ReplaceResult, error)
	PurgeArchivedDevices(ctx context.Context, in PurgeInput) (PurgeResult, error)

	RunHealthCheck(ctx context.Context, in RunHealthCheckInput) (HealthCheckResult, error)
	// SaveHealthRule and DeleteHealthRule write a health rule's definition (docs/architecture.md, "Health rules").
	SaveHealthRule(ctx context.Context, in HealthRuleSaveInput) (fleet.HealthRule, error)
	DeleteHealthRule(ctx context.Context, in HealthRuleDeleteInput) (HealthRuleDeleteResult, error)

	// ConfigSave returns the version saved.
	ConfigSave(ctx context.Context, in ConfigSaveInput) (int64, error)
	ConfigReconcile(ctx context.Context, in ConfigReconcileInput) (ConfigReconcileResult, error)
	// ConfigDelete takes the configuration's name and returns it.
	ConfigDelete(ctx context.Context, name string) (string, error)
	// SchemeStage records a `scheme set`'s version (or, without documents, finds the version in force)
	// and starts the check; it returns the version checked.
	SchemeStage(ctx context.Context, in SchemeStageInput) (int64, error)
	SchemeCheckBatch(ctx context.Context, in SchemeBatchInput) (fleet.SchemeCheckProgress, error)
	SchemeFinish(ctx context.Context, in SchemeFinishInput) (fleet.SchemeCheckEnd, error)

	RegisterEnrolledDevices(ctx context.Context, in RegisterDeviceInput) (RegisterDeviceResult, error)
}

// Activity names that recorded histories hold but that now name workflows only: the activities were renamed
// so that a name means one thing. Workflows started before the rename schedule the old name on replay (see
// activityNamesVersion), so workers register the renamed activities under these names too.
const (
	// LegacyActReplaceDevice is ReplaceDeviceRecord's former name.
	LegacyActReplaceDevice = "ReplaceDevice"
	// LegacyActPurgeArchive is PurgeArchivedDevices's former name.
	LegacyActPurgeArchive = "PurgeArchive"
)

// boundedWaitsVersion is the workflow.GetVersion change id of the bounded waits (docs/architecture.md,
// "Temporal rules"): from version 1 on, the acknowledgement and connect waits poll less often once they have
// lasted waitPollSlowAfter and continue as new every maxWaitPolls polls, so that no wait, however long,
// outgrows a run's history. Histories recorded before it replay the old unbounded loop.
const boundedWaitsVersion = "bounded-waits"

// Bounds of a long wait (from boundedWaitsVersion 1 on).
const (
	// waitPollSlowAfter: a wait that has lasted this long polls every waitPollSlow instead of every 10 s.
	waitPollSlowAfter = 10 * time.Minute
	waitPollSlow      = time.Minute
	// maxWaitPolls polling activities per run (about six history events each) before continue-as-new:
	// about 600 events, far below the 51,200-event limit even after a run's full share of batches.
	maxWaitPolls = 100
)

// waitPoll is how long the next polling activity of a wait that has lasted elapsed may wait: fast at first,
// when a fleet usually answers, then slower.
func waitPoll(fast, elapsed time.Duration) time.Duration {
	if elapsed < waitPollSlowAfter {
		return fast
	}
	return waitPollSlow
}

// activityNamesVersion is the workflow.GetVersion change id of the activity renames.
const activityNamesVersion = "distinct-activity-names"

// activityFunc is a method expression of Activities: one activity with its input and result types.
type activityFunc[I, O any] func(Activities, context.Context, I) (O, error)

// activityFuture is a pending activity whose result decodes into O. Selectors take the SDK's own future:
// pass f.Future to AddFuture.
type activityFuture[O any] struct{ workflow.Future }

// Result waits for the activity and returns its result.
func (f activityFuture[O]) Result(ctx workflow.Context) (O, error) {
	var out O
	err := f.Get(ctx, &out)
	return out, err
}

// executeActivity schedules the activity fn names with input in.
func executeActivity[I, O any](ctx workflow.Context, fn activityFunc[I, O], in I) activityFuture[O] {
	return executeActivityAs(ctx, ActivityName(fn), fn, in)
}

// executeActivityAs schedules fn's activity under name, for the names histories recorded before a rename.
func executeActivityAs[I, O any](ctx workflow.Context, name string, _ activityFunc[I, O], in I) activityFuture[O] {
	return activityFuture[O]{workflow.ExecuteActivity(ctx, name, in)}
}

// ActivityName is the name an activity is registered under: the name of the Activities method that fn
// (a method expression such as Activities.JobBatch) refers to.
func ActivityName[I, O any](fn activityFunc[I, O]) string {
	name := runtime.FuncForPC(reflect.ValueOf(fn).Pointer()).Name()
	name = strings.TrimSuffix(name, "-fm")
	return name[strings.LastIndexByte(name, '.')+1:]
}
