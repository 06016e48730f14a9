package gateway

import (
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Admission control (docs/architecture.md, "Admission control: refusing what cannot be served"). When a
// gateway cannot serve a CONNECT within the device's own timeout, answering it late is the worst outcome:
// the device times out, tries another gateway, and the work done for it is lost, while the sessions the
// gateway already holds wait for a core behind those CONNECTs and miss their SUBACKs and pings. So a CONNECT
// is refused at once, with a CONNACK that says "server unavailable" (MQTT 3.1.1) or "server busy" (MQTT 5),
// when the gateway is behind; devices then back off with jitter and come back when it has caught up.
//
// Behind means any of:
//   - too many CONNECTs are being authenticated at once (Config.AdmitPending);
//   - the process is starved of CPU: a ticker that should run every admitTick ran late by more than
//     Config.AdmitLag (its goroutines, the established sessions' among them, wait that long for a core);
//   - the device's registry lookup did not finish within Config.AdmitWait (the lookup goes on and fills the
//     cache, so the device's next attempt is served from it);
//   - the registry failed the lookup or the session number, or the lookups of ids never seen here are all
//     taken: the gateway's trouble, not the device's credentials.

// admitTick is the period of the scheduling-lag probe.
const admitTick = 100 * time.Millisecond

// Reasons a CONNECT is refused busy, the label of fleetflow_gateway_connects_refused_busy_total.
const (
	busyPending  = "pending"  // too many CONNECTs in authentication
	busyLag      = "lag"      // the process is starved of CPU
	busyWait     = "wait"     // the registry lookup took longer than AdmitWait
	busyRegistry = "registry" // the registry failed the lookup or the session number
	busyShed     = "shed"     // the lookups of never-seen ids were all taken
)

// busyReasons lists the reasons, for the metrics.
var busyReasons = []string{busyPending, busyLag, busyWait, busyRegistry, busyShed}

// admission is the gateway's admission state: CONNECTs in authentication, the scheduling-lag probe, and
// the refusals by reason.
type admission struct {
	maxPending int64
	maxLag     time.Duration
	wait       time.Duration
	now        func() time.Time

	pending  atomic.Int64
	lastTick atomic.Int64 // unix nanoseconds of the probe's last run
	lastLag  atomic.Int64 // how late the probe's last run was, nanoseconds
	refused  map[string]*atomic.Int64
}

func newAdmission(maxPending int, maxLag, wait time.Duration) *admission {
	a := &admission{maxPending: int64(maxPending), maxLag: maxLag, wait: wait, now: time.Now, refused: map[string]*atomic.Int64{}}
	for _, r := range busyReasons {
		a.refused[r] = new(atomic.Int64)
	}
	a.lastTick.Store(a.now().UnixNano())
	return a
}

// probe measures scheduling lag until done closes: how much later than due each tick runs. A process whose
// runnable goroutines wait for a core sees its ticks late by about that wait.
func (a *admission) probe(done <-chan struct{}) {
	a.lastTick.Store(a.now().UnixNano())
	t := time.NewTicker(admitTick)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			now := a.now().UnixNano()
			late := time.Duration(now-a.lastTick.Load()) - admitTick
			a.lastLag.Store(int64(max(0, late)))
			a.lastTick.Store(now)
		case <-done:
			return
		}
	}
}

// lag is the current scheduling lag: the last tick's lateness, or how overdue the next tick is when the
// probe itself has not run for a while (it may be starved too).
func (a *admission) lag() time.Duration {
	overdue := time.Duration(a.now().UnixNano()-a.lastTick.Load()) - admitTick
	return max(time.Duration(a.lastLag.Load()), overdue)
}

// enter admits a CONNECT into authentication, or returns the reason it is refused busy. An admitted
// CONNECT calls leave when its authentication is done.
func (a *admission) enter() string {
	if a.maxLag > 0 && a.lag() > a.maxLag {
		return busyLag
	}
	if a.pending.Add(1) > a.maxPending && a.maxPending > 0 {
		a.pending.Add(-1)
		return busyPending
	}
	return ""
}

func (a *admission) leave() { a.pending.Add(-1) }

// count records a refusal for reason.
func (a *admission) count(reason string) { a.refused[reason].Add(1) }

// total is the number of CONNECTs refused busy for any reason.
func (a *admission) total() int64 {
	var n int64
	for _, c := range a.refused {
		n += c.Load()
	}
	return n
}

// refuseBusy answers a CONNECT the gateway cannot serve now: "server unavailable" to MQTT 3.1.1 clients,
// "server busy" to MQTT 5 ones, so that the device backs off instead of taking the refusal for bad
// credentials. mochi sends its own CONNACK only for refused authentication, so this is sent here, from
// OnConnect, whose error then ends the connection.
func (g *Gateway) refuseBusy(cl *mqtt.Client, reason string, attrs ...any) error {
	g.admit.count(reason)
	g.log.Debug("connect refused: gateway busy", append([]any{"client", cl.ID, "remote", cl.Net.Remote, "reason", reason}, attrs...)...)
	code := packets.ErrServerBusy
	if cl.Properties.ProtocolVersion < 5 {
		code = packets.ErrServerUnavailable
	}
	_ = g.server.SendConnack(cl, code, false, nil)
	return code
}
