package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// defaultWindowDeadline is how long an operation with a maintenance window waits for windows to open
// unless --deadline says otherwise: a week holds every weekly window.
const defaultWindowDeadline = 7 * 24 * time.Hour

// windowFlags are the maintenance-window flags of jobs and rollouts (docs/architecture.md, "Maintenance
// windows").
type windowFlags struct {
	window, timezone       string
	fromTags               bool
	windowTag, timezoneTag string
	deadline               time.Duration
}

func addWindowFlags(fl *pflag.FlagSet, f *windowFlags) {
	fl.StringVar(&f.window, "window", "", `maintenance window the operation may disturb devices in, e.g. "Sun 02:00-04:00" or "Mon-Fri 22:00-02:00; Sat 10:00-12:00"`)
	fl.StringVar(&f.timezone, "timezone", "", "time zone of --window (IANA name, e.g. Europe/Berlin; default UTC)")
	fl.BoolVar(&f.fromTags, "window-from-tags", false, "use each device's own window from its tags (--window-tag, --timezone-tag) where it has one")
	fl.StringVar(&f.windowTag, "window-tag", fleet.DefaultWindowTag, "tag holding a device's maintenance window (with --window-from-tags)")
	fl.StringVar(&f.timezoneTag, "timezone-tag", fleet.DefaultTimezoneTag, "tag holding the time zone of a device's window (with --window-from-tags)")
	fl.Var(newDurationFlag(&f.deadline, "deadline"), "deadline", "with a window: devices whose window does not open within this time are reported as outside their window (default 7d)")
}

// policy is the maintenance policy the flags describe, with its deadline counted from now; nil when no
// window applies. Its errors are usage errors.
func (f *windowFlags) policy(now time.Time) (*fleet.MaintenancePolicy, error) {
	if f.window == "" && !f.fromTags {
		if f.timezone != "" || f.deadline != 0 {
			return nil, errors.New("--timezone and --deadline need --window or --window-from-tags")
		}
		return nil, nil
	}
	d := f.deadline
	if d == 0 {
		d = defaultWindowDeadline
	}
	p := &fleet.MaintenancePolicy{Window: f.window, Timezone: f.timezone, Deadline: now.Add(d).UTC().Truncate(time.Second)}
	if f.fromTags {
		p.WindowTag, p.TimezoneTag = f.windowTag, f.timezoneTag
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("--window: %w", err)
	}
	return p, nil
}
