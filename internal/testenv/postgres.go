package testenv

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fleetflow/fleetflow/internal/stack"
	"github.com/fleetflow/fleetflow/internal/stack/pgcluster"
)

// pgServer is one running throwaway cluster.
type pgServer struct {
	top      string // removed on stop; holds data/, postgres.log and the owner marker
	cluster  *pgcluster.Cluster
	cmd      *exec.Cmd
	exited   chan struct{}
	watchdog *exec.Cmd
}

const pgTopPrefix = "fleetflow-pgtest-"

// startPostgres creates a cluster in a fresh directory under the system temp directory (not t.TempDir: that
// is 0700 root when tests run as root, and the server runs as user postgres) and starts it on a free port.
//
// The server is our direct child with a parent-death signal, so it also ends when the test binary is killed
// or panics past its cleanups, and a watchdog then removes its files (removeOrphanedDirs of the next run
// catches what the watchdog could not).
func startPostgres() (*pgServer, error) { return startPostgresWith(pgcluster.TestSettings()) }

// startPostgresWith is startPostgres with the server settings given.
func startPostgresWith(settings map[string]string) (*pgServer, error) {
	bin, err := pgcluster.FindBinaries()
	if err != nil {
		return nil, err
	}
	acct, err := pgcluster.ServerAccount()
	if err != nil {
		return nil, err
	}
	removeOrphanedDirs(pgTopPrefix)
	top, err := newOwnedTempDir(pgTopPrefix)
	if err != nil {
		return nil, fmt.Errorf("postgres temp dir: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(top)
		}
	}()
	if acct != nil {
		// Let the server account through to data/, which it owns; nothing here is secret.
		if err := os.Chmod(top, 0o711); err != nil {
			return nil, fmt.Errorf("postgres temp dir: %w", err)
		}
	}
	logPath := filepath.Join(top, "postgres.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("postgres log: %w", err)
	}
	defer func() { _ = logf.Close() }()

	settings = maps.Clone(settings)
	// FLEETFLOW_TESTENV_PG_SETTINGS adds server settings for a diagnostic run, e.g.
	// "shared_preload_libraries=pg_stat_statements,autovacuum=on" to profile a benchmark's queries.
	for _, kv := range strings.Split(os.Getenv("FLEETFLOW_TESTENV_PG_SETTINGS"), ",") {
		if k, v, ok := strings.Cut(strings.TrimSpace(kv), "="); ok && k != "" {
			settings[k] = v
		}
	}
	c := &pgcluster.Cluster{
		BinDir: bin, DataDir: filepath.Join(top, "data"), Superuser: "fleetflow",
		Settings: settings, Account: acct,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.Init(ctx, logf); err != nil {
		return nil, fmt.Errorf("postgres: %w; log:\n%s", err, tail(logPath, 20))
	}
	// The free port may be taken between our probe and the server's bind; retry on that alone.
	for attempt := 1; ; attempt++ {
		c.Port, err = stack.FreePort()
		if err != nil {
			return nil, err
		}
		srv := &pgServer{top: top, cluster: c, exited: make(chan struct{})}
		srv.cmd = c.Command()
		srv.cmd.Stdout, srv.cmd.Stderr = logf, logf
		setParentDeathSignal(srv.cmd, syscall.SIGQUIT) // immediate shutdown if we die first
		if err := srv.cmd.Start(); err != nil {
			return nil, fmt.Errorf("start postgres: %w", err)
		}
		go func() { _ = srv.cmd.Wait(); close(srv.exited) }()
		err = c.WaitReady(ctx, srv.exited)
		if err == nil {
			err = c.EnsureDatabase(ctx, "fleetflow")
		}
		if err == nil {
			ok = true
			srv.watchdog = startWatchdog(srv.cmd.Process.Pid, "QUIT", top)
			return srv, nil
		}
		srv.kill()
		log := tail(logPath, 20)
		if attempt < 3 && strings.Contains(log, "could not bind") {
			continue
		}
		return nil, fmt.Errorf("postgres did not start: %w; log:\n%s", err, log)
	}
}

func (s *pgServer) kill() {
	_ = s.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// stop shuts the server down (a fast shutdown: with fsync off it takes milliseconds) and removes its files.
func (s *pgServer) stop() {
	stopWatchdog(s.watchdog)
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	_ = os.RemoveAll(s.top)
}

// newOwnedTempDir creates a directory under the system temp directory and records this test binary's pid in
// it, so removeOrphanedDirs can tell when its owner is gone.
func newOwnedTempDir(prefix string) (string, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "owner"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		_ = os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// removeOrphanedDirs deletes the directories of servers whose test binary died without cleaning up (killed
// by a timeout, say). Their servers ended with it, through the parent-death signal or the watchdog; a
// postmaster that somehow still runs is stopped first.
func removeOrphanedDirs(prefix string) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "owner"))
		if err != nil {
			continue
		}
		owner, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || owner == os.Getpid() || processExists(owner) {
			continue
		}
		if pid := pgcluster.PostmasterPID(filepath.Join(d, "data")); pid > 0 && processExists(pid) {
			_ = syscall.Kill(pid, syscall.SIGQUIT)
			time.Sleep(time.Second)
		}
		_ = os.RemoveAll(d)
	}
}

func processExists(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
