package device

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"sync"
)

// TLSClient is the client side of TLS for any number of devices: one per process, shared by all its devices
// (a simulator's), so that a connection costs no copy of the TLS configuration. crypto/tls copies a
// configuration for every connection that does not name its server (tls.Dial fills in ServerName), and a
// device presenting its own client certificate would need a copy of its own; here one configuration per
// gateway host serves every device, and the device's certificate is picked at each handshake from the
// handshake's context (docs/architecture.md, "The simulator over TLS: memory per device"). The server is
// verified exactly as by the base configuration: its roots, its minimum version, its VerifyConnection.
type TLSClient struct {
	base   *tls.Config
	mu     sync.Mutex
	byHost map[string]*tls.Config
}

// NewTLSClient returns a TLSClient for base, which must not change afterwards.
func NewTLSClient(base *tls.Config) *TLSClient {
	return &TLSClient{base: base, byHost: make(map[string]*tls.Config)}
}

// Base is the configuration the TLSClient was made from.
func (t *TLSClient) Base() *tls.Config { return t.base }

// deviceKey is the context key of the device whose handshake is running.
type deviceKey struct{}

// config is base for connections to host: ServerName set to host unless base names its server (as tls.Dial
// does), and the client certificate chosen per handshake (clientCertificate).
func (t *TLSClient) config(host string) *tls.Config {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c, ok := t.byHost[host]; ok {
		return c
	}
	c := t.base.Clone()
	if c.ServerName == "" {
		c.ServerName = host
	}
	// The device's own certificate, if any, is what GetClientCertificate answers; base's Certificates
	// became the certificate of slot 1 of each device given them (prepareCredentials).
	c.Certificates = nil
	c.GetClientCertificate = t.clientCertificate
	t.byHost[host] = c
	return c
}

// clientCertificate answers the server's certificate request with the certificate of the device being
// connected (Device.clientCertificate), or, for a device that has none, what base would have answered.
func (t *TLSClient) clientCertificate(info *tls.CertificateRequestInfo) (*tls.Certificate, error) {
	if d, ok := info.Context().Value(deviceKey{}).(*Device); ok && d.hasCertificate() {
		return d.clientCertificate(info)
	}
	if t.base.GetClientCertificate != nil {
		return t.base.GetClientCertificate(info)
	}
	return &tls.Certificate{}, nil // none: the device authenticates with its secret
}

// dial opens a TLS connection to addr for d, as tls.DialWithDialer does (the dialer's timeout and deadline
// bound the connection and the handshake together) but with the shared configuration of addr's host.
func (t *TLSClient) dial(d *Device, dialer *net.Dialer, addr string) (net.Conn, error) {
	ctx := context.WithValue(context.Background(), deviceKey{}, d)
	if dialer.Timeout != 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, dialer.Timeout)
		defer cancel()
	}
	if !dialer.Deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dialer.Deadline)
		defer cancel()
	}
	raw, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	host := addr
	if i := strings.LastIndex(addr, ":"); i >= 0 {
		host = addr[:i] // what tls.Dial takes for the server name
	}
	conn := tls.Client(raw, t.config(host))
	if err := conn.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, err
	}
	return conn, nil
}
