package fleet

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/fleetflow/fleetflow/internal/twin"
)

// JobKind is what a job does to each of its devices.
type JobKind string

// Job kinds, as stored in jobs.kind.
const (
	// JobSetDesired merges a patch into each device's desired properties and waits for the acknowledgement.
	JobSetDesired JobKind = "set_desired"
	// JobSetTags merges a patch into each device's tags (registry only; devices never see tags).
	JobSetTags JobKind = "set_tags"
	// JobMethod calls a direct method on each device.
	JobMethod JobKind = "method"
	// JobRetire decommissions each device (workflow Decommission).
	JobRetire JobKind = "retire"
)

// JobState is where a job stands on one of its devices (job_devices.state).
type JobState string

// Per-device job states. Pending and running are in progress; the others are final.
const (
	JobPending   JobState = "pending"   // not reached yet
	JobRunning   JobState = "running"   // desired written, waiting for the device to acknowledge it in reported
	JobSucceeded JobState = "succeeded" // written (tags), acknowledged (desired), answered 2xx (method), retired
	JobFailed    JobState = "failed"    // refused by the registry or answered with an error status by the device
	JobTimedOut  JobState = "timed_out" // online but silent until the timeout
	JobOffline   JobState = "offline"   // not connected (desired is stored and reaches it on reconnect)
	JobCancelled JobState = "cancelled" // the job was cancelled before it reached the device
	// JobDispatched: a direct method (or a decommission's factory reset) is being sent or was sent, and its
	// outcome is not recorded yet. It is recorded before the send, so that no retry sends it again: direct
	// methods run at most once (docs/architecture.md, "The life of an operation").
	JobDispatched JobState = "dispatched"
	// JobOutsideWindow: the device's maintenance window did not open before the job's deadline, so the job
	// never reached it (docs/architecture.md, "Maintenance windows").
	JobOutsideWindow JobState = "outside_window"
)

// LostAnswerReason is the recorded error of a target whose method (or factory reset) an attempt claimed and
// may have sent before it stopped without recording the answer: the call is never sent again, so whether the
// device ran it is unknown.
const LostAnswerReason = "outcome unknown: an attempt that stopped before recording the answer may have sent it; not sent again (methods run at most once)"

// JobEnd is the state a job ends in (jobs.state once finished).
type JobEnd string

// Job end states.
const (
	JobCompleted             JobEnd = "completed"
	JobCompletedWithFailures JobEnd = "completed_with_failures"
	JobEndCancelled          JobEnd = "cancelled"
	// JobEndFailed: the workflow gave up (a store error it could not retry past).
	JobEndFailed JobEnd = "failed"
	// JobNotStarted: the job was created but its workflow never started. Only rows from CLIs that created
	// jobs themselves (before the workflow's JobCreate step) can have it.
	JobNotStarted JobEnd = "not_started"
)

// ErrEmptyTarget is returned (wrapped) when a job's or rollout's target set would be empty: the query selects
// no device (or, for a rollout, none that needs the version), or no id was given.
var ErrEmptyTarget = errors.New("the query selects no devices")

// NewJob describes a job to create: its kind, what it targets — a twin query or an explicit list of ids —
// and its spec (what it does, for operators reading the jobs table). The workflow that runs the job creates
// it as its first step (docs/architecture.md, "The life of an operation").
type NewJob struct {
	ID    string
	Kind  JobKind
	Query string   // the twin query, or a description of IDs ("ids: a b c") when IDs is set
	IDs   []string // explicit targets (duplicates dropped, order kept, unknown ids kept); nil: Query selects
	Spec  json.RawMessage
}

// JobTarget is one frozen target of a job: targets are numbered 0..total-1 when the job is created, so a
// workflow walks them with a cursor.
type JobTarget struct {
	Seq      int64
	DeviceID string
	State    JobState
}

// JobOutcome is what happened on one target.
type JobOutcome struct {
	Seq     int64
	State   JobState
	Status  int             // the device's method status, 0 when none
	Payload json.RawMessage // the device's method response or the retire detail, nil when none
	Error   string
}

// JobCounts are a job's devices per outcome.
type JobCounts struct {
	Succeeded int64 `json:"succeeded"`
	Failed    int64 `json:"failed"`
	TimedOut  int64 `json:"timedOut"`
	Offline   int64 `json:"offline"`
	Running   int64 `json:"running"` // desired written, acknowledgement pending; or a method sent, answer pending
	Cancelled int64 `json:"cancelled"`
	// OutsideWindow: devices whose maintenance window did not open before the deadline.
	OutsideWindow int64 `json:"outsideWindow,omitempty"`
}

// Add sums counts.
func (c *JobCounts) Add(o JobCounts) {
	c.Succeeded += o.Succeeded
	c.Failed += o.Failed
	c.TimedOut += o.TimedOut
	c.Offline += o.Offline
	c.Running += o.Running
	c.Cancelled += o.Cancelled
	c.OutsideWindow += o.OutsideWindow
}

