package channel

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Config describes the NATS connection of a Channel (services) or a Relay (gateways).
type Config struct {
	// URL lists the NATS servers, comma-separated (FLEETFLOW_NATS_URL): nats://host:port, or tls://host:port
	// for TLS; user:password@ in a URL are the credentials. The client also learns the other nodes of the
	// cluster from the servers and fails over to them.
	URL string
	// CAFile is the PEM file of the CA the servers' certificates must chain to, used when a URL is tls://
	// (FLEETFLOW_NATS_CA); empty means the system's roots. It is ignored for nats:// URLs, so one setting can
	// serve both.
	CAFile string
	// Name names the connection in the servers' monitoring (default "fleetflow").
	Name string
	// Logger gets the connection's log lines (default slog.Default()).
	Logger *slog.Logger
	// ConnectTimeout bounds the first connection (default 10 s).
	ConnectTimeout time.Duration
	// MaxCallsInFlight bounds a Channel's method calls sent and not yet answered, across all its batches
	// (default 1,024), so that a fan-out reaches each gateway as a stream rather than a burst it must queue
	// (a gateway takes its downlinks from one bounded queue and drops what overflows it). A call
	// unanswered after 100 ms gives its place up: slow devices answer in a trickle, not a burst.
	MaxCallsInFlight int
}

// ErrClosed is returned for calls made after Close.
var ErrClosed = errors.New("channel closed")

// ErrNotConnected is returned when no NATS server is reachable (the client is reconnecting).
var ErrNotConnected = errors.New("not connected to NATS")

func (c *Config) setDefaults() error {
	if strings.TrimSpace(c.URL) == "" {
		return errors.New("channel: NATS URL is required (FLEETFLOW_NATS_URL)")
	}
	if c.Name == "" {
		c.Name = "fleetflow"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	if c.MaxCallsInFlight <= 0 {
		c.MaxCallsInFlight = 1024
	}
	return nil
}

// anyTLS reports whether one of the comma-separated URLs asks for TLS.
func anyTLS(urls string) bool {
	for u := range strings.SplitSeq(urls, ",") {
		if p, err := url.Parse(strings.TrimSpace(u)); err == nil && p.Scheme == "tls" {
			return true
		}
	}
	return false
}

// RedactURL returns the comma-separated URLs with their passwords masked, for logs, errors and help texts.
func RedactURL(urls string) string { return redact(urls) }

// redact drops the passwords of the URLs, for logs and errors.
func redact(urls string) string {
	parts := strings.Split(urls, ",")
	for i, u := range parts {
		if p, err := url.Parse(strings.TrimSpace(u)); err == nil && p.User != nil {
			parts[i] = p.Redacted()
		}
	}
	return strings.Join(parts, ",")
}

// connect dials NATS. retry makes a first failure non-fatal (the client keeps trying in the background):
// a gateway must come up and serve devices while the bus is still starting, while a service's Dial should
// say at once that nothing is there.
func connect(cfg Config, retry bool, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.Timeout(cfg.ConnectTimeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(retry),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("NATS connection lost; reconnecting", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("NATS reconnected", "server", redact(nc.ConnectedUrl()))
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			log.Warn("NATS asynchronous error", "subject", subj, "err", err)
		}),
	}
	if cfg.CAFile != "" && anyTLS(cfg.URL) {
		opts = append(opts, nats.RootCAs(cfg.CAFile))
	}
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("channel: connect to NATS at %s: %w", redact(cfg.URL), err)
	}
	return nc, nil
}
