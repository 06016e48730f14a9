package stack

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/stack/pgcluster"
)

// upPostgres makes the registry database available: ours if running, the user's if they named a reachable
// one, else a project-local cluster started on the port of the configured URL.
func (s *Stack) upPostgres(ctx context.Context) error {
	const part = PartPostgres
	cfg, err := pgx.ParseConfig(s.opts.Config.DatabaseURL)
	if err != nil {
		return partErr(part, "FLEETFLOW_DATABASE_URL is not a valid Postgres URL: %v", err)
	}
	addr := fmt.Sprintf("%s:%d", cfg.Host, cfg.Port)
	if running, err := s.alreadyRunning(part, addr); running || err != nil {
		return err
	}

	if s.opts.ExplicitDatabase && Reachable(addr, 2*time.Second) {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		conn, err := pgx.Connect(pctx, s.opts.Config.DatabaseURL)
		if err != nil {
			return partErr(part, "FLEETFLOW_DATABASE_URL answers at %s but refuses us (%v); fix the URL or unset it", addr, err)
		}
		_ = conn.Close(pctx)
		s.say("%-9s %-22s external (FLEETFLOW_DATABASE_URL)", part, addr)
		return nil
	}
	if !IsLoopback(cfg.Host) || strings.HasPrefix(cfg.Host, "/") {
		return partErr(part, "FLEETFLOW_DATABASE_URL points at %s, which does not answer; start that server or unset FLEETFLOW_DATABASE_URL to use a local cluster", addr)
	}
	if PortInUse(fmt.Sprintf("127.0.0.1:%d", cfg.Port)) {
		return partErr(part, "%s", portInUseMessage(int(cfg.Port), "FLEETFLOW_DATABASE_URL"))
	}

	bin, err := pgcluster.FindBinaries()
	if err != nil {
		return partErr(part, "%v", err)
	}
	acct, err := pgcluster.ServerAccount()
	if err != nil {
		return partErr(part, "%v", err)
	}
	dataDir, err := s.pgDataDir(ctx, acct)
	if err != nil {
		return partErr(part, "%v", err)
	}
	c := &pgcluster.Cluster{
		BinDir: bin, DataDir: dataDir, Port: int(cfg.Port), Superuser: cfg.User,
		Settings: pgcluster.DevSettings(), Account: acct,
	}
	if !c.Initialized() {
		s.say("%-9s creating cluster in %s", part, s.rel(dataDir))
		log, err := os.OpenFile(s.logPath(part), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return partErr(part, "open log: %v", err)
		}
		off, _ := log.Seek(0, io.SeekEnd)
		err = c.Init(ctx, log)
		_ = log.Close()
		if err != nil {
			return &PartError{Part: part, Msg: err.Error() + "; last lines of " + s.rel(s.logPath(part)) + ":", Log: tailFrom(s.logPath(part), off, 15)}
		}
	}

	l, err := s.launch(part, c.Command(), addr, dataDir)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := c.WaitReady(wctx, l.exited); err != nil {
		return s.fail(part, l, "did not start")
	}
	if err := c.EnsureDatabase(wctx, cfg.Database); err != nil {
		return s.fail(part, l, err.Error())
	}
	s.say("%-9s %-22s started (pid %d, data %s)", part, addr, l.pid.PID, s.rel(dataDir))
	return nil
}

// stopPostgres stops our cluster with pg_ctl (a fast shutdown), falling back to the same signal pg_ctl
// would send when the binaries are gone.
func (s *Stack) stopPostgres(ctx context.Context, p *PIDFile) error {
	bin, err := pgcluster.FindBinaries()
	acct, aerr := pgcluster.ServerAccount()
	if err == nil && aerr == nil && p.DataDir != "" {
		c := &pgcluster.Cluster{BinDir: bin, DataDir: p.DataDir, Account: acct}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		if err := c.Stop(sctx); err == nil && waitGone(p, 10*time.Second) {
			return nil
		}
	}
	return stopProcess(p, syscall.SIGINT, 60*time.Second) // SIGINT is postgres's "fast shutdown"
}

