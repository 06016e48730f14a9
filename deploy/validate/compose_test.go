package validate

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"sigs.k8s.io/yaml"
)

const composeDir = "deploy/compose"

// loadCompose loads deploy/compose/compose.yaml as `docker compose` would, with envFile as its .env (the
// committed example: the real .env is never in the repository). Paths are resolved, the model is validated
// against the compose specification and checked for consistency (unknown services, networks, volumes).
func loadCompose(t *testing.T, envFile string) (*types.Project, error) {
	t.Helper()
	dir := filepath.Join(repoRoot(t), composeDir)
	opts, err := cli.NewProjectOptions([]string{filepath.Join(dir, "compose.yaml")},
		cli.WithWorkingDirectory(dir),
		cli.WithEnvFiles(envFile),
		cli.WithDotEnv,
		cli.WithResolvedPaths(true),
		cli.WithConsistency(true),
		cli.WithNormalization(true),
		cli.WithInterpolation(true),
	)
	if err != nil {
		return nil, fmt.Errorf("compose options: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return opts.LoadProject(ctx)
}

func composeProject(t *testing.T) *types.Project {
	t.Helper()
	p, err := loadCompose(t, filepath.Join(repoRoot(t), composeDir, ".env.example"))
	if err != nil {
		t.Fatalf("load compose.yaml with .env.example: %v", err)
	}
	return p
}

// fleetflowServices are the services built from the repository's Dockerfiles, by Dockerfile.
func fleetflowServices(p *types.Project) map[string]string {
	out := map[string]string{}
	for name, s := range p.Services {
		if s.Build != nil {
			out[name] = filepath.ToSlash(s.Build.Dockerfile)
		}
	}
	return out
}

func env(s types.ServiceConfig, name string) string {
	if v, ok := s.Environment[name]; ok && v != nil {
		return *v
	}
	return ""
}

func TestComposeServices(t *testing.T) {
	p := composeProject(t)
	want := []string{"postgres", "temporal-schema", "temporal", "temporal-setup", "temporal-ui", "migrate",
		"nats-1", "nats-2", "nats-3", "gateway-1", "gateway-2", "worker", "haproxy", "prometheus", "grafana"}
	got := p.ServiceNames()
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("services = %v, want %v", got, want)
	}
	worker := p.Services["worker"]
	if r := worker.GetScale(); r != 2 {
		t.Errorf("worker replicas = %d, want 2", r)
	}
	// The operator's CLI: only for `docker compose run` (profile cli), with the settings of the processes.
	cli, ok := p.DisabledServices["cli"]
	if !ok || !slices.Equal(cli.Profiles, []string{"cli"}) {
		t.Fatalf("no cli service in profile cli (disabled services: %v)", keys(p.DisabledServices))
	}
	for _, name := range []string{"FLEETFLOW_DATABASE_URL", "FLEETFLOW_NATS_URL", "FLEETFLOW_NATS_CA", "TEMPORAL_ADDRESS"} {
		if got, want := env(cli, name), env(p.Services["worker"], name); got == "" || got != want {
			t.Errorf("cli: %s = %q, the workers' is %q", name, got, want)
		}
	}
	if cli.Image != p.Services["migrate"].Image {
		t.Errorf("cli runs %s, want bin/fleetflow's image %s", cli.Image, p.Services["migrate"].Image)
	}
}

// Every image is pinned to a version: a deployment that pulls :latest changes under the operator's feet.
func TestComposeImagesPinned(t *testing.T) {
	p := composeProject(t)
	for name, s := range p.Services {
		if s.Build != nil {
			continue // built here; the tag names this build (FLEETFLOW_TAG)
		}
		ref := s.Image
		i := strings.LastIndex(ref, ":")
		if i < 0 || strings.Contains(ref[i:], "/") {
			t.Errorf("%s: image %q has no tag", name, ref)
			continue
		}
		tag := ref[i+1:]
		if tag == "latest" || !regexp.MustCompile(`^v?\d+\.\d+`).MatchString(tag) {
			t.Errorf("%s: image %q is not pinned to a version", name, ref)
		}
	}
	// Temporal's admin tools match the server's release (their schemas are that release's), in compose and in the
	// chart's setup Job.
	server := strings.TrimPrefix(p.Services["temporal"].Image, "temporalio/server:")
	for _, job := range []string{"temporal-schema", "temporal-setup"} {
		if img := p.Services[job].Image; !strings.HasPrefix(img, "temporalio/admin-tools:"+server+"-") {
			t.Errorf("%s runs %s, want the admin tools of temporalio/server:%s", job, img, server)
		}
	}
	var values struct {
		Temporal struct {
			Setup struct {
				Image struct{ Repository, Tag string }
			}
		}
	}
	if err := yaml.Unmarshal([]byte(readFile(t, chartDir+"/values.yaml")), &values); err != nil {
		t.Fatal(err)
	}
	if img := values.Temporal.Setup.Image.Repository + ":" + values.Temporal.Setup.Image.Tag; img != p.Services["temporal-setup"].Image {
		t.Errorf("the chart's setup Job runs %s, compose's %s", img, p.Services["temporal-setup"].Image)
	}
	// The NATS nodes run the nats-server release that `fleetflow nats-node` embeds and the tests run.
	natsVersion := strings.TrimPrefix(goModRequire(t, "github.com/nats-io/nats-server/v2"), "v")
	if natsVersion == "" {
		t.Fatal("go.mod requires no github.com/nats-io/nats-server/v2")
	}
	for _, n := range []string{"nats-1", "nats-2", "nats-3"} {
		if img := p.Services[n].Image; !strings.HasPrefix(img, "nats:"+natsVersion+"-") && img != "nats:"+natsVersion {
			t.Errorf("%s: image %s, want nats:%s (go.mod's nats-server)", n, img, natsVersion)
		}
	}
}

// The fleetflow services are built from the repository's Dockerfiles, the right one for each binary.
func TestComposeBuilds(t *testing.T) {
	p := composeProject(t)
	root := repoRoot(t)
	want := map[string]string{
		"migrate":   "deploy/docker/fleetflow.Dockerfile",
		"gateway-1": "deploy/docker/fleetflow.Dockerfile",
		"gateway-2": "deploy/docker/fleetflow.Dockerfile",
		"worker":    "deploy/docker/fleetflow-worker.Dockerfile",
	}
	got := fleetflowServices(p)
	if len(got) != len(want) {
		t.Errorf("services built here: %v, want %v", got, want)
	}
	for name, dockerfile := range want {
		s := p.Services[name]
		if s.Build == nil {
			t.Errorf("%s: not built from this repository", name)
			continue
		}
		if filepath.Clean(s.Build.Context) != root {
			t.Errorf("%s: build context %s, want the repository root %s", name, s.Build.Context, root)
		}
		if filepath.ToSlash(s.Build.Dockerfile) != dockerfile {
			t.Errorf("%s: Dockerfile %s, want %s", name, s.Build.Dockerfile, dockerfile)
		}
		if _, err := os.Stat(filepath.Join(s.Build.Context, s.Build.Dockerfile)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	gateway := []string{"gateway", "--auth-fail-rate", "-1"} // behind the proxy all devices share its address
	cmds := map[string][]string{"migrate": {"migrate"}, "gateway-1": gateway, "gateway-2": gateway}
	for name, cmd := range cmds {
		if got := []string(p.Services[name].Command); !slices.Equal(got, cmd) {
			t.Errorf("%s: command %v, want %v", name, got, cmd)
		}
	}
	if img := p.Services["migrate"].Image; img != p.Services["gateway-1"].Image {
		t.Errorf("migrate runs %s, the gateways %s: one build of bin/fleetflow serves both", img, p.Services["gateway-1"].Image)
	}
}

// The start-up order: every fleetflow process waits for `fleetflow migrate` to have succeeded, the Temporal server
// for its schema job, the workers for the namespace and search attributes; waiting for a job needs a job that
// ends (no restart policy), waiting for health needs a health check.
func TestComposeStartupOrder(t *testing.T) {
	p := composeProject(t)
	gate := func(svc, dep, condition string) {
		t.Helper()
		d, ok := p.Services[svc].DependsOn[dep]
		if !ok {
			t.Errorf("%s does not depend on %s", svc, dep)
			return
		}
		if d.Condition != condition {
			t.Errorf("%s waits for %s with %q, want %q", svc, dep, d.Condition, condition)
		}
	}
	for name := range fleetflowServices(p) {
		if name != "migrate" {
			gate(name, "migrate", types.ServiceConditionCompletedSuccessfully)
		}
	}
	gate("migrate", "postgres", types.ServiceConditionHealthy)
	gate("temporal-schema", "postgres", types.ServiceConditionHealthy)
	gate("temporal", "temporal-schema", types.ServiceConditionCompletedSuccessfully)
	gate("temporal-setup", "temporal", types.ServiceConditionHealthy)
	gate("worker", "temporal-setup", types.ServiceConditionCompletedSuccessfully)
	gate("haproxy", "gateway-1", types.ServiceConditionHealthy)
	gate("haproxy", "gateway-2", types.ServiceConditionHealthy)

	for name, s := range p.Services {
		for dep, d := range s.DependsOn {
			target, ok := p.Services[dep]
			if !ok {
				t.Errorf("%s depends on %s, which is no service", name, dep)
				continue
			}
			switch d.Condition {
			case types.ServiceConditionCompletedSuccessfully:
				if target.Restart != "" && target.Restart != types.RestartPolicyNo {
					t.Errorf("%s waits for %s to complete, but %s restarts (%s)", name, dep, dep, target.Restart)
				}
			case types.ServiceConditionHealthy:
				if target.HealthCheck == nil || len(target.HealthCheck.Test) == 0 || target.HealthCheck.Disable {
					t.Errorf("%s waits for %s to be healthy, but %s has no health check", name, dep, dep)
				}
			}
		}
	}
	// No cycle: compose would refuse to start.
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(string, []string)
	visit = func(n string, path []string) {
		switch state[n] {
		case 1:
			t.Fatalf("depends_on cycle: %s", strings.Join(append(path, n), " → "))
		case 2:
			return
		}
		state[n] = 1
		for dep := range p.Services[n].DependsOn {
			visit(dep, append(path, n))
		}
		state[n] = 2
	}
	for n := range p.Services {
		visit(n, nil)
	}
}

// Published ports are unique, and only the device port listens beyond the host's loopback.
func TestComposePorts(t *testing.T) {
	p := composeProject(t)
	seen := map[string]string{}
	public := map[string]bool{}
	for name, s := range p.Services {
		for _, port := range s.Ports {
			if port.Published == "" {
				t.Errorf("%s: port %d is published on a random host port", name, port.Target)
				continue
			}
			key := port.Published + "/" + port.Protocol
			if other, dup := seen[key]; dup {
				t.Errorf("host port %s published by %s and %s", key, other, name)
			}
			seen[key] = name
			ip := net.ParseIP(port.HostIP)
			if port.HostIP == "" || ip.IsUnspecified() {
				public[fmt.Sprintf("%s:%s->%d", name, port.Published, port.Target)] = true
			} else if !ip.IsLoopback() {
				t.Errorf("%s: port %s bound to %s: want loopback or, for devices, every address", name, port.Published, port.HostIP)
			}
		}
	}
	if want := map[string]bool{"haproxy:8883->8883": true}; !mapsEqual(public, want) {
		t.Errorf("ports published beyond loopback: %v, want only %v", public, want)
	}
}

func mapsEqual(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

// Secrets come from .env, never from the compose file: a missing one stops `docker compose` with its name.
func TestComposeSecretsFromEnv(t *testing.T) {
	raw := readFile(t, composeDir+"/compose.yaml")
	secretLine := regexp.MustCompile(`(?m)^\s*([A-Z_]*(?:PASSWORD|PWD)[A-Z_]*):\s*(.*)$`)
	lines := secretLine.FindAllStringSubmatch(raw, -1)
	if len(lines) < 5 {
		t.Fatalf("found %d password settings in compose.yaml, want at least 5 (the pattern no longer matches?)", len(lines))
	}
	for _, m := range lines {
		if !strings.HasPrefix(m[2], "${") {
			t.Errorf("%s is set in compose.yaml (%q): take it from .env", m[1], m[2])
		}
	}
	// Loaded without an env file, the required variables fail the load.
	empty := filepath.Join(t.TempDir(), "empty.env")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := loadCompose(t, empty)
	if err == nil || !strings.Contains(err.Error(), "PASSWORD") {
		t.Errorf("load without secrets: err = %v, want a required PASSWORD variable", err)
	}
	// The example covers every required variable (composeProject loads with it), and .env itself stays out of git.
	ignore := readFile(t, composeDir+"/.gitignore")
	for _, pattern := range []string{"/.env", "/tls/", "/tls-ca/"} {
		if !strings.Contains(ignore, pattern+"\n") {
			t.Errorf("deploy/compose/.gitignore lacks %s", pattern)
		}
	}
	// The database URLs carry the password from .env into the processes.
	p := composeProject(t)
	example := readFile(t, composeDir+"/.env.example")
	pw := regexp.MustCompile(`(?m)^FLEETFLOW_DB_PASSWORD=(.+)$`).FindStringSubmatch(example)
	if pw == nil {
		t.Fatal(".env.example has no FLEETFLOW_DB_PASSWORD")
	}
	for name := range fleetflowServices(p) {
		if u := env(p.Services[name], "FLEETFLOW_DATABASE_URL"); !strings.Contains(u, ":"+pw[1]+"@postgres:5432/fleetflow") {
			t.Errorf("%s: FLEETFLOW_DATABASE_URL %q does not use the fleetflow role's password from .env", name, u)
		}
	}
}

// Files mounted from the repository exist (tls/ is made by gen-tls.sh or by the operator).
func TestComposeMounts(t *testing.T) {
	p := composeProject(t)
	dir := filepath.Join(repoRoot(t), composeDir)
	for name, s := range p.Services {
		for _, v := range s.Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			if v.Source == filepath.Join(dir, "tls") {
				if !v.ReadOnly {
					t.Errorf("%s: tls/ mounted writable", name)
				}
				continue
			}
			st, err := os.Stat(v.Source)
			if err != nil {
				t.Errorf("%s: mount source: %v", name, err)
				continue
			}
			// The Postgres entrypoint sources a script that is not executable, in its own shell.
			if strings.HasPrefix(v.Target, "/docker-entrypoint-initdb.d/") && st.Mode()&0o111 == 0 {
				t.Errorf("%s: %s is not executable", name, v.Source)
			}
			if !v.ReadOnly {
				t.Errorf("%s: %s mounted writable", name, v.Source)
			}
		}
	}
}

// The three NATS nodes route to each other, with TLS and a password, and the fleetflow processes reach all three.
func TestComposeNATSCluster(t *testing.T) {
	p := composeProject(t)
	conf := readFile(t, composeDir+"/nats/nats.conf")
	routes := regexp.MustCompile(`nats://([a-z0-9-]+):(\d+)`).FindAllStringSubmatch(conf, -1)
	var routed []string
	for _, r := range routes {
		routed = append(routed, r[1])
		if r[2] != "6222" {
			t.Errorf("route to %s on port %s, want the cluster port 6222", r[1], r[2])
		}
	}
	nodes := []string{"nats-1", "nats-2", "nats-3"}
	if !slices.Equal(routed, nodes) {
		t.Errorf("routes %v, want %v", routed, nodes)
	}
	for _, want := range []string{"password: $NATS_PASSWORD", "verify: true", "server_name: $NATS_SERVER_NAME", "cert_file:"} {
		if !strings.Contains(conf, want) {
			t.Errorf("nats.conf lacks %q", want)
		}
	}
	names := map[string]bool{}
	for _, n := range nodes {
		s := p.Services[n]
		names[env(s, "NATS_SERVER_NAME")] = true
		if env(s, "NATS_SERVER_NAME") != n {
			t.Errorf("%s: NATS_SERVER_NAME %q", n, env(s, "NATS_SERVER_NAME"))
		}
		if env(s, "NATS_PASSWORD") == "" {
			t.Errorf("%s: no NATS_PASSWORD", n)
		}
	}
	for name := range fleetflowServices(p) {
		if name == "migrate" {
			continue
		}
		u := env(p.Services[name], "FLEETFLOW_NATS_URL")
		for _, n := range nodes {
			if !strings.Contains(u, "@"+n+":4222") {
				t.Errorf("%s: FLEETFLOW_NATS_URL does not list %s", name, n)
			}
		}
		for _, part := range strings.Split(u, ",") {
			if !strings.HasPrefix(part, "tls://") {
				t.Errorf("%s: NATS server %q without TLS", name, part)
			}
		}
		if env(p.Services[name], "FLEETFLOW_NATS_CA") == "" {
			t.Errorf("%s: no FLEETFLOW_NATS_CA", name)
		}
	}
}

// HAProxy sends device connections to every gateway's TLS listener, on the port compose publishes.
func TestComposeProxy(t *testing.T) {
	p := composeProject(t)
	cfg := readFile(t, composeDir+"/haproxy/haproxy.cfg")
	servers := regexp.MustCompile(`(?m)^\s*server\s+(\S+)\s+(\S+):(\d+)`).FindAllStringSubmatch(cfg, -1)
	var backends []string
	for _, s := range servers {
		backends = append(backends, s[2])
		svc, ok := p.Services[s[2]]
		if !ok {
			t.Errorf("haproxy backend %s is no service", s[2])
			continue
		}
		if listen := env(svc, "FLEETFLOW_GATEWAY_TLS_LISTEN"); !strings.HasSuffix(listen, ":"+s[3]) {
			t.Errorf("haproxy sends to %s:%s, but it listens on %q", s[2], s[3], listen)
		}
	}
	if want := []string{"gateway-1", "gateway-2"}; !slices.Equal(backends, want) {
		t.Errorf("haproxy backends %v, want %v", backends, want)
	}
	if !regexp.MustCompile(`(?m)^\s*mode tcp\s*$`).MatchString(cfg) {
		t.Error("haproxy.cfg: not in TCP mode (TLS must end at the gateways)")
	}
	if !regexp.MustCompile(`(?m)^\s*bind :8883\s*$`).MatchString(cfg) {
		t.Error("haproxy.cfg does not bind :8883")
	}
	for _, gw := range []string{"gateway-1", "gateway-2"} {
		s := p.Services[gw]
		for _, f := range []string{"FLEETFLOW_TLS_CERT", "FLEETFLOW_TLS_KEY"} {
			if !strings.HasPrefix(env(s, f), "/etc/fleetflow/tls/") {
				t.Errorf("%s: %s = %q, want a file of the mounted tls/", gw, f, env(s, f))
			}
		}
		// The health check probes the listeners the gateway is configured with.
		hc := strings.Join(s.HealthCheck.Test, " ")
		for _, addr := range []string{env(s, "FLEETFLOW_GATEWAY_METRICS"), env(s, "FLEETFLOW_GATEWAY_TLS_LISTEN")} {
			_, port, err := net.SplitHostPort(addr)
			if err != nil || !strings.Contains(hc, "127.0.0.1:"+port) {
				t.Errorf("%s: health check %q does not probe %s", gw, hc, addr)
			}
		}
	}
}

// Prometheus scrapes every gateway and worker on the ports they serve metrics on; Grafana is provisioned with
// the project's dashboards.
func TestComposeMonitoring(t *testing.T) {
	p := composeProject(t)
	var prom struct {
		ScrapeConfigs []struct {
			JobName       string `json:"job_name"`
			StaticConfigs []struct {
				Targets []string `json:"targets"`
			} `json:"static_configs"`
			DNSSDConfigs []struct {
				Names []string `json:"names"`
				Type  string   `json:"type"`
				Port  int      `json:"port"`
			} `json:"dns_sd_configs"`
		} `json:"scrape_configs"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, composeDir+"/prometheus/prometheus.yml")), &prom); err != nil {
		t.Fatal(err)
	}
	targets := map[string]bool{}
	for _, sc := range prom.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, tg := range st.Targets {
				targets[tg] = true
			}
		}
		for _, d := range sc.DNSSDConfigs {
			for _, n := range d.Names {
				targets[fmt.Sprintf("%s:%d", n, d.Port)] = true
			}
		}
	}
	for _, gw := range []string{"gateway-1", "gateway-2"} {
		_, port, _ := net.SplitHostPort(env(p.Services[gw], "FLEETFLOW_GATEWAY_METRICS"))
		if !targets[gw+":"+port] {
			t.Errorf("prometheus does not scrape %s:%s (targets %v)", gw, port, targets)
		}
	}
	_, wport, _ := net.SplitHostPort(env(p.Services["worker"], "FLEETFLOW_WORKER_METRICS"))
	if !targets["worker:"+wport] {
		t.Errorf("prometheus does not scrape every worker at worker:%s (targets %v)", wport, targets)
	}

	var provider struct {
		Providers []struct {
			Options struct {
				Path string `json:"path"`
			} `json:"options"`
		} `json:"providers"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, composeDir+"/grafana/provisioning/dashboards/fleetflow.yaml")), &provider); err != nil {
		t.Fatal(err)
	}
	if len(provider.Providers) != 1 {
		t.Fatalf("grafana dashboard providers: %d, want 1", len(provider.Providers))
	}
	dashboards := filepath.Join(repoRoot(t), "deploy", "grafana")
	mounted := false
	for _, v := range p.Services["grafana"].Volumes {
		if v.Source == dashboards && v.Target == provider.Providers[0].Options.Path {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("grafana does not mount %s at the provider's path %s", dashboards, provider.Providers[0].Options.Path)
	}
	for _, f := range []string{"fleetflow.json", "temporal-sdk.json"} {
		if _, err := os.Stat(filepath.Join(dashboards, f)); err != nil {
			t.Error(err)
		}
	}
}

// Workers get longer than their own stop timeout to drain before Docker kills them.
func TestComposeWorkerShutdown(t *testing.T) {
	p := composeProject(t)
	w := p.Services["worker"]
	stop, err := time.ParseDuration(env(w, "FLEETFLOW_WORKER_STOP_TIMEOUT"))
	if err != nil {
		t.Fatalf("FLEETFLOW_WORKER_STOP_TIMEOUT: %v", err)
	}
	if w.StopGracePeriod == nil || time.Duration(*w.StopGracePeriod) <= stop {
		t.Errorf("worker stop_grace_period %v, want more than the stop timeout %v", w.StopGracePeriod, stop)
	}
	if !strings.Contains(strings.Join(w.HealthCheck.Test, " "), "/readyz") {
		t.Errorf("worker health check %v does not ask /readyz", w.HealthCheck.Test)
	}
}
