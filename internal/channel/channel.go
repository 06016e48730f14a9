// Package channel is fleetflow's service-side MQTT client for talking to devices through the gateway
// (docs/architecture.md, "The device protocol"): workers and the CLI push desired patches and call direct
// methods with it, at fleet scale. A *Channel implements fleet.Channel; topics, ids and payloads are
// internal/protocol's, so the package does not link the gateway's broker.
//
// A Channel is a few paho connections (Config.Connections) logged in as protocol.ServiceUsername. It is
// meant to be shared by every activity of a worker process: calls are pipelined rather than made one at a
// time, so one channel fans out to 10,000 devices in about a second on 2 cores.
//
// Method responses are consumed through a QoS 0 subscription to devices/+/methods/res/+/+ whose handler
// only routes each response to its waiting call by request id: a QoS 1 subscriber, or a handler that
// blocks paho's router, is a known throughput trap (measured: a QoS 1 paho subscriber takes ~180 msg/s
// and drops messages where a QoS 0 one takes ~19k msg/s). Every channel on a broker sees every
// response and keeps only those whose request id it issued, so several workers share one broker without
// coordination. Because the gateway drops messages for a client whose queue of 128 is full, a channel
// bounds its calls awaiting an answer (Config.MaxCallsInFlight) and spreads responses over its connections
// with a shared subscription of its own.
package channel

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/protocol"
)

var _ fleet.Channel = (*Channel)(nil)

// MaxMethodPayload is the largest method request payload, as in Azure IoT Hub. Invoke refuses larger
// payloads with an error and InvokeMany answers them Failed with Status 400 without sending anything,
// so that one oversized call cannot exceed the gateway's packet limit and cost the shared connection.
const MaxMethodPayload = protocol.MaxMethodPayload

// maxPatchSize bounds one desired patch for the same reason (the gateway drops a connection that sends
// a packet over its 256 KiB limit, which would fail every call in flight on the channel).
const maxPatchSize = protocol.MaxDesiredPatch

// DefaultMethodTimeout is the method timeout used when a caller passes a timeout ≤ 0: the contract's
// default (docs/architecture.md, "The device protocol").
const DefaultMethodTimeout = protocol.DefaultMethodTimeout

// maxDesiredInFlight bounds QoS 1 publishes awaiting their PUBACK across the whole channel: MQTT has only
// 65,535 packet ids per connection, and paho fails a publish outright when it runs out of them.
const maxDesiredInFlight = 16384

// ErrNotAuthorized is returned by Dial when the gateway refuses the service token (or the client id).
// Retrying with the same configuration will not help.
var ErrNotAuthorized = errors.New("not authorized")

// ErrClosed is returned for calls made after Close.
var ErrClosed = errors.New("channel closed")

// ErrNotConnected is returned when the connection to the broker is down (paho is reconnecting).
var ErrNotConnected = errors.New("not connected to the broker")

