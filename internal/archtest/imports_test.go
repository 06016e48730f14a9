// Package archtest holds the test that enforces the import rule of docs/architecture.md («Layers and the
// import rule»): a wrong arrow between packages fails `make test` and `make lint`, not a review.
package archtest

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/fleetflow/fleetflow/"

// Server clients, by module path prefix: the adapters' dependencies.
var (
	pgx   = "github.com/jackc/pgx"
	mochi = "github.com/mochi-mqtt/server"
	paho  = "github.com/eclipse/paho.mqtt.golang"
	nats  = "github.com/nats-io/"

	natsClient = "github.com/nats-io/nats.go"
	natsServer = "github.com/nats-io/nats-server"
)

// Our adapters and mains, which the domain and the operations must not reach.
var adapters = []string{
	module + "internal/registry", module + "internal/gateway", module + "internal/channel",
	module + "internal/device", module + "internal/simulator", module + "internal/metrics",
	module + "internal/stack", module + "internal/testenv", module + "internal/fleetworker", module + "internal/natsnode",
	module + "starter", module + "worker",
}

// deps lists the packages pkgs depend on, themselves included (non-test imports, as the binaries link them).
func deps(t *testing.T, pkgs ...string) []string {
	t.Helper()
	args := append([]string{"list", "-deps", "-f", "{{.ImportPath}}"}, pkgs...)
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.Fields(string(out))
}

func forbid(t *testing.T, pkgs []string, why string, prefixes ...string) {
	t.Helper()
	for _, p := range deps(t, pkgs...) {
		for _, bad := range prefixes {
			if p == bad || strings.HasPrefix(p, bad) && (strings.HasSuffix(bad, "/") || strings.HasPrefix(p[len(bad):], "/")) {
				t.Errorf("%s depends on %s: %s", strings.Join(pkgs, " "), p, why)
			}
		}
	}
}

func TestImportRule(t *testing.T) {
	servers := []string{pgx, mochi, paho, nats}
	t.Run("domain", func(t *testing.T) {
		forbid(t, []string{module + "internal/fleet/...", module + "internal/protocol/...", module + "internal/scheme/...", module + "internal/query/..."},
			"the domain imports no server client and no adapter", append(append(servers, "go.temporal.io/"), adapters...)...)
	})
	t.Run("pure rules", func(t *testing.T) {
		// Workflows compute maintenance windows: the package may import nothing beyond the standard library.
		for _, p := range deps(t, module+"internal/window") {
			if strings.Contains(strings.SplitN(p, "/", 2)[0], ".") && p != module+"internal/window" {
				t.Errorf("internal/window depends on %s: a pure rule imports only the standard library", p)
			}
		}
	})
	t.Run("operations", func(t *testing.T) {
		forbid(t, []string{module + "workflows", module + "activities"},
			"workflows and activities reach servers only through the domain's interfaces", append(servers, adapters...)...)
	})
	t.Run("workflows", func(t *testing.T) {
		forbid(t, []string{module + "workflows"}, "workflow code must not reach activities' dependencies", module+"activities")
	})
	t.Run("secrets", func(t *testing.T) {
		// Device secrets are generated in activities and never cross Temporal (docs/architecture.md, "Where
		// secrets live", "Credential rotation"): workflow code has no business with the package that makes them.
		forbid(t, []string{module + "workflows"}, "device secrets are made in activities, never in workflow code", module+"internal/creds")
	})
	t.Run("worker", func(t *testing.T) {
		forbid(t, []string{module + "worker"}, "the worker reaches devices over NATS: it links neither the MQTT broker, "+
			"nor an MQTT client, nor a NATS server", mochi, paho, natsServer, module+"internal/gateway", module+"internal/natsnode")
	})
	t.Run("gateway", func(t *testing.T) {
		forbid(t, []string{module + "internal/gateway"}, "the gateway is the broker's adapter: it reaches the bus through "+
			"its Downlinks interface", nats, paho, module+"internal/channel")
	})
	t.Run("channel", func(t *testing.T) {
		forbid(t, []string{module + "internal/channel"}, "the channel is the NATS client's adapter", mochi, paho, natsServer,
			module+"internal/gateway")
	})
	t.Run("temporal server", func(t *testing.T) {
		// make cluster-test builds the server in its own module (deploy/temporal-cluster): docs/architecture.md,
		// «Temporal cluster test».
		forbid(t, []string{module + "..."}, "the Temporal server is built in deploy/temporal-cluster, never linked into fleetflow",
			"go.temporal.io/server")
		if out, err := exec.Command("go", "list", "-m", "go.temporal.io/server").CombinedOutput(); err == nil {
			t.Errorf("fleetflow's go.mod requires %s; the server belongs in deploy/temporal-cluster/go.mod", strings.TrimSpace(string(out)))
		}
	})
	t.Run("one adapter per dependency", func(t *testing.T) {
		only(t, natsClient, module+"internal/channel")
		only(t, natsServer, module+"internal/natsnode")
		only(t, mochi, module+"internal/gateway")
	})
}

// only fails when a package of the module other than owner imports dep directly (non-test imports).
func only(t *testing.T, dep, owner string) {
	t.Helper()
	args := []string{"list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, module + "..."}
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] == owner || strings.HasPrefix(f[0], owner+"/") {
			continue
		}
		for _, imp := range f[1:] {
			if imp == dep || strings.HasPrefix(imp, dep+"/") {
				t.Errorf("%s imports %s: only %s may (one adapter per dependency)", f[0], imp, owner)
			}
		}
	}
}

// TestForbidCatchesAWrongArrow keeps the check itself honest: a package that does import pgx is reported.
func TestForbidCatchesAWrongArrow(t *testing.T) {
	found := false
	for _, p := range deps(t, module+"internal/registry") {
		if strings.HasPrefix(p, pgx) {
			found = true
		}
	}
	if !found {
		t.Fatal("go list -deps of internal/registry shows no pgx: the check reads nothing")
	}
}
