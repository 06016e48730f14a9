package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/jackc/pgx/v5"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetflow/fleetflow/internal/stack"
)

// The binaries and schema files a Temporal cluster is made of: `make cluster-test` builds the first two from
// the go.temporal.io/server module (deploy/temporal-cluster) and points the third at the module's
// schema/postgresql/v12 directory. See docs/architecture.md, "Temporal cluster test".
const (
	EnvTemporalServer  = "FLEETFLOW_TEMPORAL_SERVER"
	EnvTemporalSQLTool = "FLEETFLOW_TEMPORAL_SQL_TOOL"
	EnvTemporalSchema  = "FLEETFLOW_TEMPORAL_SCHEMA"
)

// TemporalCluster is a Temporal server run as a production deployment runs it: one process per service
// (frontend, matching, worker and HistoryHosts history hosts) that find each other through the membership
// table, on Postgres persistence and SQL visibility. A test kills and restarts it with Kill and Start.
type TemporalCluster struct {
	// Frontend is the host:port clients dial.
	Frontend  string
	Namespace string

	t     testing.TB
	pgURL string
	bin   string
	dir   string
	procs []*temporalProc
}

type temporalProc struct {
	name, service, configDir, log string
	cmd                           *exec.Cmd
	exited                        chan struct{}
}

// TemporalClusterOptions shape the cluster.
type TemporalClusterOptions struct {
	// HistoryHosts is the number of history processes (default 2); the shards are spread over them.
	HistoryHosts int
	// Shards is numHistoryShards (default 16: enough that every history host owns some, cheap to own).
	Shards int
	// DynamicConfig is appended to the dynamic config file (YAML of key: [{value: ...}] entries).
	DynamicConfig string
}

