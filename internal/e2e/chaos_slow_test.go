//go:build chaos

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/simulator"
)

// The slow chaos tests: `make chaos` (go test -tags chaos). See chaos_test.go.

// signal sends sig to the process.
func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	require.NoError(p.t, p.cmd.Process.Signal(sig), "signal %s to %s", sig, p.name)
}

// killed reports whether the process died of SIGKILL.
func killed(st *os.ProcessState) bool {
	ws, ok := st.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// versions reads column (tags_version or desired_version) of every device of a region.
func (e *env) versions(ctx context.Context, column, region string) map[string]int64 {
	e.t.Helper()
	rows, err := e.reg.Pool().Query(ctx, "SELECT id, "+column+" FROM devices WHERE tags->>'region' = $1", region)
	require.NoError(e.t, err)
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var id string
		var v int64
		require.NoError(e.t, rows.Scan(&id, &v))
		out[id] = v
	}
	require.NoError(e.t, rows.Err())
	return out
}

// detachedJob starts a job with --detach -o json and returns its id.
func (e *env) detachedJob(ctx context.Context, args ...string) string {
	e.t.Helper()
	out, err := e.cli(ctx, append(append([]string{"job", "start"}, args...), "--detach", "-o", "json")...)
	require.NoError(e.t, err)
	var started struct {
		ID string `json:"id"`
	}
	require.NoError(e.t, json.Unmarshal([]byte(out), &started), out)
	return started.ID
}

// killedAt waits until a worker with a kill hook has died of SIGKILL.
func killedAt(t *testing.T, w *proc) {
	t.Helper()
	st := w.waitExit(2 * time.Minute)
	require.True(t, killed(st), "%s ended by %v, not by SIGKILL at its fault point:\n%s", w.name, st, tailLines(w.out.String(), 20))
}

