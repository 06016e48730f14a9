// Package report renders `fleetflow report`, the fleet at a glance, as terminal text (BuildText), as one
// JSON document (Data marshals as is) and as a self-contained HTML page (HTML).
//
// Rendering is pure: Data is gathered elsewhere (the registry's FleetReport and the operations that
// Temporal's visibility lists, see ListOperations) so that every layout can be tested on made-up fleets
// without servers.
package report

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/registry"
)

// TopVersions is how many firmware versions the charts draw; the rest share one "other" bar, so that a
// fleet with a long tail of versions still fits on a screen.
const TopVersions = 12

// Data is everything a report shows. Marshalled to JSON it is the output of `fleetflow report -o json`;
// the registry's fields appear at the top level.
type Data struct {
	registry.FleetReport
	// Operations are the fleet operations in flight, newest first.
	Operations []Operation `json:"operations"`
	// OperationsMore says that more operations are running than Operations lists.
	OperationsMore bool `json:"operationsMore,omitempty"`
	// OperationsError says why Operations could not be listed (e.g. Temporal is unreachable); the rest of
	// the report is still valid.
	OperationsError string `json:"operationsError,omitempty"`
}

// Bar is one bar of a chart: a label and its count.
type Bar struct {
	Label string
	Value int64
	// Other is true for the bar that sums the versions beyond TopVersions.
	Other bool
}

// NoVersion labels the devices that report no firmware version.
const NoVersion = "(none reported)"

// FirmwareBars returns the bars of the firmware chart: the TopVersions most common versions, most devices
// first (ties by version, so the order is stable), then one "other (N versions)" bar for the rest.
func FirmwareBars(fw []registry.VersionCount) []Bar {
	sorted := slices.Clone(fw)
	slices.SortStableFunc(sorted, func(a, b registry.VersionCount) int {
		return cmp.Or(cmp.Compare(b.Devices, a.Devices), cmp.Compare(a.Version, b.Version))
	})
	var bars []Bar
	for i, v := range sorted {
		if i == TopVersions {
			var rest int64
			for _, o := range sorted[i:] {
				rest += o.Devices
			}
			n := len(sorted) - i
			bars = append(bars, Bar{Label: fmt.Sprintf("other (%d %s)", n, plural(n, "version", "versions")), Value: rest, Other: true})
			break
		}
		label := v.Version
		if label == "" {
			label = NoVersion
		}
		bars = append(bars, Bar{Label: label, Value: v.Devices})
	}
	return bars
}

// Progress is an operation's progress as fractions of its total, each within [0, 1] and together at
// most 1 (counters upserted in separate steps may briefly overshoot the total).
func (o Operation) Progress() (done, failed float64) {
	if o.Total <= 0 {
		return 0, 0
	}
	done = min(1, float64(o.Done)/float64(o.Total))
	failed = min(1-done, float64(o.Failed)/float64(o.Total))
	return max(0, done), max(0, failed)
}

// Thousands formats n with thousands separators, as the rest of the CLI does (internal/numfmt).
func Thousands(n int64) string { return numfmt.Thousands(n) }

// Clean makes a label that devices or operators chose safe and short for a terminal or a chart: control
// characters (a reported firmware version could carry terminal escape sequences) become U+FFFD, and
// anything longer than width runes is cut with an ellipsis.
func Clean(s string, width int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return '\uFFFD'
		}
		return r
	}, s)
	if utf8.RuneCountInString(s) > width {
		r := []rune(s)
		s = string(r[:width-1]) + "…"
	}
	return s
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// percent is part of whole in percent, 0 for an empty whole.
func percent(part, whole int64) float64 {
	if whole <= 0 {
		return 0
	}
	return 100 * float64(part) / float64(whole)
}

// sum adds up the bars.
func sum(bars []Bar) int64 {
	var n int64
	for _, b := range bars {
		n += b.Value
	}
	return n
}

// maxValue is the largest bar, at least 1 so that scales never divide by zero.
func maxValue(bars []Bar) int64 {
	m := int64(1)
	for _, b := range bars {
		m = max(m, b.Value)
	}
	return m
}

// alertBars are the open alerts as bars, in the registry's order (AlertKinds first).
func alertBars(alerts []registry.KindCount) []Bar {
	bars := make([]Bar, len(alerts))
	for i, a := range alerts {
		bars[i] = Bar{Label: string(a.Kind), Value: a.Open}
	}
	return bars
}

// Trend is one series of the health trend: a value per health run, oldest first.
type Trend struct {
	Name   string
	Values []int64
}

// HealthTrends returns the trend's series: devices online, devices offline and open alerts after each
// health check.
func HealthTrends(runs []registry.HealthRun) []Trend {
	t := []Trend{{Name: "online"}, {Name: "offline"}, {Name: "open alerts"}}
	for _, r := range runs {
		t[0].Values = append(t[0].Values, r.Summary.Online)
		t[1].Values = append(t[1].Values, r.Summary.Offline)
		t[2].Values = append(t[2].Values, r.Summary.Open)
	}
	return t
}

// groupBars draws each group's member count, labelled with its name and kind.
func groupBars(groups []registry.GroupCount) []Bar {
	bars := make([]Bar, len(groups))
	for i, g := range groups {
		kind := "dynamic"
		if g.Static {
			kind = "static"
		}
		bars[i] = Bar{Label: g.Name + " (" + kind + ")", Value: g.Members}
	}
	return bars
}
