package gateway_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
	"github.com/fleetflow/fleetflow/internal/registry/registrytest"
	"github.com/fleetflow/fleetflow/internal/simulator"
	"github.com/fleetflow/fleetflow/internal/testenv"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// The gateway against the real registry (a throwaway Postgres): simulated devices connect and report, the
// registry shows them online with their capabilities, and disabling one through the registry's NOTIFY
// drops its session at once.
func TestGatewayWithRegistry(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Open(t)

	const n = 30
	list := registrytest.Provision(t, reg, "reg-dev", n)

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
	require.NoError(t, reg.SetStatus(ctx, victim, fleet.StatusDisabled))
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

// A firmware job end to end against the real registry: desired.firmware is written and published as a
// rollout would, the simulated devices report progress and the new version, and the gateway lands the job
// statuses in device_job_status. Method calls to an offline device fail fast.
func TestFirmwareJobWithRegistry(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Open(t)
	const n, seed = 12, 4
	list := registrytest.Provision(t, reg, "fw-dev", n)
	natsURL := testenv.NATS(t)
	g, _ := gatewaytest.StartGatewayOnNATS(t, reg, gateway.Config{FlushInterval: 50 * time.Millisecond}, natsURL)
	ch, err := channel.Dial(ctx, channel.Config{URL: natsURL, Logger: gatewaytest.Logger(t)})
	require.NoError(t, err)
	t.Cleanup(ch.Close)
	online := list[:n-1] // the last one stays offline
	sim, err := simulator.New(simulator.Config{BrokerURL: gatewaytest.URL(g), Creds: online, Seed: seed,
		Logger: gatewaytest.Logger(t), MaxReconnectInterval: time.Second,
		FailInstall: simulator.VersionFractions{"2.0.0": 0.3}})
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
	require.Eventually(t, func() bool { return sim.Stats().Reported == n-1 }, 20*time.Second, 20*time.Millisecond, "%s", sim.Stats())

	patch := `{"firmware":{"jobId":"rollout-2.0.0-1","version":"2.0.0","url":"https://fw.example/2.0.0","sha256":"00"},"telemetryInterval":45}`
	var pushes []fleet.DesiredPush
	for _, c := range online {
		tw, err := reg.UpdateTwin(ctx, c.ID, twin.Desired, []byte(patch), "")
		require.NoError(t, err)
		pushes = append(pushes, fleet.DesiredPush{DeviceID: c.ID, Version: tw.Properties.Desired.Version, Patch: []byte(patch)})
	}
	published, err := ch.PublishDesired(ctx, pushes)
	require.NoError(t, err)
	require.Equal(t, len(online), published)
	type row struct{ status, reason string }
	rows := func() map[string]row {
		out := map[string]row{}
		rs, err := reg.Pool().Query(ctx, `SELECT device_id, status, reason FROM device_job_status WHERE job_id = $1`, "rollout-2.0.0-1")
		require.NoError(t, err)
		defer rs.Close()
		for rs.Next() {
			var id string
			var r row
			require.NoError(t, rs.Scan(&id, &r.status, &r.reason))
			out[id] = r
		}
		require.NoError(t, rs.Err())
		return out
	}
	require.Eventually(t, func() bool {
		got := rows()
		for _, c := range online {
			if r := got[c.ID]; r.status != "succeeded" && r.status != "failed" {
				return false
			}
		}
		return true
	}, 20*time.Second, 50*time.Millisecond, "%v", rows())
	got := rows()
	assert.Len(t, got, n-1, "one row per device, the latest status")
	for _, c := range online {
		tw, err := reg.GetTwin(ctx, c.ID)
		require.NoError(t, err)
		var rep struct {
			Firmware          struct{ Version string }
			TelemetryInterval int
		}
		require.NoError(t, json.Unmarshal(tw.Properties.Reported.Doc, &rep))
		assert.Equal(t, 45, rep.TelemetryInterval, "%s acknowledged desired", c.ID)
		if simulator.InstallFails(seed, c.ID, "2.0.0", 0.3) {
			assert.Equal(t, row{"failed", "install failed: checksum mismatch (simulated)"}, got[c.ID], c.ID)
			assert.NotEqual(t, "2.0.0", rep.Firmware.Version, c.ID)
		} else {
			assert.Equal(t, row{"succeeded", ""}, got[c.ID], c.ID)
			assert.Equal(t, "2.0.0", rep.Firmware.Version, c.ID)
		}
	}
	// downloading, installing, rebooting, succeeded — or downloading, installing, failed.
	var want int64
	for _, c := range online {
		want += 4
		if simulator.InstallFails(seed, c.ID, "2.0.0", 0.3) {
			want--
		}
	}
	require.Less(t, want, int64(4*(n-1)), "the fleet must include a failing install")
	require.Greater(t, want, int64(3*(n-1)), "the fleet must include a successful install")
	st := g.Stats()
	assert.Equal(t, want, st.JobStatus)
	assert.Zero(t, st.JobStatusDropped)
	assert.Zero(t, st.StoreErrors)

	assert.Equal(t, int64(len(online)), st.DesiredRelayed)

	// The offline device is answered for at once (by NATS: no gateway holds it); an online one answers.
	offline := list[n-1].ID
	res := ch.InvokeMany(ctx, []fleet.MethodCall{{DeviceID: offline, Method: "ping"}, {DeviceID: online[0].ID, Method: "ping"}}, 5*time.Second, 0)
	assert.Equal(t, fleet.MethodOffline, res[0].Outcome)
	assert.JSONEq(t, `{"error":"device offline","code":"DeviceNotOnline"}`, string(res[0].Payload))
	assert.Equal(t, fleet.MethodSucceeded, res[1].Outcome, "%+v", res[1])
}

func TestMain(m *testing.M) { testenv.Main(m) }

// Two gateways on one registry: a device that moves from the first to the second gets a larger session
// number there (both draw from the registry's sequence), so the registry shows it online with the second's
// session, and the first session's late ConnDown is ignored.
func TestDeviceMovesBetweenGateways(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Open(t)
	c := registrytest.Provision(t, reg, "move-dev", 1)[0]
	cfg := gateway.Config{FlushInterval: 20 * time.Millisecond}
	g1 := gatewaytest.StartGateway(t, reg, cfg)
	g2 := gatewaytest.StartGateway(t, reg, cfg)

	online := func(min int64) int64 {
		t.Helper()
		var s int64
		require.Eventually(t, func() bool {
			d, err := reg.GetDevice(ctx, c.ID)
			s = d.Session
			return err == nil && d.Online && d.Session > min
		}, 5*time.Second, 10*time.Millisecond, "online with a session above %d", min)
		return s
	}
	d1 := mustConnect(t, gatewaytest.URL(g1), c.ID, c.Secret)
	s1 := online(0)
	mustConnect(t, gatewaytest.URL(g2), c.ID, c.Secret)
	s2 := online(s1)
	require.Greater(t, s2, s1)

	// The first gateway's session ends after the second began: its ConnDown is older and changes nothing.
	d1.Close()
	require.Eventually(t, func() bool { return g1.Stats().Connected == 0 }, 5*time.Second, 10*time.Millisecond)
	time.Sleep(5 * cfg.FlushInterval)
	d, err := reg.GetDevice(ctx, c.ID)
	require.NoError(t, err)
	require.True(t, d.Online, "the older session's disconnect must not take the device offline")
	require.Equal(t, s2, d.Session)
	assert.Zero(t, g1.Stats().StoreErrors+g2.Stats().StoreErrors)
}