// StartTemporalCluster creates the Temporal schemas in the Postgres server of pgURL (a superuser URL, as
// StartPostgres returns) with temporal-sql-tool, starts the server's processes on free loopback ports,
// registers the "default" namespace and the project's search attributes, and stops every process when the
// test ends. The binaries come from FLEETFLOW_TEMPORAL_SERVER, FLEETFLOW_TEMPORAL_SQL_TOOL and
// FLEETFLOW_TEMPORAL_SCHEMA; a missing one fails the test with the command that provides it.
func StartTemporalCluster(t testing.TB, pgURL string, opts TemporalClusterOptions) *TemporalCluster {
	t.Helper()
	if opts.HistoryHosts == 0 {
		opts.HistoryHosts = 2
	}
	if opts.Shards == 0 {
		opts.Shards = 16
	}
	paths := map[string]string{}
	for _, env := range []string{EnvTemporalServer, EnvTemporalSQLTool, EnvTemporalSchema} {
		p := os.Getenv(env)
		if p == "" {
			t.Fatalf("testenv: %s is not set; run `make cluster-test`, which builds the Temporal server and sets it", env)
		}
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("testenv: %s: %v; run `make cluster-test`", env, err)
		}
		paths[env] = p
	}
	u, err := url.Parse(pgURL)
	if err != nil {
		t.Fatalf("testenv: postgres URL: %v", err)
	}
	db := sqlTarget{host: u.Hostname(), port: u.Port(), user: u.User.Username()}
	db.password, _ = u.User.Password()

	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, s := range []struct{ db, schema string }{{"temporal", "temporal"}, {"temporal_visibility", "visibility"}} {
		for _, args := range [][]string{
			{"create-database"},
			{"setup-schema", "--version", "0.0"},
			{"update-schema", "--schema-dir", filepath.Join(paths[EnvTemporalSchema], s.schema, "versioned")},
		} {
			if out, err := db.run(ctx, paths[EnvTemporalSQLTool], s.db, args...); err != nil {
				t.Fatalf("testenv: temporal-sql-tool %s on %s: %v\n%s", args[0], s.db, err, out)
			}
		}
	}

	c := &TemporalCluster{Namespace: "default", t: t, pgURL: pgURL, bin: paths[EnvTemporalServer], dir: dir}
	ports := func(n int) []int {
		out := make([]int, n)
		for i := range out {
			p, err := stack.FreePort()
			if err != nil {
				t.Fatalf("testenv: %v", err)
			}
			out[i] = p
		}
		return out
	}
	// grpc and membership ports per process; the same on every restart, as a deployment's would be.
	type svc struct {
		name, service string
		grpc, member  int
	}
	var svcs []svc
	for _, name := range []string{"frontend", "matching", "worker"} {
		p := ports(2)
		svcs = append(svcs, svc{name, name, p[0], p[1]})
	}
	for i := 1; i <= opts.HistoryHosts; i++ {
		p := ports(2)
		svcs = append(svcs, svc{fmt.Sprintf("history-%d", i), "history", p[0], p[1]})
	}
	c.Frontend = net.JoinHostPort("127.0.0.1", strconv.Itoa(svcs[0].grpc))
	dynPath := filepath.Join(dir, "dynamicconfig.yaml")
	if err := os.WriteFile(dynPath, []byte(clusterDynamicConfig+opts.DynamicConfig), 0o644); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	for _, s := range svcs {
		cfg := clusterConfig{DBAddr: net.JoinHostPort(db.host, db.port), DBUser: db.user, DBPassword: db.password,
			Stores: [][2]string{{"default", "temporal"}, {"visibility", "temporal_visibility"}}, Shards: opts.Shards, Frontend: c.Frontend, DynamicConfig: dynPath, Ports: map[string][2]int{}}
		for _, o := range svcs {
			// Each process reads its own service's ports; a history host sees its own, not its sibling's.
			if o.service != "history" || o.name == s.name || s.service != "history" && o.name == "history-1" {
				cfg.Ports[o.service] = [2]int{o.grpc, o.member}
			}
		}
		confDir := filepath.Join(dir, s.name)
		if err := os.MkdirAll(confDir, 0o755); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		var buf bytes.Buffer
		if err := clusterConfigTmpl.Execute(&buf, cfg); err != nil {
			t.Fatalf("testenv: render %s config: %v", s.name, err)
		}
		if err := os.WriteFile(filepath.Join(confDir, "development.yaml"), buf.Bytes(), 0o644); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		c.procs = append(c.procs, &temporalProc{name: s.name, service: s.service, configDir: confDir,
			log: filepath.Join(dir, s.name+".log")})
	}
	t.Cleanup(c.stop)
	c.Start()
	c.register(ctx)
	return c
}

// MembershipHosts counts the hosts of a service ("history", "matching", ...) that have heartbeated into the
// cluster membership table within the last minute: how a test sees that the history hosts formed one ring.
func (c *TemporalCluster) MembershipHosts(ctx context.Context, service string) (int, error) {
	roles := map[string]int{"frontend": 1, "history": 2, "matching": 3, "worker": 4} // persistence.ServiceType
	role, ok := roles[service]
	if !ok {
		return 0, fmt.Errorf("unknown temporal service %q", service)
	}
	u, err := url.Parse(c.pgURL)
	if err != nil {
		return 0, err
	}
	u.Path = "/temporal"
	conn, err := pgx.Connect(ctx, u.String())
	if err != nil {
		return 0, fmt.Errorf("connect to the temporal database: %w", err)
	}
	defer func() { _ = conn.Close(ctx) }()
	var n int
	// The server writes UTC timestamps without a zone.
	err = conn.QueryRow(ctx, `SELECT count(DISTINCT (rpc_address, rpc_port)) FROM cluster_membership
		WHERE role = $1 AND last_heartbeat > (now() AT TIME ZONE 'UTC') - interval '1 minute'`, role).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count %s hosts: %w", service, err)
	}
	return n, nil
}

// Processes names the server's processes, e.g. "history-2".
func (c *TemporalCluster) Processes() []string {
	var out []string
	for _, p := range c.procs {
		out = append(out, p.name)
	}
	return out
}

