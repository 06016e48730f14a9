//go:build soak

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/api/workflowservice/v1"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/rollout"
	"github.com/fleetflow/fleetflow/internal/simulator"
	"github.com/fleetflow/fleetflow/workflows"
)

// The soak (`make soak`, docs/architecture.md "Chaos and soak tests"): FLEETFLOW_SOAK long (default 10m), 5,000
// simulated devices in five shards whose connections churn (one shard's simulator is stopped and started
// again in turn), while jobs, good and bad rollouts, health checks, retire and replace run concurrently
// through the CLI against a worker and a gateway process. At the end it checks and prints the invariants.

const (
	soakShards      = 5
	soakShardSize   = 1000
	soakSpares      = 200 // devices retired and replaced, not simulated
	soakChurnEvery  = 20 * time.Second
	soakSampleEvery = 5 * time.Second
)

// shard is one simulator over a thousand devices, restarted by the churn.
type shard struct {
	cfg  simulator.Config
	mu   sync.Mutex
	sim  *simulator.Simulator
	stop context.CancelFunc
	done chan struct{}
}

func (s *shard) start(ctx context.Context) error {
	sim, err := simulator.New(s.cfg)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = sim.Run(sctx) }()
	s.mu.Lock()
	s.sim, s.stop, s.done = sim, cancel, done
	s.mu.Unlock()
	return nil
}

func (s *shard) halt() {
	s.mu.Lock()
	stop, done := s.stop, s.done
	s.mu.Unlock()
	stop()
	<-done
}

func (s *shard) stats() simulator.Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sim.Stats()
}

// rssSampler records a process's resident set size over time.
type rssSampler struct {
	pid     int
	at      []float64 // seconds since start
	mib     []float64
	started time.Time
}

func (r *rssSampler) sample() {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.pid))
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			r.at = append(r.at, time.Since(r.started).Seconds())
			r.mib = append(r.mib, kb/1024)
		}
	}
}

// slope is the least-squares slope of RSS over the samples after warmUp, in MiB per hour.
func (r *rssSampler) slope(warmUp time.Duration) (perHour, first, last, peak float64, n int) {
	var xs, ys []float64
	for i := range r.at {
		if r.at[i] >= warmUp.Seconds() {
			xs, ys = append(xs, r.at[i]), append(ys, r.mib[i])
		}
	}
	n = len(xs)
	if n < 2 {
		return 0, 0, 0, 0, n
	}
	var mx, my float64
	for i := range xs {
		mx, my = mx+xs[i], my+ys[i]
		peak = max(peak, ys[i])
	}
	mx, my = mx/float64(n), my/float64(n)
	var num, den float64
	for i := range xs {
		num += (xs[i] - mx) * (ys[i] - my)
		den += (xs[i] - mx) * (xs[i] - mx)
	}
	return num / den * 3600, ys[0], ys[n-1], peak, n
}

// soakOps counts what the soak did.
type soakOps struct {
	jobs, rollouts, goodRollouts, badRollouts, healthRuns, retired, replaced, churns, failedCommands atomic.Int64
	mu                                                                                               sync.Mutex
	jobIDs, rolloutIDs                                                                               []string
}

func (o *soakOps) add(list *[]string, id string) {
	o.mu.Lock()
	*list = append(*list, id)
	o.mu.Unlock()
}

