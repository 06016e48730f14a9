// Package workflows holds fleetflow's deterministic workflow code: each lifecycle stage is a workflow over a
// set of devices that keeps only cursors and counters in its state and does all I/O through batched
// activities. It must not import pgx, paho or anything else that does I/O (DESIGN §2).
package workflows

import "time"

// Activity names. Workflows refer to activities by name so that this package does not import the
// activities package and, through it, the database and MQTT adapters.
const (
	ActProvisionBatch  = "ProvisionBatch"
	ActWaitConnected   = "WaitConnected"
	ActFinishProvision = "FinishProvision"
)

// Query and error-type names.
const (
	// QueryProgress returns an operation's progress (ProvisionProgress for provisioning).
	QueryProgress = "progress"
	// ErrTypeNotStaged marks a provisioning operation whose manifest was never staged.
	ErrTypeNotStaged = "OperationNotStaged"
)

// Counts is the outcome of provisioning rows, per batch and summed.
type Counts struct {
	Created  int64 `json:"created"`
	Existing int64 `json:"existing"`
	Invalid  int64 `json:"invalid"`
}

// Add sums counts.
func (c *Counts) Add(o Counts) {
	c.Created += o.Created
	c.Existing += o.Existing
	c.Invalid += o.Invalid
}

// Processed is the number of rows accounted for.
func (c Counts) Processed() int64 { return c.Created + c.Existing + c.Invalid }

// ProvisionInput starts ProvisionFleet. The manifest itself is staged in Postgres under Op; the workflow
// carries only its size and a cursor, so its payloads stay small whatever the fleet size.
type ProvisionInput struct {
	Op           string        `json:"op"`
	Rows         int64         `json:"rows"`
	BatchSize    int64         `json:"batchSize,omitempty"`
	Window       int           `json:"window,omitempty"`
	AwaitConnect time.Duration `json:"awaitConnect,omitempty"`
	// BatchesPerRun bounds each run's history; the workflow continues as new after that many batches.
	BatchesPerRun int `json:"batchesPerRun,omitempty"`
	// HeartbeatTimeout bounds how long a batch on a crashed worker goes unnoticed.
	HeartbeatTimeout time.Duration `json:"heartbeatTimeout,omitempty"`

	// State carried across continue-as-new.
	Next   int64  `json:"next,omitempty"`
	Counts Counts `json:"counts"`
	Runs   int    `json:"runs,omitempty"`
}

// BatchRequest is a ProvisionBatch activity's input: a half-open range of staged manifest lines.
type BatchRequest struct {
	Op    string `json:"op"`
	First int64  `json:"first"`
	Last  int64  `json:"last"`
}

// WaitConnectedRequest asks how many of an operation's new devices have connected and reported, waiting
// up to MaxWait for all of them.
type WaitConnectedRequest struct {
	Op      string        `json:"op"`
	MaxWait time.Duration `json:"maxWait"`
}

// ConnectStatus is how far an operation's new devices got in connecting and reporting.
type ConnectStatus struct {
	Created   int64    `json:"created"`
	Connected int64    `json:"connected"`
	Reported  int64    `json:"reported"`
	Missing   []string `json:"missing,omitempty"` // a sample of devices that have not reported
}

// RowIssue is a manifest row that did not become a new device.
type RowIssue struct {
	Line    int64  `json:"line"`
	ID      string `json:"id"`
	Outcome string `json:"outcome"`
	Reason  string `json:"reason"`
}

// FinishResult is what the last activity of a provisioning run reports.
type FinishResult struct {
	InvalidSample []RowIssue `json:"invalidSample,omitempty"`
}

// ProvisionProgress is what the progress query returns while ProvisionFleet runs.
type ProvisionProgress struct {
	Op        string         `json:"op"`
	Phase     string         `json:"phase"` // provisioning, awaiting-connect, done
	Rows      int64          `json:"rows"`
	Counts    Counts         `json:"counts"`
	Connect   *ConnectStatus `json:"connect,omitempty"`
	Deadline  *time.Time     `json:"awaitDeadline,omitempty"`
	Runs      int            `json:"runs"`
	InFlight  int            `json:"inFlight"`
	UpdatedAt time.Time      `json:"updatedAt"`
}

// ProvisionResult is ProvisionFleet's result.
type ProvisionResult struct {
	Op            string         `json:"op"`
	Rows          int64          `json:"rows"`
	Counts        Counts         `json:"counts"`
	Connect       *ConnectStatus `json:"connect,omitempty"`
	InvalidSample []RowIssue     `json:"invalidSample,omitempty"`
	Runs          int            `json:"runs"`
}
