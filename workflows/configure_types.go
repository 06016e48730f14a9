package workflows

import (
	"encoding/json"
	"time"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/rollout"
)

// Update and error-type names of the configure stage (jobs and rollouts).
const (
	// Updates: operator actions on running operations (docs/architecture.md, "The life of an operation").
	UpdatePause   = "pause"
	UpdateResume  = "resume"
	UpdateCancel  = "cancel"
	UpdateApprove = "approve"
	UpdateAbort   = "abort"

	// ErrTypeInvalidInput marks a workflow started with input it can never process.
	ErrTypeInvalidInput = "InvalidInput"

	// Error types of an operation's creation step (JobCreate, RolloutCreate): non-retryable, so the
	// workflow fails at once and the CLI prints what it printed when it created the operation itself.
	//
	// ErrTypeEmptyTarget: the target set is empty (the query selects no devices, or none that needs the
	// firmware).
	ErrTypeEmptyTarget = "EmptyTarget"
	// ErrTypeRolloutConflict: another running rollout holds some of the devices; the error's details are
	// a fleet.RolloutConflictError naming it.
	ErrTypeRolloutConflict = "RolloutConflict"
	// ErrTypeUnknownFirmware: the rollout's firmware is not in the catalogue.
	ErrTypeUnknownFirmware = "UnknownFirmware"
	// ErrTypeInvalidQuery: the target query does not compile (the CLI checks it before it starts, so this
	// is a query that a newer CLI accepts and this worker does not).
	ErrTypeInvalidQuery = "InvalidQuery"
)

// JobInput starts FleetJob (and Decommission). The workflow's first step (JobCreate) records the job and
// freezes its target set in Postgres (job_devices, seq 0..Total-1) from Query or IDs, and learns Total; the
// workflow then carries a cursor over the set. Inputs recorded before the creation step moved into the
// workflow carry Total > 0 (the CLI had created the job) and skip it (docs/architecture.md, "The life of an
// operation").
type JobInput struct {
	JobID string        `json:"jobId"`
	Kind  fleet.JobKind `json:"kind"`
	// Query is the twin query selecting the targets, or (with IDs) a description of them for the jobs table.
	Query string `json:"query,omitempty"`
	// IDs are explicit targets (retire ID...); cleared once the set is frozen, so that continue-as-new
	// carries no device list.
	IDs []string `json:"ids,omitempty"`
	// Spec is what the job does, as recorded in the jobs table for operators.
	Spec    json.RawMessage `json:"spec,omitempty"`
	Total   int64           `json:"total"`
	Patch   json.RawMessage `json:"patch,omitempty"`   // set_desired, set_tags
	AckKeys []string        `json:"ackKeys,omitempty"` // set_desired: the top-level keys devices must acknowledge
	Method  string          `json:"method,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
	// Rate caps devices per second (0 = as fast as the window allows).
	Rate float64 `json:"rate,omitempty"`
	// Reason (retire) is recorded with each retired device; Wipe sends a factory reset first.
	Reason string `json:"reason,omitempty"`
	Wipe   bool   `json:"wipe,omitempty"`
	// Timeout is how long a device has to answer a method, or to acknowledge a desired change after the
	// last batch was written.
	Timeout          time.Duration `json:"timeout,omitempty"`
	BatchSize        int64         `json:"batchSize,omitempty"`
	Window           int           `json:"window,omitempty"`
	BatchesPerRun    int           `json:"batchesPerRun,omitempty"`
	HeartbeatTimeout time.Duration `json:"heartbeatTimeout,omitempty"`
	// Maintenance, when set, dispatches to each device only inside its maintenance window, passing over the
	// target set again as windows open, until none waits or the policy's deadline (docs/architecture.md,
	// "Maintenance windows").
	Maintenance *fleet.MaintenancePolicy `json:"maintenance,omitempty"`

	// State carried across continue-as-new.
	Next int64 `json:"next,omitempty"`
	// WindowWaiting and NextOpen are the current pass's targets waiting for their window and the first
	// opening among them; WindowPasses counts the passes over the target set.
	WindowWaiting int64           `json:"windowWaiting,omitempty"`
	NextOpen      time.Time       `json:"nextOpen,omitzero"`
	WindowPasses  int             `json:"windowPasses,omitempty"`
	Counts        fleet.JobCounts `json:"counts"`
	Paused        bool            `json:"paused,omitempty"`
	Cancelled     bool            `json:"cancelled,omitempty"`
	Runs          int             `json:"runs,omitempty"`
	// AckStart is when the wait for acknowledgements began (zero: not yet), so that a run continued during
	// the wait keeps its deadline and its offline grace.
	AckStart time.Time `json:"ackStart,omitzero"`

	// Grace (rotate_credentials) is how long, after the last batch, devices sent a new secret have to
	// connect with it; those that do not are reported and keep both secrets (default DefaultRotateGrace).
	Grace time.Duration `json:"grace,omitempty"`
	// CredentialValidity (rotate_credentials), when positive, gives each rotated device a credential
	// expiry of confirmation + validity; zero leaves the expiry as it is.
	CredentialValidity time.Duration `json:"credentialValidity,omitempty"`
	// CertValidity (rotate_credentials) is the validity of the certificates renewals sign (0: the default
	// of `provision --auth x509`, pki.DeviceCertValidity).
	CertValidity time.Duration `json:"certValidity,omitempty"`
}

// JobCreateInput (activity JobCreate) records a job and freezes its target set: Query selects the
// targets, or IDs lists them.
type JobCreateInput struct {
	JobID string          `json:"jobId"`
	Kind  fleet.JobKind   `json:"kind"`
	Query string          `json:"query"`
	IDs   []string        `json:"ids,omitempty"`
	Spec  json.RawMessage `json:"spec,omitempty"`
}

// JobCreateResult is the frozen target set's size.
type JobCreateResult struct {
	Total int64 `json:"total"`
}

// JobBatchInput is one JobBatch activity: targets First..Last-1 of a job.
type JobBatchInput struct {
	JobID   string          `json:"jobId"`
	Kind    fleet.JobKind   `json:"kind"`
	First   int64           `json:"first"`
	Last    int64           `json:"last"`
	Patch   json.RawMessage `json:"patch,omitempty"`
	Method  string          `json:"method,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
	Timeout time.Duration   `json:"timeout,omitempty"`
	Reason  string          `json:"reason,omitempty"`
	Wipe    bool            `json:"wipe,omitempty"`
	// CertValidity is JobInput.CertValidity.
	CertValidity time.Duration `json:"certValidity,omitempty"`
}

