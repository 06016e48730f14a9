package pgcluster

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestHighestDebianBinPicksTheNewestServer(t *testing.T) {
	base := t.TempDir()
	for _, v := range []string{"9.6", "13", "15", "16"} {
		dir := filepath.Join(base, v, "bin")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if v == "16" {
			continue // a client-only install: no server programs
		}
		for _, name := range []string{"postgres", "initdb", "pg_ctl"} {
			if err := os.WriteFile(filepath.Join(dir, name), nil, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got, want := highestDebianBin(base), filepath.Join(base, "15", "bin"); got != want {
		t.Fatalf("highestDebianBin = %q, want %q", got, want)
	}
	if got := highestDebianBin(filepath.Join(base, "missing")); got != "" {
		t.Fatalf("highestDebianBin of a missing dir = %q", got)
	}
}

func TestCommandListensOnLoopbackOnly(t *testing.T) {
	c := &Cluster{BinDir: "/pg/bin", DataDir: "/d", Port: 5999, Superuser: "fleetflow", Settings: TestSettings()}
	args := c.Command().Args
	for _, want := range []string{"port=5999", "listen_addresses=127.0.0.1", "unix_socket_directories=/d", "fsync=off", "shared_buffers=256MB"} {
		if !slices.Contains(args, want) {
			t.Errorf("postgres args lack %s: %v", want, args)
		}
	}
	// A data directory too deep for a unix socket path gets no socket rather than a failed start.
	c.DataDir = "/" + strings.Repeat("x", 120)
	if args := c.Command().Args; !slices.Contains(args, "unix_socket_directories=") {
		t.Errorf("deep data dir still gets a socket: %v", args)
	}
	if got := c.URL("db"); got != "postgres://fleetflow@127.0.0.1:5999/db?sslmode=disable" {
		t.Errorf("URL = %s", got)
	}
}

func TestDevSettingsKeepDurability(t *testing.T) {
	s := DevSettings()
	if _, ok := s["fsync"]; ok {
		t.Fatal("the dev cluster must keep fsync on: it holds the user's demo data across restarts")
	}
}

func TestPostmasterPID(t *testing.T) {
	dir := t.TempDir()
	if PostmasterPID(dir) != 0 {
		t.Fatal("pid without postmaster.pid")
	}
	if err := os.WriteFile(filepath.Join(dir, "postmaster.pid"), []byte("4321\n/d\n1700000000\n5432\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := PostmasterPID(dir); got != 4321 {
		t.Fatalf("PostmasterPID = %d", got)
	}
}
