package report_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/report"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

var at = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// sample is a fleet of about a million devices with 15 firmware versions (so 3 go to "other"), alerts of
// every kind but one, three operations in flight and 12 health checks.
func sample() report.Data {
	d := report.Data{FleetReport: registry.FleetReport{
		At:      at,
		Devices: registry.DeviceCounts{Total: 1_000_000, Active: 990_000, Disabled: 9_000, Retired: 1_000, Online: 712_345, Offline: 286_655},
	}}
	fw := []int64{600_000, 230_000, 80_000, 40_000, 20_000, 10_000, 8_000, 5_000, 2_500, 1_500, 1_000, 500, 300, 150, 50}
	for i, n := range fw {
		v := fmt.Sprintf("2.%d.0", len(fw)-i)
		if i == 6 {
			v = "" // devices that report no version
		}
		d.Firmware = append(d.Firmware, registry.VersionCount{Version: v, Devices: n})
	}
	d.Alerts = []registry.KindCount{
		{Kind: registry.AlertOffline, Open: 4_000},
		{Kind: registry.AlertUnhealthy, Open: 120},
		{Kind: registry.AlertDesiredPending, Open: 0},
		{Kind: registry.AlertFirmwareNoncompliant, Open: 500},
		{Kind: registry.AlertCredentialExpiring, Open: 3},
	}
	d.Groups = []registry.GroupCount{{Name: "bench", Static: true, Members: 12}, {Name: "eu-canary", Members: 10_000}}
	d.Operations = []report.Operation{
		{ID: "rollout-2.15.0-3", Type: "FirmwareRollout", Op: "rollout", State: "running", Stage: "wave 2/4",
			Total: 10_000, Done: 3_000, Failed: 200, StartedAt: at.Add(-40 * time.Minute)},
		{ID: "job-set-desired-20250601-1130", Type: "FleetJob", Op: "job", State: "paused",
			Total: 250_000, Done: 250_000, StartedAt: at.Add(-30 * time.Minute)},
		{ID: "provision-factory-7-20250601-1155", Type: "BulkProvision", Op: "provision", StartedAt: at.Add(-5 * time.Minute)},
	}
	online := []int64{700_000, 701_200, 703_000, 699_000, 690_000, 695_500, 704_000, 708_000, 710_000, 711_000, 712_000, 712_345}
	for i, on := range online {
		start := at.Add(time.Duration(i-12) * time.Hour)
		fin := start.Add(3 * time.Second)
		d.Health = append(d.Health, registry.HealthRun{
			ID: fmt.Sprintf("healthcheck-%02d", i), StartedAt: start, FinishedAt: &fin,
			Summary: fleet.HealthSummary{At: start, Devices: 999_000, Active: 990_000, Disabled: 9_000, Retired: 1_000,
				Online: on, Offline: 999_000 - on, Open: 4_000 + int64(i*50), Problems: map[string]int64{string(registry.AlertOffline): 4_000},
				Duration: 3 * time.Second},
		})
	}
	return d
}

// empty is a fleet nobody has provisioned yet.
func empty() report.Data {
	return report.Data{FleetReport: registry.FleetReport{
		At:       at,
		Firmware: []registry.VersionCount{},
		Alerts:   []registry.KindCount{{Kind: registry.AlertOffline}, {Kind: registry.AlertUnhealthy}},
	}}
}

func text(t *testing.T, d report.Data) string {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, report.BuildText(&b, d))
	return b.String()
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "run go test -update to create it")
	require.Equal(t, string(want), got)
}

func TestTextGolden(t *testing.T) {
	golden(t, "report.txt", text(t, sample()))
	golden(t, "empty.txt", text(t, empty()))
	d := sample()
	d.Operations, d.OperationsError = nil, "connect to temporal at 127.0.0.1:7233: connection refused"
	golden(t, "no-temporal.txt", text(t, d))
}

// barLine matches a chart line: label, bar, count and optional share.
var barLine = regexp.MustCompile(`^  (.+?)\s{2,}([█▏▎▍▌▋▊▉]*)\s*\s([\d,]+)(?:\s+([\d.]+)%)?$`)

// eighthsOf measures a bar in eighths of a cell.
func eighthsOf(bar string) int {
	n := 0
	for _, r := range bar {
		if r == '█' {
			n += 8
		} else {
			n += strings.IndexRune("▏▎▍▌▋▊▉", r)/len("▏") + 1
		}
	}
	return n
}

// section returns the lines of the text report under the heading that starts with title, up to the blank line.
func section(t *testing.T, out, title string) []string {
	t.Helper()
	i := strings.Index(out, "\n"+title)
	require.GreaterOrEqual(t, i, 0, "no section %q in\n%s", title, out)
	rest := out[i+1:]
	if j := strings.Index(rest, "\n\n"); j >= 0 {
		rest = rest[:j]
	}
	return strings.Split(rest, "\n")
}

