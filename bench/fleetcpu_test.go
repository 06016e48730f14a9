package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fleetflow/fleetflow/internal/config"
)

// The fleet benchmark's simulated devices stand in for 100,000 separate machines, yet share this machine's
// cores with every server. A simulator process starved of CPU misses its devices' pings and drops healthy
// connections that a real device, on its own CPU, would keep; the reconnects load the servers and starve
// the simulator further. The reverse happens too: simulators given priority over the servers (a run with
// the simulators alone in a cgroup of 28 threads' weight) took the CPU during the failover's reconnects,
// the gateways got none for seconds and every device's ping went unanswered. So, where it can, the
// benchmark splits the machine in two cgroup v1 cpu groups of equal weight, the simulators' and the
// servers' (gateways, NATS nodes, worker; Postgres and Temporal stay outside, as the machine's other
// threads), and says so in its output: under contention neither side can take the other's half, and either
// may use what the other leaves. It does not make the servers any faster.

// fleetGroupShares is the cpu.shares of each of the two groups (cgroup v1; a nice-0 thread outside them
// weighs 1024); "0" leaves every process in the machine's root group. Default: the weight of eight runnable
// threads at the benchmark's own nice value (1024 each at nice 0, 15 at nice 19: a niced run stays niced).
var fleetGroupShares = config.EnvInt("FLEETFLOW_BENCH_FLEET_CPU_SHARES", -1)

// groupShares is the shares of each group: fleetGroupShares, or its default.
func groupShares() int {
	if fleetGroupShares >= 0 {
		return fleetGroupShares
	}
	return max(2, 8*niceWeight())
}

// niceWeight is the scheduler's weight of a thread at this process's nice value (the kernel's
// sched_prio_to_weight table).
func niceWeight() int {
	weights := [40]int{
		88761, 71755, 56483, 46273, 36291, 29154, 23254, 18705, 14949, 11916,
		9548, 7620, 6100, 4904, 3906, 3121, 2501, 1991, 1586, 1277,
		1024, 820, 655, 526, 423, 335, 272, 215, 172, 137,
		110, 87, 70, 56, 45, 36, 29, 23, 18, 15,
	}
	// getpriority returns 20 - nice on Linux (1..40), so that it is never negative.
	p, err := syscall.Getpriority(syscall.PRIO_PROCESS, 0)
	if err != nil {
		return 1024
	}
	return weights[min(39, max(0, 40-p))]
}

// cgroupCPU is where the cgroup v1 cpu controller is mounted.
const cgroupCPU = "/sys/fs/cgroup/cpu"

// cpuGroups are the two groups the benchmark made ("" dirs: none).
type cpuGroups struct {
	servers, sims string
	shares        int
	why           string // why there are none
}

// newCPUGroups makes the servers' and the simulators' groups, removed when b ends (after the processes,
// whose cleanups run first because they were registered later).
func newCPUGroups(b *testing.B) *cpuGroups {
	b.Helper()
	shares := groupShares()
	if shares == 0 {
		return &cpuGroups{why: "FLEETFLOW_BENCH_FLEET_CPU_SHARES=0"}
	}
	g := &cpuGroups{shares: shares}
	for _, d := range []*string{&g.servers, &g.sims} {
		name := "servers"
		if d == &g.sims {
			name = "simulators"
		}
		dir := filepath.Join(cgroupCPU, fmt.Sprintf("fleetflow-bench-%d-%s", os.Getpid(), name))
		if err := os.Mkdir(dir, 0o755); err != nil {
			return &cpuGroups{why: fmt.Sprintf("no cgroup v1 cpu controller to write to (%v)", err)}
		}
		b.Cleanup(func() {
			// The processes are killed by then; their exit may take a moment to leave the group.
			for i := 0; i < 100; i++ {
				if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			b.Logf("could not remove %s", dir)
		})
		if err := os.WriteFile(filepath.Join(dir, "cpu.shares"), []byte(strconv.Itoa(shares)), 0o644); err != nil {
			b.Fatalf("cpu.shares of %s: %v", dir, err)
		}
		*d = dir
	}
	return g
}

// addServer and addSimulator move process pid (every thread of it) into its group.
func (g *cpuGroups) addServer(pid int) error    { return addTo(g.servers, pid) }
func (g *cpuGroups) addSimulator(pid int) error { return addTo(g.sims, pid) }

func addTo(dir string, pid int) error {
	if dir == "" {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("move process %d into %s: %w", pid, dir, err)
	}
	return nil
}

// String says how the CPU was shared, for the benchmark's output.
func (g *cpuGroups) String() string {
	if g.sims == "" {
		return "simulators and servers share the CPU with no group of their own: " + g.why
	}
	return fmt.Sprintf("simulators and servers (gateways, NATS, worker) in two cgroup v1 cpu groups of equal weight, cpu.shares %d each "+
		"(a nice-0 thread outside them, Postgres's and Temporal's, weighs 1024)", g.shares)
}

// schedStat is a process's CPU time and the time its threads waited on a run queue for a core, summed over
// its threads (/proc/PID/task/*/schedstat; threads that exited are not counted).
type schedStat struct {
	cpu, wait time.Duration
}

func readSchedStat(pid int) (schedStat, error) {
	var s schedStat
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return s, err
	}
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			continue
		}
		run, err1 := strconv.ParseInt(f[0], 10, 64)
		wait, err2 := strconv.ParseInt(f[1], 10, 64)
		if err1 == nil && err2 == nil {
			s.cpu += time.Duration(run)
			s.wait += time.Duration(wait)
		}
	}
	return s, nil
}