// Start starts every process that is not running and waits until the frontend answers. The frontend goes
// first and alone: on a fresh database each process would otherwise race to write the cluster metadata,
// and the losers exit.
func (c *TemporalCluster) Start() {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c.launch(c.procs[0])
	if err := c.waitServing(ctx); err != nil {
		c.t.Fatalf("testenv: temporal cluster: %v\n%s", err, c.logs())
	}
	for _, p := range c.procs[1:] {
		c.launch(p)
	}
	if err := c.waitServing(ctx); err != nil {
		c.t.Fatalf("testenv: temporal cluster: %v\n%s", err, c.logs())
	}
}

// launch starts p unless it runs.
func (c *TemporalCluster) launch(p *temporalProc) {
	c.t.Helper()
	if p.cmd != nil {
		return
	}
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatalf("testenv: %v", err)
	}
	defer func() { _ = logf.Close() }()
	cmd := exec.Command(c.bin, "--config", p.configDir, "--env", "development", "--services", p.service)
	cmd.Stdout, cmd.Stderr = logf, logf
	setParentDeathSignal(cmd, syscall.SIGKILL)
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("testenv: start temporal %s: %v", p.name, err)
	}
	p.cmd, p.exited = cmd, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(p.exited)
}

// Kill sends SIGKILL to the named processes (every process when none is named) and waits for them to die.
func (c *TemporalCluster) Kill(names ...string) {
	c.t.Helper()
	for _, p := range c.procs {
		if p.cmd == nil || len(names) > 0 && !slices.Contains(names, p.name) {
			continue
		}
		_ = p.cmd.Process.Kill()
		<-p.exited
		p.cmd = nil
	}
}

