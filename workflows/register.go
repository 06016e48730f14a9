package workflows

import (
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/searchattr"
)

// MaxRegistrations bounds one RegisterDevice run: the first contacts a gateway gathers into one run, so that
// its input stays far below Temporal's payload limit.
const MaxRegistrations = 500

// RegisterDeviceInput starts RegisterDevice: the registrations of first contacts that reached one gateway
// together, each with the digest of the device's derived secret or its certificate's fingerprint, as the
// registry stores them — never a secret nor a group key.
type RegisterDeviceInput struct {
	Registrations []fleet.Registration `json:"registrations"`
}

// RegisterDeviceResult has one outcome per registration, in order.
type RegisterDeviceResult struct {
	Outcomes []fleet.RegistrationOutcome `json:"outcomes"`
}

// RegisterDevice registers devices on first contact through enrollment groups (docs/architecture.md,
// "Zero-touch enrollment"). A gateway starts it when unknown ids present secrets derived from enabled groups'
// keys — gathering the first contacts that arrive together into one run, usually a single device, hundreds
// when a shipment powers up — and admits each device whose outcome is Registered. One activity writes them
// all in one transaction; a refusal (group disabled or full, id outside the pattern, id taken or retired) is
// an outcome, not a failure.
func RegisterDevice(ctx workflow.Context, in RegisterDeviceInput) (RegisterDeviceResult, error) {
	n := len(in.Registrations)
	if n == 0 || n > MaxRegistrations {
		return RegisterDeviceResult{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("between 1 and %d registrations are required, got %d", MaxRegistrations, n), ErrTypeInvalidInput, nil)
	}
	for _, r := range in.Registrations {
		if r.DeviceID == "" || r.Group == "" || (len(r.SecretDigest) == 0) == (len(r.CertFingerprint) == 0) {
			return RegisterDeviceResult{}, temporal.NewNonRetryableApplicationError(
				"every registration needs a device id, a group and either a secret digest or a certificate fingerprint", ErrTypeInvalidInput, nil)
		}
	}
	// The devices wait in their CONNECTs: retry fast, and give up in time for them to try again later
	// rather than holding registrations past their patience.
	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout:    10 * time.Second,
		ScheduleToCloseTimeout: time.Minute,
		Summary:                registerSummary(in.Registrations),
		RetryPolicy:            &temporal.RetryPolicy{InitialInterval: 200 * time.Millisecond, MaximumInterval: 5 * time.Second},
	})
	res, err := executeActivity(actx, Activities.RegisterEnrolledDevices, in).Result(ctx)
	if err != nil {
		return res, fmt.Errorf("register %s: %w", registerSummary(in.Registrations), err)
	}
	var created, registered int64
	for _, o := range res.Outcomes {
		if o.Registered {
			registered++
		}
		if o.Created {
			created++
		}
	}
	workflow.SetCurrentDetails(ctx, fmt.Sprintf("%d of %d first contacts registered (%d new devices), %d refused",
		registered, n, created, int64(n)-registered))
	if err := workflow.UpsertTypedSearchAttributes(ctx, searchattr.State.ValueSet(searchattr.StateCompleted),
		searchattr.Total.ValueSet(int64(n)), searchattr.Done.ValueSet(registered), searchattr.Failed.ValueSet(int64(n)-registered)); err != nil {
		workflow.GetLogger(ctx).Warn("upsert search attributes", "err", err)
	}
	return res, nil
}

// registerSummary names a run's devices the way the Temporal UI shows it.
func registerSummary(regs []fleet.Registration) string {
	if len(regs) == 1 {
		return fmt.Sprintf("register %s through enrollment group %s", regs[0].DeviceID, regs[0].Group)
	}
	return fmt.Sprintf("register %s and %d more devices through enrollment groups", regs[0].DeviceID, len(regs)-1)
}
