package device

import (
	"context"
	"crypto"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/protocol"
)

// Config describes one device.
type Config struct {
	BrokerURL string // e.g. tcp://127.0.0.1:1883, or ssl://gw.example:8883 (also tls://, mqtts://) for TLS
	ID        string
	// Secret and Secret2 are the secrets of the device's two registry slots (either may be empty), and
	// Slot the one presented first (0: 1, or 2 when only Secret2 is set). A refused CONNECT is retried with
	// the other slot's secret (docs/architecture.md, "Credential rotation").
	Secret  string
	Secret2 string
	Slot    int
	// SaveCredentials, when set, lets the device take part in credential rotations (the rotateCredentials
	// method) and certificate renewals (renewCertificate and installCertificate): it is called with the
	// device's new credentials and must store them durably before it returns nil; only then does the device
	// acknowledge, after which it reconnects with the new secret or certificate. An error refuses the
	// rotation (500) and keeps the old credentials. Without it the methods are unknown (404).
	SaveCredentials func(ctx context.Context, c Credentials) error

	// BrokerURLs are further gateways of the same fleet, tried in order after BrokerURL (which may be
	// empty when this list is given). A device connects to the first that accepts it and, when it loses
	// that connection, reconnects starting with the next one (brokers.go).
	BrokerURLs []string

	// CAFile is the PEM file of the CA the gateway's certificate must chain to, for a TLS broker URL; empty
	// means the system's roots. It is ignored for a plaintext URL.
	CAFile string
	// TLSConfig, if set, is used for a TLS broker URL instead of one made from CAFile.
	TLSConfig *tls.Config
	// TLS, if set, is used for a TLS broker URL instead of TLSConfig or CAFile: a simulator shares one
	// among all its devices (NewTLSClient), so that its devices' connections share one TLS configuration per
	// gateway host instead of copying it each.
	TLS *TLSClient

	// ClientCertFile and ClientKeyFile, or ClientCertificate, are the device's client certificate and key
	// (from `fleetflow provision --auth x509`): over TLS the device then authenticates with the certificate,
	// and Secret may be empty (docs/architecture.md, "Device certificates"). ClientCertificate wins over the
	// files; a simulator parses its devices' pairs once instead of reading files.
	ClientCertFile, ClientKeyFile string
	ClientCertificate             *tls.Certificate
	// ClientCertificate2 is the certificate of the second certificate slot, which a certificate renewal
	// may have written (docs/architecture.md, "Certificate renewal"); Slot says which is presented first.
	ClientCertificate2 *tls.Certificate
	// PendingKey is the key of a certificate request the device answered before it was restarted, as
	// SaveCredentials stored it (Credentials.PendingKey): installCertificate pairs the certificate the worker
	// signed for that request with it (docs/architecture.md, "Certificate renewal").
	PendingKey crypto.Signer

	KeepAlive time.Duration // MQTT keepalive (default 60 s)
	// PingTimeout is how long the device waits for the gateway's PINGRESP before it considers the connection
	// lost and reconnects (default 10 s), unless something else arrived on the connection meanwhile or is
	// waiting in its socket: then it waits another PingTimeout (keepalive.go). A device on a slow link, or a
	// simulator sharing its machine's cores with the servers, may need longer: a reconnect costs the
	// gateway far more than a late ping.
	PingTimeout          time.Duration
	ConnectTimeout       time.Duration // one CONNECT attempt (default 10 s)
	RequestTimeout       time.Duration // twin requests without a context deadline (default 10 s)
	MethodTimeout        time.Duration // a method handler's deadline (default 30 s, the contract's default)
	MaxReconnectInterval time.Duration // cap of the reconnect backoff (default 30 s)
	// ReconnectJitter spreads reconnects: before each reconnect attempt the device waits a random time
	// below it (0: none, the first attempt is immediate). When a gateway dies, all its devices lose their
	// connection in the same instant; without jitter they all CONNECT to the other gateways in the same
	// second, CONNECTs queue past their timeout and are retried elsewhere, and the storm grows
	// (docs/architecture.md, "Scale-out: gateways over NATS").
	ReconnectJitter time.Duration
	QueueSize       int // desired patches and method calls waiting for the handler (default 32)

	// Dialer, if set, opens the TCP connection; a simulator uses it to spread connections over several
	// source addresses (each address has only ~28k ephemeral ports to one destination).
	Dialer *net.Dialer
	// Logger gets the device's own log lines (default slog.Default()).
	Logger *slog.Logger

	// OnConnected is called after every (re)connect once the twin is synchronised (err nil) or the sync
	// failed; OnConnectionLost when the connection drops. Both run on their own goroutine.
	OnConnected      func(session int64, err error)
	OnConnectionLost func(err error)
	// OnBusy is called (on paho's goroutine; it must not block) after each CONNECT a gateway refused as
	// busy, which the device retries after a random wait (ErrServerBusy).
	OnBusy func()
}

func (c *Config) setDefaults() {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.KeepAlive, 60*time.Second)
	def(&c.PingTimeout, 10*time.Second)
	def(&c.ConnectTimeout, 10*time.Second)
	def(&c.RequestTimeout, 10*time.Second)
	def(&c.MethodTimeout, protocol.DefaultMethodTimeout)
	def(&c.MaxReconnectInterval, 30*time.Second)
	if c.QueueSize <= 0 {
		c.QueueSize = 32
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// prepareCredentials checks that the device has a secret or a client certificate, loads the certificate's
// files, and makes the TLS config of a TLS broker URL: the server always verified (a device that cannot tell
// the gateway from an impostor would hand its secret to whoever answers), the client certificate presented.
func (c *Config) prepareCredentials() error {
	if c.ClientCertificate == nil && (c.ClientCertFile != "" || c.ClientKeyFile != "") {
		pair, err := tls.LoadX509KeyPair(c.ClientCertFile, c.ClientKeyFile)
		if err != nil {
			return fmt.Errorf("device: client certificate: %w", err)
		}
		c.ClientCertificate = &pair
	}
	if c.Secret == "" && c.Secret2 == "" && c.ClientCertificate == nil && c.ClientCertificate2 == nil {
		return errNoCredentials
	}
	if !pki.IsTLSURL(c.BrokerURL) && c.Secret == "" && c.Secret2 == "" {
		return fmt.Errorf("device: a client certificate is presented over TLS only, and %s is not a TLS URL (ssl://, tls://, mqtts://)", c.BrokerURL)
	}
	if !anyTLS(c.brokers()) {
		return nil
	}
	if c.TLS == nil {
		if c.TLSConfig == nil {
			tc, err := pki.ClientConfig(c.CAFile)
			if err != nil {
				return fmt.Errorf("device: %w", err)
			}
			c.TLSConfig = tc
		}
		c.TLS = NewTLSClient(c.TLSConfig)
	}
	c.TLSConfig = c.TLS.Base()
	if c.ClientCertificate == nil && c.ClientCertificate2 == nil && len(c.TLSConfig.Certificates) > 0 {
		c.ClientCertificate = &c.TLSConfig.Certificates[0] // given in the config itself: slot 1
	}
	// The configuration is shared, never changed: the device presents the certificate of the slot it tries
	// at each handshake (TLSClient.clientCertificate, Device.clientCertificate).
	return nil
}
