package simulator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"math/rand/v2"
	"reflect"
	"strconv"
	"time"

	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// Retry bounds of the reports a device must not lose (acknowledgements, final job statuses): the device keeps
// trying while it runs, waiting a random time below a bound that doubles from firstRetryWait up to
// maxRetryWait, because a reconnect storm can take a while. Full jitter and a bound well above the device's
// 10 s request timeout: after a gateway died, its devices' reports timed out together in gateways whose
// ingest was behind (batches of 19 s), and retries at 0.5, 1, 2, 4, 5, 5… s sent every device's patch again
// and again into the same queues (one surviving gateway took 1,900 messages a second for 16,700 devices,
// docs/benchmarks.md, issue 9, fourth pass).
const (
	firstRetryWait = time.Second
	maxRetryWait   = 20 * time.Second
)

// errReplaced stops retries on behalf of a device whose connection attempt was given up.
var errReplaced = errors.New("device replaced by a new connection attempt")

// initDevice sets the device's firmware, health and view of its reported document from the reported document
// the registry returned on connect, once per simulation: what the registry holds wins over the capability
// defaults, so that a restarted simulator keeps the versions its devices were updated to.
func (s *Simulator) initDevice(sd *simDevice, reportedDoc []byte) {
	sd.mu.Lock()
	defer sd.mu.Unlock()
	if sd.initialized {
		return
	}
	sd.initialized = true
	rep := decodeDoc(reportedDoc)
	sd.reported = rep
	sd.version = firmwareVersion(Capabilities(sd.id, s.cfg.Seed))
	if v := firmwareVersion(rep); v != "" {
		sd.version = v
	}
	sd.health = map[string]any{"status": "ok"}
	if h, ok := rep["health"].(map[string]any); ok {
		sd.health = maps.Clone(h)
	}
}

// reportCapabilities sends the capabilities report of the device's first connect. Firmware and health come
// from the device's state, and are left out when the registry already has them (they are the device's to
// correct through syncReported, not the defaults').
func (s *Simulator) reportCapabilities(ctx context.Context, sd *simDevice, d *device.Device) error {
	sd.reportMu.Lock()
	defer sd.reportMu.Unlock()
	caps := Capabilities(sd.id, s.cfg.Seed)
	sd.mu.Lock()
	if firmwareVersion(sd.reported) != "" {
		delete(caps, "firmware")
	} else {
		caps["firmware"] = map[string]any{"version": sd.version}
	}
	if _, ok := sd.reported["health"]; ok {
		delete(caps, "health")
	} else {
		caps["health"] = maps.Clone(sd.health)
	}
	sd.mu.Unlock()
	_, err := d.ReportPatch(ctx, caps)
	sd.mu.Lock()
	sd.capsSent = true
	if err == nil {
		sd.reported = twin.Merge(sd.reported, deepCopy(caps))
	}
	sd.mu.Unlock()
	return err
}

// onDesired runs on the device's handler queue for every desired update. It only records the new state and
// starts background work: acknowledging takes a round trip and a firmware update takes minutes, and either
// would stall the device's methods and later updates if it ran here.
func (s *Simulator) onDesired(sd *simDevice, d *device.Device, u device.DesiredUpdate) {
	s.desired.Add(1)
	desired := decodeDoc(u.Desired)
	if u.Full {
		s.initDevice(sd, u.Reported)
	}
	sd.mu.Lock()
	if !sd.initialized {
		// A patch that overtook the first twin/get: the state is set once Connect returns, and the
		// acknowledgement follows the next update or reconnect.
		sd.desired = desired
		sd.mu.Unlock()
		return
	}
	if u.Full {
		// The registry's current view: what was reported before a reconnect may since have changed.
		sd.reported = decodeDoc(u.Reported)
	} else {
		for k, v := range decodeDoc(u.Patch) {
			if _, has := sd.reported[k]; has && v == nil && ackable(k) {
				if sd.deleted == nil {
					sd.deleted = map[string]bool{}
				}
				sd.deleted[k] = true
			}
		}
	}
	sd.desired = desired
	sd.interval.Store(telemetryInterval(desired))
	fw, hasFirmware := parseFirmware(desired["firmware"])
	pending := sd.pendingPatchLocked(false) != nil
	sd.mu.Unlock()

	if pending {
		s.goBackground(func(ctx context.Context) { s.syncReported(ctx, sd, d, false) })
	}
	if hasFirmware {
		s.startUpdate(sd, d, fw)
	}
}

// ackable reports whether desired key k is acknowledged by mirroring it into reported: every key but the
// firmware, which is acknowledged by performing the update.
func ackable(k string) bool { return k != "firmware" && k != "" && k[0] != '$' }

