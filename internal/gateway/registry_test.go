package gateway_test

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
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/simulator"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

// The gateway against the real registry (a throwaway Postgres): simulated devices connect and report, the
// registry shows them online with their capabilities, and disabling one through the registry's NOTIFY
// drops its session at once.
func TestGatewayWithRegistry(t *testing.T) {
	ctx := context.Background()
	reg, err := registry.Open(ctx, testenv.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(reg.Close)

	const n = 30
	var list []creds.Credential
	var rows []registry.StagedRow
	for i := range n {
		secret, err := creds.NewSecret()
		require.NoError(t, err)
		c := creds.Credential{ID: fmt.Sprintf("reg-dev-%02d", i), Secret: secret}
		list = append(list, c)
		rows = append(rows, registry.StagedRow{Seq: int64(i), Line: int64(i + 1), ID: c.ID, Tags: "{}", SecretHash: creds.Digest(secret)})
	}
	next := 0
	_, err = reg.StageRows(ctx, "op-gw", "provision", func() (registry.StagedRow, bool, error) {
		if next == len(rows) {
			return registry.StagedRow{}, false, nil
		}
		next++
		return rows[next-1], true, nil
	})
	require.NoError(t, err)
	counts, err := reg.ProvisionBatch(ctx, "op-gw", 0, n)
	require.NoError(t, err)
	require.Equal(t, int64(n), counts.Created)

	g := gatewaytest.StartGateway(t, reg, gateway.Config{FlushInterval: 50 * time.Millisecond})
	sim, err := simulator.New(simulator.Config{BrokerURL: gatewaytest.URL(g), Creds: list, Seed: 3,
		Logger: gatewaytest.Logger(t), MaxReconnectInterval: time.Second})
	require.NoError(t, err)
	simCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		assert.NoError(t, sim.Run(simCtx))
	}()
	t.Cleanup(func() {
		stop()
		wg.Wait()
	})
	require.Eventually(t, func() bool { return sim.Stats().Reported == n }, 20*time.Second, 20*time.Millisecond, "%s", sim.Stats())

	for _, c := range list {
		tw, err := reg.GetTwin(ctx, c.ID)
		require.NoError(t, err)
		want, _ := json.Marshal(simulator.Capabilities(c.ID, 3))
		assert.JSONEq(t, string(want), string(tw.Properties.Reported.Doc), c.ID)
	}
	require.Eventually(t, func() bool {
		d, err := reg.GetDevice(ctx, list[0].ID)
		return err == nil && d.Online && d.Session > 0 && d.LastSeen != nil
	}, 5*time.Second, 20*time.Millisecond)

	// Revocation through the registry: NOTIFY → cache dropped → session re-checked → kicked.
	victim := list[1].ID
	start := time.Now()
	require.NoError(t, reg.SetStatus(ctx, victim, registry.StatusDisabled))
	require.Eventually(t, func() bool { return g.Stats().Kicks == 1 }, time.Second, 5*time.Millisecond)
	t.Logf("kicked %s after %s", victim, time.Since(start))
	require.Eventually(t, func() bool {
		d, err := reg.GetDevice(ctx, victim)
		return err == nil && !d.Online
	}, 5*time.Second, 20*time.Millisecond)
	failures := g.Stats().AuthFailures
	require.Eventually(t, func() bool { return g.Stats().AuthFailures > failures }, 5*time.Second, 20*time.Millisecond,
		"the device's automatic reconnect is refused")
	require.Eventually(t, func() bool { return g.Stats().Connected == n-1 }, time.Second, 5*time.Millisecond)
	assert.Zero(t, g.Stats().StoreErrors)
}

func TestMain(m *testing.M) { testenv.Main(m) }