// schedSample is the schedstat of a set of named processes at one moment.
type schedSample struct {
	at    time.Time
	stats map[string]schedStat
}

func sampleSched(pids map[string]int) schedSample {
	s := schedSample{at: time.Now(), stats: map[string]schedStat{}}
	for name, pid := range pids {
		if st, err := readSchedStat(pid); err == nil {
			s.stats[name] = st
		}
	}
	return s
}

// schedReport prints, for each process between two samples, its CPU and run-queue wait in seconds per
// second of wall time: a process whose threads wait long for a core is the starved one.
func schedReport(from, to schedSample, names []string) string {
	wall := to.at.Sub(from.at).Seconds()
	var out []string
	for _, name := range names {
		a, okA := from.stats[name]
		z, okZ := to.stats[name]
		if !okA || !okZ || wall <= 0 {
			continue
		}
		out = append(out, fmt.Sprintf("%s cpu %.2f wait %.2f", name, (z.cpu-a.cpu).Seconds()/wall, (z.wait-a.wait).Seconds()/wall))
	}
	return strings.Join(out, "; ")
}

// envDuration is the duration in the environment variable name, or def when it is unset or not a duration.
func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil && d > 0 {
		return d
	}
	return def
}

// pgSample says what the registry's connections are doing at one moment during the failover: how many run
// a statement, how many sit in an open transaction waiting for their client (a lock held while a gateway
// waits for a core), the longest such wait, and which statements wait for a row lock and how long the
// longest has waited. It tells Postgres-side waits (locks) from client-side ones (starved gateways).
func pgSample(ctx context.Context, pool *pgxpool.Pool) string {
	var active, idleTx, lockWaits int
	var idleTxMax, lockWaitMax float64
	err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state = 'active'),
			count(*) FILTER (WHERE state LIKE 'idle in transaction%'),
			coalesce(max(extract(epoch FROM now() - state_change)) FILTER (WHERE state LIKE 'idle in transaction%'), 0),
			count(*) FILTER (WHERE wait_event_type = 'Lock'),
			coalesce(max(extract(epoch FROM now() - query_start)) FILTER (WHERE wait_event_type = 'Lock'), 0)
		FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`).
		Scan(&active, &idleTx, &idleTxMax, &lockWaits, &lockWaitMax)
	if err != nil {
		return "postgres: " + err.Error()
	}
	out := fmt.Sprintf("postgres: active %d, idle in transaction %d (longest %.1f s), waiting for a lock %d (longest %.1f s)",
		active, idleTx, idleTxMax, lockWaits, lockWaitMax)
	rows, err := pool.Query(ctx, `SELECT left(regexp_replace(query, '\s+', ' ', 'g'), 60), count(*)
		FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' GROUP BY 1 ORDER BY 2 DESC LIMIT 4`)
	if err != nil {
		return out
	}
	defer rows.Close()
	for rows.Next() {
		var q string
		var n int
		if rows.Scan(&q, &n) == nil {
			out += fmt.Sprintf("; %d× %q", n, q)
		}
	}
	return out
}
