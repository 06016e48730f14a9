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

// The simulator's devices connect over TLS with the CA file (one tls.Config shared by all of them), and a
// CA file that cannot be read fails New instead of every device.
func TestSimulatorOverTLS(t *testing.T) {
	const n = 10
	l, err := pki.EnsureLocal(t.TempDir(), pki.LocalHosts, time.Now())
	require.NoError(t, err)
	store := gatewaytest.New()
	var list []creds.Credential
	for i := range n {
		c := creds.Credential{ID: fmt.Sprintf("tls-%02d", i), Secret: fmt.Sprintf("secret-%02d", i)}
		store.Add(c.ID, c.Secret)
		list = append(list, c)
	}
	g := gatewaytest.StartGateway(t, store, gateway.Config{TLSListen: "127.0.0.1:0", TLSCertFile: l.Cert, TLSKeyFile: l.Key})

	_, err = simulator.New(simulator.Config{BrokerURL: "ssl://" + g.TLSAddr(), CAFile: filepath.Join(t.TempDir(), "none.pem"), Creds: list})
	require.ErrorContains(t, err, "read CA file")

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
	assert.Zero(t, sim.Stats().Failed)
	stop()
	require.NoError(t, <-done)
}
