package registry_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/registry/registrytest"
	"github.com/fleetflow/fleetflow/internal/rollout"
)

// Maintenance windows are read from devices' tags: per device for a job's batch, grouped for a plan.
func TestWindowTags(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Open(t)
	registrytest.Provision(t, reg, "win", 4)
	setTags(t, reg, "win-00", `{"maintenance": "Sun 02:00-04:00", "timezone": "Europe/Berlin", "site": "a"}`)
	setTags(t, reg, "win-01", `{"maintenance": "Sun 02:00-04:00", "timezone": "Europe/Berlin", "site": "a"}`)
	setTags(t, reg, "win-02", `{"maintenance": "daily 01:00-02:00", "site": "a"}`)
	setTags(t, reg, "win-03", `{"site": "b", "timezone": 3}`)

	got, err := reg.TargetTags(ctx, []string{"win-00", "win-02", "win-03", "nope"}, []string{"maintenance", "timezone"})
	require.NoError(t, err)
	assert.Equal(t, map[string]map[string]string{
		"win-00": {"maintenance": "Sun 02:00-04:00", "timezone": "Europe/Berlin"},
		"win-02": {"maintenance": "daily 01:00-02:00"},
		"win-03": {"timezone": "3"},
	}, got)

	counts, err := reg.WindowCounts(ctx, "SELECT * FROM devices WHERE tags.site = 'a'", "maintenance", "timezone")
	require.NoError(t, err)
	assert.Equal(t, []registry.WindowCount{
		{Window: "Sun 02:00-04:00", Timezone: "Europe/Berlin", Devices: 2},
		{Window: "daily 01:00-02:00", Timezone: "", Devices: 1},
	}, counts)
}

// A plan's windows per wave rank the devices exactly as the rollout of that id will: the device a first
// wave of one dispatches is the one the plan put in wave 1.
func TestWaveWindowCountsRankAsTheRolloutWill(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Open(t)
	registrytest.Provision(t, reg, "ww", 6)
	windows := map[string]string{}
	for i, w := range []string{"Sun 02:00-04:00", "daily 01:00-02:00", "", "Mon 10:00-11:00", "daily 01:00-02:00", "Sun 02:00-04:00"} {
		id := fmt.Sprintf("ww-%02d", i)
		windows[id] = w
		tags := `{"site": "w"}`
		if w != "" {
			tags = `{"site": "w", "mw": "` + w + `", "zone": "UTC"}`
		}
		setTags(t, reg, id, tags)
	}
	fw := fleet.Firmware{Version: "9.1.0", URL: "https://fw.example/9.1.0.bin", SHA256: strings.Repeat("ab", 32)}
	_, err := reg.AddFirmware(ctx, fw)
	require.NoError(t, err)
	q := "SELECT * FROM devices WHERE tags.site = 'w'"
	counts, err := reg.WaveWindowCounts(ctx, q, fw.Version, "rollout-9.1.0-1", []int64{1, 3, 6}, "mw", "zone")
	require.NoError(t, err)
	perWave := map[int]int64{}
	perWindow := map[string]int64{}
	var first registry.WaveWindowCount
	for _, c := range counts {
		perWave[c.Wave] += c.Devices
		perWindow[c.Window] += c.Devices
		if c.Wave == 0 {
			first = c
		}
	}
	assert.Equal(t, map[int]int64{0: 1, 1: 2, 2: 3}, perWave)
	assert.Equal(t, map[string]int64{"Sun 02:00-04:00": 2, "daily 01:00-02:00": 2, "": 1, "Mon 10:00-11:00": 1}, perWindow)

	_, err = reg.CreateRollout(ctx, fleet.NewRollout{ID: "rollout-9.1.0-1", Version: fw.Version, Query: q, Spec: json.RawMessage(`{}`)})
	require.NoError(t, err)
	pushes, _, _, err := reg.DispatchWave(ctx, "rollout-9.1.0-1", 0, 1, fw, 10)
	require.NoError(t, err)
	require.Len(t, pushes, 1)
	assert.Equal(t, first.Window, windows[pushes[0].DeviceID], "the plan's first wave is the rollout's")
	if first.Window != "" {
		assert.Equal(t, "UTC", first.Timezone)
	}
}

// BenchmarkWindowedDispatchPass measures one pass of a wave of 10,000 devices in 24 windows none of which is
// open: the cost a rollout pays per opening for the devices that keep waiting (the rows are read, judged
// and left queued, in chunks of 2,000). Run with `go test -run '^$' -bench WindowedDispatchPass
// ./internal/registry/`.
func BenchmarkWindowedDispatchPass(b *testing.B) {
	ctx := context.Background()
	reg := registrytest.Open(b)
	const n = 10000
	registrytest.Provision(b, reg, "bw", n)
	_, err := reg.Pool().Exec(ctx, `UPDATE devices SET tags = tags || jsonb_build_object('maintenance',
		format('daily %s:00-%s:30', lpad((abs(hashtext(id)) % 24)::text, 2, '0'), lpad((abs(hashtext(id)) % 24)::text, 2, '0')),
		'timezone', 'Europe/Berlin') WHERE id LIKE 'bw-%'`)
	require.NoError(b, err)
	fw := fleet.Firmware{Version: "9.2.0", URL: "https://fw.example/9.2.0.bin", SHA256: strings.Repeat("ab", 32)}
	_, err = reg.AddFirmware(ctx, fw)
	require.NoError(b, err)
	_, err = reg.CreateRollout(ctx, fleet.NewRollout{ID: "ro-bench", Version: fw.Version, Query: "SELECT * FROM devices", Spec: json.RawMessage(`{}`)})
	require.NoError(b, err)
	wait := func(string, map[string]string) (bool, rollout.Phase, string) { return false, "", "" }
	b.ResetTimer()
	for b.Loop() {
		judged, after := 0, int64(-1)
		for {
			chunk, err := reg.DispatchWaveWindowed(ctx, "ro-bench", 0, after, n, fw, 2000, []string{"maintenance", "timezone"}, func(id string, tags map[string]string) (bool, rollout.Phase, string) {
				judged++
				return wait(id, tags)
			})
			require.NoError(b, err)
			if !chunk.More {
				break
			}
			after = chunk.Last
		}
		require.Equal(b, n, judged)
	}
}