// JobWindowBatchInput is one JobWindowBatch activity: a batch that reaches only the targets whose
// maintenance window is open At.
type JobWindowBatchInput struct {
	JobBatchInput
	Policy fleet.MaintenancePolicy `json:"policy"`
	At     time.Time               `json:"at"`
}

// JobWindowBatchResult is the range's counts, and how many of its targets wait for their window (opening
// before the deadline), the first opening among them.
type JobWindowBatchResult struct {
	Counts   fleet.JobCounts `json:"counts"`
	Waiting  int64           `json:"waiting"`
	NextOpen time.Time       `json:"nextOpen,omitzero"`
}

// JobCollectAcksInput asks for the acknowledgements of a desired job, waiting up to MaxWait for all of them.
type JobCollectAcksInput struct {
	JobID   string        `json:"jobId"`
	Keys    []string      `json:"keys"`
	MaxWait time.Duration `json:"maxWait"`
	// Kind rotate_credentials collects devices that connected with their new secret instead (and gives
	// them CredentialValidity); empty is a desired job.
	Kind               fleet.JobKind `json:"kind,omitempty"`
	CredentialValidity time.Duration `json:"credentialValidity,omitempty"`
}

// JobCollectAcksResult is what JobCollectAcks found.
type JobCollectAcksResult struct {
	Acked         int64 `json:"acked"` // newly acknowledged
	Waiting       int64 `json:"waiting"`
	WaitingOnline int64 `json:"waitingOnline"`
}

// JobCloseInput ends a job in the registry.
type JobCloseInput struct {
	JobID string       `json:"jobId"`
	State fleet.JobEnd `json:"state"`
}

// JobProgress is what the progress query returns while FleetJob runs.
type JobProgress struct {
	JobID      string          `json:"jobId"`
	Kind       fleet.JobKind   `json:"kind"`
	State      string          `json:"state"` // running, paused, awaiting-acks, cancelling, done
	Total      int64           `json:"total"`
	Dispatched int64           `json:"dispatched"`
	Counts     fleet.JobCounts `json:"counts"`
	Runs       int             `json:"runs"`
	UpdatedAt  time.Time       `json:"updatedAt"`
}

// JobResult is FleetJob's result; Counts are read back from the registry when the job ends.
type JobResult struct {
	JobID  string          `json:"jobId"`
	State  string          `json:"state"` // completed, completed_with_failures, cancelled
	Total  int64           `json:"total"`
	Counts fleet.JobCounts `json:"counts"`
	Runs   int             `json:"runs"`
}

// FirmwareRef is the catalogue entry a rollout installs.
type FirmwareRef struct {
	Version string `json:"version"`
	URL     string `json:"url"`
	SHA256  string `json:"sha256"`
}