func TestTextBarsAreProportionalWithOtherBucket(t *testing.T) {
	d := sample()
	out := text(t, d)
	lines := section(t, out, "FIRMWARE")
	require.Contains(t, lines[0], "999,000 devices not retired, 15 versions")
	bars := lines[1:]
	require.Len(t, bars, report.TopVersions+1, "12 versions and other")
	var total, top int64
	for _, v := range d.Firmware {
		total += v.Devices
		top = max(top, v.Devices)
	}
	want := report.FirmwareBars(d.Firmware)
	for i, line := range bars {
		m := barLine.FindStringSubmatch(line)
		require.NotNil(t, m, "line %q", line)
		label, count := strings.TrimSpace(m[1]), strings.ReplaceAll(m[3], ",", "")
		n, err := strconv.ParseInt(count, 10, 64)
		require.NoError(t, err)
		require.Equal(t, want[i].Label, label)
		require.Equal(t, want[i].Value, n, label)
		exact := float64(n) / float64(top) * 40 * 8
		require.InDelta(t, exact, eighthsOf(m[2]), 1, "%s: bar %q is not proportional to %d", label, m[2], n)
		share, err := strconv.ParseFloat(m[4], 64)
		require.NoError(t, err)
		require.InDelta(t, 100*float64(n)/float64(total), share, 0.05)
	}
	require.Equal(t, "other (3 versions)", strings.TrimSpace(barLine.FindStringSubmatch(bars[12])[1]))
	require.Equal(t, "500", barLine.FindStringSubmatch(bars[12])[3], "300 + 150 + 50")
	require.Contains(t, out, report.NoVersion)

	alerts := section(t, out, "OPEN ALERTS")
	require.Contains(t, alerts[0], "4,623")
	for i, a := range d.Alerts {
		m := barLine.FindStringSubmatch(alerts[i+1])
		require.NotNil(t, m, "line %q", alerts[i+1])
		require.Equal(t, string(a.Kind), strings.TrimSpace(m[1]))
		require.Equal(t, report.Thousands(a.Open), m[3])
		require.InDelta(t, float64(a.Open)/4000*320, eighthsOf(m[2]), 1)
	}
}

func TestFirmwareBars(t *testing.T) {
	// Unsorted input, ties broken by version; exactly 12 versions need no "other".
	var fw []registry.VersionCount
	for i := 0; i < 12; i++ {
		fw = append(fw, registry.VersionCount{Version: fmt.Sprintf("v%02d", i), Devices: int64(i % 3)})
	}
	bars := report.FirmwareBars(fw)
	require.Len(t, bars, 12)
	require.Equal(t, report.Bar{Label: "v02", Value: 2}, bars[0])
	require.Equal(t, report.Bar{Label: "v05", Value: 2}, bars[1])
	require.Equal(t, report.Bar{Label: "v00", Value: 0}, bars[8])
	fw = append(fw, registry.VersionCount{Version: "", Devices: 1})
	bars = report.FirmwareBars(fw)
	require.Len(t, bars, 13)
	require.Equal(t, report.Bar{Label: "other (1 version)", Value: 0, Other: true}, bars[12])
	require.Equal(t, report.NoVersion, bars[4].Label)
	require.Empty(t, report.FirmwareBars(nil))
}

func TestBarCells(t *testing.T) {
	for _, c := range []struct {
		value, top int64
		want       string
	}{
		{0, 10, ""},
		{10, 10, strings.Repeat("█", 40)},
		{5, 10, strings.Repeat("█", 20)},
		{1, 1_000_000, "▏"}, // tiny but not zero
		{1, 64, "▋"},        // 1/64 of 320 eighths
		{33, 64, strings.Repeat("█", 20) + "▋"},
		{20, 10, strings.Repeat("█", 40)}, // never longer than the width
	} {
		require.Equal(t, c.want, report.BarCells(c.value, c.top, 40), "%d of %d", c.value, c.top)
	}
}

func TestSparkline(t *testing.T) {
	require.Equal(t, "▁▂▃▄▅▆▇█", report.Sparkline([]int64{0, 1, 2, 3, 4, 5, 6, 7}))
	require.Equal(t, "█▁", report.Sparkline([]int64{100, 50}))
	require.Equal(t, "▁▁▁", report.Sparkline([]int64{5, 5, 5}))
	require.Equal(t, "", report.Sparkline(nil))
}

func TestTextEmptyFleet(t *testing.T) {
	out := text(t, empty())
	for _, want := range []string{"DEVICES  none registered", "FIRMWARE  no devices", "OPEN ALERTS  0",
		"OPERATIONS IN FLIGHT  none", "HEALTH TREND  no health check has run yet"} {
		require.Contains(t, out, want)
	}
	require.NotContains(t, out, "NaN")
	require.NotContains(t, out, "█")
}