func TestSoak(t *testing.T) {
	dur := 10 * time.Minute
	if v := os.Getenv("FLEETFLOW_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		require.NoError(t, err, "FLEETFLOW_SOAK")
		dur = d
	}
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), dur+30*time.Minute)
	defer cancel()
	worker := e.plainWorker()
	gwAddr := freeListen(t)
	gw := e.gatewayProc(gwAddr)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	// The fleet: five shards of simulated devices, and spares to retire and replace.
	bad := simulator.VersionFractions{}
	for i := 1; i <= 200; i++ {
		bad[fmt.Sprintf("9.%d.1", i)] = 1 // every bad version fails to install everywhere
	}
	shards := make([]*shard, soakShards)
	for k := range shards {
		path := filepath.Join(t.TempDir(), fmt.Sprintf("s%d.creds", k))
		_, err := e.cli(ctx, "provision", "--count", strconv.Itoa(soakShardSize), "--prefix", fmt.Sprintf("s%d-", k),
			"--tags", fmt.Sprintf("region=soak,shard=s%d", k), "--creds-out", path, "-o", "json")
		require.NoError(t, err)
		shards[k] = &shard{cfg: simulator.Config{BrokerURL: "tcp://" + gwAddr, Creds: mustCreds(t, path), KeepAlive: 10 * time.Second,
			MaxReconnectInterval: 2 * time.Second, ReconnectJitter: time.Second, FailInstall: bad, Logger: quiet, Seed: int64(k)}}
		require.NoError(t, shards[k].start(ctx))
	}
	_, err := e.cli(ctx, "provision", "--count", strconv.Itoa(soakSpares), "--prefix", "spare-", "--tags", "region=spare",
		"--creds-out", filepath.Join(t.TempDir(), "spare.creds"), "-o", "json")
	require.NoError(t, err)
	connected := func() int64 {
		var n int64
		for _, s := range shards {
			n += s.stats().Connected
		}
		return n
	}
	require.Eventually(t, func() bool { return connected() == soakShards*soakShardSize }, 5*time.Minute, time.Second,
		"the fleet did not connect")
	t.Logf("soak: %d devices connected; running for %s", connected(), dur)

	ops := &soakOps{}
	loopCtx, stopLoops := context.WithTimeout(ctx, dur)
	defer stopLoops()
	var loops sync.WaitGroup
	loop := func(name string, every time.Duration, fn func(i int)) {
		loops.Add(1)
		go func() {
			defer loops.Done()
			for i := 0; loopCtx.Err() == nil; i++ {
				fn(i)
				select {
				case <-loopCtx.Done():
				case <-time.After(every):
				}
			}
		}()
	}
	// cli runs a command of the soak; a failure is counted (and logged by e.cli), not fatal: the invariants
	// at the end say whether anything was left inconsistent.
	cli := func(args ...string) (string, bool) {
		out, err := e.cli(ctx, args...)
		if err != nil {
			ops.failedCommands.Add(1)
		}
		return out, err == nil
	}
	shardQuery := func(k int) string { return fmt.Sprintf("SELECT * FROM devices WHERE tags.shard = 's%d'", k) }

	rss := []*rssSampler{{pid: gw.cmd.Process.Pid, started: time.Now()}, {pid: worker.cmd.Process.Pid, started: time.Now()}}
	loop("rss", soakSampleEvery, func(int) {
		for _, r := range rss {
			r.sample()
		}
	})
	loop("churn", soakChurnEvery, func(i int) {
		s := shards[i%soakShards]
		s.halt()
		if err := s.start(ctx); err != nil {
			t.Errorf("restart shard: %v", err)
			return
		}
		ops.churns.Add(1)
	})
	loop("jobs", 5*time.Second, func(i int) {
		var args []string
		switch i % 3 {
		case 0:
			args = []string{"--set-tags", fmt.Sprintf(`{"round":%d}`, i)}
		case 1:
			args = []string{"--method", "ping", "--timeout", "10s"}
		default:
			args = []string{"--set-desired", fmt.Sprintf(`{"telemetryInterval":%d}`, 60+i), "--timeout", "1m"}
		}
		out, ok := cli(append(append([]string{"job", "start", "--query", shardQuery(i % soakShards)}, args...), "--detach", "-o", "json")...)
		if !ok {
			return
		}
		var started struct{ ID string }
		if json.Unmarshal([]byte(out), &started) == nil && started.ID != "" {
			ops.jobs.Add(1)
			ops.add(&ops.jobIDs, started.ID)
		}
	})
	loop("rollouts", time.Second, func(i int) {
		// One rollout at a time per pair of shards; good and bad alternate.
		good := i%2 == 0
		version := fmt.Sprintf("9.%d.0", i+1)
		if !good {
			version = fmt.Sprintf("9.%d.1", i+1)
		}
		if _, ok := cli("firmware", "add", "--version", version, "--url", "https://fw.example/"+version+".bin",
			"--sha256", strings.Repeat("ab", 32)); !ok {
			return
		}
		out, ok := cli("rollout", "start", "--firmware", version, "--query", shardQuery(i%soakShards), "--waves", "10%,100%",
			"--device-timeout", "2m", "--detach")
		if !ok {
			return
		}
		m := regexp.MustCompile(`rollout (rollout-\S+) started`).FindStringSubmatch(out)
		if m == nil {
			t.Errorf("no rollout id in %q", out)
			return
		}
		id := m[1]
		ops.rollouts.Add(1)
		if good {
			ops.goodRollouts.Add(1)
		} else {
			ops.badRollouts.Add(1)
		}
		ops.add(&ops.rolloutIDs, id)
		_ = e.tc.GetWorkflow(ctx, id, "").Get(ctx, nil) // the next one starts when this one has ended
	})
	loop("health", 30*time.Second, func(int) {
		if _, ok := cli("health", "run"); ok {
			ops.healthRuns.Add(1)
		}
	})
	loop("retire-replace", 10*time.Second, func(i int) {
		old := fmt.Sprintf("spare-%04d", i+1)
		if i%2 == 0 {
			if _, ok := cli("retire", old, "--reason", "soak"); ok {
				ops.retired.Add(1)
			}
			return
		}
		if _, ok := cli("replace", old, old+"-r", "--creds-out", filepath.Join(t.TempDir(), old+".creds")); ok {
			ops.replaced.Add(1)
		}
	})
	loops.Wait()

	// Settle: every shard running, every device connected, every operation ended, then one more health check.
	settled := time.Now()
	require.Eventually(t, func() bool { return connected() == soakShards*soakShardSize }, 5*time.Minute, time.Second,
		"the fleet did not reconnect after the churn")
	for _, id := range append(append([]string{}, ops.jobIDs...), ops.rolloutIDs...) {
		_ = e.tc.GetWorkflow(ctx, id, "").Get(ctx, nil)
	}
	require.Eventually(t, func() bool { return e.openWorkflows(ctx) == 0 }, 5*time.Minute, time.Second, "operations still running")
	require.Eventually(t, func() bool { return e.desiredMismatches(ctx, false) == 0 }, 3*time.Minute, time.Second,
		"twins did not converge")
	_, err = e.cli(ctx, "health", "run")
	require.NoError(t, err)
	t.Logf("soak: settled in %s", time.Since(settled).Round(time.Second))

	// Invariants.
	report := []string{fmt.Sprintf("duration %s, %d devices (%d shards, churned %d times), %d spares",
		dur, soakShards*soakShardSize, soakShards, ops.churns.Load(), soakSpares),
		fmt.Sprintf("operations: %d jobs, %d rollouts (%d good, %d bad), %d health checks, %d retired, %d replaced, %d CLI commands failed",
			ops.jobs.Load(), ops.rollouts.Load(), ops.goodRollouts.Load(), ops.badRollouts.Load(), ops.healthRuns.Load(),
			ops.retired.Load(), ops.replaced.Load(), ops.failedCommands.Load())}
	check := func(ok bool, format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		mark := "ok  "
		if !ok {
			mark = "FAIL"
			t.Errorf("soak invariant: %s", line)
		}
		report = append(report, mark+" "+line)
	}

	mism := e.desiredMismatches(ctx, true)
	check(mism == 0, "every twin consistent with its device: %d active devices whose reported state differs from desired (firmware, desired keys)", mism)
	orphans := e.count(ctx, `SELECT count(*) FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
		WHERE rd.active AND r.state <> 'running'`)
	active := e.count(ctx, "SELECT count(*) FROM rollout_devices WHERE active")
	check(orphans == 0 && active == 0, "no orphan claims: %d claims of ended rollouts, %d active claims with no rollout running", orphans, active)
	alerts := e.count(ctx, `SELECT count(*) FROM alerts a JOIN devices d ON d.id = a.device_id
		WHERE a.resolved_at IS NULL AND d.status = 'active' AND d.online AND coalesce(d.reported->'health'->>'status', 'ok') = 'ok'
		AND a.kind IN ('offline', 'unhealthy')`)
	check(alerts == 0, "no open alert for a healthy device: %d", alerts)
	jobsOff, rolloutsOff := e.countMismatches(ctx, t, ops)
	check(jobsOff == 0 && rolloutsOff == 0, "every operation's counts equal its per-device outcomes: %d of %d jobs and %d of %d rollouts differ",
		jobsOff, len(ops.jobIDs), rolloutsOff, len(ops.rolloutIDs))
	retiredOK := e.count(ctx, "SELECT count(*) FROM devices WHERE id LIKE 'spare-%' AND status = 'retired'")
	check(retiredOK == ops.retired.Load()+ops.replaced.Load(), "retired and replaced spares are retired: %d of %d", retiredOK,
		ops.retired.Load()+ops.replaced.Load())
	for i, name := range []string{"gateway", "worker"} {
		perHour, first, last, peak, n := rss[i].slope(time.Minute)
		// Flat: growth below a quarter of the peak per hour (a leak of a connection's state per churn would
		// be several times that over an hour of churn).
		check(n >= 2 && perHour < peak/4, "%s memory flat: RSS %.0f → %.0f MiB (peak %.0f, %d samples after the first minute), slope %+.1f MiB/h",
			name, first, last, peak, n, perHour)
	}
	fmt.Printf("\n== soak invariants\n%s\n\n", strings.Join(report, "\n"))
	t.Log("\n" + strings.Join(report, "\n"))
}

