package main

import (
	"io"
	"os"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/scheme"
)

func TestPlanWaveWindows(t *testing.T) {
	sat := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC) // a Saturday
	pol := fleet.MaintenancePolicy{Window: "Sun 02:00-04:00", Timezone: "Europe/Berlin", WindowTag: "maintenance", TimezoneTag: "timezone",
		Deadline: sat.Add(36 * time.Hour)}
	count := func(wave int, win, tz string, n int64) registry.WaveWindowCount {
		return registry.WaveWindowCount{Wave: wave, WindowCount: registry.WindowCount{Window: win, Timezone: tz, Devices: n}}
	}
	perWave := 90 * time.Minute
	for _, tc := range []struct {
		name   string
		pol    fleet.MaintenancePolicy
		counts []registry.WaveWindowCount
		waves  int
		want   []waveWindows
	}{
		{"one wave: own windows, the operation's, one after the deadline, one that does not parse", pol, []registry.WaveWindowCount{
			count(0, "Sat 13:00-14:00", "UTC", 10),
			count(0, "", "", 5), // the operation's window: Sunday 01:00 UTC
			count(0, "Mon 10:00-11:00", "", 2),
			count(0, "Someday 10:00-11:00", "", 1),
		}, 1, []waveWindows{{Start: sat, FirstOpens: sat.Add(time.Hour), LastOpens: sat.Add(13 * time.Hour), OutsideWindow: 2, BadWindow: 1}}},
		{"a later wave starts after the last opening of the one before, plus install and bake", pol, []registry.WaveWindowCount{
			count(0, "Sat 13:00-14:00", "", 1),
			count(1, "Sat 13:00-14:00", "", 3), // the wave starts at 14:30, past the window: next Saturday is after the deadline
			count(1, "daily 00:00-24:00", "", 4),
		}, 2, []waveWindows{
			{Start: sat, FirstOpens: sat.Add(time.Hour), LastOpens: sat.Add(time.Hour)},
			{Start: sat.Add(time.Hour + perWave), FirstOpens: sat.Add(time.Hour + perWave), LastOpens: sat.Add(time.Hour + perWave), OutsideWindow: 3},
		}},
		{"an empty wave, and a wave whose devices are all outside, start at once", pol, []registry.WaveWindowCount{
			count(1, "Mon 10:00-11:00", "", 7),
			count(2, "daily 00:00-24:00", "", 1),
		}, 3, []waveWindows{{Start: sat}, {Start: sat, OutsideWindow: 7}, {Start: sat, FirstOpens: sat, LastOpens: sat}}},
		{"no operation window: devices without their own may be updated at any time",
			fleet.MaintenancePolicy{WindowTag: "mw", TimezoneTag: "zone", Deadline: sat.Add(time.Hour)},
			[]registry.WaveWindowCount{count(0, "", "", 3), count(0, "Sat 12:30-13:00", "Etc/GMT-1", 1)}, 1,
			// Etc/GMT-1 is UTC+1: 12:30 there is 11:30 UTC, already past; it opens next week.
			[]waveWindows{{Start: sat, FirstOpens: sat, LastOpens: sat, OutsideWindow: 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := planWaveWindows(tc.pol, tc.counts, tc.waves, sat, perWave)
			for i := range got {
				got[i].Start, got[i].FirstOpens, got[i].LastOpens = got[i].Start.UTC(), got[i].FirstOpens.UTC(), got[i].LastOpens.UTC()
			}
			require.Equal(t, tc.want, got)
		})
	}
}