// Config describes the connection of a channel.
type Config struct {
	// BrokerURL is the gateway's MQTT address, e.g. tcp://127.0.0.1:1883, or ssl://gw.example:8883 (also
	// tls://, mqtts://) for TLS.
	BrokerURL string
	// CAFile is the PEM file of the CA the gateway's certificate must chain to, for a TLS BrokerURL; empty
	// means the system's roots. It is ignored for a plaintext URL, so one setting can serve both.
	CAFile string
	// Token is the service token, the password of protocol.ServiceUsername.
	Token string
	// ClientID is the MQTT client id; it defaults to "svc:" + 16 random hex digits. The gateway refuses a
	// service whose client id is a valid device id (so a service cannot take over a device's session),
	// hence the ':'; Dial refuses such an id itself, with a clearer error than the broker's. With more
	// than one connection, connection i uses ClientID + "." + i.
	ClientID string
	// Logger gets the channel's log lines (default slog.Default()).
	Logger *slog.Logger
	// ConnectTimeout bounds each CONNECT attempt and the first subscription (default 10 s).
	ConnectTimeout time.Duration
	// Connections is the number of MQTT connections of the channel (default 4). The gateway (mochi) keeps
	// at most 128 messages queued per client and drops the rest, and every channel on the broker receives
	// every method response (it keeps its own by request id). With several connections the responses are
	// spread over their queues by a shared subscription of the channel's own and drained in parallel.
	// Keep Connections × 128 above (channels calling methods at once) × MaxCallsInFlight: measured with
	// 1,000 devices and three channels calling at once, 1 connection lost 85–208 of 9,000 responses per
	// round, 4 connections none.
	Connections int
	// MaxCallsInFlight bounds method calls sent and not yet answered, across all batches of the channel
	// (default 128), so that their answers cannot arrive in a burst the gateway would drop. A call
	// unanswered after 100 ms gives its place up: slow devices answer in a trickle, not a burst. Larger
	// windows did not raise throughput on 2 cores (10,000 calls: ~0.65 s with 128, ~1 s with 512).
	MaxCallsInFlight int
}

// Channel is a connection to the gateway. It is safe for concurrent use; create it with Dial.
type Channel struct {
	cfg       Config
	log       *slog.Logger
	conns     []*conn
	ridPrefix string      // random per channel, so request ids of different channels never collide
	tls       *tls.Config // nil for a plaintext broker URL
	ridSeq    atomic.Uint64

	mu      sync.Mutex
	pending map[string]*pendingCall // by request id

	inflight chan struct{} // semaphore of QoS 1 publishes awaiting their PUBACK
	slots    chan struct{} // semaphore of method calls awaiting their answer (see slotHold)

	closed    chan struct{}
	closeOnce sync.Once

	stats struct {
		methodsSent, responses, late, foreign, desiredAcked atomic.Int64
	}
}

// conn is one MQTT connection of a channel.
type conn struct {
	id     string
	filter string // the response subscription
	client paho.Client

	ready     chan struct{} // closed once the first subscription is in place (or failed)
	readyOnce sync.Once
	readyErr  error
}

// Stats are a channel's counters since Dial.
type Stats struct {
	MethodsSent      int64 // method requests published
	Responses        int64 // responses matched to a waiting call in time
	LateResponses    int64 // responses to our calls that came after their timeout (counted as TimedOut)
	ForeignResponses int64 // responses to calls this channel is not waiting for (other channels', duplicates)
	DesiredAcked     int64 // desired patches acknowledged by the broker
}

// Stats returns a snapshot of the counters. Foreign responses grow with every other channel's traffic on
// the same broker; they cost a map lookup each.
func (c *Channel) Stats() Stats {
	return Stats{
		MethodsSent:      c.stats.methodsSent.Load(),
		Responses:        c.stats.responses.Load(),
		LateResponses:    c.stats.late.Load(),
		ForeignResponses: c.stats.foreign.Load(),
		DesiredAcked:     c.stats.desiredAcked.Load(),
	}
}

