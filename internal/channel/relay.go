package channel

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fleetflow/fleetflow/internal/protocol"
)

// relayQueue is the depth of a Relay's one queue of received messages. NATS drops what arrives while it
// is full (the subscription becomes a "slow consumer"), so it is deep: a fan-out to every device of a
// gateway must fit. It costs a pointer per slot (512 KiB).
const relayQueue = 1 << 16

// Relay is the gateway's side of the device channel (docs/architecture.md, "Scale-out: gateways over
// NATS"): while a device's session is up on the gateway, the relay subscribes to the device's subjects,
// and Run hands what arrives to the gateway. It implements the gateway's Downlinks.
//
// Every subscription of a relay delivers into one Go channel (nats.go's ChanSubscribe), drained by Run's
// one goroutine: a gateway holds tens of thousands of sessions, and a goroutine per subscription would cost
// kilobytes each; one queue also keeps the desired patches of a device in the order they were published.
type Relay struct {
	log *slog.Logger
	nc  *nats.Conn
	ch  chan *nats.Msg

	mu   sync.Mutex
	subs map[string]*nats.Subscription // by device id

	malformed atomic.Int64
}

// DialRelay connects a gateway to NATS. The first connection is retried in the background when no
// server answers yet, so a gateway can start before the bus (its devices are served meanwhile; what they
// are sent waits for the bus).
func DialRelay(cfg Config) (*Relay, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	log := cfg.Logger.With("component", "relay")
	nc, err := connect(cfg, true, log)
	if err != nil {
		return nil, err
	}
	return &Relay{log: log, nc: nc, ch: make(chan *nats.Msg, relayQueue), subs: make(map[string]*nats.Subscription)}, nil
}

// Attach subscribes to the subjects of device id, once; attaching an attached device does nothing. While
// the bus is reachable it returns once the server has the subscription, so a call made after the device's
// connection was acknowledged and its first request answered finds it on the server the gateway uses (the
// other nodes of a cluster learn of it a moment later). While the bus is down the subscription is made when
// it comes back.
func (r *Relay) Attach(id string) error {
	r.mu.Lock()
	if _, ok := r.subs[id]; ok {
		r.mu.Unlock()
		return nil
	}
	sub, err := r.nc.ChanSubscribe(protocol.DeviceSubjectFilter(id), r.ch)
	if err != nil {
		r.mu.Unlock()
		return fmt.Errorf("relay: subscribe for %s: %w", id, err)
	}
	r.subs[id] = sub
	r.mu.Unlock()
	if r.nc.IsConnected() {
		if err := r.nc.FlushTimeout(attachFlushTimeout); err != nil {
			r.log.Debug("subscription for a device not confirmed", "device", id, "err", err)
		}
	}
	return nil
}

// attachFlushTimeout bounds Attach's wait for the server's confirmation; the subscription stands either way.
const attachFlushTimeout = 2 * time.Second

// Detach unsubscribes from the subjects of device id; detaching a detached device does nothing.
func (r *Relay) Detach(id string) error {
	r.mu.Lock()
	sub, ok := r.subs[id]
	delete(r.subs, id)
	r.mu.Unlock()
	if !ok {
		return nil
	}
	if err := sub.Unsubscribe(); err != nil && r.nc.IsClosed() {
		return nil // the connection is gone, and with it the subscription
	} else if err != nil {
		return fmt.Errorf("relay: unsubscribe for %s: %w", id, err)
	}
	return nil
}

// Attached is the number of devices whose subjects the relay subscribes to.
func (r *Relay) Attached() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.subs)
}

// Kick tells the gateways holding an older session of device id than session to end it.
func (r *Relay) Kick(id string, session int64) error {
	if err := r.nc.Publish(protocol.DeviceSubject(id, protocol.SubjectKick), protocol.KickPayload(session)); err != nil {
		return fmt.Errorf("relay: kick %s: %w", id, err)
	}
	return nil
}

// Respond sends a device's answer to a method request (d came from Run) back to the caller.
func (r *Relay) Respond(d protocol.Downlink, status int, body []byte) error {
	m := &nats.Msg{Subject: d.Reply, Header: nats.Header{protocol.HeaderStatus: []string{strconv.Itoa(status)}}, Data: body}
	if err := r.nc.PublishMsg(m); err != nil {
		return fmt.Errorf("relay: answer %s on %s: %w", d.Method, d.Device, err)
	}
	return nil
}

// Run hands every message received for an attached device to deliver, in arrival order, on the calling
// goroutine, until ctx ends. deliver must not block for long: everything for the gateway waits behind it.
// Malformed messages are counted (Malformed) and dropped.
func (r *Relay) Run(ctx context.Context, deliver func(protocol.Downlink)) {
	for {
		select {
		case m := <-r.ch:
			d, err := protocol.ParseDownlink(m.Subject, m.Header.Get, m.Data, m.Reply)
			if err != nil {
				r.malformed.Add(1)
				r.log.Debug("dropping malformed downlink", "subject", m.Subject, "err", err)
				continue
			}
			deliver(d)
		case <-ctx.Done():
			return
		}
	}
}

// Malformed is the number of messages Run dropped because they broke the contract.
func (r *Relay) Malformed() int64 { return r.malformed.Load() }

// Close flushes what is buffered and disconnects; the servers drop the relay's subscriptions with its
// connection, so its devices are offline for callers at once.
func (r *Relay) Close() {
	if r.nc.IsConnected() {
		_ = r.nc.FlushTimeout(time.Second)
	}
	r.nc.Close()
}
