package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spf13/pflag"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/scheme"
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
	fs                     *pflag.FlagSet // to tell a tag name given from the default
}

func addWindowFlags(fl *pflag.FlagSet, f *windowFlags) {
	f.fs = fl
	fl.StringVar(&f.window, "window", "", `maintenance window the operation may disturb devices in, e.g. "Sun 02:00-04:00" or "Mon-Fri 22:00-02:00; Sat 10:00-12:00"`)
	fl.StringVar(&f.timezone, "timezone", "", "time zone of --window (IANA name, e.g. Europe/Berlin; default UTC)")
	fl.BoolVar(&f.fromTags, "window-from-tags", false, "use each device's own window from its tags (--window-tag, --timezone-tag) where it has one")
	fl.StringVar(&f.windowTag, "window-tag", fleet.DefaultWindowTag, `tag holding a device's maintenance window (with --window-from-tags; default: the tag the scheme declares with "format": "maintenance-window", else maintenance)`)
	fl.StringVar(&f.timezoneTag, "timezone-tag", fleet.DefaultTimezoneTag, `tag holding the time zone of a device's window (with --window-from-tags; default: the tag the scheme declares with "format": "timezone", else timezone)`)
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

// applyScheme settles the window and time zone tag names against the scheme in force (nil: none), before
// policy (docs/architecture.md, "Maintenance windows"). A name not given on the command line defaults to
// the one top-level tag the scheme declares with the matching format. A window tag the scheme does not
// declare (or a time zone tag given on the command line) is refused, naming the nearest declared tag: a misspelt tag would silently give every device the operation's
// window (or none), disturbing devices outside their windows. A declared tag without the format only draws a
// warning: its values are not checked when they are written.
func (f *windowFlags) applyScheme(s *scheme.Scheme) (warnings []string, err error) {
	if !f.fromTags || s == nil {
		return nil, nil
	}
	for _, t := range []struct {
		flag, format string
		name         *string
	}{{"window-tag", scheme.FormatWindow, &f.windowTag}, {"timezone-tag", scheme.FormatTimezone, &f.timezoneTag}} {
		declared := s.TagsWithFormat(t.format)
		given := f.fs != nil && f.fs.Changed(t.flag)
		if !given && len(declared) == 1 {
			*t.name = declared[0]
		}
		path := scheme.Join("tags", *t.name)
		if _, ok := s.Lookup(path); !ok {
			msg := fmt.Sprintf("--%s: %s is not in the scheme (version %d)", t.flag, path, s.Version)
			if near := s.Suggest(path); near != "" {
				msg += "; did you mean " + near + "?"
			}
			if t.format == scheme.FormatTimezone && !given {
				// Devices may well have no time zone tag: their windows are read in UTC.
				warnings = append(warnings, msg+"; devices' windows are read in UTC")
				continue
			}
			return warnings, errors.New(msg + ` (declare it with "format": "` + t.format + `", or name the tag with --` + t.flag + ")")
		}
		if !slices.Contains(declared, *t.name) {
			warnings = append(warnings, fmt.Sprintf(`%s is declared without "format": "%s": the scheme does not check its values`, path, t.format))
		}
	}
	return warnings, nil
}

// policyFor is policy with the tag names settled against the registry's scheme (applyScheme); its warnings
// go to stderr, its refusals are usage errors.
func (f *windowFlags) policyFor(ctx context.Context, reg *registry.Registry, now time.Time) (*fleet.MaintenancePolicy, error) {
	if f.fromTags {
		s, err := reg.ActiveScheme(ctx)
		if err != nil {
			return nil, err
		}
		warnings, err := f.applyScheme(s)
		printWarnings(warnings)
		if err != nil {
			return nil, asUsage(err)
		}
	}
	p, err := f.policy(now)
	return p, asUsage(err)
}
