// Package channel is fleetflow's device channel between processes, over NATS (docs/architecture.md,
// "Scale-out: gateways over NATS"). It is the one adapter of github.com/nats-io/nats.go, with two sides:
//
//   - Channel, the service side: workers and the CLI push desired patches and call direct methods with it,
//     at fleet scale. A *Channel implements fleet.Channel. A method call is a NATS request to the device's
//     method subject; the gateway holding the device's session relays it to the device and sends the
//     device's answer back. A call to a device that no gateway holds gets NATS's "no responders" at once,
//     which is the contract's offline answer (404 DeviceNotOnline) across the whole cluster.
//   - Relay, the gateway side: it implements the gateway's Downlinks, subscribing to the subjects of each
//     device while its session is up and handing what arrives to the gateway.
//
// Subjects, ids and payloads are internal/protocol's, so the package links neither the gateway's broker
// nor an MQTT client: the worker reaches devices without either.
//
// A Channel is one NATS connection meant to be shared by every activity of a worker process. Calls are
// pipelined rather than made one at a time: every call's reply subject is under one inbox of the channel,
// served by one subscription that routes each answer to its waiting call by request id, and requests are
// published asynchronously, so one goroutine sends a batch of 10,000 calls without waiting for any.
package channel

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/protocol"
)

var _ fleet.Channel = (*Channel)(nil)

// MaxMethodPayload is the largest method request payload, as in Azure IoT Hub. Invoke refuses larger
// payloads with an error and InvokeMany answers them Failed with Status 400 without sending anything.
const MaxMethodPayload = protocol.MaxMethodPayload

// maxPatchSize bounds one desired patch (the gateway would have to hand it to the device in one packet).
const maxPatchSize = protocol.MaxDesiredPatch

// DefaultMethodTimeout is the method timeout used when a caller passes a timeout ≤ 0: the contract's
// default (docs/architecture.md, "The device protocol").
const DefaultMethodTimeout = protocol.DefaultMethodTimeout

// Channel is the service side of the device channel. It is safe for concurrent use; create it with Dial.
type Channel struct {
	cfg   Config
	log   *slog.Logger
	nc    *nats.Conn
	inbox string // every call's reply subject is inbox + "." + its request id
	sub   *nats.Subscription

	ridSeq atomic.Uint64

	mu      sync.Mutex
	pending map[string]*pendingCall // by request id

	slots chan struct{} // semaphore of method calls awaiting their answer (see slotHold)

	closed    chan struct{}
	closeOnce sync.Once

	stats struct {
		methodsSent, responses, late, foreign, offline, desiredSent atomic.Int64
	}
}

// Stats are a channel's counters since Dial.
type Stats struct {
	MethodsSent      int64 // method requests published
	Responses        int64 // answers matched to a waiting call in time (device answers and offline answers)
	Offline          int64 // of which "no responders": no gateway held the device
	LateResponses    int64 // answers to our calls that came after their timeout (counted as TimedOut)
	ForeignResponses int64 // answers for calls this channel is no longer waiting for (duplicates, after a batch ended)
	DesiredSent      int64 // desired patches handed to NATS and confirmed by a flush
}

// Stats returns a snapshot of the counters.
func (c *Channel) Stats() Stats {
	return Stats{
		MethodsSent:      c.stats.methodsSent.Load(),
		Responses:        c.stats.responses.Load(),
		Offline:          c.stats.offline.Load(),
		LateResponses:    c.stats.late.Load(),
		ForeignResponses: c.stats.foreign.Load(),
		DesiredSent:      c.stats.desiredSent.Load(),
	}
}

// Dial connects to NATS and subscribes to the channel's inbox. It fails at once when no server of the URL
// list is reachable; after a successful Dial the connection is re-established (and re-subscribed)
// automatically, and calls made while it is down wait in the client's reconnect buffer or time out.
func Dial(ctx context.Context, cfg Config) (*Channel, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("channel: %w", err)
	}
	log := cfg.Logger.With("component", "channel")
	nc, err := connect(cfg, false, log)
	if err != nil {
		return nil, err
	}
	c := &Channel{
		cfg:     cfg,
		log:     log,
		nc:      nc,
		inbox:   nc.NewInbox(),
		pending: make(map[string]*pendingCall),
		slots:   make(chan struct{}, cfg.MaxCallsInFlight),
		closed:  make(chan struct{}),
	}
	// One subscription for every answer. Its handler only routes (a map lookup under a mutex) and never
	// blocks; the limits are raised because a fan-out's answers arrive in bursts.
	c.sub, err = nc.Subscribe(c.inbox+".*", c.onReply)
	if err == nil {
		err = c.sub.SetPendingLimits(-1, 256<<20)
	}
	if err == nil {
		err = c.flush(ctx)
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("channel: subscribe to answers: %w", err)
	}
	c.log.Debug("channel connected", "nats", redact(nc.ConnectedUrl()))
	return c, nil
}

// Close disconnects. Calls still waiting for answers end at once: unanswered methods as TimedOut. It is
// safe to call more than once.
func (c *Channel) Close() {
	c.closeOnce.Do(func() {
		close(c.closed)
		c.nc.Close()
	})
}

// flushTimeout bounds a flush whose context has no deadline of its own.
const flushTimeout = 30 * time.Second

// flush waits until the server has processed everything sent so far.
func (c *Channel) flush(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, flushTimeout)
		defer cancel()
	}
	return c.nc.FlushWithContext(ctx)
}

// usable reports ErrClosed after Close, and ErrNotConnected while the connection is down and not
// buffering (a reconnecting client buffers publishes, which then count as sent).
func (c *Channel) usable() error {
	select {
	case <-c.closed:
		return ErrClosed
	default:
	}
	if c.nc.IsClosed() {
		return ErrNotConnected
	}
	return nil
}
