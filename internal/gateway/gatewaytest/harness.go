package gatewaytest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/gateway"
)

// StartGateway runs a gateway on a free loopback port against store and closes it when the test ends.
// Zero fields of cfg take the gateway's defaults; Listen is set unless given. Without cfg.Downlinks the
// gateway serves uplinks only; see StartGatewayOnNATS.
func StartGateway(t testing.TB, store gateway.Store, cfg gateway.Config) *gateway.Gateway {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.AdmitLag == 0 {
		// Refusing CONNECTs while the process waits for a core is about the machine's load, which tests do
		// not control: on a loaded machine it refused the CONNECTs of tests about something else. The
		// admission tests set the bound they test.
		cfg.AdmitLag = -1
	}
	g := gateway.New(cfg, store, Logger(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.Start(ctx); err != nil {
		t.Fatalf("start gateway: %v", err)
	}
	started.Store(URL(g), g)
	t.Cleanup(func() {
		started.Delete(URL(g))
		g.Close()
	})
	// The gateway's change listener starts on its own goroutine and first empties the auth cache; on a
	// loaded machine that can land in the middle of a test's first CONNECTs and make their lookup run
	// twice. Tests begin once it has happened, as a gateway in production is long past it.
	if l, ok := store.(interface{ Listening() bool }); ok {
		deadline := time.Now().Add(10 * time.Second)
		for !l.Listening() {
			if time.Now().After(deadline) {
				t.Fatalf("gateway did not start listening for device changes within 10s")
			}
			time.Sleep(time.Millisecond)
		}
	}
	return g
}

// started maps the URLs of running test gateways to them, for Service.
var started sync.Map

// StartGatewayOnNATS runs a gateway as StartGateway does, relaying downlinks from the NATS servers at
// natsURL (comma-separated); the relay is closed after the gateway when the test ends.
func StartGatewayOnNATS(t testing.TB, store gateway.Store, cfg gateway.Config, natsURL string) (*gateway.Gateway, *channel.Relay) {
	t.Helper()
	r, err := channel.DialRelay(channel.Config{URL: natsURL, Name: "gateway-test", Logger: Logger(t)})
	if err != nil {
		t.Fatalf("relay: %v", err)
	}
	t.Cleanup(r.Close) // cleanups run last-in first-out: after the gateway's
	cfg.Downlinks = r
	return StartGateway(t, store, cfg), r
}

// URL is the broker URL of a started gateway.
func URL(g *gateway.Gateway) string { return "tcp://" + g.Addr() }

// Logger logs to stderr when FLEETFLOW_TEST_LOG is set (e.g. "debug") and discards otherwise, so tests
// stay quiet but can be debugged.
func Logger(t testing.TB) *slog.Logger {
	var lvl slog.Level
	switch os.Getenv("FLEETFLOW_TEST_LOG") {
	case "":
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	case "debug":
		lvl = slog.LevelDebug
	default:
		lvl = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
}

// Message is one message a Client received.
type Message struct {
	Topic    string
	Payload  []byte
	Retained bool
}

// Client is a plain paho client for tests: a device behaving in ways the device package would not (spoofing,
// wildcards, malformed topics); or, made by Service, an observer inside a gateway. Every received message is
// recorded.
type Client struct {
	paho.Client
	mu   sync.Mutex
	msgs []Message
	lost atomic.Bool

	gw *gateway.Gateway // set for an observer (Service)
}

// Service returns an observer of the gateway StartGateway started at url: it sees every message routed under
// the filters it subscribes to (retained ones first) and publishes as the gateway itself. It stands for the
// spying service connections of older tests: no client may log in as a service any more, since services reach
// devices over NATS. clientID only names it in failures.
func Service(t testing.TB, url, clientID string) *Client {
	t.Helper()
	g, ok := started.Load(url)
	if !ok {
		t.Fatalf("service %s: no test gateway at %s", clientID, url)
	}
	return &Client{gw: g.(*gateway.Gateway)}
}

func (c *Client) record(topic string, payload []byte, retained bool) {
	c.mu.Lock()
	c.msgs = append(c.msgs, Message{Topic: topic, Payload: append([]byte(nil), payload...), Retained: retained})
	c.mu.Unlock()
}

// Dial connects a raw MQTT 3.1.1 client without auto-reconnect. It returns the CONNECT error instead of
// failing the test, so refusals can be asserted.
func Dial(t testing.TB, url, clientID, username, password string) (*Client, error) {
	t.Helper()
	c := &Client{}
	opts := paho.NewClientOptions().
		AddBroker(url).
		SetClientID(clientID).
		SetUsername(username).
		SetPassword(password).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectTimeout(5 * time.Second).
		SetOrderMatters(false).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			c.mu.Lock()
			c.msgs = append(c.msgs, Message{Topic: m.Topic(), Payload: append([]byte(nil), m.Payload()...), Retained: m.Retained()})
			c.mu.Unlock()
		}).
		SetConnectionLostHandler(func(paho.Client, error) { c.lost.Store(true) })
	c.Client = paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, fmt.Errorf("connect %s: timed out", clientID)
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c, nil
}

// Sub subscribes and returns the SUBACK code of each filter (0x80 = refused; an observer is never refused
// a valid filter).
func (c *Client) Sub(t testing.TB, qos byte, filters ...string) []byte {
	t.Helper()
	if c.gw != nil {
		out := make([]byte, len(filters))
		for i, f := range filters {
			stop, err := c.gw.Observe(f, c.record)
			if err != nil {
				out[i] = 0x80
				continue
			}
			t.Cleanup(stop)
		}
		return out
	}
	m := make(map[string]byte, len(filters))
	for _, f := range filters {
		m[f] = qos
	}
	tok := c.SubscribeMultiple(m, nil)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %v: %v", filters, tok.Error())
	}
	res := tok.(*paho.SubscribeToken).Result()
	out := make([]byte, len(filters))
	for i, f := range filters {
		out[i] = res[f]
	}
	return out
}

// Pub publishes and waits for the token.
func (c *Client) Pub(t testing.TB, topic string, qos byte, payload string) error {
	t.Helper()
	if c.gw != nil {
		return c.gw.Inject(topic, []byte(payload), qos)
	}
	tok := c.Publish(topic, qos, false, payload)
	if !tok.WaitTimeout(5 * time.Second) {
		return fmt.Errorf("publish %s: timed out", topic)
	}
	return tok.Error()
}

// Messages returns what the client received so far.
func (c *Client) Messages() []Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Message(nil), c.msgs...)
}

// Lost reports whether the connection was lost (for example, kicked).
func (c *Client) Lost() bool { return c.lost.Load() }

// WaitMessage waits for a message on topic and returns it.
func (c *Client) WaitMessage(t testing.TB, topic string, timeout time.Duration) (Message, bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, m := range c.Messages() {
			if m.Topic == topic {
				return m, true
			}
		}
		if time.Now().After(deadline) {
			return Message{}, false
		}
		time.Sleep(5 * time.Millisecond)
	}
}
