package bench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetflow/fleetflow/internal/config"
)

// The fleet benchmark's simulated devices stand in for 100,000 separate machines, yet share this machine's
// cores with every server. A simulator process starved of CPU misses its devices' pings and drops healthy
// connections that a real device, on its own CPU, would keep; the reconnects load the servers and starve
// the simulator further. So, where it can, the benchmark gives the simulator processes a CPU share of their
// own (a cgroup v1 cpu controller group), and says so in its output. It does not make the servers any
// faster: under contention the simulators are only guaranteed the share a device fleet's own CPUs would
// give them.

// fleetSimShares is the cpu.shares of the simulators' group (cgroup v1; a nice-0 thread weighs 1024 against
// it); "0" leaves the simulators among the servers. Default: per simulator process, the weight of four
// runnable threads at the benchmark's own nice value (1024 each at nice 0, 15 at nice 19: a niced run stays
// niced). The group weighs as a whole against every runnable thread outside it, so a share below what the
// simulators' threads weighed among the servers would starve them more, not less: at 100,000 devices some
// 40 threads of the servers are runnable during a reconnect storm, and 7 simulators × 4 threads' weight
// gives the simulators about 40% of the machine when they need it (measured with one thread's weight per
// simulator, a 50,000-device run's simulators were starved: 157 devices connected in 53 s).
var fleetSimShares = config.EnvInt("FLEETFLOW_BENCH_FLEET_SIM_SHARES", -1)

// simShares is the simulators' cpu.shares for sims processes: fleetSimShares, or its default.
func simShares(sims int) int {
	if fleetSimShares >= 0 {
		return fleetSimShares
	}
	return min(262144, max(2, 4*sims*niceWeight()))
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

// cpuGroup is a cgroup v1 cpu group the benchmark made for its simulators ("" dir: none).
type cpuGroup struct {
	dir    string
	shares int
	why    string // why there is none
}

// newSimGroup makes the simulators' group with shares, removed when b ends (after the simulators, whose
// cleanups run first because they were registered later).
func newSimGroup(b *testing.B, shares int) *cpuGroup {
	b.Helper()
	if shares == 0 {
		return &cpuGroup{why: "FLEETFLOW_BENCH_FLEET_SIM_SHARES=0"}
	}
	dir := filepath.Join(cgroupCPU, fmt.Sprintf("fleetflow-bench-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return &cpuGroup{why: fmt.Sprintf("no cgroup v1 cpu controller to write to (%v)", err)}
	}
	b.Cleanup(func() {
		// The simulators are killed by then; their exit may take a moment to leave the group.
		for i := 0; i < 100; i++ {
			if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		b.Logf("could not remove %s", dir)
	})
	if err := os.WriteFile(filepath.Join(dir, "cpu.shares"), []byte(strconv.Itoa(shares)), 0o644); err != nil {
		return &cpuGroup{why: fmt.Sprintf("cpu.shares: %v", err)}
	}
	return &cpuGroup{dir: dir, shares: shares}
}

// add moves process pid (every thread of it) into the group.
func (g *cpuGroup) add(pid int) error {
	if g.dir == "" {
		return nil
	}
	if err := os.WriteFile(filepath.Join(g.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("move simulator %d into %s: %w", pid, g.dir, err)
	}
	return nil
}

// String says what the simulators were given, for the benchmark's output.
func (g *cpuGroup) String() string {
	if g.dir == "" {
		return "simulators share the CPU with the servers, no share of their own: " + g.why
	}
	return fmt.Sprintf("simulators in a cgroup v1 cpu group of their own, cpu.shares %d (a nice-0 thread weighs 1024)", g.shares)
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
