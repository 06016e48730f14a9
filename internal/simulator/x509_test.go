package simulator_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/simulator"
)

// A credentials file of `provision --auth x509` (certificates and keys, no secrets) mixed with secret
// devices: the simulator's certificate devices connect with their certificates and no password.
func TestSimulatorWithCertificateCredentials(t *testing.T) {
	const n = 6
	now := time.Now()
	l, err := pki.EnsureLocal(t.TempDir(), pki.LocalHosts, now)
	require.NoError(t, err)
	caDir := filepath.Join(t.TempDir(), "ca")
	ca, err := pki.InitDeviceCA(caDir, "", now, 0)
	require.NoError(t, err)
	store := gatewaytest.New()
	path := filepath.Join(t.TempDir(), "creds.ndjson")
	w, err := creds.Create(path)
	require.NoError(t, err)
	for i := range n {
		id := fmt.Sprintf("x509-%02d", i)
		if i%2 == 1 {
			require.NoError(t, w.Write(creds.Credential{ID: id, Secret: "secret-" + id}))
			store.Add(id, "secret-"+id)
			continue
		}
		dc, err := ca.IssueDevice(id, now, time.Hour)
		require.NoError(t, err)
		require.NoError(t, w.Write(creds.Credential{ID: id, Cert: string(dc.CertPEM), Key: string(dc.KeyPEM)}))
		store.AddCertificate(id, dc.Fingerprint)
	}
	require.NoError(t, w.Close())
	list, err := creds.ReadFile(path)
	require.NoError(t, err)
	g := gatewaytest.StartGateway(t, store, gateway.Config{TLSListen: "127.0.0.1:0", TLSCertFile: l.Cert, TLSKeyFile: l.Key,
		DeviceCAFile: pki.DeviceCAIn(caDir).Cert})

	_, err = simulator.New(simulator.Config{BrokerURL: gatewaytest.URL(g), Creds: list})
	require.ErrorContains(t, err, "TLS only", "certificates are not presented over plaintext")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sim, err := simulator.New(simulator.Config{BrokerURL: "ssl://" + g.TLSAddr(), CAFile: l.CA, Creds: list,
		Logger: gatewaytest.Logger(t)})
	require.NoError(t, err)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- sim.Run(runCtx) }()
	require.Eventually(t, func() bool { return sim.Stats().Reported == n }, 15*time.Second, 20*time.Millisecond, "stats: %s", sim.Stats())
	assert.Equal(t, int64(n), g.Stats().Connected)
	assert.Zero(t, g.Stats().AuthFailures)
	stop()
	require.NoError(t, <-done)
}
