package activities

import (
	"context"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// RegisterEnrolledDevice creates a device that proved membership of an enrollment group, with the group's
// checks, initial tags and desired properties (docs/architecture.md, "Zero-touch enrollment"). A retry finds
// the device the first attempt created and reports it registered.
func (a *Activities) RegisterEnrolledDevice(ctx context.Context, in fleet.Registration) (fleet.RegistrationOutcome, error) {
	if a.Enroll == nil {
		return fleet.RegistrationOutcome{}, errNoStore("enrollment")
	}
	return a.Enroll.RegisterEnrolled(ctx, in)
}
