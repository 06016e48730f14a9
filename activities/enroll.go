package activities

import (
	"context"
	"fmt"

	"github.com/fleetflow/fleetflow/workflows"
)

// RegisterEnrolledDevices creates the devices that proved membership of enrollment groups, with their
// groups' checks, initial tags and desired properties, in one transaction (docs/architecture.md, "Zero-touch
// enrollment"). A retry finds the devices the first attempt created and reports them registered.
func (a *Activities) RegisterEnrolledDevices(ctx context.Context, in workflows.RegisterDeviceInput) (workflows.RegisterDeviceResult, error) {
	if a.Enroll == nil {
		return workflows.RegisterDeviceResult{}, errNoStore("enrollment")
	}
	outs, err := a.Enroll.RegisterEnrolled(ctx, in.Registrations)
	if err != nil {
		return workflows.RegisterDeviceResult{}, err
	}
	if len(outs) != len(in.Registrations) {
		return workflows.RegisterDeviceResult{}, fmt.Errorf("registry answered %d outcomes for %d registrations", len(outs), len(in.Registrations))
	}
	return workflows.RegisterDeviceResult{Outcomes: outs}, nil
}
