package window

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func utc(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04", s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestNext(t *testing.T) {
	cases := []struct {
		name, spec, tz, at string
		start, end         string // UTC
		open               bool
	}{
		{"before, winter", "Sun 02:00-04:00", "Europe/Berlin", "2026-12-05 12:00", "2026-12-06 01:00", "2026-12-06 03:00", false},
		{"inside, winter", "Sun 02:00-04:00", "Europe/Berlin", "2026-12-06 01:30", "2026-12-06 01:00", "2026-12-06 03:00", true},
		{"at the end is closed", "Sun 02:00-04:00", "Europe/Berlin", "2026-12-06 03:00", "2026-12-13 01:00", "2026-12-13 03:00", false},
		{"at the start is open", "Sun 02:00-04:00", "Europe/Berlin", "2026-12-06 01:00", "2026-12-06 01:00", "2026-12-06 03:00", true},
		// 2026-03-29: Berlin skips 02:00-03:00; the window opens when the gap ends and lasts one hour.
		{"spring forward: start in the gap", "Sun 02:00-04:00", "Europe/Berlin", "2026-03-28 12:00", "2026-03-29 01:00", "2026-03-29 02:00", false},
		{"spring forward: end in the gap", "Sun 01:00-02:30", "Europe/Berlin", "2026-03-28 12:00", "2026-03-29 00:00", "2026-03-29 01:00", false},
		{"spring forward: window swallowed by the gap", "Sun 02:15-02:45", "Europe/Berlin", "2026-03-28 12:00", "2026-04-05 00:15", "2026-04-05 00:45", false},
		// 2026-10-25: Berlin repeats 02:00-03:00; the window opens at the first 02:00 and lasts three hours.
		{"fall back: repeated hour", "Sun 02:00-04:00", "Europe/Berlin", "2026-10-24 12:00", "2026-10-25 00:00", "2026-10-25 03:00", false},
		{"fall back: inside the second 02:30", "Sun 02:00-04:00", "Europe/Berlin", "2026-10-25 01:30", "2026-10-25 00:00", "2026-10-25 03:00", true},
		// 2026-03-08: New York skips 02:00-03:00, which swallows the window; the next Sunday's is in EDT (UTC-4).
		{"new york spring forward", "Sun 02:00-03:00", "America/New_York", "2026-03-07 12:00", "2026-03-15 06:00", "2026-03-15 07:00", false},
		{"crossing midnight, open after midnight", "Fri 22:00-02:00", "", "2026-12-05 01:00", "2026-12-04 22:00", "2026-12-05 02:00", true},
		{"crossing midnight, after it closed", "Mon-Fri 22:00-02:00", "", "2026-12-05 03:00", "2026-12-07 22:00", "2026-12-08 02:00", false},
		{"crossing midnight, weekday range", "Mon-Fri 22:00-02:00", "UTC", "2026-12-08 23:00", "2026-12-08 22:00", "2026-12-09 02:00", true},
		{"range wrapping the week", "Fri-Mon 10:00-11:00", "", "2026-12-06 12:00", "2026-12-07 10:00", "2026-12-07 11:00", false},
		{"daily all day", "daily 00:00-24:00", "Asia/Tokyo", "2026-12-06 12:34", "2026-12-05 15:00", "2026-12-06 15:00", true},
		{"several slots, the earliest", "Sat,Sun 01:00-03:00; Wed 12:00-13:00", "", "2026-12-07 12:00", "2026-12-09 12:00", "2026-12-09 13:00", false},
		{"tokyo has no DST", "Sun 02:00-04:00", "Asia/Tokyo", "2026-03-28 00:00", "2026-03-28 17:00", "2026-03-28 19:00", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w, err := Parse(c.spec, c.tz)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			at := utc(c.at)
			start, end := w.Next(at)
			if !start.Equal(utc(c.start)) || !end.Equal(utc(c.end)) {
				t.Fatalf("Next(%s) = %s – %s, want %s – %s (UTC)", c.at, start.UTC().Format(time.DateTime), end.UTC().Format(time.DateTime), c.start, c.end)
			}
			if got := w.Open(at); got != c.open {
				t.Fatalf("Open(%s) = %v, want %v", c.at, got, c.open)
			}
			wantNext := utc(c.start)
			if c.open {
				wantNext = at
			}
			if got := w.NextOpen(at); !got.Equal(wantNext) {
				t.Fatalf("NextOpen(%s) = %s, want %s", c.at, got.UTC(), wantNext)
			}
		})
	}
}

func TestOpensBefore(t *testing.T) {
	w, err := Parse("Sun 02:00-04:00", "Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	at := utc("2026-12-01 00:00") // a Tuesday
	if w.OpensBefore(at, at.Add(24*time.Hour)) {
		t.Fatal("a Sunday window opens within a day of Tuesday")
	}
	if !w.OpensBefore(at, at.Add(6*24*time.Hour)) {
		t.Fatal("the Sunday window must open within six days of Tuesday")
	}
	if got := w.String(); got != "Sun 02:00-04:00 Europe/Berlin" {
		t.Fatalf("String() = %q", got)
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct{ spec, tz, want string }{
		{"", "", "empty spec"},
		{"Sun", "", "want DAYS HH:MM-HH:MM"},
		{"Sun 02:00 04:00", "", "want DAYS HH:MM-HH:MM"},
		{"Sun 02:00", "", "want a time range"},
		{"Sun 0200-0400", "", `time "0200": want HH:MM`},
		{"Sun 2:00-04:00", "", `time "2:00": want HH:MM`},
		{"Sun 02:60-03:00", "", `time "02:60"`},
		{"Sun 25:00-26:00", "", "hours go from 00 to 23"},
		{"Sun 24:00-02:00", "", "24:00 only as an end"},
		{"Sun 02:00-02:00", "", "opens and closes at the same time"},
		{"Funday 02:00-04:00", "", `unknown day "Funday"`},
		{"Mon-Fry 02:00-04:00", "", `unknown day "Fry"`},
		{"Sun 02:00-04:00; Sat", "", `"Sat": want DAYS`},
		{"Sun 02:00-04:00", "Europe/Berln", `unknown time zone "Europe/Berln"`},
	}
	for _, c := range cases {
		_, err := Parse(c.spec, c.tz)
		if err == nil {
			t.Errorf("Parse(%q, %q) succeeded", c.spec, c.tz)
			continue
		}
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q, %q) = %v, want an ErrInvalid mentioning %q", c.spec, c.tz, err, c.want)
		}
	}
}