// openWorkflows counts the running workflows on the test's task queue.
func (e *env) openWorkflows(ctx context.Context) int {
	resp, err := e.tc.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
		Query: fmt.Sprintf("TaskQueue = '%s' AND ExecutionStatus = 'Running'", e.taskQueue)})
	if err != nil {
		return -1
	}
	return len(resp.Executions)
}

// desiredMismatches counts the active, online soak devices whose reported state is not what desired asks:
// a desired key not mirrored, or a firmware version other than the desired one. A device whose last rollout
// left it failed (a bad version it could not install, without rollback) may run its old version.
func (e *env) desiredMismatches(ctx context.Context, log bool) int {
	rows, err := e.reg.Pool().Query(ctx, `SELECT d.id, d.desired, d.reported,
		coalesce((SELECT rd.phase FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
			WHERE rd.device_id = d.id ORDER BY r.created_at DESC LIMIT 1), '')
		FROM devices d WHERE d.tags->>'region' = 'soak' AND d.status = 'active' AND d.online`)
	if err != nil {
		return -1
	}
	defer rows.Close()
	n := 0
	var examples []string
	for rows.Next() {
		var id, phase string
		var desired, reported map[string]any
		if rows.Scan(&id, &desired, &reported, &phase) != nil {
			return -1
		}
		for k, v := range desired {
			if k == "" || k[0] == '$' {
				continue
			}
			if k == "firmware" {
				want, _ := v.(map[string]any)
				got, _ := reported["firmware"].(map[string]any)
				if want["version"] != got["version"] && phase != string(rollout.Failed) && phase != string(rollout.RollbackFailed) {
					n++
					examples = append(examples, fmt.Sprintf("%s firmware %v, desired %v (%s)", id, got["version"], want["version"], phase))
				}
				continue
			}
			if !reflect.DeepEqual(reported[k], v) {
				n++
				examples = append(examples, fmt.Sprintf("%s %s=%v, desired %v", id, k, reported[k], v))
			}
		}
	}
	if log && n > 0 {
		sort.Strings(examples)
		e.t.Logf("twins not matching their device (first 10): %s", strings.Join(examples[:min(10, len(examples))], "; "))
	}
	return n
}

