// Package workflows holds fleetflow's deterministic workflow code: each lifecycle stage is a workflow over a
// set of devices that keeps only cursors and counters in its state and does all I/O through batched
// activities. It imports no adapter — no pgx, paho or anything else that does I/O — only the domain
// (internal/fleet) and pure rules (docs/architecture.md, "Layers and the import rule").
package workflows

import (
	"time"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// Query and error-type names.
const (
	// QueryProgress returns an operation's progress (ProvisionProgress for provisioning).
	QueryProgress = "progress"
	// ErrTypeNotStaged marks a provisioning operation whose manifest was never staged.
	ErrTypeNotStaged = "OperationNotStaged"
	// ErrTypeStagingAbandoned marks a provisioning operation whose manifest's staging stopped before its end.
	ErrTypeStagingAbandoned = "StagingAbandoned"
)

// ProvisionInput starts ProvisionFleet. The manifest itself is staged in Postgres under Op; the workflow
// carries only its size and a cursor, so its payloads stay small whatever the fleet size.
type ProvisionInput struct {
	Op   string `json:"op"`
	Rows int64  `json:"rows"`
	// Staging says the CLI is still staging the manifest in chunks: Rows is what was staged when the
	// workflow started, and the workflow follows the staged-rows cursor (AwaitStaged) until staging ends
	// (docs/architecture.md, "Provisioning: staging and batches overlap").
	Staging      bool          `json:"staging,omitempty"`
	BatchSize    int64         `json:"batchSize,omitempty"`
	Window       int           `json:"window,omitempty"`
	AwaitConnect time.Duration `json:"awaitConnect,omitempty"`
	// CredentialValidity (when positive) gives the devices the run creates a credential expiry: each batch
	// sets it in the transaction that creates them, so no interruption can leave a device without it.
	CredentialValidity time.Duration `json:"credentialValidity,omitempty"`
	// BatchesPerRun bounds each run's history; the workflow continues as new after that many batches.
	BatchesPerRun int `json:"batchesPerRun,omitempty"`
	// HeartbeatTimeout bounds how long a batch on a crashed worker goes unnoticed.
	HeartbeatTimeout time.Duration `json:"heartbeatTimeout,omitempty"`

	// State carried across continue-as-new.
	Next   int64                 `json:"next,omitempty"`
	Counts fleet.ProvisionCounts `json:"counts"`
	Runs   int                   `json:"runs,omitempty"`
	// AwaitStart is when the wait for connects began (zero: not yet), so that a run continued during the
	// wait keeps its deadline.
	AwaitStart time.Time `json:"awaitStart,omitzero"`
}

// ProvisionBatchInput is the ProvisionBatch activity's input: a half-open range of staged manifest lines.
type ProvisionBatchInput struct {
	Op    string `json:"op"`
	First int64  `json:"first"`
	Last  int64  `json:"last"`
	// CredentialValidity is ProvisionInput.CredentialValidity.
	CredentialValidity time.Duration `json:"credentialValidity,omitempty"`
}

// AwaitStagedInput is the AwaitStaged activity's input: it returns once more than After rows of Op are
// staged, once staging has ended, or after a while without either (the workflow asks again).
type AwaitStagedInput struct {
	Op    string `json:"op"`
	After int64  `json:"after"`
}

// WaitConnectedInput (activity WaitConnected) asks how many of an operation's new devices have connected and reported, waiting
// up to MaxWait for all of them.
type WaitConnectedInput struct {
	Op      string        `json:"op"`
	MaxWait time.Duration `json:"maxWait"`
}

// FinishProvisionResult is what the last activity of a provisioning run (FinishProvision) reports.
type FinishProvisionResult struct {
	InvalidSample []fleet.RowResult `json:"invalidSample,omitempty"`
}

// ProvisionProgress is what the progress query returns while ProvisionFleet runs.
type ProvisionProgress struct {
	Op        string                 `json:"op"`
	Phase     string                 `json:"phase"` // provisioning, awaiting-connect, done
	Rows      int64                  `json:"rows"`
	Staging   bool                   `json:"staging,omitempty"` // rows are still being staged: Rows grows
	Counts    fleet.ProvisionCounts  `json:"counts"`
	Connect   *fleet.ConnectProgress `json:"connect,omitempty"`
	Deadline  *time.Time             `json:"awaitDeadline,omitempty"`
	Runs      int                    `json:"runs"`
	InFlight  int                    `json:"inFlight"`
	UpdatedAt time.Time              `json:"updatedAt"`
}

// ProvisionResult is ProvisionFleet's result.
type ProvisionResult struct {
	Op            string                 `json:"op"`
	Rows          int64                  `json:"rows"`
	Counts        fleet.ProvisionCounts  `json:"counts"`
	Connect       *fleet.ConnectProgress `json:"connect,omitempty"`
	InvalidSample []fleet.RowResult      `json:"invalidSample,omitempty"`
	Runs          int                    `json:"runs"`
}