// RolloutInput starts FirmwareRollout. The workflow's first step (RolloutCreate) records the rollout and
// claims its devices in Postgres (rollout_devices) from Query, and learns Total; each wave moves the next
// slice of them (by rank) into dispatch. Inputs recorded before the creation step moved into the workflow
// carry Total > 0 (the CLI had claimed the devices) and skip it.
type RolloutInput struct {
	RolloutID string      `json:"rolloutId"`
	Firmware  FirmwareRef `json:"firmware"`
	// Query selects the devices to claim; Spec is the rollout's settings as recorded for operators.
	Query           string            `json:"query,omitempty"`
	Spec            json.RawMessage   `json:"spec,omitempty"`
	Total           int64             `json:"total"`
	Waves           []rollout.Wave    `json:"waves"`
	MaxFailures     rollout.Threshold `json:"maxFailures"`
	Bake            time.Duration     `json:"bake,omitempty"`
	DeviceTimeout   time.Duration     `json:"deviceTimeout,omitempty"`
	ApproveEachWave bool              `json:"approveEachWave,omitempty"`
	PollInterval    time.Duration     `json:"pollInterval,omitempty"`
	ObserveFor      time.Duration     `json:"observeFor,omitempty"`
	// ContinueAfterEvents bounds each run's history; the workflow continues as new past it.
	ContinueAfterEvents int           `json:"continueAfterEvents,omitempty"`
	HeartbeatTimeout    time.Duration `json:"heartbeatTimeout,omitempty"`
	// Maintenance, when set with an operation window only, starts each wave only inside the window, waiting
	// on a durable timer; a wave whose window does not open before the deadline ends the rollout, its devices
	// reported as cancelled for that reason. With a window tag (devices' own windows), each device of a wave
	// is dispatched only while its own window (else the operation's) is open, the others waiting on durable
	// timers, and a device whose window does not open before the deadline is recorded as outside_window
	// (docs/architecture.md, "Maintenance windows").
	Maintenance *fleet.MaintenancePolicy `json:"maintenance,omitempty"`

	// State carried across continue-as-new.
	Carry *RolloutCarry `json:"carry,omitempty"`
}

// RolloutCreateInput (activity RolloutCreate) records a rollout and claims the devices Query selects.
type RolloutCreateInput struct {
	RolloutID string          `json:"rolloutId"`
	Version   string          `json:"version"`
	Query     string          `json:"query"`
	Spec      json.RawMessage `json:"spec,omitempty"`
}

// RolloutCreateResult is how many devices the rollout claimed.
type RolloutCreateResult struct {
	Total int64 `json:"total"`
}

// RolloutCarry is the rollout's state handed to the next run.
type RolloutCarry struct {
	Wave        int            `json:"wave"`        // index of the current wave
	Dispatched  bool           `json:"dispatched"`  // the current wave has been dispatched
	Approved    int            `json:"approved"`    // waves up to this index are approved
	Paused      bool           `json:"paused"`      //
	Abort       *AbortInput    `json:"abort"`       // an abort the operator asked for
	RollingBack bool           `json:"rollingBack"` // the rollback has been started
	Decision    string         `json:"decision"`
	Reasons     []string       `json:"reasons"`
	Counts      rollout.Counts `json:"counts"`
	Runs        int            `json:"runs"`
	// WindowMissed says why the rollout stopped when a wave's maintenance window did not open in time.
	WindowMissed string `json:"windowMissed,omitempty"`
	// WindowWaiting is how many devices of the current wave wait for their own maintenance window, and
	// NextOpen when the first of those windows opens (devices' own windows only).
	WindowWaiting int64     `json:"windowWaiting,omitempty"`
	NextOpen      time.Time `json:"nextOpen,omitzero"`
}

// AbortInput is the abort update's argument.
type AbortInput struct {
	Rollback bool   `json:"rollback"`
	Reason   string `json:"reason,omitempty"`
}

// RolloutDispatchInput starts one wave: devices ranked below Cutoff get the firmware. With a Policy that
// reads devices' own windows, it is one pass over the wave's queued devices: those whose window is open at
// At (the workflow's clock when it scheduled the pass, so that a retry decides the same way) are dispatched,
// those whose window does not open before the deadline are recorded as outside_window, and the rest wait.
type RolloutDispatchInput struct {
	RolloutID string                   `json:"rolloutId"`
	Wave      int                      `json:"wave"`
	Cutoff    int64                    `json:"cutoff"`
	Firmware  FirmwareRef              `json:"firmware"`
	Policy    *fleet.MaintenancePolicy `json:"policy,omitempty"`
	At        time.Time                `json:"at,omitzero"`
}

