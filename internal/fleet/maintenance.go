package fleet

import (
	"fmt"
	"time"

	"github.com/fleetflow/fleetflow/internal/window"
)

// Default tag names of a device's own maintenance window.
const (
	DefaultWindowTag   = "maintenance"
	DefaultTimezoneTag = "timezone"
)

// MaintenancePolicy says when an operation may disturb a device (docs/architecture.md, "Maintenance
// windows"): inside the device's own window, read from its tags (WindowTag, TimezoneTag) when it has one,
// else inside the operation's window (Window, Timezone), else at any time. A device whose window does not
// open before Deadline is reported as outside its window, never skipped silently.
type MaintenancePolicy struct {
	Window      string    `json:"window,omitempty"`
	Timezone    string    `json:"timezone,omitempty"`
	WindowTag   string    `json:"windowTag,omitempty"`
	TimezoneTag string    `json:"timezoneTag,omitempty"`
	Deadline    time.Time `json:"deadline"`
}

// Validate checks the operation's window and that there is a deadline.
func (p MaintenancePolicy) Validate() error {
	if p.Window != "" {
		if _, err := window.Parse(p.Window, p.Timezone); err != nil {
			return err
		}
	} else if p.Timezone != "" {
		return fmt.Errorf("a time zone (%s) without a window: give --window too", p.Timezone)
	}
	if p.Window == "" && p.WindowTag == "" {
		return fmt.Errorf("a maintenance policy needs a window or a window tag")
	}
	if p.Deadline.IsZero() {
		return fmt.Errorf("a maintenance policy needs a deadline")
	}
	return nil
}

// TagNames are the tags a device's window is read from (none when the policy reads no tags).
func (p MaintenancePolicy) TagNames() []string {
	if p.WindowTag == "" {
		return nil
	}
	tz := p.TimezoneTag
	if tz == "" {
		tz = DefaultTimezoneTag
	}
	return []string{p.WindowTag, tz}
}

// DeviceWindow is the window that applies to a device with tags (the values of TagNames): its own when its
// window tag is set, else the operation's. ok is false when neither applies (any time will do). A device
// whose own window does not parse is an error naming the tag.
func (p MaintenancePolicy) DeviceWindow(tags map[string]string) (w window.Window, ok bool, err error) {
	if names := p.TagNames(); names != nil && tags[names[0]] != "" {
		w, err = window.Parse(tags[names[0]], tags[names[1]])
		if err != nil {
			return w, false, fmt.Errorf("tags %s/%s: %w", names[0], names[1], err)
		}
		return w, true, nil
	}
	if p.Window == "" {
		return w, false, nil
	}
	w, err = window.Parse(p.Window, p.Timezone)
	return w, err == nil, err
}

// WindowVerdict is what a policy says about one device at one instant.
type WindowVerdict int

// The verdicts.
const (
	// WindowOpen: the device may be disturbed now.
	WindowOpen WindowVerdict = iota
	// WindowWait: its window opens later, before the deadline.
	WindowWait
	// WindowMissed: its window does not open before the deadline.
	WindowMissed
)

// Decide classifies a device at now; next is when its window opens (WindowWait, WindowMissed).
func (p MaintenancePolicy) Decide(w window.Window, ok bool, now time.Time) (WindowVerdict, time.Time) {
	if !ok {
		return WindowOpen, now
	}
	next := w.NextOpen(now)
	switch {
	case !next.After(now):
		if now.Before(p.Deadline) {
			return WindowOpen, now
		}
		return WindowMissed, next
	case next.Before(p.Deadline):
		return WindowWait, next
	}
	return WindowMissed, next
}

// MissedReason is the recorded error of a device whose window does not open before the deadline.
func (p MaintenancePolicy) MissedReason(w window.Window, next time.Time) string {
	return fmt.Sprintf("maintenance window %s does not open before the operation's deadline %s (next opening %s)",
		w, p.Deadline.UTC().Format(time.RFC3339), next.UTC().Format(time.RFC3339))
}