// countMismatches compares each job's and rollout's result counts with its per-device rows.
func (e *env) countMismatches(ctx context.Context, t *testing.T, ops *soakOps) (jobs, rollouts int) {
	for _, id := range ops.jobIDs {
		var res workflows.JobResult
		if err := e.tc.GetWorkflow(ctx, id, "").Get(ctx, &res); err != nil {
			t.Logf("job %s: %v", id, err)
			jobs++
			continue
		}
		var db fleet.JobCounts
		for state, n := range e.jobStates(ctx, id) {
			switch fleet.JobState(state) {
			case fleet.JobSucceeded:
				db.Succeeded += n
			case fleet.JobFailed:
				db.Failed += n
			case fleet.JobTimedOut:
				db.TimedOut += n
			case fleet.JobOffline:
				db.Offline += n
			case fleet.JobRunning, fleet.JobDispatched:
				db.Running += n
			case fleet.JobCancelled:
				db.Cancelled += n
			}
		}
		total := e.count(ctx, "SELECT count(*) FROM job_devices WHERE job_id = $1", id)
		if db != res.Counts || total != res.Total {
			t.Logf("job %s: result %+v of %d, per-device %+v of %d", id, res.Counts, res.Total, db, total)
			jobs++
		}
	}
	for _, id := range ops.rolloutIDs {
		var res workflows.RolloutResult
		if err := e.tc.GetWorkflow(ctx, id, "").Get(ctx, &res); err != nil {
			t.Logf("rollout %s: %v", id, err)
			rollouts++
			continue
		}
		rows, err := e.reg.Pool().Query(ctx, "SELECT phase, count(*) FROM rollout_devices WHERE rollout_id = $1 GROUP BY phase", id)
		require.NoError(t, err)
		var db rollout.Counts
		for rows.Next() {
			var p string
			var n int64
			require.NoError(t, rows.Scan(&p, &n))
			db.Add(rollout.Phase(p), n)
		}
		rows.Close()
		if db != res.Counts {
			t.Logf("rollout %s (%s): result %+v, per-device %+v", id, res.State, res.Counts, db)
			rollouts++
		}
	}
	return jobs, rollouts
}
