// Package window parses maintenance windows ("Sun 02:00-04:00" in "Europe/Berlin") and computes when they
// open and close. It is pure — no I/O beyond the time zone database — so that workflows can ask it when a
// device may be disturbed (inside a side effect, since the zone database belongs to the host) and tests can
// pin every case: daylight-saving gaps and overlaps, windows that cross midnight, specs that do not parse
// (docs/architecture.md, "Maintenance windows").
//
// A spec is one or more windows separated by ";", each "DAYS HH:MM-HH:MM": DAYS is "daily", a day
// ("Sun"), a range ("Mon-Fri") or a list of days and ranges ("Sat,Sun", "Mon-Wed,Fri"). The times are wall
// clock in the window's time zone; an end before the start means the window crosses midnight and closes on
// the next day ("Fri 22:00-02:00" closes on Saturday), and "24:00" is the end of the day. A window opens on
// each of its days at the start time.
//
// Wall-clock times that a daylight-saving change skips or repeats are resolved the same way for starts and
// ends: the window boundary is the first instant at which the local clock shows that time or later. So
// "Sun 02:00-04:00" in Europe/Berlin opens at 03:00 CEST on the spring-forward Sunday (02:00 does not exist
// that day) and lasts one hour, and on the fall-back Sunday opens at the first 02:00 (CEST) and lasts three.
package window

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ErrInvalid is wrapped by every parse error, so callers can tell a bad spec from other failures.
var ErrInvalid = errors.New("invalid maintenance window")

// Window is a parsed maintenance window: one or more weekly slots in one time zone. The zero value is not a
// window; use Parse.
type Window struct {
	spec  string
	loc   *time.Location
	slots []slot
}

// slot is one "DAYS HH:MM-HH:MM" part: the days it opens on and its wall-clock bounds in minutes of the day.
type slot struct {
	days       [7]bool // indexed by time.Weekday
	start, end int     // minutes after midnight; end ≤ start crosses midnight; end may be 1440
}

var dayNames = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

// Parse reads a window spec in the time zone tz (an IANA name such as "Europe/Berlin"; empty means UTC).
// Errors wrap ErrInvalid and say which part is wrong.
func Parse(spec, tz string) (Window, error) {
	loc := time.UTC
	if tz != "" {
		var err error
		if loc, err = time.LoadLocation(tz); err != nil {
			return Window{}, fmt.Errorf("%w: unknown time zone %q (use an IANA name such as Europe/Berlin)", ErrInvalid, tz)
		}
	}
	w := Window{spec: strings.TrimSpace(spec), loc: loc}
	if w.spec == "" {
		return Window{}, fmt.Errorf("%w: empty spec (want e.g. \"Sun 02:00-04:00\")", ErrInvalid)
	}
	for part := range strings.SplitSeq(w.spec, ";") {
		s, err := parseSlot(strings.TrimSpace(part))
		if err != nil {
			return Window{}, fmt.Errorf("%w %q: %w", ErrInvalid, spec, err)
		}
		w.slots = append(w.slots, s)
	}
	return w, nil
}

func parseSlot(part string) (slot, error) {
	var s slot
	fields := strings.Fields(part)
	if len(fields) != 2 {
		return s, fmt.Errorf("%q: want DAYS HH:MM-HH:MM, e.g. \"Sun 02:00-04:00\" or \"Mon-Fri 22:00-02:00\"", part)
	}
	if err := parseDays(fields[0], &s.days); err != nil {
		return s, err
	}
	from, to, ok := strings.Cut(fields[1], "-")
	if !ok {
		return s, fmt.Errorf("%q: want a time range HH:MM-HH:MM", fields[1])
	}
	var err error
	if s.start, err = parseClock(from, false); err != nil {
		return s, err
	}
	if s.end, err = parseClock(to, true); err != nil {
		return s, err
	}
	if s.start == s.end {
		return s, fmt.Errorf("%q: the window opens and closes at the same time", fields[1])
	}
	return s, nil
}

func parseDays(f string, days *[7]bool) error {
	if strings.EqualFold(f, "daily") {
		for i := range days {
			days[i] = true
		}
		return nil
	}
	for item := range strings.SplitSeq(f, ",") {
		a, b, isRange := strings.Cut(item, "-")
		from, ok := dayNames[strings.ToLower(a)]
		if !ok {
			return fmt.Errorf("unknown day %q (use Mon Tue Wed Thu Fri Sat Sun, a range Mon-Fri, or daily)", a)
		}
		to := from
		if isRange {
			if to, ok = dayNames[strings.ToLower(b)]; !ok {
				return fmt.Errorf("unknown day %q (use Mon Tue Wed Thu Fri Sat Sun, a range Mon-Fri, or daily)", b)
			}
		}
		// A range wraps around the week: Fri-Mon is Fri, Sat, Sun, Mon.
		for d := from; ; d = (d + 1) % 7 {
			days[d] = true
			if d == to {
				break
			}
		}
	}
	return nil
}