func TestTextTrendAndOperations(t *testing.T) {
	d := sample()
	out := text(t, d)
	trend := section(t, out, "HEALTH TREND")
	require.Equal(t, "HEALTH TREND  last 12 checks", trend[0])
	require.Contains(t, trend[1], "online")
	spark := strings.Fields(trend[1])[1]
	require.Equal(t, 12, utf8.RuneCountInString(spark))
	require.Equal(t, '▁', []rune(spark)[4], "690,000 is the minimum")
	require.Equal(t, '█', []rune(spark)[11], "712,345 is the maximum")
	require.Contains(t, trend[1], "700,000 → 712,345  (min 690,000, max 712,345)")
	require.Contains(t, trend[3], "open alerts")
	require.Contains(t, out, "2025-06-01 11:00  712,345  286,655        4,550")

	ops := section(t, out, "OPERATIONS IN FLIGHT")
	require.Equal(t, "OPERATIONS IN FLIGHT  3", ops[0])
	require.Contains(t, ops[2], "rollout-2.15.0-3")
	require.Contains(t, ops[2], "wave 2/4")
	require.Contains(t, ops[2], "[██████▒░░░░░░░░░░░░░]  32% 3,000 done, 200 failed of 10,000")
	require.Contains(t, ops[3], "[████████████████████] 100% 250,000 done, 0 failed of 250,000")
	require.Contains(t, ops[4], "?")
}

func TestTextCleansDeviceChosenLabels(t *testing.T) {
	d := empty()
	d.Firmware = []registry.VersionCount{{Version: "1.0\x1b[2J\x1b[31mevil", Devices: 3}, {Version: strings.Repeat("x", 100), Devices: 1}}
	out := text(t, d)
	require.NotContains(t, out, "\x1b")
	require.Contains(t, out, "1.0\uFFFD[2J\uFFFD[31mevil")
	require.Contains(t, out, strings.Repeat("x", 23)+"…")
	require.NotContains(t, out, strings.Repeat("x", 24))
}

func TestJSONRoundTrip(t *testing.T) {
	for name, d := range map[string]report.Data{"sample": sample(), "empty": empty()} {
		t.Run(name, func(t *testing.T) {
			b, err := json.Marshal(d)
			require.NoError(t, err)
			var back report.Data
			require.NoError(t, json.Unmarshal(b, &back))
			require.Equal(t, d, back)
			// The registry's fields are at the top level of the document.
			var doc map[string]any
			require.NoError(t, json.Unmarshal(b, &doc))
			for _, k := range []string{"at", "devices", "firmware", "alerts", "health", "operations"} {
				require.Contains(t, doc, k)
			}
		})
	}
}

func TestProgress(t *testing.T) {
	done, failed := report.Operation{Total: 10, Done: 3, Failed: 2}.Progress()
	require.InDelta(t, 0.3, done, 1e-9)
	require.InDelta(t, 0.2, failed, 1e-9)
	done, failed = report.Operation{Total: 10, Done: 9, Failed: 5}.Progress() // counters overshoot
	require.InDelta(t, 0.9, done, 1e-9)
	require.InDelta(t, 0.1, failed, 1e-9)
	done, failed = report.Operation{}.Progress()
	require.Zero(t, done+failed)
	require.False(t, math.IsNaN(done))
}

func TestThousands(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -1234: "-1,234"} {
		require.Equal(t, want, report.Thousands(n))
	}
}

// Health rules get a section of their own, with their latest check's counts, only when there are rules; the
// trend stays the fleet-wide check's.
func TestTextHealthRules(t *testing.T) {
	require.NotContains(t, text(t, sample()), "HEALTH RULES")
	d := sample()
	start := at.Add(-time.Minute)
	d.HealthRules = []registry.HealthRuleView{
		{HealthRule: fleet.HealthRule{Name: "critical", Query: fleet.GroupQuery("hospital-gw"), Group: "hospital-gw", Every: time.Minute},
			LastRun: &registry.HealthRun{ID: "healthcheck-critical-1", Rule: "critical", StartedAt: start,
				Summary: fleet.HealthSummary{Rule: "critical", Devices: 1_200, Open: 7,
					Problems: map[string]int64{string(registry.AlertOffline): 5, string(registry.AlertUnhealthy): 2}}}},
		{HealthRule: fleet.HealthRule{Name: "eu", Query: "SELECT * FROM devices WHERE tags.region = 'eu'", Every: time.Hour}},
	}
	rules := section(t, text(t, d), "HEALTH RULES")
	require.Equal(t, "HEALTH RULES  2", rules[0])
	require.Regexp(t, `^  critical\s+group hospital-gw\s+2025-06-01 11:59\s+1,200\s+5\s+2\s+0\s+0\s+0\s+7$`, rules[2])
	require.Regexp(t, `^  eu\s+SELECT \* FROM devices WHERE tags.region = 'eu'\s+never\s+-`, rules[3])
}
