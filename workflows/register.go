package workflows

import (
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// RegisterDeviceWorkflowID is the id of the RegisterDevice run for a device: one id per device, so that a
// device connecting to several gateways at once (or retrying) joins the one registration in flight.
func RegisterDeviceWorkflowID(deviceID string) string { return "register-" + deviceID }

// RegisterDevice registers a device on first contact through an enrollment group (docs/architecture.md,
// "Zero-touch enrollment"). A gateway starts it when an unknown id presents a secret derived from an enabled
// group's key, and admits the device once it returns Registered. The input carries the digest of the
// derived secret, as the registry stores it, never the secret nor the group key.
func RegisterDevice(ctx workflow.Context, in fleet.Registration) (fleet.RegistrationOutcome, error) {
	if in.DeviceID == "" || in.Group == "" || len(in.SecretDigest) == 0 {
		return fleet.RegistrationOutcome{}, temporal.NewNonRetryableApplicationError("a device id, a group and a secret digest are required", ErrTypeInvalidInput, nil)
	}
	// The device is waiting in its CONNECT: retry fast and give up in time for it to try again later
	// rather than holding a registration past its patience.
	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout:    10 * time.Second,
		ScheduleToCloseTimeout: time.Minute,
		Summary:                fmt.Sprintf("register %s through enrollment group %s", in.DeviceID, in.Group),
		RetryPolicy:            &temporal.RetryPolicy{InitialInterval: 200 * time.Millisecond, MaximumInterval: 5 * time.Second},
	})
	out, err := executeActivity(actx, Activities.RegisterEnrolledDevice, in).Result(ctx)
	if err != nil {
		return out, fmt.Errorf("register %s: %w", in.DeviceID, err)
	}
	if out.Registered {
		workflow.SetCurrentDetails(ctx, fmt.Sprintf("**%s** registered through enrollment group **%s**", in.DeviceID, in.Group))
	} else {
		workflow.SetCurrentDetails(ctx, fmt.Sprintf("**%s** refused by enrollment group **%s**: %s", in.DeviceID, in.Group, out.Reason))
	}
	return out, nil
}