// Dial connects to the gateway and subscribes to method responses. It returns an error wrapping
// ErrNotAuthorized when the gateway refuses the token, and the network error when the broker is
// unreachable. After a successful Dial the connections are re-established (and re-subscribed)
// automatically; calls made through a connection while it is down fail or time out.
func Dial(ctx context.Context, cfg Config) (*Channel, error) {
	if cfg.BrokerURL == "" {
		return nil, errors.New("channel: broker URL is required")
	}
	if cfg.Token == "" {
		return nil, errors.New("channel: service token is required")
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "svc:" + randomHex(8)
	}
	if protocol.ValidDeviceID(cfg.ClientID) {
		return nil, fmt.Errorf("channel: client id %q is a valid device id, which the gateway refuses for services (include a ':' or an upper-case letter)", cfg.ClientID)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	// The token is a password: over TLS the gateway must prove who it is before it gets it.
	tlsCfg, err := pki.ClientConfigFor(cfg.BrokerURL, cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("channel: %w", err)
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.Connections <= 0 {
		cfg.Connections = 4
	}
	if cfg.MaxCallsInFlight <= 0 {
		cfg.MaxCallsInFlight = 128
	}
	c := &Channel{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "channel", "client", cfg.ClientID),
		ridPrefix: randomHex(8),
		pending:   make(map[string]*pendingCall),
		inflight:  make(chan struct{}, maxDesiredInFlight),
		slots:     make(chan struct{}, cfg.MaxCallsInFlight),
		closed:    make(chan struct{}),
		tls:       tlsCfg,
	}
	// The one subscription of a channel. QoS 0, so the broker never waits for our acks and delivery does
	// not go through paho's QoS 1 bookkeeping.
	filter := protocol.MethodResponseFilter
	if cfg.Connections > 1 {
		// A group of our own: the broker hands each response to one of our connections, while every
		// other channel (its own group) still gets its copy.
		filter = protocol.SharedFilter("fleetflow-"+c.ridPrefix, protocol.MethodResponseFilter)
	}
	for i := range cfg.Connections {
		id := cfg.ClientID
		if cfg.Connections > 1 {
			id += "." + strconv.Itoa(i)
		}
		cn := &conn{id: id, filter: filter, ready: make(chan struct{})}
		cn.client = paho.NewClient(c.options(cn))
		c.conns = append(c.conns, cn)
	}
	errs := make([]error, len(c.conns))
	var wg sync.WaitGroup
	for i, cn := range c.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.connect(ctx, cn)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.Close()
		return nil, err
	}
	c.log.Debug("channel connected", "broker", cfg.BrokerURL, "connections", len(c.conns))
	return c, nil
}

func (c *Channel) options(cn *conn) *paho.ClientOptions {
	opts := paho.NewClientOptions().
		AddBroker(c.cfg.BrokerURL).
		SetClientID(cn.id).
		SetUsername(protocol.ServiceUsername).
		SetPassword(c.cfg.Token).
		// Explicit 3.1.1: otherwise paho retries a refused CONNECT as MQTT 3.1.
		SetProtocolVersion(4).
		// Nothing is kept for us while we are away: method calls are online-only and desired state is
		// fetched by devices on reconnect, so a persistent session would only hoard stale responses.
		SetCleanSession(true).
		SetAutoReconnect(true).
		// Dial must fail fast and clearly when the broker is unreachable; retries are the caller's call.
		SetConnectRetry(false).
		SetMaxReconnectInterval(10 * time.Second).
		SetConnectTimeout(c.cfg.ConnectTimeout).
		SetKeepAlive(30 * time.Second).
		SetPingTimeout(10 * time.Second).
		SetWriteTimeout(10 * time.Second).
		// The handler only routes responses (a map lookup under a mutex) and never blocks, and responses
		// have no order to keep, so paho need not serialise them.
		SetOrderMatters(false).
		SetDefaultPublishHandler(c.onMessage).
		SetOnConnectHandler(func(cl paho.Client) { c.onConnect(cn, cl) }).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			c.log.Warn("connection to the broker lost; reconnecting", "conn", cn.id, "err", err)
		}).
		SetReconnectingHandler(func(paho.Client, *paho.ClientOptions) {
			c.log.Info("reconnecting to the broker", "conn", cn.id)
		})
	if c.tls != nil {
		opts.SetTLSConfig(c.tls)
	}
	// MaxResumePubInFlight and the message channel depth are not set: the first only matters when a
	// persistent session is resumed, the second has no effect in paho ≥ 1.3.
	return opts
}

