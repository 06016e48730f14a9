// Package pgcluster creates and runs a private PostgreSQL cluster from the Debian server binaries, for the
// dev stack (`fleetflow dev up`) and for throwaway test clusters (internal/testenv). Both need the same care:
// postgres refuses to run as root, so when we are root every server program runs as the unprivileged user
// "postgres" (the Debian package creates it), and that user must be able to reach the data directory, which
// a 0700 temporary checkout or t.TempDir does not allow.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNoBinaries means no PostgreSQL server binaries were found; the remedy is `make deps`, which installs
// Debian's postgresql package.
var ErrNoBinaries = errors.New("no PostgreSQL server binaries found (looked in $FLEETFLOW_PG_BIN, /usr/lib/postgresql/*/bin and $PATH); run `make deps` (apt-get install postgresql)")

// FindBinaries returns the directory holding initdb, postgres and pg_ctl: $FLEETFLOW_PG_BIN when set, else
// the highest version under /usr/lib/postgresql (Debian keeps them off $PATH), else the directory of the
// postgres found on $PATH.
func FindBinaries() (string, error) {
	if dir := os.Getenv("FLEETFLOW_PG_BIN"); dir != "" {
		if !hasServer(dir) {
			return "", fmt.Errorf("FLEETFLOW_PG_BIN=%s holds no postgres and initdb", dir)
		}
		return dir, nil
	}
	if dir := highestDebianBin("/usr/lib/postgresql"); dir != "" {
		return dir, nil
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		if dir := filepath.Dir(p); hasServer(dir) {
			return dir, nil
		}
	}
	return "", ErrNoBinaries
}

func hasServer(dir string) bool {
	for _, name := range []string{"postgres", "initdb", "pg_ctl"} {
		if st, err := os.Stat(filepath.Join(dir, name)); err != nil || st.IsDir() {
			return false
		}
	}
	return true
}

// highestDebianBin picks /usr/lib/postgresql/<N>/bin with the highest numeric N that holds a server.
func highestDebianBin(base string) string {
	entries, err := os.ReadDir(base)
	if err != nil {
		return ""
	}
	var versions []float64
	byVersion := map[float64]string{}
	for _, e := range entries {
		v, err := strconv.ParseFloat(e.Name(), 64)
		if err != nil {
			continue
		}
		if dir := filepath.Join(base, e.Name(), "bin"); hasServer(dir) {
			versions = append(versions, v)
			byVersion[v] = dir
		}
	}
	if len(versions) == 0 {
		return ""
	}
	return byVersion[slices.Max(versions)]
}

// Account is the OS user the server programs run as. A nil *Account means the current user.
type Account struct {
	Name     string
	UID, GID uint32
	Groups   []uint32
}

// ServerAccount returns nil when we are not root (the server runs as us), and the "postgres" account when we
// are, because postgres refuses to run as root.
func ServerAccount() (*Account, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs the unprivileged user postgres to run the server (apt-get install postgresql creates it): %w", err)
	}
	a := &Account{Name: u.Username}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("user postgres: %w", err)
	}
	a.UID, a.GID = uint32(uid), uint32(gid)
	if gids, err := u.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				a.Groups = append(a.Groups, uint32(n))
			}
		}
	}
	return a, nil
}

// Apply makes cmd run as the account; a nil account leaves cmd alone. Going through SysProcAttr rather than
// runuser keeps the server a direct child, so the caller can wait for it and tie its life to ours.
func (a *Account) Apply(cmd *exec.Cmd) {
	if a == nil {
		return
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: a.UID, Gid: a.GID, Groups: a.Groups}
	cmd.Env = append(os.Environ(), "HOME="+os.TempDir(), "USER="+a.Name, "LOGNAME="+a.Name)
}

// Chown gives path to the account; a nil account leaves it alone.
func (a *Account) Chown(path string) error {
	if a == nil {
		return nil
	}
	return os.Chown(path, int(a.UID), int(a.GID))
}

// CanReach reports whether the account may enter dir (search permission on dir and every parent). It asks the
// kernel by running test(1) as the account, which also honours ACLs.
func (a *Account) CanReach(ctx context.Context, dir string) bool {
	if a == nil {
		return true
	}
	cmd := exec.CommandContext(ctx, "test", "-x", dir)
	a.Apply(cmd)
	return cmd.Run() == nil
}

// Cluster is one PostgreSQL cluster: a data directory and the settings it is started with.
type Cluster struct {
	BinDir  string
	DataDir string
	Port    int
	// Superuser is the bootstrap role initdb creates; it is also the role clients connect as.
	Superuser string
	// Settings are passed as `-c name=value` on the postgres command line, on top of the defaults below.
	Settings map[string]string
	Account  *Account
}

