package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/stack/pgcluster"
)

// RestartablePostgres is a cluster of one test's own that the test stops and starts again on the same port
// and data directory, for chaos tests: what an operation does when its database goes away under it.
type RestartablePostgres struct {
	// URL is the database "fleetflow", migrated to the registry's schema; it stays valid across restarts.
	URL string
	mu  sync.Mutex
	srv *pgServer
}

// StartRestartablePostgres starts a cluster for this test alone (as StartPostgres) that Restart can bounce.
func StartRestartablePostgres(t testing.TB) *RestartablePostgres {
	t.Helper()
	// A commit must survive the server's crash, as on a production server: with the test clusters' usual
	// synchronous_commit=off an immediate shutdown loses the last commits, and the registry goes back in time
	// behind the activities' backs. fsync may stay off: the server crashes, not the machine.
	settings := pgcluster.TestSettings()
	settings["synchronous_commit"] = "on"
	srv, err := startPostgresWith(settings)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	p := &RestartablePostgres{URL: srv.cluster.URL("fleetflow"), srv: srv}
	t.Cleanup(func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.srv.stop()
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := registry.Migrate(ctx, p.URL); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return p
}

// Restart stops the server and starts it again after down. With crash the stop is an immediate shutdown
// (SIGQUIT: no checkpoint, every connection cut, crash recovery on start), otherwise a fast one (SIGINT: open
// transactions rolled back, connections cut), as an operator's restart. It returns once the server answers
// queries again.
func (p *RestartablePostgres) Restart(crash bool, down time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.srv
	stopWatchdog(s.watchdog)
	sig := syscall.SIGINT
	if crash {
		sig = syscall.SIGQUIT
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	time.Sleep(down) // the outage itself: what the clients see is a refused connection for this long
	logf, err := os.OpenFile(filepath.Join(s.top, "postgres.log"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("postgres log: %w", err)
	}
	defer func() { _ = logf.Close() }()
	s.cmd = s.cluster.Command()
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	setParentDeathSignal(s.cmd, syscall.SIGQUIT)
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("restart postgres: %w", err)
	}
	exited := make(chan struct{})
	s.exited = exited
	go func(cmd interface{ Wait() error }) { _ = cmd.Wait(); close(exited) }(s.cmd)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := s.cluster.WaitReady(ctx, exited); err != nil {
		return fmt.Errorf("postgres did not come back: %w; log:\n%s", err, tail(filepath.Join(s.top, "postgres.log"), 20))
	}
	s.watchdog = startWatchdog(s.cmd.Process.Pid, "QUIT", s.top)
	return nil
}
