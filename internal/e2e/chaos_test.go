package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/simulator"
	"github.com/fleetflow/fleetflow/internal/testenv"
	"github.com/fleetflow/fleetflow/workflows"
)

// Chaos tests (issue 11, docs/architecture.md "Chaos and soak tests"): the real processes are killed, frozen
// and restarted under an operation, and the operation still ends with exact counts. The fast ones run here,
// in `make test`; the slow ones are in chaos_slow_test.go, built with the chaos tag (`make chaos`).

// lockedBuffer is a process's output, written by exec's copying goroutine and read by the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// proc is one process of the stack that a chaos test kills, freezes or restarts.
type proc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{}
}

// startProc runs bin with args in the test's environment plus extra, until it exits or the test ends.
func (e *env) startProc(name, bin string, args []string, extra ...string) *proc {
	e.t.Helper()
	p := &proc{t: e.t, name: name, cmd: exec.Command(bin, args...), out: &lockedBuffer{}, exited: make(chan struct{})}
	p.cmd.Env = append(e.environ(), extra...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	require.NoError(e.t, p.cmd.Start(), "start %s", name)
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	e.t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGCONT) // a frozen process cannot die
		_ = p.cmd.Process.Kill()
		<-p.exited
		if e.t.Failed() {
			e.t.Logf("%s output:\n%s", name, tailLines(p.out.String(), 40))
		}
	})
	return p
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitExit waits until the process has exited and returns how.
func (p *proc) waitExit(within time.Duration) *os.ProcessState {
	p.t.Helper()
	select {
	case <-p.exited:
		return p.cmd.ProcessState
	case <-time.After(within):
		p.t.Fatalf("%s did not exit within %s", p.name, within)
		return nil
	}
}

// stop ends the process as an operator would (SIGTERM) and waits for it.
func (p *proc) stop() {
	p.t.Helper()
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.waitExit(time.Minute)
}

// faultyWorker runs the worker binary with its fault hook (worker/faulthook.go): "kill:POINT" or
// "hold:POINT:PATH".
func (e *env) faultyWorker(spec string) *proc {
	e.t.Helper()
	return e.startProc("worker["+spec+"]", bins.worker, nil, "FLEETFLOW_WORKER_FAULT="+spec)
}

// holdPoint is a "hold" fault of a worker: the first activity to reach the point waits until released.
type holdPoint struct {
	t    *testing.T
	path string
}

func newHoldPoint(t *testing.T, point string) (holdPoint, string) {
	h := holdPoint{t: t, path: filepath.Join(t.TempDir(), "hold")}
	return h, "hold:" + point + ":" + h.path
}

// holdWithin is how long an operation may take to reach its hold point: on a machine that a 100,000-device
// benchmark kept at a load average of 60, the rollout's and the decommission's first batch did not get there
// within a minute (on a quiet machine they take seconds).
const holdWithin = 3 * time.Minute

// reached waits until an activity is held at the point.
func (h holdPoint) reached(within time.Duration) {
	h.t.Helper()
	waitFile(h.t, h.path+".held", within)
}

// release lets the held activity go on.
func (h holdPoint) release() {
	h.t.Helper()
	require.NoError(h.t, os.WriteFile(h.path+".go", nil, 0o644))
}

// groupCount runs a SELECT key, count(*) … GROUP BY key and returns the counts by key.
func (e *env) groupCount(ctx context.Context, sql string, args ...any) map[string]int64 {
	e.t.Helper()
	rows, err := e.reg.Pool().Query(ctx, sql, args...)
	require.NoError(e.t, err, sql)
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var k string
		var n int64
		require.NoError(e.t, rows.Scan(&k, &n))
		out[k] = n
	}
	require.NoError(e.t, rows.Err())
	return out
}

