package gateway

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetflow/fleetflow/internal/protocol"
)

// Downlinks is what the gateway needs from the bus that connects it to workers, the CLI and the other
// gateways (docs/architecture.md, "Scale-out: gateways over NATS"). It is declared here, on the consumer
// side, so that the gateway does not link the bus's client; internal/channel's Relay implements it over
// NATS. A gateway without Downlinks serves its devices' uplinks only: nothing can reach them.
type Downlinks interface {
	// Attach starts delivering the device's downlinks (desired patches, method requests, kicks) to Run's
	// deliver; Detach stops it. Both are idempotent and must not block on the network.
	Attach(id string) error
	Detach(id string) error
	// Kick tells the gateways holding an older session of the device than session to end it.
	Kick(id string, session int64) error
	// Respond sends a device's answer to a method request back to its caller.
	Respond(d protocol.Downlink, status int, body []byte) error
	// Run calls deliver for every downlink of an attached device, in order, until ctx ends.
	Run(ctx context.Context, deliver func(protocol.Downlink))
}

// pendingMethod is a method request relayed to a device and not yet answered. The device sees a request id
// of the gateway's own (the caller's reply address is no topic level), so answers are matched here.
type pendingMethod struct {
	d        protocol.Downlink
	deadline time.Time
}

// methodTable holds relayed method requests by the gateway's request id until the device answers or the
// caller's timeout passes (the caller has given up by then; an answer after it is dropped).
type methodTable struct {
	seq     atomic.Uint64
	mu      sync.Mutex
	pending map[string]pendingMethod
}

func newMethodTable() *methodTable { return &methodTable{pending: make(map[string]pendingMethod)} }

func (t *methodTable) add(d protocol.Downlink) string {
	rid := "g" + strconv.FormatUint(t.seq.Add(1), 36)
	t.mu.Lock()
	t.pending[rid] = pendingMethod{d: d, deadline: time.Now().Add(d.Timeout)}
	t.mu.Unlock()
	return rid
}

// take claims the request rid of device id, if it is pending and its caller still waits.
func (t *methodTable) take(rid, id string) (protocol.Downlink, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.pending[rid]
	if !ok || p.d.Device != id {
		return protocol.Downlink{}, false
	}
	delete(t.pending, rid)
	return p.d, time.Now().Before(p.deadline)
}

// expire forgets requests whose caller has stopped waiting.
func (t *methodTable) expire(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for rid, p := range t.pending {
		if now.After(p.deadline) {
			delete(t.pending, rid)
		}
	}
}

func (t *methodTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pending)
}

// onDownlink runs on the bus's delivery goroutine for everything sent to a device this gateway holds. It
// must not block: publishing to the broker only queues the packet for the client.
func (g *Gateway) onDownlink(d protocol.Downlink) {
	s := g.sessions.get(d.Device)
	switch d.Kind {
	case protocol.SubjectDesired:
		if s == nil {
			return // it left meanwhile; it asks twin/get when it comes back
		}
		g.c.desiredRelayed.Add(1)
		if err := g.server.Publish(protocol.DesiredTopic(d.Device, d.Version), d.Payload, false, 1); err != nil {
			g.log.Warn("relaying desired patch failed", "device", d.Device, "err", err)
		}
	case protocol.SubjectMethod:
		if s == nil {
			// It left between the caller's request and now: the contract's offline answer, at once.
			g.c.methodsOffline.Add(1)
			g.answer(d, protocol.StatusOffline, protocol.OfflinePayload())
			return
		}
		g.c.methodsRelayed.Add(1)
		rid := g.methods.add(d)
		payload := d.Payload
		if len(payload) == 0 {
			payload = []byte("{}")
		}
		if err := g.server.Publish(protocol.MethodRequestTopic(d.Device, d.Method, rid), payload, false, 0); err != nil {
			g.log.Warn("relaying method request failed", "device", d.Device, "err", err)
		}
	case protocol.SubjectKick:
		g.onKick(s, d.Session)
	}
}

// onKick handles a device's session starting on another gateway with number num (docs/architecture.md,
// "Scale-out: gateways over NATS"): an older session here ends as taken over; a newer one stays, and its
// number is announced back, so that a gateway whose older session was established after the kick passed
// it still learns that it must end it.
func (g *Gateway) onKick(s *session, num int64) {
	switch {
	case s == nil || s.num == num:
	case s.num < num:
		s.superseded.Store(true)
		g.c.takeovers.Add(1)
		g.log.Info("dropping device session", "device", s.id, "session", s.num, "reason", "taken over on another gateway", "newer", num)
		_ = g.server.DisconnectClient(s.cl, packets.ErrSessionTakenOver) // 3.1.1: closed without it (OnPacketEncode)
	default:
		if err := g.cfg.Downlinks.Kick(s.id, s.num); err != nil {
			g.log.Warn("announcing newer session failed", "device", s.id, "err", err)
		}
	}
}

// onMethodResponse relays a device's answer to the caller waiting for it.
func (g *Gateway) onMethodResponse(id string, status int, rid string, body []byte) {
	if g.cfg.Downlinks == nil {
		return
	}
	d, ok := g.methods.take(rid, id)
	if !ok {
		return // late, duplicate, or not ours
	}
	g.answer(d, status, body)
}

func (g *Gateway) answer(d protocol.Downlink, status int, body []byte) {
	if err := g.cfg.Downlinks.Respond(d, status, body); err != nil {
		g.log.Debug("answering method call failed", "device", d.Device, "err", err)
	}
}

// attach makes the bus deliver a new session's downlinks here and ends older sessions of the device on
// other gateways.
func (g *Gateway) attach(s *session) {
	dl := g.cfg.Downlinks
	if dl == nil {
		return
	}
	if err := dl.Attach(s.id); err != nil {
		g.log.Warn("subscribing to device downlinks failed", "device", s.id, "err", err)
	}
	if err := dl.Kick(s.id, s.num); err != nil {
		g.log.Warn("announcing device session failed", "device", s.id, "err", err)
	}
}

// detach stops the downlinks of a device whose current session ended. A new session may have been
// attached in between (a reconnect racing the old connection's end): then it is attached again.
func (g *Gateway) detach(id string) {
	dl := g.cfg.Downlinks
	if dl == nil {
		return
	}
	if err := dl.Detach(id); err != nil {
		g.log.Warn("unsubscribing from device downlinks failed", "device", id, "err", err)
	}
	if g.sessions.get(id) != nil {
		if err := dl.Attach(id); err != nil {
			g.log.Warn("subscribing to device downlinks failed", "device", id, "err", err)
		}
	}
}

// downlinkLoop delivers downlinks and expires relayed method requests until the gateway closes.
func (g *Gateway) downlinkLoop() {
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.cfg.Downlinks.Run(g.ctx, g.onDownlink)
	}()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			g.methods.expire(now)
		case <-done:
			return
		}
	}
}