// TestChaosWorkerKilledInsideEachActivityKind kills the only worker with SIGKILL inside a batch activity of
// each kind, at the step boundary where a repeat would do harm (after a provisioning batch's commit, after a
// tags batch's commit, after a method was sent and before its outcome was recorded, after a rollout's
// desired patches were pushed, after a wipe was sent), then starts a fresh worker: the operation finishes,
// each device is created, patched, updated and wiped once, and the counts are exact.
func TestChaosWorkerKilledInsideEachActivityKind(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const n = 20
	credsPath := filepath.Join(t.TempDir(), "k.creds")
	var sim *simulator.Simulator

	t.Run("provision batch", func(t *testing.T) {
		w := e.faultyWorker("kill:committed")
		done := e.cliAsync(ctx, "provision", "--count", fmt.Sprint(n), "--prefix", "k-", "--tags", "region=k",
			"--heartbeat-timeout", "3s", "--creds-out", credsPath, "-o", "json")
		killedAt(t, w)
		defer e.plainWorker().stop()
		res := <-done
		require.NoError(t, res.err)
		s := parseSummary(t, res.out)
		assert.EqualValues(t, n, s.Counts.Created, "the retried batch reports the devices its killed attempt created")
		assert.Zero(t, s.Counts.Existing+s.Counts.Invalid)
		assert.Len(t, mustCreds(t, credsPath), n)
		assert.EqualValues(t, n, e.count(ctx, "SELECT count(*) FROM devices WHERE tags->>'region' = 'k'"))
	})
	sim = e.simulate(ctx, mustCreds(t, credsPath), simulator.Config{})
	q := "SELECT * FROM devices WHERE tags.region = 'k'"

	t.Run("tags batch", func(t *testing.T) {
		before := e.versions(ctx, "tags_version", "k")
		w := e.faultyWorker("kill:committed")
		id := e.detachedJob(ctx, "--query", q, "--set-tags", `{"chaos":"kill"}`)
		killedAt(t, w)
		defer e.plainWorker().stop()
		require.NoError(t, e.tc.GetWorkflow(ctx, id, "").Get(ctx, nil))
		assert.Equal(t, map[string]int64{"succeeded": n}, e.jobStates(ctx, id))
		after := e.versions(ctx, "tags_version", "k")
		for d, v := range before {
			assert.Equal(t, v+1, after[d], "%s: tags written once", d)
		}
	})

	t.Run("method batch", func(t *testing.T) {
		methods := sim.Stats().Methods
		w := e.faultyWorker("kill:invoked")
		id := e.detachedJob(ctx, "--query", q, "--method", "ping", "--timeout", "10s")
		killedAt(t, w)
		defer e.plainWorker().stop()
		require.NoError(t, e.tc.GetWorkflow(ctx, id, "").Get(ctx, nil))
		// Sent by the killed attempt, whose outcomes died with it: closed as lost, never sent again.
		assert.Equal(t, map[string]int64{"timed_out": n}, e.jobStates(ctx, id))
		assert.EqualValues(t, n, sim.Stats().Methods-methods, "each device ran the method exactly once")
	})

	t.Run("rollout batch", func(t *testing.T) {
		_, err := e.cli(ctx, "firmware", "add", "--version", "9.0.0", "--url", "https://fw.example/9.0.0.bin", "--sha256", strings.Repeat("ef", 32))
		require.NoError(t, err)
		before := e.versions(ctx, "desired_version", "k")
		updates := sim.Stats().FirmwareUpdates
		w := e.faultyWorker("kill:pushed")
		out, err := e.cli(ctx, "rollout", "start", "--firmware", "9.0.0", "--query", q, "--waves", "100%", "--detach")
		require.NoError(t, err)
		id := startedRollout(t, out)
		killedAt(t, w)
		defer e.plainWorker().stop()
		var res struct{ State string }
		require.NoError(t, e.tc.GetWorkflow(ctx, id, "").Get(ctx, &res))
		assert.Equal(t, "completed", res.State)
		assert.EqualValues(t, n, e.count(ctx, "SELECT count(*) FROM rollout_devices WHERE rollout_id = $1 AND phase = 'succeeded'", id))
		assert.Zero(t, e.count(ctx, "SELECT count(*) FROM rollout_devices WHERE active"))
		after := e.versions(ctx, "desired_version", "k")
		for d, v := range before {
			assert.Equal(t, v+1, after[d], "%s: desired firmware written once", d)
		}
		assert.EqualValues(t, n, sim.Stats().FirmwareUpdates-updates, "each device installed it once")
	})

	t.Run("decommission batch with wipe", func(t *testing.T) {
		methods := sim.Stats().Methods
		w := e.faultyWorker("kill:invoked")
		before := e.workflowsOnQueue(ctx)
		done := e.cliAsync(ctx, "retire", "--query", q, "--wipe", "--reason", "chaos-kill")
		killedAt(t, w)
		defer e.plainWorker().stop()
		id := e.newWorkflows(ctx, before, "decommission-", 1)[0]
		require.NoError(t, e.tc.GetWorkflow(ctx, id, "").Get(ctx, nil))
		<-done
		assert.EqualValues(t, n, e.count(ctx, "SELECT count(*) FROM devices WHERE tags->>'region' = 'k' AND status = 'retired'"))
		var job string
		require.NoError(t, e.reg.Pool().QueryRow(ctx, "SELECT id FROM jobs WHERE kind = 'retire' AND spec->>'reason' = 'chaos-kill'").Scan(&job))
		assert.Equal(t, map[string]int64{"succeeded": n}, e.jobStates(ctx, job))
		assert.EqualValues(t, n, sim.Stats().Methods-methods, "each device wiped exactly once")
	})
}

// reporter is a device that reports {"seq": n} with n counting up, and remembers the last n the gateway
// acknowledged (a 204 with the new version: the registry has it).
type reporter struct {
	dev     *device.Device
	acked   atomic.Int64
	errs    atomic.Int64
	lastErr atomic.Value
}