// DevSettings suit a long-lived local cluster: fast commits (a crash may lose the last few hundred
// milliseconds of commits, never consistency) and enough connections for several workers and the gateway.
func DevSettings() map[string]string {
	return map[string]string{
		"shared_buffers":     "256MB",
		"max_connections":    "200",
		"synchronous_commit": "off",
	}
}

// TestSettings suit a throwaway cluster whose data is deleted afterwards: durability is switched off
// entirely, because a crash of the machine loses nothing that matters.
func TestSettings() map[string]string {
	s := DevSettings()
	s["fsync"] = "off"
	s["full_page_writes"] = "off"
	s["autovacuum"] = "off"
	return s
}

// Initialized reports whether the data directory already holds a cluster.
func (c *Cluster) Initialized() bool {
	_, err := os.Stat(filepath.Join(c.DataDir, "PG_VERSION"))
	return err == nil
}

// Init runs initdb when the data directory holds no cluster yet, so calling it again is harmless. The
// directory is created (mode 0700, owned by the server account) when missing; its parent must exist.
//
// Authentication is `trust` on loopback only: the cluster listens on 127.0.0.1 and is meant for one
// developer's machine or one test run. Production uses a managed Postgres with passwords or certificates.
func (c *Cluster) Init(ctx context.Context, log *os.File) error {
	if c.Initialized() {
		return nil
	}
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	if err := c.Account.Chown(c.DataDir); err != nil {
		return fmt.Errorf("give data directory to %s: %w", c.Account.Name, err)
	}
	if err := os.Chmod(c.DataDir, 0o700); err != nil {
		return fmt.Errorf("data directory mode: %w", err)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, "initdb"),
		"--pgdata", c.DataDir, "--username", c.Superuser,
		"--auth", "trust", "--encoding", "UTF8", "--locale", "C", "--no-sync")
	c.Account.Apply(cmd)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("initdb: %w", err)
	}
	return nil
}

// Command returns the postgres server command, not yet started: it listens on 127.0.0.1:Port only, keeps its
// unix socket inside the data directory (never in the shared /var/run/postgresql) and logs to stderr.
func (c *Cluster) Command() *exec.Cmd {
	settings := map[string]string{
		"port":             strconv.Itoa(c.Port),
		"listen_addresses": "127.0.0.1",
		// A unix socket path is limited to ~107 bytes; a deep checkout gets none (TCP is all we use).
		"unix_socket_directories": "",
		"logging_collector":       "off",
	}
	if len(filepath.Join(c.DataDir, ".s.PGSQL.65535")) < 100 {
		settings["unix_socket_directories"] = c.DataDir
	}
	for k, v := range c.Settings {
		settings[k] = v
	}
	args := []string{"-D", c.DataDir}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		args = append(args, "-c", k+"="+settings[k])
	}
	cmd := exec.Command(filepath.Join(c.BinDir, "postgres"), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	c.Account.Apply(cmd)
	return cmd
}

// URL is the connection URL of database db as the superuser.
func (c *Cluster) URL(db string) string {
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", c.Superuser, net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Port)), db)
}

// WaitReady polls until the server accepts connections and answers a query, the server process ends (exited
// is closed), or ctx ends.
func (c *Cluster) WaitReady(ctx context.Context, exited <-chan struct{}) error {
	var last error
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, c.URL("postgres"))
		if err == nil {
			_, err = conn.Exec(cctx, "SELECT 1")
			_ = conn.Close(cctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-exited:
			return errors.New("postgres exited during start-up")
		case <-ctx.Done():
			return fmt.Errorf("postgres did not accept connections in time: %w", last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// EnsureDatabase creates database name, owned by the superuser, unless it exists.
func (c *Cluster) EnsureDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		return fmt.Errorf("connect to create database %s: %w", name, err)
	}
	defer func() { _ = conn.Close(ctx) }()
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("look up database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// Stop shuts a running cluster down with `pg_ctl stop -m fast` (roll back open transactions, checkpoint,
// exit) and waits until it is gone.
func (c *Cluster) Stop(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, "pg_ctl"), "stop", "-D", c.DataDir, "-m", "fast", "-w", "-t", "120")
	c.Account.Apply(cmd)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// PostmasterPID reads the pid of the running server from postmaster.pid, or 0 when there is none.
func PostmasterPID(dataDir string) int {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(first))
	return pid
}
