package workflows

import (
	"encoding/json"
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/searchattr"
)

// ErrTypeNoScheme marks a `scheme check` with no scheme in force.
const ErrTypeNoScheme = "NoScheme"

// Scheme check defaults.
const (
	DefaultSchemeBatch         = 10_000
	DefaultSchemeBatchesPerRun = 200
)

// SchemeCheckInput starts SchemeCheck (docs/architecture.md, "Metadata scheme"). With Tags set it is a
// `scheme set`: the first step records Tags (and Reported) as a new candidate version, the check runs
// against it, and the last step makes it active — or refused when the fleet violates it and
// AllowViolations is not set. Without Tags it checks the version in force and changes nothing but the
// check's own record. The documents are at most scheme.MaxBytes each, far below a payload's limit.
type SchemeCheckInput struct {
	CheckID         string          `json:"checkId"`
	Tags            json.RawMessage `json:"tags,omitempty"`
	Reported        json.RawMessage `json:"reported,omitempty"`
	AllowViolations bool            `json:"allowViolations,omitempty"`
	// Set says this is a `scheme set` (Tags given at the start; they are dropped from the input once
	// recorded): the check decides the version it recorded.
	Set           bool `json:"set,omitempty"`
	BatchSize     int  `json:"batchSize,omitempty"`
	BatchesPerRun int  `json:"batchesPerRun,omitempty"`

	// Carried across continue-as-new.
	Version  int64                     `json:"version,omitempty"`
	Progress fleet.SchemeCheckProgress `json:"progress"`
	Runs     int                       `json:"runs,omitempty"`
}

// SchemeStageInput is the SchemeStage activity's input.
type SchemeStageInput struct {
	CheckID         string          `json:"checkId"`
	Tags            json.RawMessage `json:"tags,omitempty"`
	Reported        json.RawMessage `json:"reported,omitempty"`
	AllowViolations bool            `json:"allowViolations,omitempty"`
}

// SchemeBatchInput is the SchemeCheckBatch activity's input.
type SchemeBatchInput struct {
	CheckID string `json:"checkId"`
	After   string `json:"after"`
	Limit   int    `json:"limit"`
}

// SchemeFinishInput is the SchemeFinish activity's input.
type SchemeFinishInput struct {
	CheckID  string `json:"checkId"`
	Activate bool   `json:"activate"`
}

// SchemeCheckResult is how a check ended: the version, its state, and the counts.
type SchemeCheckResult struct {
	fleet.SchemeCheckEnd
	CheckID string `json:"checkId"`
	Runs    int    `json:"runs"`
}

// SchemeCheck lists the devices of the fleet that violate a scheme version, in batches of device ids (a
// cursor, never a list), and continues as new every BatchesPerRun batches so its history stays bounded.
func SchemeCheck(ctx workflow.Context, in SchemeCheckInput) (SchemeCheckResult, error) {
	if in.CheckID == "" || in.Set && in.Version == 0 && len(in.Tags) == 0 {
		return SchemeCheckResult{}, temporal.NewNonRetryableApplicationError("a check id (and for a scheme set, the tags schema) is required", ErrTypeInvalidInput, nil)
	}
	if in.BatchSize <= 0 {
		in.BatchSize = DefaultSchemeBatch
	}
	if in.BatchesPerRun <= 0 {
		in.BatchesPerRun = DefaultSchemeBatchesPerRun
	}
	in.Runs++
	if err := workflow.SetQueryHandler(ctx, QueryProgress, func() (SchemeCheckInput, error) { return in, nil }); err != nil {
		return SchemeCheckResult{}, fmt.Errorf("register progress query: %w", err)
	}
	opts := workflow.ActivityOptions{StartToCloseTimeout: 5 * time.Minute,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second,
			NonRetryableErrorTypes: []string{ErrTypeNoScheme, ErrTypeInvalidInput}}}
	if in.Version == 0 {
		sctx := workflow.WithActivityOptions(ctx, withSummary(opts, "record the scheme version"))
		v, err := executeActivity(sctx, Activities.SchemeStage, SchemeStageInput{CheckID: in.CheckID, Tags: in.Tags,
			Reported: in.Reported, AllowViolations: in.AllowViolations}).Result(ctx)
		if err != nil {
			return SchemeCheckResult{}, err
		}
		in.Version = v
		// The documents are in the registry now; later runs need not carry them.
		in.Tags, in.Reported = nil, nil
		_ = workflow.UpsertTypedSearchAttributes(ctx, searchattr.State.ValueSet(searchattr.StateRunning))
	}
	for batches := 0; !in.Progress.Done; batches++ {
		if batches == in.BatchesPerRun {
			return SchemeCheckResult{}, workflow.NewContinueAsNewError(ctx, SchemeCheck, in)
		}
		workflow.SetCurrentDetails(ctx, fmt.Sprintf("checking the fleet against scheme version %d: %s devices checked, %s violate it",
			in.Version, numfmt.Thousands(in.Progress.Checked), numfmt.Thousands(in.Progress.Violating)))
		bctx := workflow.WithActivityOptions(ctx, withSummary(opts, "devices after "+in.Progress.Cursor))
		p, err := executeActivity(bctx, Activities.SchemeCheckBatch, SchemeBatchInput{CheckID: in.CheckID,
			After: in.Progress.Cursor, Limit: in.BatchSize}).Result(ctx)
		if err != nil {
			_ = workflow.UpsertTypedSearchAttributes(ctx, searchattr.State.ValueSet(searchattr.StateFailed))
			return SchemeCheckResult{}, err
		}
		in.Progress = p
		_ = workflow.UpsertTypedSearchAttributes(ctx, searchattr.Done.ValueSet(p.Checked), searchattr.Failed.ValueSet(p.Violating))
	}
	fctx := workflow.WithActivityOptions(ctx, withSummary(opts, "finish the check"))
	end, err := executeActivity(fctx, Activities.SchemeFinish, SchemeFinishInput{CheckID: in.CheckID,
		Activate: in.Set}).Result(ctx)
	if err != nil {
		return SchemeCheckResult{}, err
	}
	_ = workflow.UpsertTypedSearchAttributes(ctx, searchattr.State.ValueSet(searchattr.StateCompleted),
		searchattr.Done.ValueSet(end.Checked), searchattr.Failed.ValueSet(end.Violating))
	workflow.SetCurrentDetails(ctx, fmt.Sprintf("scheme version %d %s: %s devices checked, %s violate it", end.Version, end.State,
		numfmt.Thousands(end.Checked), numfmt.Thousands(end.Violating)))
	return SchemeCheckResult{SchemeCheckEnd: end, CheckID: in.CheckID, Runs: in.Runs}, nil
}

// Scheme workflow ids: SchemeSetPrefix+time for `scheme set`, SchemeCheckPrefix+time for `scheme check`.
const (
	SchemeSetPrefix   = "scheme-set-"
	SchemeCheckPrefix = "scheme-check-"
)