// AddState counts n devices in state; pending devices are not counted (they are what is left).
func (c *JobCounts) AddState(state JobState, n int64) {
	switch state {
	case JobSucceeded:
		c.Succeeded += n
	case JobFailed:
		c.Failed += n
	case JobTimedOut:
		c.TimedOut += n
	case JobOffline:
		c.Offline += n
	case JobRunning, JobDispatched:
		c.Running += n
	case JobCancelled:
		c.Cancelled += n
	case JobOutsideWindow:
		c.OutsideWindow += n
	}
}

// Unsuccessful is the number of devices the job gave up on.
func (c JobCounts) Unsuccessful() int64 { return c.Failed + c.TimedOut + c.Offline + c.OutsideWindow }

// AckProgress is the state of a desired job's acknowledgements.
type AckProgress struct {
	Acked         int64 // newly acknowledged in this call
	Waiting       int64 // still waiting
	WaitingOnline int64 // of which connected
}

// DevicePatch is one device's merge patch in a batch write.
type DevicePatch struct {
	DeviceID string
	Patch    []byte
}

// PatchResult is the outcome of one DevicePatch: the section's new version and whether the device was
// online when it was written, or why it was refused (ErrNotFound, ErrNotActive for a retired or disabled
// device, a *twin.LimitError, twin.ErrInvalidJSON). A refused device does not fail the others.
type PatchResult struct {
	DeviceID string
	Version  int64
	Online   bool
	Err      error
}

// JobOutcomesFunc turns the results of a batch's registry writes into the targets' outcomes, inside the
// transaction that makes the writes; an error rolls the transaction back. targets[i] produced results[i].
type JobOutcomesFunc[R any] func(targets []JobTarget, results []R) ([]JobOutcome, error)

// JobStore is what a job's activities need from the registry.
type JobStore interface {
	// CreateJob records the job and freezes its target set (targets numbered 0..total-1) in one
	// transaction and returns total. It is idempotent: a job that exists already is left as it is and its
	// total returned, so a retried or replayed creation step finds what the first attempt made. An empty
	// target set is ErrEmptyTarget and leaves nothing behind; a query that does not compile is the query
	// package's error.
	CreateJob(ctx context.Context, job NewJob) (int64, error)
	// JobTargets returns the job's targets with seq in first..last (inclusive) that are not finished — pending,
	// or dispatched by an earlier attempt whose outcome was not recorded — in seq order, so that a retried
	// batch skips what it already did and knows what it sent.
	JobTargets(ctx context.Context, job string, first, last int64) ([]JobTarget, error)
	// RecordJobOutcomes records per-target outcomes of targets that are pending or dispatched; a final
	// outcome is never overwritten, so recording twice (or a late attempt recording after its retry) is
	// harmless. A dispatched target may go back to pending (a call that was never sent).
	RecordJobOutcomes(ctx context.Context, job string, outs []JobOutcome) error
	// ClaimJobTargets marks the pending targets among seqs as dispatched, before their method is sent, and
	// returns the seqs it marked (in seq order): a target another attempt claimed or finished is not
	// returned, so no method is sent twice.
	ClaimJobTargets(ctx context.Context, job string, seqs []int64) ([]int64, error)
	// PatchJobTargets merges patch into the section of the targets' devices and records each target's outcome
	// in one transaction, so that a retried batch never patches a device twice. Only targets still pending are
	// written; outcomes (called inside the transaction, with the targets written and their results in the same
	// order) says what to record, and an error it returns rolls everything back. Targets that another attempt
	// finished meanwhile roll the transaction back with an error, which the retry resolves.
	PatchJobTargets(ctx context.Context, job string, section twin.Section, targets []JobTarget, patch []byte, outcomes JobOutcomesFunc[PatchResult]) error
	// TargetTags returns, per device among ids, the values (as text) of the named top-level tags it has: what
	// a maintenance window is read from.
	TargetTags(ctx context.Context, ids []string, names []string) (map[string]map[string]string, error)
	// JobRangeTotals counts the targets with seq in first..last per state (pending ones are not counted):
	// what a batch reports, exact whichever attempt did the work.
	JobRangeTotals(ctx context.Context, job string, first, last int64) (JobCounts, error)
	// PatchTwins merges per-device patches into the tags or desired section of many devices at once,
	// bumping each section's version; each device appears at most once.
	PatchTwins(ctx context.Context, section twin.Section, patches []DevicePatch) ([]PatchResult, error)
	// CollectAcks marks running targets whose reported state matches desired for every key as succeeded
	// and returns what is still waiting.
	CollectAcks(ctx context.Context, job string, keys []string) (AckProgress, error)
	// CloseJob ends a job: targets still running become offline or timed out (by their connection), the
	// pending ones cancelled.
	CloseJob(ctx context.Context, job string, state JobEnd) error
	// JobTotals counts the job's targets per state.
	JobTotals(ctx context.Context, job string) (JobCounts, error)
}
