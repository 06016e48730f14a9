package device_test

import (
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
	"github.com/fleetflow/fleetflow/internal/pki"
)

// Devices sharing one TLSClient (a simulator's) each present their own client certificate, or none, over the
// one configuration; the shared configuration is never changed; and the server is still verified: a
// TLSClient whose roots do not hold the gateway's CA is refused in the handshake, before any CONNECT.
func TestSharedTLSClientPresentsEachDevicesCertificate(t *testing.T) {
	now := time.Now()
	x := gatewaytest.StartX509(t, now)
	g, store, server, ca := x.Gateway, x.Store, x.Server, x.CA

	base, err := pki.ClientConfig(server.CA)
	require.NoError(t, err)
	shared := device.NewTLSClient(base)
	url := "ssl://" + g.TLSAddr()

	fingerprints := map[string][]byte{}
	var devs []*device.Device
	for i := range 2 {
		id := fmt.Sprintf("dev-x%d", i)
		dc, err := ca.IssueDevice(id, now, time.Hour)
		require.NoError(t, err)
		pair, err := tls.X509KeyPair(dc.CertPEM, dc.KeyPEM)
		require.NoError(t, err)
		store.AddCertificate(id, dc.Fingerprint)
		fingerprints[id] = dc.Fingerprint
		devs = append(devs, newDevice(t, url, id, func(c *device.Config) {
			c.Secret, c.TLS, c.ClientCertificate = "", shared, &pair
		}))
	}
	store.Add("dev-s", "secret-dev-s")
	devs = append(devs, newDevice(t, url, "dev-s", func(c *device.Config) { c.TLS = shared }))
	for _, d := range devs {
		connect(t, d)
	}
	ups := func() (up []fleet.ConnEvent) {
		for _, ev := range store.Events() {
			if ev.Kind == fleet.ConnUp {
				up = append(up, ev)
			}
		}
		return up
	}
	// The gateway records connection events in batches.
	require.Eventually(t, func() bool { return len(ups()) == 3 }, 10*time.Second, 10*time.Millisecond)
	for _, ev := range ups() {
		if fp, ok := fingerprints[ev.DeviceID]; ok {
			assert.Equal(t, string(fp), string(ev.Digest), "%s connected with its own certificate", ev.DeviceID)
		} else {
			assert.Equal(t, 1, ev.Slot, "%s connected with its secret, presenting no certificate", ev.DeviceID)
		}
	}
	assert.Equal(t, int64(3), g.Stats().Connected)
	assert.Empty(t, base.Certificates, "the shared configuration is not changed")
	assert.Nil(t, base.GetClientCertificate, "the shared configuration is not changed")
	assert.Empty(t, base.ServerName, "the shared configuration is not changed")

	other, err := pki.EnsureLocal(t.TempDir(), pki.LocalHosts, now)
	require.NoError(t, err)
	wrong, err := pki.ClientConfig(other.CA)
	require.NoError(t, err)
	lookups := store.AuthLookups()
	d := newDevice(t, url, "dev-s", func(c *device.Config) { c.TLS = device.NewTLSClient(wrong) })
	err = d.Connect(t.Context())
	require.Error(t, err)
	assert.NotErrorIs(t, err, device.ErrNotAuthorized, "refused in the handshake, before any CONNECT")
	assert.Contains(t, err.Error(), "certificate signed by unknown authority")
	assert.Equal(t, lookups, store.AuthLookups(), "the secret never reached the gateway")
}
