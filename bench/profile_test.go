package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/fleetflow/fleetflow/internal/registry"
)

// procTimes is one process's CPU time from /proc/PID/stat, in clock ticks: its own and that of its children
// it has reaped (a Postgres backend that ended, the CLI once it exited).
type procTimes struct {
	comm           string
	own, reaped    int64
	parent, number int
}

// cpuSnapshot is the CPU time of this process and all its descendants (Postgres, Temporal's dev server, the
// CLI), by pid.
type cpuSnapshot map[int]procTimes

// clockTicks is the kernel's USER_HZ, which /proc reports times in (100 on every Linux we run on).
const clockTicks = 100

func snapshotCPU() cpuSnapshot {
	all := map[int]procTimes{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || closing < open {
			continue
		}
		f := strings.Fields(s[closing+1:])
		if len(f) < 15 {
			continue
		}
		num := func(i int) int64 { n, _ := strconv.ParseInt(f[i], 10, 64); return n }
		all[pid] = procTimes{comm: s[open+1 : closing], own: num(11) + num(12), reaped: num(13) + num(14),
			parent: int(num(1)), number: pid}
	}
	self := os.Getpid()
	out := cpuSnapshot{}
	for pid, p := range all {
		for q, hops := pid, 0; q > 1 && hops < 20; q, hops = all[q].parent, hops+1 {
			if q == self {
				out[pid] = p
				break
			}
		}
	}
	return out
}

// cpuSince returns the CPU seconds each kind of process used between before and now: Postgres (server
// processes, and the backends that ended, through the postmaster), Temporal's dev server, this process (the
// worker runs in it) and its reaped children (the CLI).
func cpuSince(before cpuSnapshot) map[string]float64 {
	now := snapshotCPU()
	out := map[string]float64{}
	self := os.Getpid()
	for pid, p := range now {
		b := before[pid]
		own, reaped := float64(p.own-b.own)/clockTicks, float64(p.reaped-b.reaped)/clockTicks
		switch {
		case pid == self:
			out["worker and benchmark (this process)"] += own
			out["CLI (reaped children of this process)"] += reaped
		case p.comm == "postgres":
			out["postgres"] += own + reaped
		default:
			out[p.comm] += own + reaped
		}
	}
	return out
}

// reportCPU prints the CPU seconds by kind of process of a profiled run.
func reportCPU(b *testing.B, what string, cpu map[string]float64) {
	kinds := make([]string, 0, len(cpu))
	total := 0.0
	for k, v := range cpu {
		kinds = append(kinds, k)
		total += v
	}
	sort.Slice(kinds, func(i, j int) bool { return cpu[kinds[i]] > cpu[kinds[j]] })
	fmt.Printf("CPU seconds during %s: %.2f in all\n", what, total)
	for _, k := range kinds {
		fmt.Printf("  %-45s %6.2f\n", k, cpu[k])
	}
}

// statementStats resets pg_stat_statements when the server preloads it (FLEETFLOW_TESTENV_PG_SETTINGS=
// shared_preload_libraries=pg_stat_statements) and returns a function that writes the statements that took
// the most time since then to path; without the library it does nothing.
func statementStats(b *testing.B, ctx context.Context, reg *registry.Registry, path string) func() {
	pool := reg.Pool()
	if _, err := pool.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		return func() {}
	}
	if _, err := pool.Exec(ctx, "SELECT pg_stat_statements_reset()"); err != nil {
		return func() {}
	}
	return func() {
		rows, err := pool.Query(ctx, `SELECT calls, round(total_exec_time::numeric, 1), rows,
			regexp_replace(left(query, 300), '\s+', ' ', 'g') FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 25`)
		if err != nil {
			b.Logf("pg_stat_statements: %v", err)
			return
		}
		defer rows.Close()
		var sb strings.Builder
		fmt.Fprintf(&sb, "%8s %10s %10s  %s\n", "calls", "total ms", "rows", "statement")
		for rows.Next() {
			var calls, n int64
			var ms float64
			var q string
			if err := rows.Scan(&calls, &ms, &n, &q); err != nil {
				b.Logf("pg_stat_statements: %v", err)
				return
			}
			fmt.Fprintf(&sb, "%8d %10.1f %10d  %s\n", calls, ms, n, q)
		}
		if err := os.WriteFile(path, []byte(sb.String()), 0o600); err != nil {
			b.Logf("pg_stat_statements: %v", err)
		}
		fmt.Print(sb.String())
	}
}

// mark creates an empty file at path: a sign for a profiler outside the benchmark.
func mark(b *testing.B, path string) {
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		b.Fatal(err)
	}
}
