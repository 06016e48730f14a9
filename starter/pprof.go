package main

import (
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
)

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
