package simulator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
	"github.com/fleetflow/fleetflow/internal/simulator"
)

func TestSimulatorConnectsAndReportsCapabilities(t *testing.T) {
	const n = 50
	store := gatewaytest.New()
	var list []creds.Credential
	for i := range n {
		secret, err := creds.NewSecret()
		require.NoError(t, err)
		c := creds.Credential{ID: fmt.Sprintf("sim-%04d", i), Secret: secret}
		store.Add(c.ID, c.Secret)
		list = append(list, c)
	}
	list = append(list, creds.Credential{ID: "sim-intruder", Secret: "guess"}) // not provisioned
	g := gatewaytest.StartGateway(t, store, gateway.Config{})

	sim, err := simulator.New(simulator.Config{
		BrokerURL:      gatewaytest.URL(g),
		Creds:          list,
		Concurrency:    16,
		TelemetryEvery: 200 * time.Millisecond,
		Seed:           42,
		Logger:         gatewaytest.Logger(t),
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sim.Run(ctx) }()
	stop := sync.OnceValue(func() error {
		cancel()
		return <-done
	})
	defer stop()

	require.Eventually(t, func() bool {
		st := sim.Stats()
		return st.Reported == n && st.Refused == 1
	}, 20*time.Second, 20*time.Millisecond, "stats: %s", sim.Stats())
	st := sim.Stats()
	assert.Equal(t, int64(n), st.Connected)
	assert.Zero(t, st.Failed)
	require.Eventually(t, func() bool { return g.Stats().Connected == n }, time.Second, 5*time.Millisecond)

	// What each device reported is predictable from its id and the seed.
	for _, c := range list[:n] {
		want, err := json.Marshal(simulator.Capabilities(c.ID, 42))
		require.NoError(t, err)
		got, v := store.Reported(c.ID)
		assert.JSONEq(t, string(want), string(got), c.ID)
		assert.Equal(t, int64(1), v)
	}
	assert.NotEqual(t, simulator.Capabilities("sim-0001", 42), simulator.Capabilities("sim-0001", 43))

	// The simulated devices answer ping and diagnostics.
	svc := gatewaytest.Service(t, gatewaytest.URL(g), "svc:test")
	svc.Sub(t, 0, "devices/+/methods/res/+/+")
	require.NoError(t, svc.Pub(t, "devices/sim-0007/methods/req/ping/p1", 0, `{}`))
	require.NoError(t, svc.Pub(t, "devices/sim-0007/methods/req/diagnostics/d1", 0, `{}`))
	m, ok := svc.WaitMessage(t, "devices/sim-0007/methods/res/200/p1", 3*time.Second)
	require.True(t, ok)
	assert.Contains(t, string(m.Payload), `"pong":true`)
	m, ok = svc.WaitMessage(t, "devices/sim-0007/methods/res/200/d1", 3*time.Second)
	require.True(t, ok)
	var diag map[string]any
	require.NoError(t, json.Unmarshal(m.Payload, &diag))
	assert.Equal(t, simulator.Capabilities("sim-0007", 42)["model"], diag["model"])

	// Telemetry flows from every device.
	require.Eventually(t, func() bool { return g.Stats().Telemetry >= n }, 5*time.Second, 20*time.Millisecond)

	require.NoError(t, stop())
	assert.Zero(t, sim.Stats().Connected)
	require.Eventually(t, func() bool { return g.Stats().Connected == 0 }, 5*time.Second, 20*time.Millisecond)
}

func TestCapabilitiesAreDeterministic(t *testing.T) {
	a := simulator.Capabilities("dev-1", 7)
	b := simulator.Capabilities("dev-1", 7)
	assert.Equal(t, a, b)
	assert.Contains(t, a, "model")
	assert.Contains(t, a, "firmware")
	assert.Contains(t, a["sensors"], "temperature")
}

func TestConfigValidation(t *testing.T) {
	_, err := simulator.New(simulator.Config{})
	require.Error(t, err)
	_, err = simulator.New(simulator.Config{BrokerURL: "tcp://127.0.0.1:1"})
	require.Error(t, err)
}

// Against a gateway that can authenticate only two CONNECTs at once, part of a burst is refused busy; the
// simulated devices come back after a random wait (not counted as refused or failed) and all get in.
func TestSimulatorBacksOffFromABusyGatewayAndConnectsAll(t *testing.T) {
	const n = 40
	store := gatewaytest.New()
	store.AuthDelay = 50 * time.Millisecond
	var list []creds.Credential
	for i := range n {
		c := creds.Credential{ID: fmt.Sprintf("busy-%04d", i), Secret: "s"}
		store.Add(c.ID, c.Secret)
		list = append(list, c)
	}
	g := gatewaytest.StartGateway(t, store, gateway.Config{AdmitPending: 2, AdmitLag: -1})
	sim, err := simulator.New(simulator.Config{
		BrokerURL: gatewaytest.URL(g), Creds: list, Concurrency: 16, Logger: gatewaytest.Logger(t),
		MaxReconnectInterval: 2 * time.Second,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sim.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	require.Eventually(t, func() bool { return sim.Stats().Reported == n }, 60*time.Second, 20*time.Millisecond, "stats: %s", sim.Stats())
	st := sim.Stats()
	assert.Positive(t, st.Busy, "16 CONNECTs at once against 2 slots: some must have been refused busy")
	assert.Equal(t, g.Stats().RefusedBusy, st.Busy, "the simulator counts every busy refusal the gateway made")
	assert.Zero(t, st.Refused)
	assert.Zero(t, st.Failed)
	assert.Equal(t, int64(n), st.Connected)
}