func parseClock(s string, end bool) (int, error) {
	h, m, ok := strings.Cut(s, ":")
	if !ok || len(h) != 2 || len(m) != 2 {
		return 0, fmt.Errorf("time %q: want HH:MM (24-hour, two digits each)", s)
	}
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	switch {
	case err1 != nil || err2 != nil || hh < 0 || mm < 0 || mm > 59:
		return 0, fmt.Errorf("time %q: want HH:MM (24-hour, two digits each)", s)
	case hh == 24 && mm == 0 && end:
		return 24 * 60, nil
	case hh > 23:
		return 0, fmt.Errorf("time %q: hours go from 00 to 23 (24:00 only as an end)", s)
	}
	return hh*60 + mm, nil
}

// String is the spec and its zone, as an operator wrote them: "Sun 02:00-04:00 Europe/Berlin".
func (w Window) String() string {
	if w.loc == nil {
		return ""
	}
	return w.spec + " " + w.loc.String()
}

// Spec is the window's spec as given (trimmed).
func (w Window) Spec() string { return w.spec }

// Zone is the window's time zone name.
func (w Window) Zone() string {
	if w.loc == nil {
		return ""
	}
	return w.loc.String()
}

// Next returns the occurrence of the window that contains t, or else the first one that opens after t:
// start ≤ t < end when t is inside a window, t < start otherwise. Overlapping slots are not merged: the
// occurrence returned is the one that ends first among those containing t, or opens first.
func (w Window) Next(t time.Time) (start, end time.Time) {
	local := t.In(w.loc)
	y, m, d := local.Date()
	// A window that opened yesterday may still be open (it crosses midnight); a weekly slot opens again
	// within 7 days, and 8 covers a spec whose only day is today with a window already past.
	for off := -1; off <= 8; off++ {
		day := time.Date(y, m, d+off, 12, 0, 0, 0, w.loc) // noon: never in a transition
		for _, s := range w.slots {
			if !s.days[day.Weekday()] {
				continue
			}
			st := wallInstant(w.loc, day.Year(), day.Month(), day.Day(), s.start)
			endDay := day
			if s.end <= s.start {
				endDay = day.AddDate(0, 0, 1)
			}
			en := wallInstant(w.loc, endDay.Year(), endDay.Month(), endDay.Day(), s.end)
			if !en.After(t) || !en.After(st) {
				continue // over, or a window that a clock change swallowed whole
			}
			if start.IsZero() || st.Before(start) || (st.Equal(start) && en.Before(end)) {
				start, end = st, en
			}
		}
		if !start.IsZero() && !start.After(t) {
			break // open now: nothing later can start earlier
		}
	}
	return start.In(w.loc), end.In(w.loc)
}

// Open reports whether t is inside the window.
func (w Window) Open(t time.Time) bool {
	start, end := w.Next(t)
	return !start.After(t) && t.Before(end)
}

// NextOpen is when the window is next open at or after t: t itself when it is open now.
func (w Window) NextOpen(t time.Time) time.Time {
	start, _ := w.Next(t)
	if start.After(t) {
		return start
	}
	return t
}

// OpensBefore reports whether the window is open at some instant in [t, deadline).
func (w Window) OpensBefore(t, deadline time.Time) bool {
	return w.NextOpen(t).Before(deadline)
}

// wallInstant is the first instant at which the clock in loc shows the date and minute of day min, or a
// later time of that date: the time itself when it exists once, its first occurrence when a fall-back
// repeats it, and the end of the gap when a spring-forward skips it. min may be 1440 (the next midnight).
func wallInstant(loc *time.Location, y int, mo time.Month, d, min int) time.Time {
	want := wallKey(y, mo, d, min)
	g := time.Date(y, mo, d, min/60, min%60, 0, 0, loc)
	// The usual case: the clock shows exactly this time, and did not an hour (or half-hour) earlier.
	if wallOf(g, loc) == want && wallOf(g.Add(-30*time.Minute), loc) < want && wallOf(g.Add(-time.Hour), loc) < want {
		return g
	}
	// Around a transition: scan minute by minute from three hours before (no zone moves its clock by more).
	for u := g.Add(-3 * time.Hour).Truncate(time.Minute); ; u = u.Add(time.Minute) {
		if wallOf(u, loc) >= want {
			return u
		}
	}
}

// wallKey orders wall-clock minutes: year, month, day, minute of day.
func wallKey(y int, mo time.Month, d, min int) int64 {
	return ((int64(y)*13+int64(mo))*32+int64(d))*1441 + int64(min)
}

func wallOf(t time.Time, loc *time.Location) int64 {
	l := t.In(loc)
	y, mo, d := l.Date()
	return wallKey(y, mo, d, l.Hour()*60+l.Minute())
}