// pendingPatchLocked computes the reported patch that would bring the registry's reported document in line
// with the device: desired keys it has not mirrored yet (deleted ones as null) and, once its capabilities
// went out (or when force is set, during an update), its firmware version and health. nil means in line.
func (sd *simDevice) pendingPatchLocked(force bool) map[string]any {
	patch := map[string]any{}
	for k, v := range sd.desired {
		if ackable(k) && !reflect.DeepEqual(sd.reported[k], v) {
			patch[k] = mergeDiff(sd.reported[k], v)
		}
	}
	for k := range sd.deleted {
		if _, still := sd.desired[k]; !still {
			if _, has := sd.reported[k]; has {
				patch[k] = nil
			}
		}
	}
	for k := range sd.acked {
		if _, still := sd.desired[k]; !still {
			if _, has := sd.reported[k]; has {
				patch[k] = nil
			}
		}
	}
	if sd.capsSent || force {
		if firmwareVersion(sd.reported) != sd.version {
			patch["firmware"] = map[string]any{"version": sd.version}
		}
		if rh := sd.reported["health"]; !reflect.DeepEqual(rh, sd.health) {
			patch["health"] = mergeDiff(rh, sd.health)
		}
	}
	if len(patch) == 0 {
		return nil
	}
	return patch
}

// mergeDiff returns the merge patch (RFC 7386) that turns the value old into new. Objects are diffed key by
// key, because a whole object merged over an old one would keep the old one's extra keys (a health reason
// after recovery, a limit deleted from desired).
func mergeDiff(old, new any) any {
	om, ok1 := old.(map[string]any)
	nm, ok2 := new.(map[string]any)
	if !ok1 || !ok2 {
		return new
	}
	p := map[string]any{}
	for k := range om {
		if _, ok := nm[k]; !ok {
			p[k] = nil
		}
	}
	for k, v := range nm {
		if !reflect.DeepEqual(om[k], v) {
			p[k] = mergeDiff(om[k], v)
		}
	}
	return p
}

// syncReported sends the pending reported patch, retrying while the device runs: an acknowledgement that is
// lost would leave a job waiting for it forever. Nothing is sent when the device is in line.
func (s *Simulator) syncReported(ctx context.Context, sd *simDevice, d *device.Device, force bool) error {
	return retry(ctx, func() (bool, error) {
		if sd.current.Load() != d {
			return false, errReplaced
		}
		sd.reportMu.Lock()
		defer sd.reportMu.Unlock()
		sd.mu.Lock()
		patch := sd.pendingPatchLocked(force)
		sd.mu.Unlock()
		if patch == nil {
			return false, nil
		}
		_, err := d.ReportPatch(ctx, patch)
		if err != nil {
			s.log.Debug("reported patch failed", "device", sd.id, "err", err)
			return retryable(err), err
		}
		s.acks.Add(1)
		sd.mu.Lock()
		sd.reported = twin.Merge(sd.reported, deepCopy(patch))
		for k, v := range patch {
			switch {
			case !ackable(k):
			case v == nil:
				delete(sd.acked, k)
				delete(sd.deleted, k)
			default:
				if sd.acked == nil {
					sd.acked = map[string]bool{}
				}
				sd.acked[k] = true
			}
		}
		sd.mu.Unlock()
		return false, nil
	})
}

// retry calls fn until it succeeds, says the error is final, or ctx ends, backing off between attempts.
func retry(ctx context.Context, fn func() (again bool, err error)) error {
	for n := 1; ; n++ {
		again, err := fn()
		if err == nil || !again {
			return err
		}
		if !sleep(ctx, retryWait(n)) {
			return errors.Join(err, ctx.Err())
		}
	}
}

// retryWait is the wait after the n-th failed attempt (n ≥ 1): a random time below firstRetryWait×2^(n−1),
// at most maxRetryWait.
func retryWait(n int) time.Duration {
	return rand.N(min(maxRetryWait, firstRetryWait<<min(n-1, 10)))
}

// retryable tells transient failures (not connected, timeouts, 429/5xx) from answers that will not change.
func retryable(err error) bool {
	var re *device.ResponseError
	if errors.As(err, &re) {
		return re.Status == 429 || re.Status >= 500
	}
	return true
}

// sleep waits for d (at once when d ≤ 0) and reports whether ctx is still alive.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// telemetryInterval reads desired.telemetryInterval (seconds) as nanoseconds; 0 when unset or unusable.
func telemetryInterval(desired map[string]any) int64 {
	n, ok := desired["telemetryInterval"].(json.Number)
	if !ok {
		return 0
	}
	secs, err := strconv.ParseFloat(n.String(), 64)
	if err != nil || secs <= 0 || secs > 7*24*3600 {
		return 0
	}
	return int64(secs * float64(time.Second))
}

// decodeDoc decodes a JSON object with numbers kept as json.Number, so that values compare exactly with what
// the device reported; anything else gives an empty document.
func decodeDoc(b []byte) map[string]any {
	m := map[string]any{}
	if len(b) == 0 {
		return m
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil || m == nil {
		return map[string]any{}
	}
	delete(m, "$version")
	return m
}

// deepCopy copies maps and slices of a decoded document, so that merging a sent patch into the device's view
// of reported never aliases the desired document it came from.
func deepCopy[T any](v T) T {
	return deepCopyAny(v).(T)
}

func deepCopyAny(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = deepCopyAny(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = deepCopyAny(e)
		}
		return out
	default:
		return v
	}
}