// RolloutDispatchResult is how a wave started (or how a pass under maintenance windows went).
type RolloutDispatchResult struct {
	Dispatched int64 `json:"dispatched"`
	Skipped    int64 `json:"skipped"`
	Failed     int64 `json:"failed"`
	Pushed     int64 `json:"pushed"`
	// OutsideWindow devices were recorded as outside their window; Waiting devices wait for their window,
	// the first of which opens at NextOpen.
	OutsideWindow int64     `json:"outsideWindow,omitempty"`
	Waiting       int64     `json:"waiting,omitempty"`
	NextOpen      time.Time `json:"nextOpen,omitzero"`
}

// RolloutObserveInput evaluates the rollout's devices (forward, or the rollback when Rollback is set) every
// PollInterval, returning when the wave is decided, the failure threshold is exceeded, or MaxWait passes.
type RolloutObserveInput struct {
	RolloutID    string            `json:"rolloutId"`
	JobID        string            `json:"jobId"`
	Wave         int               `json:"wave"`
	Policy       rollout.Policy    `json:"policy"`
	MaxFailures  rollout.Threshold `json:"maxFailures"`
	Rollback     bool              `json:"rollback,omitempty"`
	PollInterval time.Duration     `json:"pollInterval"`
	MaxWait      time.Duration     `json:"maxWait"`
	// RepushAfter: an online device still without progress this long after its dispatch gets its desired
	// state again (0 = never).
	RepushAfter time.Duration `json:"repushAfter,omitempty"`
}

// RolloutObserveResult is the state of a rollout's devices after an observation.
type RolloutObserveResult struct {
	Counts rollout.Counts `json:"counts"` // the whole rollout
	Wave   rollout.Counts `json:"wave"`   // the current wave
}

// RolloutRollbackInput sends the rollout's touched devices back to their previous firmware under JobID.
type RolloutRollbackInput struct {
	RolloutID string `json:"rolloutId"`
	JobID     string `json:"jobId"`
}

// RolloutFinishInput ends a rollout in the registry.
type RolloutFinishInput struct {
	RolloutID string           `json:"rolloutId"`
	State     fleet.RolloutEnd `json:"state"`
	Summary   RolloutSummary   `json:"summary"`
}

// RolloutSummary is what the registry keeps of a finished rollout (rollouts.result).
type RolloutSummary struct {
	State     string   `json:"state"`
	WavesDone int      `json:"wavesDone"`
	Decision  string   `json:"decision,omitempty"`
	Reasons   []string `json:"reasons,omitempty"`
	// CancelReason is recorded with the devices never dispatched (default: the rollout ended before their
	// wave).
	CancelReason string `json:"cancelReason,omitempty"`
}

// DeviceIssue is one device that failed, with the reason.
type DeviceIssue struct {
	DeviceID string `json:"deviceId"`
	Wave     int    `json:"wave"`
	Phase    string `json:"phase"`
	Reason   string `json:"reason"`
}

// RolloutFinishResult is the rollout's final tally from the registry.
type RolloutFinishResult struct {
	Counts   rollout.Counts `json:"counts"`
	Failures []DeviceIssue  `json:"failures,omitempty"` // a sample
}

// RolloutProgress is what the progress query returns while FirmwareRollout runs.
type RolloutProgress struct {
	RolloutID  string         `json:"rolloutId"`
	Version    string         `json:"version"`
	State      string         `json:"state"` // dispatching, observing, awaiting_approval, paused, rolling_back, done
	Wave       int            `json:"wave"`  // 1-based; 0 before the first wave
	Waves      []string       `json:"waves"`
	Cutoffs    []int64        `json:"cutoffs"`
	Total      int64          `json:"total"`
	Counts     rollout.Counts `json:"counts"`
	WaveCounts rollout.Counts `json:"waveCounts"`
	Decision   string         `json:"decision"`
	Runs       int            `json:"runs"`
	UpdatedAt  time.Time      `json:"updatedAt"`
	// WindowWaiting devices of the current wave wait for their own maintenance window, the first of which
	// opens at NextOpen (with --window-from-tags).
	WindowWaiting int64     `json:"windowWaiting,omitempty"`
	NextOpen      time.Time `json:"nextOpen,omitzero"`
}

// RolloutResult is FirmwareRollout's result.
type RolloutResult struct {
	RolloutID string         `json:"rolloutId"`
	Version   string         `json:"version"`
	State     string         `json:"state"` // completed, rolled_back, aborted
	WavesDone int            `json:"wavesDone"`
	Waves     int            `json:"waves"`
	Counts    rollout.Counts `json:"counts"`
	Decision  string         `json:"decision"`
	Reasons   []string       `json:"reasons,omitempty"`
	Failures  []DeviceIssue  `json:"failures,omitempty"`
	Runs      int            `json:"runs"`
}
