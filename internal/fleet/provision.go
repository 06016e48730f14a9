package fleet

import (
	"context"
	"errors"
	"time"
)

// ProvisionCounts is the outcome of provisioning manifest rows, per batch and summed over an operation.
type ProvisionCounts struct {
	Created  int64 `json:"created"`
	Existing int64 `json:"existing"`
	Invalid  int64 `json:"invalid"`
}

// Add sums counts.
func (c *ProvisionCounts) Add(o ProvisionCounts) {
	c.Created += o.Created
	c.Existing += o.Existing
	c.Invalid += o.Invalid
}

// Total is the number of rows accounted for.
func (c ProvisionCounts) Total() int64 { return c.Created + c.Existing + c.Invalid }

// ConnectProgress is how far an operation's new devices got in connecting and reporting.
type ConnectProgress struct {
	Created   int64    `json:"created"`
	Connected int64    `json:"connected"`
	Reported  int64    `json:"reported"`
	Missing   []string `json:"missing,omitempty"` // a sample of devices that have not reported
}

// RowOutcome says why a staged manifest row did not become a new device.
type RowOutcome string

// Row outcomes recorded in provision_results.
const (
	RowInvalid RowOutcome = "invalid" // the row failed validation
	RowExists  RowOutcome = "exists"  // a device with the row's id already exists
)

// RowResult is a staged manifest row that did not become a new device.
type RowResult struct {
	Line    int64      `json:"line"`
	ID      string     `json:"id"`
	Outcome RowOutcome `json:"outcome"`
	Reason  string     `json:"reason"`
}

// Provisioning errors a store reports (wrapped); retrying cannot help either.
var (
	// ErrOperationNotStaged: no manifest was staged under the operation id.
	ErrOperationNotStaged = errors.New("operation not staged")
	// ErrStagingLost: the operation's staged rows are gone (dropped before every batch committed).
	ErrStagingLost = errors.New("staged rows lost")
	// ErrStagingAbandoned: the manifest's staging stopped before its end (its CLI was killed or could not
	// read on); no more rows will come.
	ErrStagingAbandoned = errors.New("staging abandoned")
	// ErrStagingClosed: a chunk came after the staging was closed (the workflow found it stalled).
	ErrStagingClosed = errors.New("staging closed")
)

// Staged is how far the staging of an operation's manifest has got: the staged-rows cursor a provisioning
// workflow follows while the CLI stages in chunks (docs/architecture.md, "Provisioning: staging and batches
// overlap").
type Staged struct {
	Rows int64 `json:"rows"` // rows staged so far: seq 0..Rows-1 are committed
	Done bool  `json:"done"` // staging has ended: Rows is the manifest's row count
}

// StagingStallAfter is how long an open staging may go without a committed chunk or a heartbeat of its CLI
// (every few seconds) before the workflow following it takes the CLI for dead and fails.
const StagingStallAfter = time.Minute

// ProvisionStore is what provisioning's activities need from the registry.
type ProvisionStore interface {
	// ProvisionBatch creates the devices of staged rows first..last-1 of op. It is idempotent: a
	// committed batch is recorded and a retry returns its counts. A positive validity gives the devices it
	// creates a credential expiry (credential_expires_at = creation + validity, or the end of the device's
	// staged certificate if sooner) in the same transaction, which also records each staged certificate's
	// end with its fingerprint, and drops the batch's staged rows (nothing reads them again).
	ProvisionBatch(ctx context.Context, op string, first, last int64, validity time.Duration) (ProvisionCounts, error)
	// StagedRows returns how far op's staging has got. An open staging without sign of life for longer
	// than stall is closed as abandoned; an abandoned staging is an error wrapping ErrStagingAbandoned.
	StagedRows(ctx context.Context, op string, stall time.Duration) (Staged, error)
	// ConnectProgress counts op's devices that have connected and reported, with a sample of up to
	// sample ids that have not reported.
	ConnectProgress(ctx context.Context, op string, sample int) (ConnectProgress, error)
	// ProvisionResults lists up to limit rows of op with the outcome ("" for all), in line order.
	ProvisionResults(ctx context.Context, op string, outcome RowOutcome, limit int) ([]RowResult, error)
	// DropStaging deletes op's staged rows (they hold credential digests).
	DropStaging(ctx context.Context, op string) error
	// DropStaleStaging deletes the staged rows of every operation staged more than olderThan ago and
	// returns how many rows it deleted: rows of a CLI that was killed between staging and starting its
	// workflow, which no workflow will ever read. Repeating it is harmless.
	DropStaleStaging(ctx context.Context, olderThan time.Duration) (int64, error)
}

// StaleStagingAfter is how long staged manifest rows may wait for their workflow before the health check
// drops them (docs/architecture.md, "The life of an operation"). Provisioning a million devices takes
// minutes, so a day is far beyond any run that is still going.
const StaleStagingAfter = 24 * time.Hour
