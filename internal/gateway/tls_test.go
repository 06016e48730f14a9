package gateway_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
	"github.com/fleetflow/fleetflow/internal/pki"
)

// startTLSGateway runs a gateway with a TLS listener on a free loopback port, its certificate made by a local
// CA in a temporary directory, checked for changes on every handshake.
func startTLSGateway(t *testing.T, store *gatewaytest.Store) (*gateway.Gateway, pki.Local) {
	t.Helper()
	l, err := pki.EnsureLocal(t.TempDir(), pki.LocalHosts, time.Now())
	require.NoError(t, err)
	g := gatewaytest.StartGateway(t, store, gateway.Config{TLSListen: "127.0.0.1:0", TLSCertFile: l.Cert,
		TLSKeyFile: l.Key, TLSReloadEvery: time.Nanosecond})
	require.NotEmpty(t, g.TLSAddr())
	return g, l
}

func TestTLSDeviceConnectsAndGetsItsTwin(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-tls", "s3cret")
	_, err := store.SetDesired("dev-tls", json.RawMessage(`{"telemetryInterval": 15}`))
	require.NoError(t, err)
	g, l := startTLSGateway(t, store)

	for _, scheme := range []string{"ssl", "tls", "mqtts"} {
		t.Run(scheme, func(t *testing.T) {
			// Connect returns once the twin/get it makes on every connect has been answered.
			d := mustConnect(t, scheme+"://"+g.TLSAddr(), "dev-tls", "s3cret", func(c *device.Config) { c.CAFile = l.CA })
			desired, version := d.Desired()
			assert.JSONEq(t, `{"telemetryInterval": 15}`, string(desired))
			assert.Equal(t, int64(1), version)
			d.Close()
		})
	}
	assert.GreaterOrEqual(t, g.Stats().TwinGets, int64(3))
	// The plaintext listener still serves loopback clients (the local stack's services).
	mustConnect(t, gatewaytest.URL(g), "dev-tls", "s3cret")
}

func TestTLSClientWithWrongCAIsRefused(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-tls", "s3cret")
	g, _ := startTLSGateway(t, store)
	other, err := pki.EnsureLocal(t.TempDir(), pki.LocalHosts, time.Now())
	require.NoError(t, err)

	_, err = connectDevice(t, "ssl://"+g.TLSAddr(), "dev-tls", "s3cret", func(c *device.Config) { c.CAFile = other.CA })
	require.Error(t, err)
	assert.NotErrorIs(t, err, device.ErrNotAuthorized, "refused in the handshake, before any CONNECT")
	assert.Contains(t, err.Error(), "certificate signed by unknown authority")
	assert.Zero(t, store.AuthLookups(), "the secret never reached the gateway")

	// The same with a bare TLS client: the handshake itself fails on the unknown authority.
	cfg, err := pki.ClientConfig(other.CA)
	require.NoError(t, err)
	_, err = tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", g.TLSAddr(), cfg)
	var unknown x509.UnknownAuthorityError
	require.True(t, errors.As(err, &unknown), "want an unknown-authority handshake error, got %v", err)
}

func TestTLSReplacedCertificateIsServedToTheNextConnection(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-tls", "s3cret")
	store.Add("dev-tls-2", "s3cret")
	g, l := startTLSGateway(t, store)
	served := func() *x509.Certificate {
		t.Helper()
		cfg, err := pki.ClientConfig(l.CA)
		require.NoError(t, err)
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", g.TLSAddr(), cfg)
		require.NoError(t, err)
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0]
	}
	first := served()
	d := mustConnect(t, "ssl://"+g.TLSAddr(), "dev-tls", "s3cret", func(c *device.Config) { c.CAFile = l.CA })

	ca, err := pki.LoadCA(l.CA, l.CAKey)
	require.NoError(t, err)
	certPEM, keyPEM, err := ca.IssueServer(pki.LocalHosts, time.Now(), 48*time.Hour)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(l.Key, keyPEM, 0o600))
	require.NoError(t, os.WriteFile(l.Cert, certPEM, 0o644))
	later := time.Now().Add(time.Minute) // a later mtime, whatever the file system's granularity
	require.NoError(t, os.Chtimes(l.Cert, later, later))

	second := served()
	assert.NotEqual(t, first.SerialNumber, second.SerialNumber, "the new certificate is served")
	assert.WithinDuration(t, time.Now().Add(48*time.Hour), second.NotAfter, time.Minute)
	assert.True(t, d.IsConnected(), "the open session is not dropped by the reload")
	mustConnect(t, "ssl://"+g.TLSAddr(), "dev-tls-2", "s3cret", func(c *device.Config) { c.CAFile = l.CA })
	assert.True(t, d.IsConnected())
}

func TestPlaintextOnlyOnLoopbackUnlessAllowed(t *testing.T) {
	for _, tc := range []struct {
		listen  string
		allow   bool
		wantErr string
	}{
		{listen: "127.0.0.1:1883"},
		{listen: "127.0.0.2:1883"},
		{listen: "[::1]:1883"},
		{listen: "localhost:1883"},
		{listen: "127.0.0.1:0"},
		{listen: "0.0.0.0:1883", wantErr: "refusing plaintext MQTT on 0.0.0.0:1883"},
		{listen: ":1883", wantErr: "not a loopback address"},
		{listen: "[::]:1883", wantErr: "not a loopback address"},
		{listen: "10.1.2.3:1883", wantErr: "--allow-plaintext"},
		{listen: "gateway.internal:1883", wantErr: "not a loopback address"},
		{listen: "0.0.0.0:1883", allow: true},
		{listen: ":1883", allow: true},
	} {
		err := gateway.Config{Listen: tc.listen, AllowPlaintext: tc.allow}.Validate()
		if tc.wantErr == "" {
			assert.NoError(t, err, "%s allow=%v", tc.listen, tc.allow)
		} else {
			assert.ErrorContains(t, err, tc.wantErr, "%s allow=%v", tc.listen, tc.allow)
		}
	}
	err := gateway.Config{TLSCertFile: "server.pem"}.Validate()
	assert.ErrorContains(t, err, "needs its key")
}

func TestTLSStartFailsWithoutALoadablePair(t *testing.T) {
	dir := t.TempDir()
	g := gateway.New(gateway.Config{Listen: "127.0.0.1:0", TLSListen: "127.0.0.1:0",
		TLSCertFile: dir + "/missing.pem", TLSKeyFile: dir + "/missing-key.pem"}, gatewaytest.New(), gatewaytest.Logger(t))
	err := g.Start(t.Context())
	require.ErrorContains(t, err, "TLS certificate")
	assert.Empty(t, g.TLSAddr())
}
