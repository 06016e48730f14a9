package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Default metrics addresses of the local stack: the gateway on DefaultGatewayListen, and the n-th worker
// (1-based, as `fleetflow dev up` numbers them) on WorkerListen(n). 9464 is the port OpenTelemetry's
// Prometheus exporter uses by convention, so a scraper set up for it finds the gateway.
const (
	DefaultGatewayListen = "127.0.0.1:9464"
	workerBasePort       = 9465
)

// WorkerListen is the metrics address `fleetflow dev up` gives its n-th worker (1-based): 127.0.0.1:9465,
// :9466, ... right after the gateway's.
func WorkerListen(n int) string { return fmt.Sprintf("127.0.0.1:%d", workerBasePort+n-1) }

// Server serves a registry at /metrics.
type Server struct {
	mux  *http.ServeMux
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
}

// Serve listens on addr (":0" picks a free port) and serves h at /metrics until Close. It listens before
// returning, so that a port already in use is an error of the caller's start-up rather than a log line.
func Serve(addr string, h http.Handler, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("fleetflow: metrics are at /metrics\n"))
	})
	s := &Server{
		mux: mux,
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 5 * time.Second,
			WriteTimeout:      30 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		ln:   ln,
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	return s, nil
}

// HandleFunc serves h at pattern beside /metrics, e.g. a worker's /livez and /readyz probes; it may be
// called while the server runs.
func (s *Server) HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request)) {
	s.mux.HandleFunc(pattern, h)
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is the server's metrics URL.
func (s *Server) URL() string { return "http://" + s.Addr() + "/metrics" }

// Close stops the server, letting a scrape in progress finish for up to five seconds.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	<-s.done
	if err != nil {
		return fmt.Errorf("metrics: shutdown: %w", err)
	}
	return nil
}