// startReporters connects a device per credential (failing over across urls) and reports in a loop until
// stop is called; stop returns once every loop has ended.
func startReporters(ctx context.Context, t *testing.T, cs []creds.Credential, urls []string) ([]*reporter, func()) {
	t.Helper()
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	rs := make([]*reporter, len(cs))
	for i, c := range cs {
		d, err := device.New(device.Config{BrokerURLs: urls, ID: c.ID, Secret: c.Secret, KeepAlive: 2 * time.Second,
			MaxReconnectInterval: time.Second, ReconnectJitter: 200 * time.Millisecond, RequestTimeout: 3 * time.Second,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		require.NoError(t, err)
		require.NoError(t, d.Connect(ctx))
		r := &reporter{dev: d}
		rs[i] = r
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := int64(1); rctx.Err() == nil; {
				// A request in flight when the connection drops is never answered: the SDK waits for it
				// until the context ends, so each call has its own deadline (the test's is minutes away).
				cctx, ccancel := context.WithTimeout(rctx, 3*time.Second)
				_, err := d.ReportPatch(cctx, map[string]any{"seq": seq})
				ccancel()
				if err == nil {
					r.acked.Store(seq)
					seq++
					continue
				}
				r.errs.Add(1)
				r.lastErr.Store(err.Error())
				select { // not connected, or no answer: the same seq again shortly
				case <-time.After(50 * time.Millisecond):
				case <-rctx.Done():
				}
			}
		}()
	}
	return rs, func() {
		cancel()
		wg.Wait()
		for _, r := range rs {
			r.dev.Close()
		}
	}
}

// deviceStacks returns the stacks of the goroutines in a ReportPatch, to show where a stalled one waits.
func deviceStacks() string {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "ReportPatch") && len(out) < 3 {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// TestChaosGatewaysRestartedAndKilledUnderAThousandDevices runs three gateway processes with a thousand
// simulated devices spread over them and fifty devices reporting a counter as fast as they are acknowledged;
// it restarts one gateway (SIGTERM, then the same address again) and kills another with SIGKILL. The devices
// reconnect, every one is connected again, no reported update a gateway acknowledged is missing from the
// registry, and a desired change made after the kill reaches every device.
func TestChaosGatewaysRestartedAndKilledUnderAThousandDevices(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	e.plainWorker()
	addrs := []string{freeListen(t), freeListen(t), freeListen(t)}
	gws := make([]*proc, len(addrs))
	urls := make([]string, len(addrs))
	for i, a := range addrs {
		gws[i] = e.gatewayProc(a)
		urls[i] = "tcp://" + a
	}
	path, rpath := filepath.Join(t.TempDir(), "g.creds"), filepath.Join(t.TempDir(), "gr.creds")
	_, err := e.cli(ctx, "provision", "--count", "1000", "--prefix", "g-", "--tags", "region=g", "--creds-out", path, "-o", "json")
	require.NoError(t, err)
	_, err = e.cli(ctx, "provision", "--count", "50", "--prefix", "gr-", "--tags", "region=gr", "--creds-out", rpath, "-o", "json")
	require.NoError(t, err)
	sims, reps := mustCreds(t, path), mustCreds(t, rpath)

	sim, err := simulator.New(simulator.Config{BrokerURLs: urls, Creds: sims, KeepAlive: 5 * time.Second,
		MaxReconnectInterval: 2 * time.Second, ReconnectJitter: 2 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	simCtx, simStop := context.WithCancel(ctx)
	simDone := make(chan struct{})
	go func() { defer close(simDone); _ = sim.Run(simCtx) }()
	defer func() { simStop(); <-simDone }()
	require.Eventually(t, func() bool { return sim.Stats().Connected == 1000 && sim.Stats().Reported == 1000 }, 3*time.Minute,
		200*time.Millisecond, "devices did not all connect: %s", sim.Stats())
	rs, stopReporting := startReporters(ctx, t, reps, urls)
	progressed := func(min int64) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			var behind []string
			for _, r := range rs {
				if r.acked.Load() < min {
					behind = append(behind, fmt.Sprintf("%s (acked %d, connected %v to %s, errors %d, last %v)", r.dev.ID(),
						r.acked.Load(), r.dev.IsConnected(), r.dev.Broker(), r.errs.Load(), r.lastErr.Load()))
				}
			}
			if len(behind) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d reporters stalled below %d: %s\n%s", len(behind), min, strings.Join(behind, "; "), deviceStacks())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	progressed(5)

	// Restart gateway 0 as a deployment would: SIGTERM, then the same address again.
	gws[0].stop()
	gws[0] = e.gatewayProc(addrs[0])
	require.Eventually(t, func() bool { return sim.Stats().Connected == 1000 && sim.Stats().Reconnects > 0 }, 3*time.Minute,
		200*time.Millisecond, "devices did not all reconnect after the restart: %s", sim.Stats())
	reconnects := sim.Stats().Reconnects
	progressed(20)

	// Kill gateway 1 outright: its devices go to the other two.
	gws[1].signal(syscall.SIGKILL)
	require.True(t, killed(gws[1].waitExit(time.Minute)))
	require.Eventually(t, func() bool { return sim.Stats().Connected == 1000 && sim.Stats().Reconnects > reconnects },
		3*time.Minute, 200*time.Millisecond, "devices did not all reconnect after the kill: %s", sim.Stats())
	progressed(40)
	stopReporting()

	// No acknowledged report lost: the registry holds at least each device's last acknowledged seq.
	for _, r := range rs {
		got := e.reportedField(ctx, r.dev.ID(), "seq")
		var seq int64
		require.NoError(t, json.Unmarshal([]byte(got), &seq), "%s: reported.seq = %q", r.dev.ID(), got)
		assert.GreaterOrEqual(t, seq, r.acked.Load(), "%s: an acknowledged report was lost", r.dev.ID())
	}

	// Desired state converges on every device, wherever it reconnected.
	out, err := e.cli(ctx, "job", "start", "--query", "SELECT * FROM devices WHERE tags.region = 'g'",
		"--set-desired", `{"telemetryInterval": 42}`, "--timeout", "2m", "-o", "json")
	require.NoError(t, err, out)
	require.Eventually(t, func() bool {
		return e.count(ctx, `SELECT count(*) FROM devices WHERE tags->>'region' = 'g' AND (reported->>'telemetryInterval')::int = 42`) == 1000
	}, time.Minute, 200*time.Millisecond, "every simulated device mirrors the desired change")
}

// TestChaosGatewayFrozenLongerThanKeepAlive freezes the gateway process (SIGSTOP) for longer than the devices'
// keep-alive and ping timeout, changes their desired state meanwhile, and thaws it (SIGCONT): the devices
// noticed, reconnect, every one ends connected with the desired change mirrored, and the gateway is healthy.
func TestChaosGatewayFrozenLongerThanKeepAlive(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e.plainWorker()
	addr := freeListen(t)
	gw := e.gatewayProc(addr)
	path := filepath.Join(t.TempDir(), "f.creds")
	_, err := e.cli(ctx, "provision", "--count", "100", "--prefix", "f-", "--tags", "region=f", "--creds-out", path, "-o", "json")
	require.NoError(t, err)
	sim, err := simulator.New(simulator.Config{BrokerURL: "tcp://" + addr, Creds: mustCreds(t, path), KeepAlive: time.Second,
		MaxReconnectInterval: time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	simCtx, simStop := context.WithCancel(ctx)
	simDone := make(chan struct{})
	go func() { defer close(simDone); _ = sim.Run(simCtx) }()
	defer func() { simStop(); <-simDone }()
	require.Eventually(t, func() bool { return sim.Stats().Reported == 100 }, time.Minute, 100*time.Millisecond, "%s", sim.Stats())

	gw.signal(syscall.SIGSTOP)
	job := e.cliAsync(ctx, "job", "start", "--query", "SELECT * FROM devices WHERE tags.region = 'f'",
		"--set-desired", `{"telemetryInterval": 17}`, "--timeout", "2m", "-o", "json")
	// The device SDK pings every keep-alive and gives up on a ping unanswered for 10 s.
	require.Eventually(t, func() bool { return sim.Stats().Connected == 0 }, time.Minute, 100*time.Millisecond,
		"the devices did not notice the frozen gateway: %s", sim.Stats())
	gw.signal(syscall.SIGCONT)

	require.Eventually(t, func() bool { return sim.Stats().Connected == 100 }, 2*time.Minute, 100*time.Millisecond,
		"devices did not all reconnect: %s", sim.Stats())
	res := <-job
	require.NoError(t, res.err, res.out)
	require.Eventually(t, func() bool {
		return e.count(ctx, `SELECT count(*) FROM devices WHERE tags->>'region' = 'f' AND (reported->>'telemetryInterval')::int = 17`) == 100
	}, time.Minute, 200*time.Millisecond, "every device mirrors the change made while the gateway was frozen")
	require.Eventually(t, func() bool {
		return e.count(ctx, `SELECT count(*) FROM devices WHERE tags->>'region' = 'f' AND online`) == 100
	}, time.Minute, 200*time.Millisecond, "the registry shows every device connected")
	// And they stay connected: a keep-alive of 1 s once got 1 s of grace from the broker (mochi's whole
	// seconds of 1.5 × 1), so every idle device was dropped before its PINGREQ and reconnected, over and
	// over (hundreds of losses in a few seconds); a machine stalled for seconds may still cost a few.
	before := sim.Stats()
	time.Sleep(5 * time.Second)
	after := sim.Stats()
	lost := (after.LostPing + after.LostClosed + after.LostOther) - (before.LostPing + before.LostClosed + before.LostOther)
	require.Less(t, lost, int64(10), "connections lost in 5 s once every device was back: before %s, after %s", before, after)
}
