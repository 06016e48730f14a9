package main

import (
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	runtimepprof "runtime/pprof"
)

// startCPUProfile writes a CPU profile of this command to path (FLEETFLOW_CPUPROFILE), for finding where a
// large provisioning run spends its time; it returns nil when path is empty.
func startCPUProfile(path string) func() {
	if path == "" {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		slog.Warn("cpu profile", "err", err)
		return nil
	}
	if err := runtimepprof.StartCPUProfile(f); err != nil {
		slog.Warn("cpu profile", "err", err)
		f.Close()
		return nil
	}
	return func() { runtimepprof.StopCPUProfile(); f.Close() }
}

// servePprof exposes Go's profiler on addr (loopback only is the caller's choice) for diagnosing a gateway or
// simulator under load; it is off unless the hidden --pprof flag is given.
func servePprof(addr string) {
	if addr == "" {
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		slog.Warn("pprof listener", "err", err)
		return
	}
	go func() { _ = http.Serve(ln, mux) }()
}
