package main

import (
	"time"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/registry"
)

// waveWindows is what `rollout plan --window-from-tags` says of one wave (docs/architecture.md,
// "Maintenance windows"): when the windows of its devices open, counted from the wave's estimated start,
// and how many devices would be reported outside their window or have window tags that do not parse.
type waveWindows struct {
	Start         time.Time `json:"start"`               // the wave's estimated start
	FirstOpens    time.Time `json:"firstOpens,omitzero"` // the earliest opening of its devices' windows
	LastOpens     time.Time `json:"lastOpens,omitzero"`  // the latest
	OutsideWindow int64     `json:"outsideWindow"`       // devices whose window does not open before the deadline
	BadWindow     int64     `json:"badWindow,omitempty"` // devices whose window tags do not parse (they fail)
}

// planWaveWindows estimates, wave after wave, when the devices' windows open: wave 0 starts at now, each
// device is judged as the workflow judges it at the wave's start (its own window, else the operation's, else
// any time), and the next wave starts after the last opening plus perWave (install and bake). counts are
// the devices per wave and window (Registry.WaveWindowCounts).
func planWaveWindows(p fleet.MaintenancePolicy, counts []registry.WaveWindowCount, waves int, now time.Time, perWave time.Duration) []waveWindows {
	out := make([]waveWindows, waves)
	names := p.TagNames()
	if names == nil {
		names = []string{"", ""} // no tags read: every device has the operation's window
	}
	start := now
	i := 0
	for wv := range out {
		ww := &out[wv]
		ww.Start = start
		for ; i < len(counts) && counts[i].Wave < wv; i++ {
		}
		dispatched := false
		for ; i < len(counts) && counts[i].Wave == wv; i++ {
			c := counts[i]
			w, ok, err := p.DeviceWindow(map[string]string{names[0]: c.Window, names[1]: c.Timezone})
			if err != nil {
				ww.BadWindow += c.Devices
				continue
			}
			verdict, next := p.Decide(w, ok, start)
			if verdict == fleet.WindowMissed {
				ww.OutsideWindow += c.Devices
				continue
			}
			dispatched = true
			if ww.FirstOpens.IsZero() || next.Before(ww.FirstOpens) {
				ww.FirstOpens = next
			}
			if next.After(ww.LastOpens) {
				ww.LastOpens = next
			}
		}
		if dispatched {
			start = ww.LastOpens.Add(perWave)
		}
	}
	return out
}