func TestWindowTagsAgainstTheScheme(t *testing.T) {
	s, err := scheme.Compile(4, []byte(`{"type": "object", "properties": {
		"maintenance_window": {"type": "string", "format": "maintenance-window"},
		"tz": {"type": "string", "format": "timezone"},
		"plain": {"type": "string"}}}`), nil)
	require.NoError(t, err)
	bare, err := scheme.Compile(5, []byte(`{"type": "object", "properties": {"maintenance": {"type": "string"}}}`), nil)
	require.NoError(t, err)
	for _, tc := range []struct {
		name            string
		sch             *scheme.Scheme
		args            []string
		wantWin, wantTZ string
		err             string
		warnings        []string
	}{
		{"the scheme's formats name the default tags", s, []string{"--window-from-tags"}, "maintenance_window", "tz", "", nil},
		{"flags win over the scheme's defaults", s, []string{"--window-from-tags", "--window-tag", "plain", "--timezone-tag", "tz"}, "plain", "tz", "",
			[]string{`tags.plain is declared without "format": "maintenance-window": the scheme does not check its values`}},
		{"a misspelt window tag is refused with the nearest", s, []string{"--window-from-tags", "--window-tag", "maintenance_windwo"}, "", "",
			"--window-tag: tags.maintenance_windwo is not in the scheme (version 4); did you mean tags.maintenance_window?", nil},
		{"a misspelt time zone tag given on the command line is refused", s, []string{"--window-from-tags", "--timezone-tag", "zt"}, "", "",
			"--timezone-tag: tags.zt is not in the scheme (version 4)", nil},
		{"an undeclared default time zone tag only warns: windows are read in UTC", bare, []string{"--window-from-tags"}, "maintenance", "timezone", "",
			[]string{`tags.maintenance is declared without "format": "maintenance-window": the scheme does not check its values`,
				"--timezone-tag: tags.timezone is not in the scheme (version 5); devices' windows are read in UTC"}},
		{"without --window-from-tags nothing is checked", bare, []string{"--window", "daily 00:00-24:00"}, "maintenance", "timezone", "", nil},
		{"without a scheme nothing is checked", nil, []string{"--window-from-tags", "--window-tag", "anything"}, "anything", "timezone", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f windowFlags
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			addWindowFlags(fs, &f)
			require.NoError(t, fs.Parse(tc.args))
			warnings, err := f.applyScheme(tc.sch)
			require.Equal(t, tc.warnings, warnings)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.wantWin, f.windowTag)
			require.Equal(t, tc.wantTZ, f.timezoneTag)
		})
	}
}

// The plan's text shows, per wave, when its devices' windows open and how many are outside them.
func TestPrintRolloutPlanWithDeviceWindows(t *testing.T) {
	sat := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	deadline := sat.Add(36 * time.Hour)
	v := rolloutPlanView{Firmware: "2.4.0", Query: "SELECT * FROM devices", RolloutPlan: registry.RolloutPlan{Selected: 12, Eligible: 12},
		MaxFailures: "5%", Bake: "0s", DeviceTimeout: "10m0s", Deadline: &deadline,
		Waves: []plannedWave{
			{Wave: 1, Share: "10%", Devices: 2, Cumulative: 2, DeviceWindows: &waveWindows{Start: sat, FirstOpens: sat.Add(time.Hour), LastOpens: sat.Add(13 * time.Hour)}},
			{Wave: 2, Share: "100%", Devices: 10, Cumulative: 12, DeviceWindows: &waveWindows{Start: sat.Add(14 * time.Hour), OutsideWindow: 9, BadWindow: 1}},
		}}
	r, w, err := os.Pipe()
	require.NoError(t, err)
	stdout := os.Stdout
	os.Stdout = w
	err = printRolloutPlan(v)
	os.Stdout = stdout
	require.NoError(t, err)
	require.NoError(t, w.Close())
	out, err := io.ReadAll(r)
	require.NoError(t, err)
	require.Contains(t, string(out), "WINDOWS OPEN (UTC, FIRST - LAST)")
	require.Regexp(t, `1\s+10%\s+2\s+2\s+Sat 03-01 13:00 - Sun 03-02 01:00\s+0\n`, string(out))
	require.Regexp(t, `2\s+100%\s+10\s+12\s+-\s+9 \(\+1 with window tags that do not parse\)\n`, string(out))
}
