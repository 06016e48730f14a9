package testenv_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"

	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

func TestMain(m *testing.M) {
	if os.Getenv("TESTENV_CHILD") != "" {
		os.Exit(m.Run()) // as a package without testenv.Main does: shared servers outlive m.Run
	}
	testenv.Main(m)
}

func queryOne(t *testing.T, url, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	defer func() { _ = conn.Close(ctx) }()
	var v string
	if err := conn.QueryRow(ctx, sql).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

func TestStartPostgres(t *testing.T) {
	url := testenv.StartPostgres(t)
	if !strings.Contains(url, "@127.0.0.1:") {
		t.Fatalf("URL %s is not on 127.0.0.1", url)
	}
	if got := queryOne(t, url, "SELECT 1::text"); got != "1" {
		t.Fatalf("SELECT 1 = %s", got)
	}
	if got := queryOne(t, url, "SELECT current_database()"); got != "fleetflow" {
		t.Fatalf("database %s, want fleetflow", got)
	}
	if got := queryOne(t, url, "SHOW listen_addresses"); got != "127.0.0.1" {
		t.Fatalf("listen_addresses = %s", got)
	}
	if got := queryOne(t, url, "SHOW fsync"); got != "off" {
		t.Fatalf("fsync = %s, want off for a throwaway cluster", got)
	}
	checkMigrated(t, url)
}

// checkMigrated fails unless registry.Open accepts the database: its schema is the registry's current one.
func checkMigrated(t *testing.T, url string) {
	t.Helper()
	reg, err := registry.Open(context.Background(), url)
	if err != nil {
		t.Fatalf("registry.Open: %v", err)
	}
	reg.Close()
}

func TestPostgresDatabasesHaveTheSchemaUnlessEmpty(t *testing.T) {
	checkMigrated(t, testenv.Postgres(t))
	empty := testenv.EmptyPostgres(t)
	if got := queryOne(t, empty, "SELECT count(*)::text FROM pg_tables WHERE schemaname = 'public'"); got != "0" {
		t.Fatalf("EmptyPostgres has %s tables", got)
	}
	if _, err := registry.Open(context.Background(), empty); !errors.Is(err, registry.ErrSchemaOutdated) {
		t.Fatalf("registry.Open on an empty database: %v, want ErrSchemaOutdated", err)
	}
}

func TestPostgresGivesEachTestItsOwnDatabase(t *testing.T) {
	a, b := testenv.Postgres(t), testenv.Postgres(t)
	if a == b {
		t.Fatalf("two calls returned the same database %s", a)
	}
	da, db := queryOne(t, a, "SELECT current_database()"), queryOne(t, b, "SELECT current_database()")
	if da == db || !strings.HasPrefix(da, "t_testpostgresgives") {
		t.Fatalf("databases %s and %s", da, db)
	}
	// Same cluster: the shared one.
	if queryOne(t, a, "SHOW port") != queryOne(t, b, "SHOW port") {
		t.Fatal("two clusters for one test binary")
	}
}

func checkTemporal(t *testing.T, hostPort string) {
	t.Helper()
	if !strings.HasPrefix(hostPort, "127.0.0.1:") {
		t.Fatalf("host:port %s is not on 127.0.0.1", hostPort)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.DialContext(ctx, client.Options{HostPort: hostPort, Logger: tlog.NewStructuredLogger(slog.New(slog.DiscardHandler))})
	if err != nil {
		t.Fatalf("dial %s: %v", hostPort, err)
	}
	defer c.Close()
	if _, err := c.CheckHealth(ctx, &client.CheckHealthRequest{}); err != nil {
		t.Fatalf("CheckHealth: %v", err)
	}
	resp, err := c.OperatorService().ListSearchAttributes(ctx, &operatorservice.ListSearchAttributesRequest{Namespace: "default"})
	if err != nil {
		t.Fatalf("ListSearchAttributes: %v", err)
	}
	for _, d := range searchattr.Definitions() {
		if got := resp.GetCustomAttributes()[d.Name]; got != d.Type {
			t.Errorf("search attribute %s: %v, want %v", d.Name, got, d.Type)
		}
	}
}

func TestStartTemporal(t *testing.T) {
	checkTemporal(t, testenv.StartTemporal(t))
}

func TestTemporalIsOnePerBinary(t *testing.T) {
	a, b := testenv.Temporal(t), testenv.Temporal(t)
	if a != b {
		t.Fatalf("two shared servers: %s and %s", a, b)
	}
	checkTemporal(t, a)
}

// TestChildUsesSharedServers is the child half of TestSharedServersEndWithTheBinary; it does nothing in a
// normal run.
func TestChildUsesSharedServers(t *testing.T) {
	if os.Getenv("TESTENV_CHILD") == "" {
		return
	}
	fmt.Printf("PG %s\nTEMPORAL %s\n", testenv.Postgres(t), testenv.Temporal(t))
}

// TestSharedServersEndWithTheBinary runs a test binary that uses the shared servers without testenv.Main and
// checks that they stop, and their files go, once it has exited.
func TestSharedServersEndWithTheBinary(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run", "^TestChildUsesSharedServers$", "-test.count", "1")
	cmd.Env = append(os.Environ(), "TESTENV_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var pgURL, temporalAddr string
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "PG "); ok {
			pgURL = v
		}
		if v, ok := strings.CutPrefix(line, "TEMPORAL "); ok {
			temporalAddr = v
		}
	}
	u, err := url.Parse(pgURL)
	if err != nil || u.Host == "" || temporalAddr == "" {
		t.Fatalf("child output without addresses:\n%s", out)
	}
	child := strconv.Itoa(cmd.Process.Pid)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var left []string
		for _, addr := range []string{u.Host, temporalAddr} {
			if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				_ = c.Close()
				left = append(left, addr+" still answers")
			}
		}
		dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "fleetflow-*", "owner"))
		for _, d := range dirs {
			if b, _ := os.ReadFile(d); strings.TrimSpace(string(b)) == child {
				left = append(left, filepath.Dir(d)+" still exists")
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("30 s after the test binary exited: %v", left)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