// TestPostgresRestartedDuringProvisionRolloutAndDecommission restarts the registry's Postgres while a batch
// activity of each operation is between two of its steps (held there by the worker's fault hook): the
// activity's next statement fails on a dead connection, Temporal retries it, and the operation ends with
// exact counts. The provision's restart is a fast shutdown (an immediate one empties the unlogged staging
// table, which provisioning reports rather than survives); the rollout's and the decommission's are
// immediate shutdowns, as a crash of the database host would be.
func TestPostgresRestartedDuringProvisionRolloutAndDecommission(t *testing.T) {
	pg := testenv.StartRestartablePostgres(t)
	e := newEnvOn(t, pg.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	credsPath := filepath.Join(t.TempDir(), "pg.creds")
	q := "SELECT * FROM devices WHERE tags.region = 'pg'"
	const n = 60

	t.Run("provision", func(t *testing.T) {
		hold, spec := newHoldPoint(t, "committed")
		w := e.faultyWorker(spec)
		defer w.stop()
		done := e.cliAsync(ctx, "provision", "--count", fmt.Sprint(n), "--prefix", "pg-", "--tags", "region=pg", "--batch-size", "20",
			"--creds-out", credsPath, "-o", "json")
		hold.reached(holdWithin)
		require.NoError(t, pg.Restart(false, time.Second))
		hold.release()
		res := <-done
		require.NoError(t, res.err)
		s := parseSummary(t, res.out)
		assert.EqualValues(t, n, s.Counts.Created, "every device created once")
		assert.Zero(t, s.Counts.Existing+s.Counts.Invalid)
		assert.Len(t, mustCreds(t, credsPath), n, "every secret kept")
		assert.EqualValues(t, n, e.count(ctx, "SELECT count(*) FROM devices WHERE tags->>'region' = 'pg' AND status = 'active'"))
	})

	t.Run("rollout", func(t *testing.T) {
		sim := e.simulate(ctx, mustCreds(t, credsPath), simulator.Config{})
		_, err := e.cli(ctx, "firmware", "add", "--version", "8.0.0", "--url", "https://fw.example/8.0.0.bin", "--sha256", strings.Repeat("cd", 32))
		require.NoError(t, err)
		hold, spec := newHoldPoint(t, "committed")
		w := e.faultyWorker(spec)
		defer w.stop()
		out, err := e.cli(ctx, "rollout", "start", "--firmware", "8.0.0", "--query", q, "--waves", "100%", "--detach")
		require.NoError(t, err)
		id := startedRollout(t, out)
		hold.reached(holdWithin)
		require.NoError(t, pg.Restart(true, time.Second))
		hold.release()
		var res struct{ State string }
		require.NoError(t, e.tc.GetWorkflow(ctx, id, "").Get(ctx, &res), "the rollout finishes")
		assert.Equal(t, "completed", res.State)
		assert.Equal(t, map[string]int64{"succeeded": n}, e.groupCount(ctx, "SELECT phase, count(*) FROM rollout_devices WHERE rollout_id = $1 GROUP BY phase", id),
			"every device updated, none twice")
		assert.Zero(t, e.count(ctx, "SELECT count(*) FROM rollout_devices WHERE active"), "claims released")
		assert.EqualValues(t, n, e.count(ctx, `SELECT count(*) FROM devices WHERE tags->>'region' = 'pg'
			AND reported->'firmware'->>'version' = '8.0.0'`), "every twin reports the new version")
		assert.EqualValues(t, n, sim.Stats().FirmwareUpdates, "every device installed it once")
	})

	t.Run("decommission", func(t *testing.T) {
		hold, spec := newHoldPoint(t, "committed")
		w := e.faultyWorker(spec)
		defer w.stop()
		before := e.workflowsOnQueue(ctx)
		done := e.cliAsync(ctx, "retire", "--query", q, "--reason", "chaos")
		hold.reached(holdWithin)
		require.NoError(t, pg.Restart(true, time.Second))
		hold.release()
		id := e.newWorkflows(ctx, before, "decommission-", 1)[0]
		var res workflows.JobResult
		require.NoError(t, e.tc.GetWorkflow(ctx, id, "").Get(ctx, &res), "the decommission finishes")
		assert.Equal(t, "completed", res.State)
		assert.Equal(t, fleet.JobCounts{Succeeded: n}, res.Counts, "its counts are exact")
		require.NoError(t, (<-done).err)
		assert.EqualValues(t, n, e.count(ctx, "SELECT count(*) FROM devices WHERE tags->>'region' = 'pg' AND status = 'retired'"))
		var job string
		require.NoError(t, e.reg.Pool().QueryRow(ctx, "SELECT id FROM jobs WHERE kind = 'retire' AND spec->>'reason' = 'chaos'").Scan(&job))
		assert.Equal(t, map[string]int64{"succeeded": n}, e.groupCount(ctx, "SELECT state, count(*) FROM job_devices WHERE job_id = $1 GROUP BY state", job),
			"every device's outcome recorded once")
		assert.EqualValues(t, 1, e.count(ctx, "SELECT count(*) FROM jobs WHERE id = $1 AND total = $2 AND state = 'completed'", job, n))
	})
}