func (c *TemporalCluster) stop() {
	for _, p := range c.procs {
		if p.cmd == nil {
			continue
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		p.cmd = nil
	}
	if c.t.Failed() {
		c.t.Logf("temporal cluster logs (tails):\n%s", c.logs())
	}
}

func (c *TemporalCluster) logs() string {
	var b bytes.Buffer
	for _, p := range c.procs {
		fmt.Fprintf(&b, "== %s (%s)\n", p.name, p.log)
		// Server errors come with long stack traces: the messages are what helps.
		for _, line := range strings.Split(tail(p.log, 8), "\n") {
			if len(line) > 400 {
				line = line[:400] + "…"
			}
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// dial connects a client that stays quiet; the caller closes it.
func (c *TemporalCluster) dial(namespace string) (client.Client, error) {
	return client.Dial(client.Options{HostPort: c.Frontend, Namespace: namespace, Logger: tlog.NewStructuredLogger(quietLogger)})
}

// waitServing waits until the frontend answers and the namespace (or, before register, the system
// namespace) can be described: membership has settled enough for requests to route.
func (c *TemporalCluster) waitServing(ctx context.Context) error {
	var last error
	for {
		for _, p := range c.procs {
			if p.cmd == nil {
				continue
			}
			select {
			case <-p.exited:
				return fmt.Errorf("%s exited during start-up", p.name)
			default:
			}
		}
		if cl, err := c.dial("temporal-system"); err == nil {
			_, err = cl.WorkflowService().DescribeNamespace(ctx, &workflowservice.DescribeNamespaceRequest{Namespace: "temporal-system"})
			cl.Close()
			if err == nil {
				return nil
			}
			last = err
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not serving: %w (last error: %v)", ctx.Err(), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// register creates the namespace (as the server's auto-setup image does) and the search attributes.
func (c *TemporalCluster) register(ctx context.Context) {
	c.t.Helper()
	cl, err := c.dial(c.Namespace)
	if err != nil {
		c.t.Fatalf("testenv: dial temporal cluster: %v", err)
	}
	defer cl.Close()
	_, err = cl.WorkflowService().RegisterNamespace(ctx, &workflowservice.RegisterNamespaceRequest{
		Namespace: c.Namespace, WorkflowExecutionRetentionPeriod: durationpb.New(24 * time.Hour)})
	if err != nil {
		c.t.Fatalf("testenv: register namespace %s: %v", c.Namespace, err)
	}
	// The frontend's namespace cache refreshes every second (dynamic config below); wait for it.
	for {
		_, err := cl.WorkflowService().DescribeNamespace(ctx, &workflowservice.DescribeNamespaceRequest{Namespace: c.Namespace})
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			c.t.Fatalf("testenv: namespace %s not visible: %v", c.Namespace, err)
		case <-time.After(250 * time.Millisecond):
		}
	}
	for {
		err := stack.EnsureSearchAttributes(ctx, cl, c.Namespace)
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			c.t.Fatalf("testenv: search attributes: %v", err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// WaitNamespace waits until the namespace answers, for use after Start following a Kill.
func (c *TemporalCluster) WaitNamespace(ctx context.Context) error {
	cl, err := c.dial(c.Namespace)
	if err != nil {
		return err
	}
	defer cl.Close()
	for {
		resp, err := cl.WorkflowService().DescribeNamespace(ctx, &workflowservice.DescribeNamespaceRequest{Namespace: c.Namespace})
		if err == nil && resp.NamespaceInfo.GetState() == enumspb.NAMESPACE_STATE_REGISTERED {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// sqlTarget is the Postgres server temporal-sql-tool works on.
type sqlTarget struct{ host, port, user, password string }

func (s sqlTarget) run(ctx context.Context, tool, db string, args ...string) ([]byte, error) {
	base := []string{"--plugin", "postgres12", "--endpoint", s.host, "--port", s.port, "--user", s.user,
		"--password", s.password, "--database", db}
	return exec.CommandContext(ctx, tool, append(base, args...)...).CombinedOutput()
}

// clusterConfig fills clusterConfigTmpl for one process.
type clusterConfig struct {
	DBAddr        string
	DBUser        string
	DBPassword    string
	Stores        [][2]string // store name, database
	Shards        int
	Frontend      string
	DynamicConfig string
	Ports         map[string][2]int // service → grpc, membership
}

var clusterConfigTmpl = template.Must(template.New("temporal").Parse(`log:
  stdout: true
  level: warn
persistence:
  defaultStore: default
  visibilityStore: visibility
  numHistoryShards: {{.Shards}}
  datastores:
{{- range .Stores}}
    {{index . 0}}:
      sql:
        pluginName: postgres12
        databaseName: {{index . 1}}
        connectAddr: "{{$.DBAddr}}"
        connectProtocol: tcp
        user: "{{$.DBUser}}"
        password: "{{$.DBPassword}}"
        maxConns: 10
        maxIdleConns: 10
        maxConnLifetime: 1h
{{- end}}
global:
  membership:
    maxJoinDuration: 30s
    broadcastAddress: 127.0.0.1
services:
{{- range $svc, $p := .Ports}}
  {{$svc}}:
    rpc:
      grpcPort: {{index $p 0}}
      membershipPort: {{index $p 1}}
      bindOnLocalHost: true
{{- end}}
clusterMetadata:
  enableGlobalNamespace: false
  failoverVersionIncrement: 10
  masterClusterName: active
  currentClusterName: active
  clusterInformation:
    active:
      enabled: true
      initialFailoverVersion: 1
      rpcName: frontend
      rpcAddress: "{{.Frontend}}"
dcRedirectionPolicy:
  policy: noop
publicClient:
  hostPort: "{{.Frontend}}"
dynamicConfigClient:
  filepath: "{{.DynamicConfig}}"
  pollInterval: 10s
`))

// clusterDynamicConfig makes a fresh namespace and search attributes usable at once (a production server
// waits for its caches), and enables the APIs fleetflow's operators use.
const clusterDynamicConfig = `system.namespaceCacheRefreshInterval:
  - value: 1s
system.forceSearchAttributesCacheRefreshOnRead:
  - value: true
frontend.enableUpdateWorkflowExecution:
  - value: true
`
