package simulator_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
	"github.com/fleetflow/fleetflow/internal/registry/registrytest"
	"github.com/fleetflow/fleetflow/internal/simulator"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// The simulator spreads its devices round-robin over the gateways it is given, and when one gateway goes
// away its devices reconnect to the others in equal shares, as behind a TCP load balancer.
func TestSimulatorSpreadsOverGatewaysAndFailsOver(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Open(t)
	const n = 30
	list := registrytest.Provision(t, reg, "spread", n)
	cfg := gateway.Config{FlushInterval: 20 * time.Millisecond}
	gws := []*gateway.Gateway{gatewaytest.StartGateway(t, reg, cfg), gatewaytest.StartGateway(t, reg, cfg), gatewaytest.StartGateway(t, reg, cfg)}
	var urls []string
	for _, g := range gws {
		urls = append(urls, gatewaytest.URL(g))
	}

	sim, err := simulator.New(simulator.Config{BrokerURLs: urls, Creds: list, Concurrency: 8,
		Logger: gatewaytest.Logger(t), MaxReconnectInterval: time.Second})
	require.NoError(t, err)
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		assert.NoError(t, sim.Run(runCtx))
	}()
	t.Cleanup(func() { stop(); wg.Wait() })

	require.Eventually(t, func() bool { return sim.Stats().Reported == n }, 30*time.Second, 20*time.Millisecond, "%s", sim.Stats())
	for i, g := range gws {
		assert.Equal(t, int64(n/3), g.Stats().Connected, "gateway %d holds a third of the devices", i)
	}
	st := sim.Stats()
	assert.Equal(t, map[string]int64{urls[0]: n / 3, urls[1]: n / 3, urls[2]: n / 3}, st.ByBroker)
	assert.Contains(t, st.String(), urls[0]+"=10")
	assert.Contains(t, st.String(), " by_gateway[")
	assert.NotContains(t, st.String(), "lost_", "no connection was lost yet")

	// Gateway 0 goes away: its ten devices come back, five on each of the other two.
	require.NoError(t, gws[0].Close())
	require.Eventually(t, func() bool {
		return gws[1].Stats().Connected == n/2 && gws[2].Stats().Connected == n/2 && sim.Stats().Connected == n &&
			sim.Stats().Reconnects == n/3
	}, 30*time.Second, 20*time.Millisecond, "gateways 1 and 2 hold %d and %d; %s", gws[1].Stats().Connected, gws[2].Stats().Connected, sim.Stats())
	assert.Zero(t, sim.Stats().Failed)
	// Every one of them lost its connection to the gateway closing it, none to a missed ping.
	st = sim.Stats()
	assert.Equal(t, int64(n/3), st.LostClosed+st.LostOther, st.String())
	assert.Zero(t, st.LostPing, st.String())
	assert.Contains(t, st.String(), " lost_ping=0 ")
}
