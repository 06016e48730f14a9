package main

import (
	"time"

	"github.com/fleetflow/fleetflow/internal/numfmt"
)

// durationFlag is a duration flag that takes any duration an operator types: Go's ("90s", "48h") or whole
// days ("7d"), and 0 for the flag's default. Waits of days are safe: the workflows poll inside heartbeating
// activities and continue as new, so no wait outgrows a run's history (docs/architecture.md, "Temporal rules").
type durationFlag struct {
	d    *time.Duration
	name string
}

// newDurationFlag binds a durationFlag to d (which keeps its current value as the default).
func newDurationFlag(d *time.Duration, name string) durationFlag {
	return durationFlag{d: d, name: name}
}

// Set parses s.
func (f durationFlag) Set(s string) error {
	if s == "0" {
		*f.d = 0
		return nil
	}
	d, err := numfmt.ParseDuration("--"+f.name, s)
	if err != nil {
		return err
	}
	*f.d = d
	return nil
}

// String renders the value (days when whole, as operators type them).
func (f durationFlag) String() string {
	if f.d == nil || *f.d == 0 {
		return "0s"
	}
	return numfmt.FormatDuration(*f.d)
}

// Type names the value in --help.
func (f durationFlag) Type() string { return "duration" }
