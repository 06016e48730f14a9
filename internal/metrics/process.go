package metrics

import (
	"bytes"
	"os"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"strconv"
	"time"
)

// processStart approximates the process start time; package initialisation runs within milliseconds of it.
var processStart = time.Now()

// userHZ is the unit of the CPU times in /proc/<pid>/stat. It is fixed at 100 by the kernel's ABI on every
// architecture Go supports, whatever the kernel's internal tick rate.
const userHZ = 100

// RegisterProcess registers the basics every scrape target is expected to have, under their conventional
// names so that existing dashboards work: go_goroutines and a few Go runtime figures, process_* from /proc
// (only where /proc exists), and fleetflow_build_info{component,version,revision,go_version} = 1, which tells
// which build a process runs. component names the process ("worker", "gateway").
func RegisterProcess(r *Registry, component string) {
	r.GaugeFunc("go_goroutines", "Number of goroutines that currently exist.",
		func() float64 { return float64(runtime.NumGoroutine()) })
	runtimeMetric := func(name string) func() float64 {
		return func() float64 {
			s := []rtmetrics.Sample{{Name: name}}
			rtmetrics.Read(s)
			if s[0].Value.Kind() != rtmetrics.KindUint64 {
				return 0
			}
			return float64(s[0].Value.Uint64())
		}
	}
	// runtime/metrics rather than ReadMemStats, which stops the world.
	r.GaugeFunc("go_memstats_heap_alloc_bytes", "Number of heap bytes allocated and still in use.",
		runtimeMetric("/memory/classes/heap/objects:bytes"))
	r.GaugeFunc("go_memstats_sys_bytes", "Number of bytes obtained from the system.",
		runtimeMetric("/memory/classes/total:bytes"))
	r.CounterFunc("go_gc_cycles_total", "Number of completed GC cycles.",
		runtimeMetric("/gc/cycles/total:gc-cycles"))
	r.GaugeFunc("go_gomaxprocs", "Value of GOMAXPROCS, the number of threads running Go code at once.",
		runtimeMetric("/sched/gomaxprocs:threads"))

	r.GaugeFunc("process_start_time_seconds", "Start time of the process since the Unix epoch in seconds.",
		func() float64 { return float64(processStart.UnixNano()) / 1e9 })
	if _, err := os.Stat("/proc/self/statm"); err == nil {
		page := float64(os.Getpagesize())
		r.GaugeFunc("process_resident_memory_bytes", "Resident memory size in bytes.",
			func() float64 { return procField("/proc/self/statm", 1) * page })
		r.GaugeFunc("process_virtual_memory_bytes", "Virtual memory size in bytes.",
			func() float64 { return procField("/proc/self/statm", 0) * page })
		r.CounterFunc("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
			func() float64 { return (procStatField(14) + procStatField(15)) / userHZ })
		r.GaugeFunc("process_open_fds", "Number of open file descriptors.", func() float64 {
			ents, err := os.ReadDir("/proc/self/fd")
			if err != nil {
				return 0
			}
			return float64(len(ents))
		})
	}

	version, revision := "(devel)", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		modified := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if modified {
			revision += "-dirty"
		}
	}
	r.GaugeVec("fleetflow_build_info", "A constant 1 labelled with the build that this process runs.",
		"component", "version", "revision", "go_version").
		With(component, version, revision, runtime.Version()).Set(1)
}

// procField returns the i-th space-separated number of a /proc file, 0 when it cannot be read.
func procField(path string, i int) float64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	f := bytes.Fields(b)
	if i >= len(f) {
		return 0
	}
	v, _ := strconv.ParseFloat(string(f[i]), 64)
	return v
}

// procStatField returns field k of /proc/self/stat, numbered from 1 as in proc(5) (utime is 14, stime 15).
// Fields are counted after the command name, which is parenthesised and may itself contain spaces.
func procStatField(k int) float64 {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return 0
	}
	// After ") " come fields 3, 4, ... of proc(5).
	f := bytes.Fields(b[end+1:])
	j := k - 3
	if j < 0 || j >= len(f) {
		return 0
	}
	v, _ := strconv.ParseFloat(string(f[j]), 64)
	return v
}