// connect makes the first connection of cn and waits for its subscription: calls must not be sent before
// the response subscription exists, or their answers are lost.
func (c *Channel) connect(ctx context.Context, cn *conn) error {
	url := c.cfg.BrokerURL
	tok := cn.client.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return fmt.Errorf("channel: connect to %s: %w", url, ctx.Err())
	}
	if err := tok.Error(); err != nil {
		if errors.Is(err, packets.ErrorRefusedNotAuthorised) || errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword) {
			return fmt.Errorf("channel: connect to %s as %s (client id %s): %w", url, protocol.ServiceUsername, cn.id, ErrNotAuthorized)
		}
		return fmt.Errorf("channel: connect to %s: %w", url, err)
	}
	timer := time.NewTimer(c.cfg.ConnectTimeout + 5*time.Second)
	defer timer.Stop()
	select {
	case <-cn.ready:
	case <-ctx.Done():
		return fmt.Errorf("channel: subscribe to method responses: %w", ctx.Err())
	case <-timer.C:
		return errors.New("channel: subscribe to method responses: timed out")
	}
	if cn.readyErr != nil {
		return fmt.Errorf("channel: %w", cn.readyErr)
	}
	return nil
}

// Close disconnects. Calls still waiting for responses end at once: unanswered methods as TimedOut.
// It is safe to call more than once.
func (c *Channel) Close() {
	c.closeOnce.Do(func() {
		close(c.closed)
		var wg sync.WaitGroup
		for _, cn := range c.conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cn.client.Disconnect(250)
			}()
		}
		wg.Wait()
	})
}

// connFor picks the connection that carries everything for device id. Always the same one, because the
// broker keeps order only per connection, and desired patches of a device must arrive in version order.
func (c *Channel) connFor(id string) *conn {
	if len(c.conns) == 1 {
		return c.conns[0]
	}
	h := uint32(2166136261) // FNV-1a
	for i := 0; i < len(id); i++ {
		h ^= uint32(id[i])
		h *= 16777619
	}
	return c.conns[h%uint32(len(c.conns))]
}

// onConnect runs on its own goroutine after every (re)connect: a clean session loses its subscriptions,
// so subscribe again. A few retries cover a subscription refused while the gateway is still starting.
func (c *Channel) onConnect(cn *conn, cl paho.Client) {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 {
			select {
			case <-time.After(time.Duration(attempt) * time.Second):
			case <-c.closed:
				return
			}
		}
		if err = subscribe(cl, cn.filter, c.cfg.ConnectTimeout); err == nil {
			break
		}
	}
	cn.readyOnce.Do(func() {
		cn.readyErr = err
		close(cn.ready)
	})
	if err != nil {
		c.log.Error("subscribing to method responses failed; method calls will time out", "conn", cn.id, "err", err)
	}
}

func subscribe(cl paho.Client, filter string, timeout time.Duration) error {
	tok := cl.Subscribe(filter, 0, nil)
	if !tok.WaitTimeout(timeout) {
		return fmt.Errorf("subscribe %s: timed out after %s", filter, timeout)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	if st, ok := tok.(*paho.SubscribeToken); ok && st.Result()[filter] == 0x80 {
		return fmt.Errorf("subscribe %s: refused by the gateway", filter)
	}
	return nil
}

// isFailed reports whether tok already completed with an error (paho fails a publish synchronously when
// it is not connected or its hand-off to the network goroutine timed out).
func isFailed(tok paho.Token) bool {
	select {
	case <-tok.Done():
		return tok.Error() != nil
	default:
		return false
	}
}

// usable reports ErrClosed after Close, and ErrNotConnected when cn (or, for nil, every connection) is down.
func (c *Channel) usable(cn *conn) error {
	select {
	case <-c.closed:
		return ErrClosed
	default:
	}
	if cn != nil {
		if !cn.client.IsConnectionOpen() {
			return ErrNotConnected
		}
		return nil
	}
	for _, cn := range c.conns {
		if cn.client.IsConnectionOpen() {
			return nil
		}
	}
	return ErrNotConnected
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go ≥ 1.24)
	return hex.EncodeToString(b)
}
