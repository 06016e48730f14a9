//go:build cluster

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"

	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/simulator"
	"github.com/fleetflow/fleetflow/internal/stack"
	"github.com/fleetflow/fleetflow/internal/testenv"
	"github.com/fleetflow/fleetflow/workflows"
)

// This file is the production-shaped end-to-end test of docs/architecture.md, "Temporal cluster test": it
// runs only under `make cluster-test` (build tag cluster), which builds the Temporal server from the module
// proxy. Every part is a real process that the test kills with SIGKILL and starts again.

// clusterProc is one fleetflow process (gateway, NATS node, worker) that the test can kill and start again with
// the same arguments and addresses.
type clusterProc struct {
	t      *testing.T
	name   string
	bin    string
	args   []string
	env    []string
	listen string // waited for after each start ("" for none)
	log    string
	cmd    *exec.Cmd
	exited chan struct{}
}

func newProc(t *testing.T, name, bin, listen string, env []string, args ...string) *clusterProc {
	p := &clusterProc{t: t, name: name, bin: bin, args: args, env: env, listen: listen, log: filepath.Join(t.TempDir(), name+".log")}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("== %s log (tail)\n%s", name, b)
		}
	})
	p.start()
	return p
}

func (p *clusterProc) start() {
	p.t.Helper()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(p.t, err)
	defer f.Close()
	fmt.Fprintf(f, "==== start %s\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env, cmd.Stdout, cmd.Stderr = p.env, f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(p.t, cmd.Start(), p.name)
	p.cmd, p.exited = cmd, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(p.exited)
	if p.listen != "" {
		require.Eventually(p.t, func() bool {
			select {
			case <-p.exited:
				return false
			default:
			}
			return stack.Reachable(p.listen, 500*time.Millisecond)
		}, time.Minute, 50*time.Millisecond, "%s listens on %s", p.name, p.listen)
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *clusterProc) kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
	p.cmd = nil
}

func freeAddr(t *testing.T) string {
	port, err := stack.FreePort()
	require.NoError(t, err)
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// TestTemporalClusterRolloutSurvivesKills runs a firmware rollout over 40 simulated devices on the production shape
// — a Temporal server of separate frontend, matching, worker and two history processes on Postgres, three
// gateways, a 3-node NATS cluster and two workers — and kills with SIGKILL, one wave after another, a worker,
// a gateway, a NATS node and every process of the Temporal server, starting each again. The rollout must end
// exactly as the plan and the simulator's deterministic install failures predict for a run without faults:
// completed after every wave, the same devices per wave as `rollout plan`, exactly the predicted devices
// failed, every other device on the new firmware, and no claim left.
func TestTemporalClusterRolloutSurvivesKills(t *testing.T) {
	const (
		devices  = 40
		version  = "2.0.0"
		failFrac = 0.1
		seed     = 7
	)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	start := time.Now()

	dbURL := testenv.StartPostgres(t)
	tc := testenv.StartTemporalCluster(t, dbURL, testenv.TemporalClusterOptions{HistoryHosts: 2})
	t.Logf("temporal cluster %v serving on %s after %s", tc.Processes(), tc.Frontend, time.Since(start).Round(time.Second))
	require.Eventually(t, func() bool {
		n, err := tc.MembershipHosts(ctx, "history")
		require.NoError(t, err)
		return n == 2
	}, time.Minute, 200*time.Millisecond, "both history hosts joined the membership ring")

	reg, err := registry.Open(ctx, dbURL)
	require.NoError(t, err)
	t.Cleanup(reg.Close)
	cl, err := client.Dial(client.Options{HostPort: tc.Frontend, Logger: quietLogger{}})
	require.NoError(t, err)
	t.Cleanup(cl.Close)

	// NATS: three routed nodes.
	type natsAddr struct{ client, cluster string }
	var nodes []natsAddr
	var routes, clientURLs []string
	for range 3 {
		a := natsAddr{freeAddr(t), freeAddr(t)}
		nodes = append(nodes, a)
		routes = append(routes, "nats://"+a.cluster)
		clientURLs = append(clientURLs, "nats://"+a.client)
	}
	var natsProcs []*clusterProc
	for j, a := range nodes {
		natsProcs = append(natsProcs, newProc(t, fmt.Sprintf("nats-%d", j+1), bins.cli, a.client, os.Environ(),
			"nats-node", "--name", fmt.Sprintf("nats-%d", j+1), "--listen", a.client, "--cluster-listen", a.cluster,
			"--routes", strings.Join(routes, ",")))
	}

	e := &env{t: t, dbURL: dbURL, temporal: tc.Frontend, taskQueue: "cluster-rollout", reg: reg, tc: cl,
		natsURL: strings.Join(clientURLs, ",")}
	var gwProcs []*clusterProc
	var brokers []string
	for i := range 3 {
		listen := freeAddr(t)
		env := append(e.environ(), "FLEETFLOW_GATEWAY_LISTEN="+listen, "FLEETFLOW_GATEWAY_METRICS=",
			"FLEETFLOW_TLS_CERT=", "FLEETFLOW_TLS_KEY=")
		gwProcs = append(gwProcs, newProc(t, fmt.Sprintf("gateway-%d", i+1), bins.cli, listen, env, "gateway"))
		brokers = append(brokers, "tcp://"+listen)
	}
	e.mqttURL = brokers[0]
	var workers []*clusterProc
	for i := range 2 {
		workers = append(workers, newProc(t, fmt.Sprintf("worker-%d", i+1), bins.worker, "", e.environ()))
	}

	cs := e.fleet(ctx, devices, "cx")
	sim, err := simulator.New(simulator.Config{BrokerURLs: brokers, Creds: cs, Seed: seed, Logger: quiet(),
		FirmwareStepDelay: 1500 * time.Millisecond, MaxReconnectInterval: time.Second,
		FailInstall: simulator.VersionFractions{version: failFrac}})
	require.NoError(t, err)
	simCtx, stopSim := context.WithCancel(ctx)
	simDone := make(chan struct{})
	go func() { defer close(simDone); _ = sim.Run(simCtx) }()
	t.Cleanup(func() { stopSim(); <-simDone })
	require.Eventually(t, func() bool { return sim.Stats().Reported == devices }, 2*time.Minute, 100*time.Millisecond,
		"devices did not all report: %s", sim.Stats())
	q := "SELECT * FROM devices WHERE tags.region = 'cx'"
	// A method job that reaches every device proves each gateway's subscriptions have spread over the cluster.
	require.Eventually(t, func() bool {
		out, err := e.cli(ctx, "job", "start", "--query", q, "--method", "ping", "--timeout", "10s")
		return err == nil && strings.Contains(out, fmt.Sprintf("completed: %d devices — succeeded %d,", devices, devices))
	}, 2*time.Minute, time.Second, "every device answers a method job")

	before := map[string]string{}
	wantFailed := map[string]bool{}
	for _, c := range cs {
		before[c.ID] = e.reportedField(ctx, c.ID, "firmware", "version")
		require.NotEmpty(t, before[c.ID])
		wantFailed[c.ID] = simulator.InstallFails(seed, c.ID, version, failFrac)
	}
	nFailed := 0
	for _, f := range wantFailed {
		if f {
			nFailed++
		}
	}
	require.NotZero(t, nFailed, "the seed makes some devices fail")
	_, err = e.cli(ctx, "firmware", "add", "--version", version, "--url", "https://fw.example/2.bin", "--sha256", strings.Repeat("ab", 32))
	require.NoError(t, err)
	args := []string{"--firmware", version, "--query", q, "--waves", "10%,25%,40%,55%,75%,100%", "--max-failures", "40%"}
	out, err := e.cli(ctx, append([]string{"rollout", "plan", "-o", "json"}, args...)...)
	require.NoError(t, err)
	var plan struct {
		Waves []struct {
			Devices int64 `json:"devices"`
		} `json:"waves"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &plan), out)
	require.Len(t, plan.Waves, 6)

	out, err = e.cli(ctx, append([]string{"rollout", "start", "--detach"}, args...)...)
	require.NoError(t, err)
	id := startedRollout(t, out)
	rolloutStart := time.Now()

	// waveUnderWay waits until wave w (0-based) has been dispatched.
	waveUnderWay := func(w int) {
		require.Eventually(t, func() bool {
			var n int64
			err := reg.Pool().QueryRow(ctx, `SELECT count(*) FROM rollout_devices WHERE rollout_id = $1 AND wave = $2
				AND phase <> 'pending'`, id, w).Scan(&n)
			return err == nil && n > 0
		}, 5*time.Minute, 50*time.Millisecond, "wave %d of %s under way", w+1, id)
	}
	faults := []struct {
		what string
		do   func()
	}{
		{"worker 1", func() { workers[0].kill(); workers[0].start() }},
		{"gateway 2", func() { gwProcs[1].kill(); gwProcs[1].start() }},
		{"NATS node 3", func() { natsProcs[2].kill(); natsProcs[2].start() }},
		// Down for a whole wave: whichever shards it owned move to the other history host, which carries on.
		{"history host 1 (left down)", func() { tc.Kill("history-1") }},
		{"the Temporal server (every process, history host 1 too)", func() {
			tc.Kill()
			tc.Start()
		}},
	}
	for i, f := range faults {
		waveUnderWay(i + 1)
		at := time.Now()
		f.do()
		t.Logf("wave %d: killed %s (%s after the start, back in %s)", i+2, f.what,
			at.Sub(rolloutStart).Round(100*time.Millisecond), time.Since(at).Round(100*time.Millisecond))
	}

	// The rollout's end, waited for through the outage of the server: errors until it is back are expected.
	require.Eventually(t, func() bool {
		d, err := cl.DescribeWorkflow(ctx, id, "")
		return err == nil && d.Status != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING
	}, 10*time.Minute, 500*time.Millisecond, "rollout %s ended", id)
	var res workflows.RolloutResult
	require.NoError(t, cl.GetWorkflow(ctx, id, "").Get(ctx, &res))
	t.Logf("rollout %s ended after %s: %s, %s", id, time.Since(rolloutStart).Round(time.Second), res.State, res.Counts)

	assert.Equal(t, "completed", res.State, "%+v", res)
	assert.Equal(t, 6, res.WavesDone)
	assert.Equal(t, 6, res.Waves)
	assert.EqualValues(t, devices-nFailed, res.Counts.Succeeded, "%s", res.Counts)
	assert.EqualValues(t, nFailed, res.Counts.Failed, "%s", res.Counts)
	assert.Zero(t, res.Counts.RolledBack, "%s", res.Counts)

	// Per device: the predicted outcome, the new firmware exactly where it succeeded, the plan's waves.
	rows, err := reg.Pool().Query(ctx, `SELECT device_id, phase, wave FROM rollout_devices WHERE rollout_id = $1`, id)
	require.NoError(t, err)
	perWave := make([]int64, len(plan.Waves))
	seen := 0
	for rows.Next() {
		var dev, phase string
		var wave int
		require.NoError(t, rows.Scan(&dev, &phase, &wave))
		seen++
		want := "succeeded"
		if wantFailed[dev] {
			want = "failed"
		}
		assert.Equal(t, want, phase, dev)
		if wave >= 0 && wave < len(perWave) {
			perWave[wave]++
		}
	}
	require.NoError(t, rows.Err())
	assert.Equal(t, devices, seen)
	for w, pw := range plan.Waves {
		assert.Equal(t, pw.Devices, perWave[w], "devices of wave %d as planned", w+1)
	}
	for _, c := range cs {
		want := version
		if wantFailed[c.ID] {
			want = before[c.ID]
		}
		assert.Equal(t, want, e.reportedField(ctx, c.ID, "firmware", "version"), c.ID)
	}
	assert.Zero(t, e.count(ctx, "SELECT count(*) FROM rollout_devices WHERE active"), "no claim outlives the rollout")
	assert.EqualValues(t, 1, e.count(ctx, "SELECT count(*) FROM rollouts WHERE id = $1 AND state = 'completed'", id))

	// The gate before a new worker version: the histories this run left, through every kill, replay on the
	// worker's code.
	cmd := exec.CommandContext(ctx, bins.worker, "replay-check", "--closed-within", "1h")
	cmd.Env = e.environ()
	report, err := cmd.CombinedOutput()
	require.NoError(t, err, "replay-check:\n%s", report)
	t.Logf("%s", strings.TrimSpace(string(report)))
	t.Logf("whole test: %s", time.Since(start).Round(time.Second))
}
