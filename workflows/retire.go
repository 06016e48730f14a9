package workflows

import (
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/searchattr"
)

// Error types of the retire stage (decommission batches are JobBatch with kind fleet.JobRetire).
const (
	// ErrTypeReplaceRefused marks a replacement the registry refused (unknown or retired device).
	ErrTypeReplaceRefused = "ReplaceRefused"
)

// ReplaceInput starts ReplaceDevice. When Provision is set, the CLI has staged the new device's row (with
// the digest of the secret it generated) under Op, as for provisioning.
type ReplaceInput struct {
	Op        string `json:"op"`
	Old       string `json:"old"`
	New       string `json:"new"`
	Provision bool   `json:"provision"`
	// CredentialValidity is the new device's credential expiry from its creation (0: none), set with it;
	// the CLI sets it to a certificate's validity (docs/architecture.md, "Device certificates").
	CredentialValidity time.Duration `json:"credentialValidity,omitempty"`
}

// ReplaceDeviceRecordInput is the ReplaceDeviceRecord activity's input.
type ReplaceDeviceRecordInput struct {
	Op  string `json:"op"`
	Old string `json:"old"`
	New string `json:"new"`
}

// ReplaceResult is what a replacement did.
type ReplaceResult struct {
	Old            string `json:"old"`
	New            string `json:"new"`
	Provisioned    bool   `json:"provisioned"`
	DesiredVersion int64  `json:"desiredVersion"`
	Pushed         bool   `json:"pushed"`
}

// ReplaceDevice lets a new device take over a retired one's role: it provisions the new device when asked
// (from the row the CLI staged), copies the old device's tags and desired properties to it, records the
// lineage on both, retires the old one (credentials revoked, session dropped, twin archived), and pushes the
// desired state to the new device if it is connected.
func ReplaceDevice(ctx workflow.Context, in ReplaceInput) (ReplaceResult, error) {
	res := ReplaceResult{Old: in.Old, New: in.New}
	if in.Old == "" || in.New == "" || in.Op == "" {
		return res, temporal.NewNonRetryableApplicationError("an operation id and the old and new device ids are required", ErrTypeInvalidInput, nil)
	}
	opts := workflow.ActivityOptions{StartToCloseTimeout: 2 * time.Minute,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second,
			NonRetryableErrorTypes: []string{ErrTypeNotStaged, ErrTypeReplaceRefused}}}
	if in.Provision {
		workflow.SetCurrentDetails(ctx, fmt.Sprintf("provisioning **%s** to replace **%s**", in.New, in.Old))
		pctx := workflow.WithActivityOptions(ctx, withSummary(opts, "provision "+in.New))
		c, err := executeActivity(pctx, Activities.ProvisionBatch, ProvisionBatchInput{Op: in.Op, First: 0, Last: 1,
			CredentialValidity: in.CredentialValidity}).Result(ctx)
		if err != nil {
			dropStagingAfterFailure(ctx, in.Op)
			return res, fmt.Errorf("provision %s: %w", in.New, err)
		}
		if c.Invalid > 0 {
			dropStagingAfterFailure(ctx, in.Op)
			return res, temporal.NewNonRetryableApplicationError(fmt.Sprintf("device %s could not be provisioned (invalid row)", in.New),
				ErrTypeInvalidInput, nil)
		}
		res.Provisioned = c.Created > 0
		fctx := workflow.WithActivityOptions(ctx, withSummary(opts, "drop the staged row"))
		if err := executeActivity(fctx, Activities.FinishProvision, in.Op).Get(ctx, nil); err != nil {
			return res, fmt.Errorf("finish provisioning %s: %w", in.New, err)
		}
	}
	workflow.SetCurrentDetails(ctx, fmt.Sprintf("**%s** takes over from **%s**: copy tags and desired, retire %s", in.New, in.Old, in.Old))
	rctx := workflow.WithActivityOptions(ctx, withSummary(opts, fmt.Sprintf("%s replaces %s", in.New, in.Old)))
	name := ActivityName(Activities.ReplaceDeviceRecord)
	if workflow.GetVersion(ctx, activityNamesVersion, workflow.DefaultVersion, 1) == workflow.DefaultVersion {
		name = LegacyActReplaceDevice // started before the rename: replay what the history recorded
	}
	out, err := executeActivityAs(rctx, name, Activities.ReplaceDeviceRecord, ReplaceDeviceRecordInput{Op: in.Op, Old: in.Old, New: in.New}).Result(ctx)
	if err != nil {
		if err2 := workflow.UpsertTypedSearchAttributes(ctx, searchattr.State.ValueSet(searchattr.StateFailed)); err2 != nil {
			workflow.GetLogger(ctx).Warn("upsert search attributes", "err", err2)
		}
		return res, fmt.Errorf("replace %s with %s: %w", in.Old, in.New, err)
	}
	res.DesiredVersion, res.Pushed = out.DesiredVersion, out.Pushed
	workflow.SetCurrentDetails(ctx, fmt.Sprintf("**%s** replaced **%s** (retired); desired version %d", in.New, in.Old, out.DesiredVersion))
	if err := workflow.UpsertTypedSearchAttributes(ctx, searchattr.State.ValueSet(searchattr.StateCompleted),
		searchattr.Done.ValueSet(1)); err != nil {
		workflow.GetLogger(ctx).Warn("upsert search attributes", "err", err)
	}
	return res, nil
}

// PurgeInput starts PurgeArchive.
type PurgeInput struct {
	OlderThan time.Duration `json:"olderThan"`
}

// PurgeResult is how many retired devices PurgeArchive removed.
type PurgeResult struct {
	Purged int64 `json:"purged"`
}

// PurgeArchive deletes retired devices past retention (their rows, archive, events and operation rows). It
// runs on demand or on a Temporal Schedule (`fleetflow purge --every 24h`).
func PurgeArchive(ctx workflow.Context, in PurgeInput) (PurgeResult, error) {
	if in.OlderThan <= 0 {
		return PurgeResult{}, temporal.NewNonRetryableApplicationError("a positive retention is required", ErrTypeInvalidInput, nil)
	}
	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: 30 * time.Minute,
		HeartbeatTimeout: DefaultHeartbeatTimeout, Summary: fmt.Sprintf("purge devices retired more than %s ago", in.OlderThan)})
	name := ActivityName(Activities.PurgeArchivedDevices)
	if workflow.GetVersion(ctx, activityNamesVersion, workflow.DefaultVersion, 1) == workflow.DefaultVersion {
		name = LegacyActPurgeArchive // started before the rename: replay what the history recorded
	}
	res, err := executeActivityAs(actx, name, Activities.PurgeArchivedDevices, in).Result(ctx)
	if err != nil {
		return res, fmt.Errorf("purge: %w", err)
	}
	workflow.SetCurrentDetails(ctx, fmt.Sprintf("purged %s retired devices older than %s", numfmt.Thousands(res.Purged), in.OlderThan))
	if err := workflow.UpsertTypedSearchAttributes(ctx, searchattr.State.ValueSet(searchattr.StateCompleted),
		searchattr.Done.ValueSet(res.Purged)); err != nil {
		workflow.GetLogger(ctx).Warn("upsert search attributes", "err", err)
	}
	return res, nil
}

func withSummary(o workflow.ActivityOptions, s string) workflow.ActivityOptions {
	o.Summary = s
	return o
}
