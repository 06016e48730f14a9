// Package testenv starts the real services integration tests run against — a throwaway Postgres cluster and a
// Temporal dev server — on free ports of 127.0.0.1, and stops them when the test (or the test binary) ends.
//
// Tests never skip for lack of a service: a missing binary fails the test with the command that provides it
// (`make test` builds bin/temporal and installs Postgres), so a green run always means the integration tests
// ran.
//
// Starting servers costs seconds, so most tests should use the ones shared by their test binary:
//
//	dbURL := testenv.Postgres(t)     // a fresh database with the registry's schema, dropped after t
//	hostPort := testenv.Temporal(t)  // the binary's dev server; use your own task queue and workflow IDs
//
// The shared servers end when the test binary exits; with `func TestMain(m *testing.M) { testenv.Main(m) }`
// they are stopped as soon as the tests are done instead. StartPostgres and StartTemporal give a test servers
// of its own, for tests that stop or break them.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/stack"
)

// Main runs the package's tests and then stops the shared servers. It is optional (a shared server also ends
// with the test binary) but makes the shutdown immediate. Call it from TestMain; it does not return.
func Main(m *testing.M) {
	code := m.Run()
	sharedPG.close()
	sharedTemporal.close()
	os.Exit(code)
}

// shared is a server started at most once per test binary, on first use.
type shared[T any] struct {
	once sync.Once
	val  T
	err  error
	stop func()
}

var (
	sharedPG       shared[*pgServer]
	sharedTemporal shared[*temporalServer]
)

func (s *shared[T]) get(t testing.TB, start func() (T, func(), error)) T {
	t.Helper()
	s.once.Do(func() { s.val, s.stop, s.err = start() })
	if s.err != nil {
		t.Fatalf("testenv: %v", s.err)
	}
	return s.val
}

// close stops the server if it was started. Main calls it after every test has finished.
func (s *shared[T]) close() {
	if s.stop != nil {
		s.stop()
		s.stop = nil
	}
}

// StartPostgres starts a throwaway cluster for this test alone and returns the URL of its database
// "fleetflow" (superuser "fleetflow", trust authentication on 127.0.0.1), migrated to the registry's schema.
// The cluster and its files are removed when the test ends.
func StartPostgres(t testing.TB) string {
	t.Helper()
	srv, err := startPostgres()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(srv.stop)
	url := srv.cluster.URL("fleetflow")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := registry.Migrate(ctx, url); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return url
}

// schemaTemplate is the database of the shared cluster that holds the migrated registry schema. Each test's
// database is created as a copy of it (CREATE DATABASE … TEMPLATE), which costs no more than an empty one, so
// the migrations run once per test binary rather than once per test.
const schemaTemplate = "fleetflow_schema"

// sharedPostgres returns the test binary's shared cluster, started (and its schema template migrated) on
// first use.
func sharedPostgres(t testing.TB) *pgServer {
	t.Helper()
	return sharedPG.get(t, func() (*pgServer, func(), error) {
		s, err := startPostgres()
		if err != nil {
			return nil, nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		err = s.cluster.EnsureDatabase(ctx, schemaTemplate)
		if err == nil {
			_, err = registry.Migrate(ctx, s.cluster.URL(schemaTemplate))
		}
		if err != nil {
			s.stop()
			return nil, nil, fmt.Errorf("schema template: %w", err)
		}
		return s, s.stop, nil
	})
}

// Postgres returns the URL of a new database in the test binary's shared cluster (superuser "fleetflow"),
// migrated to the registry's schema, so registry.Open accepts it; the database is dropped when the test ends.
func Postgres(t testing.TB) string {
	t.Helper()
	return newDatabase(t, schemaTemplate)
}

// EmptyPostgres is Postgres without the schema: a new, empty database, for tests of migrations themselves.
func EmptyPostgres(t testing.TB) string {
	t.Helper()
	return newDatabase(t, "")
}

// newDatabase creates a database for t in the shared cluster, a copy of template if one is named, and drops
// it when t ends.
func newDatabase(t testing.TB, template string) string {
	t.Helper()
	srv := sharedPostgres(t)
	name := dbName(t.Name())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, srv.cluster.URL("postgres"))
	if err != nil {
		t.Fatalf("testenv: create database %s: %v", name, err)
	}
	defer func() { _ = admin.Close(ctx) }()
	stmt := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()
	if template != "" {
		stmt += " TEMPLATE " + pgx.Identifier{template}.Sanitize()
	}
	if _, err := admin.Exec(ctx, stmt); err != nil {
		t.Fatalf("testenv: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, srv.cluster.URL("postgres"))
		if err != nil {
			t.Logf("testenv: drop database %s: %v", name, err)
			return
		}
		defer func() { _ = conn.Close(ctx) }()
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Logf("testenv: drop database %s: %v", name, err)
		}
	})
	return srv.cluster.URL(name)
}

var nonIdent = regexp.MustCompile(`[^a-z0-9_]+`)

// dbName derives a readable, unique database name from the test name (Postgres names are ≤ 63 bytes).
func dbName(test string) string {
	base := nonIdent.ReplaceAllString(strings.ToLower(test), "_")
	if len(base) > 40 {
		base = base[:40]
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "t_" + strings.Trim(base, "_") + "_" + hex.EncodeToString(b[:])
}

// StartTemporal starts a Temporal dev server for this test alone, with the project's search attributes
// registered and no UI, and returns its frontend host:port (namespace "default"). It is stopped when the test
// ends.
func StartTemporal(t testing.TB) string {
	t.Helper()
	srv, err := startTemporal()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(srv.stop)
	return srv.hostPort
}

// Temporal returns the frontend host:port of the test binary's shared dev server (namespace "default", the
// project's search attributes registered). Tests sharing it should use their own task queue and workflow IDs.
func Temporal(t testing.TB) string {
	t.Helper()
	srv := sharedTemporal.get(t, func() (*temporalServer, func(), error) {
		s, err := startTemporal()
		if err != nil {
			return nil, nil, err
		}
		return s, s.stop, nil
	})
	return srv.hostPort
}

// TemporalCLI returns the temporal binary tests use: $FLEETFLOW_TEMPORAL_CLI, else bin/temporal of the
// checkout.
func TemporalCLI() (string, error) {
	path := os.Getenv("FLEETFLOW_TEMPORAL_CLI")
	if path == "" {
		wd, err := os.Getwd()
		if err != nil {
			return "", err
		}
		root, err := stack.FindRoot(wd)
		if err != nil {
			return "", err
		}
		path = filepath.Join(root, "bin", "temporal")
	}
	if st, err := os.Stat(path); err != nil || st.IsDir() {
		return "", fmt.Errorf("temporal CLI not found at %s: run `make test` (it builds bin/temporal), or set FLEETFLOW_TEMPORAL_CLI", path)
	}
	return path, nil
}

// quietLogger keeps the SDK's connection chatter out of test output.
var quietLogger = slog.New(slog.DiscardHandler)

// tail returns the last lines of a log file for an error message.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
