package simulator

import (
	"context"
	"time"
)

// telemetryLoop spreads every device's telemetry over the period with one goroutine for the whole fleet:
// each 100 ms tick serves the devices whose slot it is.
func (s *Simulator) telemetryLoop(ctx context.Context) {
	const tick = 100 * time.Millisecond
	slots := max(int(s.cfg.TelemetryEvery/tick), 1)
	t := time.NewTicker(tick)
	defer t.Stop()
	for slot := 0; ; slot = (slot + 1) % slots {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		s.mu.Lock()
		devs := s.devices
		s.mu.Unlock()
		now := time.Now().UnixNano()
		for i := slot; i < len(devs); i += slots {
			sd := devs[i]
			if !sd.dev.IsConnected() {
				continue
			}
			// A desired telemetryInterval longer than the period skips visits until it is due (within
			// one tick); a shorter one cannot be honoured by the shared schedule and gets the period.
			if iv := sd.interval.Load(); iv > 0 {
				if last := sd.lastSent.Load(); last > 0 && now-last < iv-int64(tick) {
					continue
				}
			}
			n := sd.seq.Add(1)
			if err := sd.dev.PublishTelemetry("env", telemetrySample(sd.dev.ID(), n)); err == nil {
				s.telemetry.Add(1)
				sd.lastSent.Store(now)
			}
		}
	}
}

// telemetrySample is a plausible, cheap reading.
func telemetrySample(id string, n int64) map[string]any {
	h := hash(0, id)
	base := 18 + float64(h[0]%8)
	return map[string]any{
		"seq":         n,
		"ts":          time.Now().UnixMilli(),
		"temperature": base + float64(n%20)/10,
		"humidity":    35 + int(h[1]%30),
		"battery":     max(100-int(n/100), 5),
	}
}