// pgDataDir decides where the dev cluster keeps its data, once: .fleetflow/pgdata when the server account
// can reach it, else (a checkout inside a 0700 directory, as `mktemp -d` makes, while we are root) a directory
// under /var/tmp owned by the server account. The choice is recorded in .fleetflow/pgdata-location so later
// commands find the same cluster.
func (s *Stack) pgDataDir(ctx context.Context, acct *pgcluster.Account) (string, error) {
	loc := filepath.Join(s.state, "pgdata-location")
	if b, err := os.ReadFile(loc); err == nil {
		if dir := strings.TrimSpace(string(b)); dir != "" {
			return dir, s.prepareFallback(filepath.Dir(dir), acct)
		}
	}
	inTree := filepath.Join(s.state, "pgdata")
	if acct.CanReach(ctx, s.state) {
		return inTree, nil
	}
	base := fallbackBase(s.opts.Root)
	s.say("%-9s user %s cannot reach %s; keeping the cluster in %s", PartPostgres, acct.Name, s.rel(s.state), base)
	if err := s.prepareFallback(base, acct); err != nil {
		return "", err
	}
	removeAbandonedFallbacks(filepath.Dir(base), base)
	dir := filepath.Join(base, "data")
	if err := os.WriteFile(loc, []byte(dir+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("record data directory: %w", err)
	}
	return dir, nil
}

// fallbackBase is the per-checkout directory outside the tree: one per absolute checkout path, so two
// checkouts never share a cluster.
func fallbackBase(root string) string {
	sum := sha256.Sum256([]byte(root))
	return filepath.Join("/var/tmp", "fleetflow-pg-"+hex.EncodeToString(sum[:6]))
}

// prepareFallback creates the out-of-tree directory (mode 0700, owned by the server account) and records in
// it which checkout it belongs to, so removeAbandonedFallbacks can tell when that checkout is gone.
func (s *Stack) prepareFallback(base string, acct *pgcluster.Account) error {
	if err := os.MkdirAll(base, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", base, err)
	}
	if err := acct.Chown(base); err != nil {
		return fmt.Errorf("give %s to %s: %w", base, acct.Name, err)
	}
	if err := os.Chmod(base, 0o700); err != nil {
		return fmt.Errorf("mode of %s: %w", base, err)
	}
	return os.WriteFile(filepath.Join(base, "checkout"), []byte(s.opts.Root+"\n"), 0o644)
}

// removeAbandonedFallbacks deletes out-of-tree clusters whose checkout no longer exists and whose server is
// not running: the leftovers of temporary clones (a fresh-clone check removes its clone, not our data).
func removeAbandonedFallbacks(parent, keep string) {
	dirs, _ := filepath.Glob(filepath.Join(parent, "fleetflow-pg-*"))
	for _, d := range dirs {
		if d == keep {
			continue
		}
		b, err := os.ReadFile(filepath.Join(d, "checkout"))
		if err != nil {
			continue
		}
		if _, err := os.Stat(strings.TrimSpace(string(b))); !errors.Is(err, os.ErrNotExist) {
			continue
		}
		if pid := pgcluster.PostmasterPID(filepath.Join(d, "data")); pid > 0 && syscall.Kill(pid, 0) == nil {
			continue
		}
		_ = os.RemoveAll(d)
	}
}

// migrate brings the registry's schema to this binary's version (a no-op when it is current), as
// `fleetflow migrate` does; concurrent runs are serialized by registry.Migrate.
func (s *Stack) migrate(ctx context.Context) error {
	applied, err := registry.Migrate(ctx, s.opts.Config.DatabaseURL)
	if err != nil {
		return partErr(PartSchema, "%v", err)
	}
	if len(applied) == 0 {
		s.say("%-9s version %d, up to date", PartSchema, registry.SchemaVersion())
		return nil
	}
	names := make([]string, len(applied))
	for i, m := range applied {
		names[i] = m.Name
		if m.Adopted {
			names[i] += " (adopted)"
		}
	}
	s.say("%-9s migrated to version %d: %s", PartSchema, registry.SchemaVersion(), strings.Join(names, ", "))
	return nil
}
