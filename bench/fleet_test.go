package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	enumspb "go.temporal.io/api/enums/v1"

	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/internal/stack"
	"github.com/fleetflow/fleetflow/internal/testenv"
	"github.com/fleetflow/fleetflow/workflows"
)

// The fleet benchmark (issue 9) runs only when FLEETFLOW_BENCH_FLEET gives its size: at 100,000 devices it
// needs about 15 GB of memory and half an hour. FLEETFLOW_BENCH_FLEET_TLS=1 connects the devices over TLS.
var (
	fleetDevices    = config.EnvInt("FLEETFLOW_BENCH_FLEET", 0)
	fleetTLS        = config.EnvBool("FLEETFLOW_BENCH_FLEET_TLS", false)
	fleetGateways   = config.EnvInt("FLEETFLOW_BENCH_FLEET_GATEWAYS", 0)
	fleetNATSNodes  = config.EnvInt("FLEETFLOW_BENCH_FLEET_NATS_NODES", 1)
	fleetPerSimProc = config.EnvInt("FLEETFLOW_BENCH_FLEET_PER_SIMULATOR", 15_000)
	// fleetJitter is the simulated devices' reconnect jitter: a killed gateway's devices spread their
	// reconnects over it instead of all reconnecting in the same second.
	fleetJitter = config.Env("FLEETFLOW_BENCH_FLEET_JITTER", "30s")
	// fleetOnlyFailover skips the jobs and the rollout; fleetQuietKill kills the gateway first and starts
	// the desired job once its devices are connected elsewhere, separating the reconnect storm from the job.
	fleetOnlyFailover = config.EnvBool("FLEETFLOW_BENCH_FLEET_ONLY_FAILOVER", false)
	fleetQuietKill    = config.EnvBool("FLEETFLOW_BENCH_FLEET_QUIET_KILL", false)
	// fleetOps selects the fleet operations measured after the connect (comma-separated: desired, method,
	// rollout, failover; default all), to keep a run that iterates on one of them short.
	fleetOps = config.Env("FLEETFLOW_BENCH_FLEET_OPS", "desired,method,rollout,failover")
	// fleetPprof serves the first gateway's profiler on this address (the gateway's hidden --pprof).
	fleetPprof = os.Getenv("FLEETFLOW_BENCH_FLEET_PPROF")
	// fleetSimPprof serves the first simulator's profiler on this address (simulate's hidden --pprof); its
	// heap profile (and a goroutine count) is saved beside the logs when the memory is read, to see where a
	// simulated device's memory goes.
	fleetSimPprof = os.Getenv("FLEETFLOW_BENCH_FLEET_SIM_PPROF")
	// fleetPingTimeout is the simulated devices' PINGRESP timeout (simulate --ping-timeout; "0": the SDK's
	// 10 s). The simulators share the two cores with every server, so a late PINGRESP there often says more
	// about the simulator's own scheduling than about the gateway.
	fleetPingTimeout = config.Env("FLEETFLOW_BENCH_FLEET_PING_TIMEOUT", "0s")
	// fleetFailoverLimit is how long the failover may take before the benchmark gives up on it (a run that
	// holds the machine quiet must end within its 15 minutes).
	fleetFailoverLimit = envDuration("FLEETFLOW_BENCH_FLEET_FAILOVER_LIMIT", 10*time.Minute)
	// fleetGatewayEnv is extra environment for the gateway processes (space-separated NAME=value, e.g.
	// "GOGC=200"), for experiments with the runtime's settings.
	fleetGatewayEnv = os.Getenv("FLEETFLOW_BENCH_FLEET_GATEWAY_ENV")
	// fleetSimMemory is the simulators' memory budget in KiB per device (simulate --memory-per-device; 0: the
	// simulator's default, none): at 100,000 devices over TLS, 58 keeps them under their 64 KiB target at the
	// cost of more frequent collections (docs/benchmarks.md, "The simulator over TLS", second pass).
	fleetSimMemory = config.EnvInt("FLEETFLOW_BENCH_FLEET_SIM_MEMORY", 0)
	// fleetLogs keeps the processes' logs (and the credentials files) in a directory that outlives the run.
	fleetLogs = os.Getenv("FLEETFLOW_BENCH_FLEET_LOGS")
)

// maxPerGateway is how many devices one gateway may hold: the open-file limit of a process (20,000 here)
// less room for its registry pool, NATS and the connections still closing. The fleet is spread so that the
// gateways left after one is killed can still hold every device.
const maxPerGateway = 17_000

// azureS1OpsPerSecond is Azure IoT Hub S1's job throughput per unit (10 device operations per second), the
// managed service's figure the fleet operations are compared to.
const azureS1OpsPerSecond = 10

// BenchmarkFleet100k connects FLEETFLOW_BENCH_FLEET devices (100,000 for the issue) at once across at least
// six gateway processes on separate loopback addresses, which relay downlinks from a NATS node (a process of
// its own) to which a worker process sends them, and measures, each beside a raw yardstick from the same run:
// connects per second and memory per device on both sides; a desired job, a method job and a four-wave
// rollout over the whole fleet; and the failover of a gateway killed during a desired job
// (docs/architecture.md, "Scale-out: gateways over NATS").
func BenchmarkFleet100k(b *testing.B) {
	if fleetDevices <= 0 {
		b.Skip("set FLEETFLOW_BENCH_FLEET=100000 (needs ~15 GB of RAM; FLEETFLOW_BENCH_FLEET_TLS=1 for TLS)")
	}
	n := fleetDevices
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := startFleet(b, ctx, n)
	fleetQuery := "SELECT * FROM devices WHERE tags.fleet = 'sim'"

	// Connected at once: connects per second and memory per device.
	f.connect(b, ctx)
	// The throwaway cluster runs without autovacuum; a production one would have vacuumed and analysed the
	// devices table after the connect storm rewrote every row (and a few times more), so do that here.
	if _, err := f.reg.Pool().Exec(ctx, "VACUUM (ANALYZE) devices"); err != nil {
		b.Fatal(err)
	}

	if fleetOnlyFailover {
		f.failover(b, ctx, fleetQuery)
		return
	}
	// The yardsticks of the fleet operations: a bare nats.go connection publishing a desired patch to every
	// device's subject, and requesting a method of every device, pipelined.
	nc, err := nats.Connect(f.natsURL, nats.Name("bench-raw"))
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	burst := rawDesiredBurst(b, nc, f.ids)
	fanout := rawMethodFanout(b, nc, f.ids, 2000)
	nc.Close()
	azure := time.Duration(float64(n) / azureS1OpsPerSecond * float64(time.Second))
	fmt.Printf("raw NATS, bare nats.go connection, same subjects as the worker's channel, %d devices\n", n)
	report(b, "desired patch published to every device, until the server confirmed all", burst.Seconds(), "s-raw-burst")
	report(b, "method request to every device, 2,000 in flight, until every answer", fanout.Seconds(), "s-raw-fanout")
	report(b, "Azure IoT Hub S1 job over the same fleet at 10 device operations/s", azure.Seconds(), "s-azure-s1")

	if fleetOp("desired") {
		f.desiredJob(b, ctx, fleetQuery, burst, azure)
	}
	if fleetOp("method") {
		f.methodJob(b, ctx, fleetQuery, fanout, azure)
	}
	if fleetOp("rollout") {
		// A four-wave rollout with zero bake.
		rolloutWall := f.rollout(b, ctx, fleetQuery, n)
		fmt.Printf("rollout: waves 1%%,10%%,50%%,100%%, bake 0, poll 250 ms, simulated updates without delay, %d devices\n", n)
		report(b, "claim + all four waves completed (target <= 180 s)", rolloutWall.Seconds(), "s-rollout")
		report(b, "  ratio to the raw desired burst", rolloutWall.Seconds()/burst.Seconds(), "x-rollout-vs-burst")
		report(b, "  Azure S1 time / this", azure.Seconds()/rolloutWall.Seconds(), "x-azure-vs-rollout")
	}
	if fleetOp("failover") {
		// A gateway killed during a desired job.
		f.failover(b, ctx, fleetQuery)
	}
}

// fleetOp reports whether FLEETFLOW_BENCH_FLEET_OPS selects op.
func fleetOp(op string) bool {
	for _, o := range strings.Split(fleetOps, ",") {
		if strings.TrimSpace(o) == op {
			return true
		}
	}
	return false
}

// desiredJob runs a desired job over the whole fleet until every device acknowledged it.
func (f *fleetRig) desiredJob(b *testing.B, ctx context.Context, fleetQuery string, burst, azure time.Duration) {
	b.Helper()
	n := f.n
	value := strconv.Itoa(40 + n%1000)
	t0 := time.Now()
	stop := f.trail(b, ctx, t0, value)
	out := run(b, ctx, f.env, "job", "start", "--query", fleetQuery, "--set-desired", `{"telemetryInterval": `+value+`}`, "--timeout", "5m")
	desiredWall := time.Since(t0)
	stop()
	f.retriedActivities(ctx, jobID(b, out), t0)
	f.checkJob(b, ctx, jobID(b, out), n)
	f.checkReported(b, ctx, "reported->>'telemetryInterval' = $1", value, n)
	fmt.Printf("set_desired job over %d devices (fleetflow job start, CLI end to end, until every ack)\n", n)
	report(b, "until every device acknowledged in reported (target <= 60 s)", desiredWall.Seconds(), "s-desired")
	report(b, "  ratio to the raw desired burst", desiredWall.Seconds()/burst.Seconds(), "x-desired-vs-burst")
	report(b, "  Azure S1 time / this", azure.Seconds()/desiredWall.Seconds(), "x-azure-vs-desired")
}

// trail prints, every 5 s until stop is called, how many devices the registry shows acknowledged and the
// simulators' counters, so that a slow job shows whether its acknowledgements trail and why (reconnects,
// lost connections, failed reports).
func (f *fleetRig) trail(b *testing.B, ctx context.Context, t0 time.Time, value string) (stop func()) {
	b.Helper()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	pids, names := f.schedPIDs(-1)
	start := sampleSched(pids)
	go func() {
		defer wg.Done()
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		window := start
		for {
			select {
			case <-done:
				fmt.Printf("  whole job, cpu and run-queue wait, s per s: %s\n", schedReport(start, sampleSched(pids), names))
				return
			case <-t.C:
			}
			var acked int
			_ = f.reg.Pool().QueryRow(ctx, "SELECT count(*) FROM devices WHERE tags @> '{\"fleet\":\"sim\"}' AND reported->>'telemetryInterval' = $1", value).Scan(&acked)
			var acks, failed int
			for _, sp := range f.sims {
				st, _ := sp.status()
				acks, failed = acks+st.acks, failed+st.reportFailed
			}
			now := sampleSched(pids)
			fmt.Printf("  job +%.0fs: %d acknowledged in the registry; simulators: %d acks sent, %d reports failed; %s\n    cpu and run-queue wait, s per s: %s\n",
				time.Since(t0).Seconds(), acked, acks, failed, f.simTotals(), schedReport(window, now, names))
			window = now
		}
	}()
	return func() { close(done); wg.Wait() }
}

// retriedActivities prints the activities of a job's workflow that needed more than one attempt, with the
// previous attempt's failure, when it was scheduled and when its last attempt started (seconds after t0): a
// failed batch's devices wait for its retry, and the throwaway Temporal server's history goes with the run.
func (f *fleetRig) retriedActivities(ctx context.Context, id string, t0 time.Time) {
	type act struct {
		kind      string
		scheduled time.Time
	}
	acts := map[int64]*act{}
	it := f.tc.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	at := func(t time.Time) float64 { return t.Sub(t0).Seconds() }
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			fmt.Printf("  job history: %v\n", err)
			return
		}
		switch {
		case ev.GetActivityTaskScheduledEventAttributes() != nil:
			acts[ev.GetEventId()] = &act{kind: ev.GetActivityTaskScheduledEventAttributes().GetActivityType().GetName(), scheduled: ev.GetEventTime().AsTime()}
		case ev.GetActivityTaskStartedEventAttributes() != nil:
			a := ev.GetActivityTaskStartedEventAttributes()
			if s, ok := acts[a.GetScheduledEventId()]; ok && a.GetAttempt() > 1 {
				fmt.Printf("  job activity %s (event %d) attempt %d: scheduled +%.1fs, last attempt started +%.1fs; previous attempt: %s\n",
					s.kind, a.GetScheduledEventId(), a.GetAttempt(), at(s.scheduled), at(ev.GetEventTime().AsTime()), a.GetLastFailure().GetMessage())
			}
		}
	}
}

// methodJob runs a method (ping) on every device of the fleet.
func (f *fleetRig) methodJob(b *testing.B, ctx context.Context, fleetQuery string, fanout, azure time.Duration) {
	b.Helper()
	n := f.n
	t0 := time.Now()
	out := run(b, ctx, f.env, "job", "start", "--query", fleetQuery, "--method", "ping")
	methodWall := time.Since(t0)
	f.checkJob(b, ctx, jobID(b, out), n)
	fmt.Printf("method job (ping) over %d devices (fleetflow job start, CLI end to end, until every answer was recorded)\n", n)
	report(b, "until every response was recorded (target <= 60 s)", methodWall.Seconds(), "s-method")
	report(b, "  ratio to the raw method fan-out", methodWall.Seconds()/fanout.Seconds(), "x-method-vs-fanout")
	report(b, "  Azure S1 time / this", azure.Seconds()/methodWall.Seconds(), "x-azure-vs-method")
}

// fleetRig is the fleet benchmark's processes and what it learnt about them.
type fleetRig struct {
	*backend
	n          int
	env        []string
	natsURL    string
	dir        string
	urls       []string // device-facing URL of each gateway
	gateways   []*exec.Cmd
	gwBase     []int64 // RSS of each gateway before any device connected, KiB
	ids        []string
	simCreds   [][]creds.Credential // the credentials of each simulator process
	sims       []*simProc
	connectsPS float64
	simStart   time.Time      // when the first simulator process started
	others     map[string]int // pid of each server process other than the gateways (NATS nodes, worker)
	cpu        *cpuGroups     // the servers' and the simulators' CPU groups, if any (fleetcpu_test.go)
}

// simProc is one `fleetflow simulate` process and its latest status line.
type simProc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	last simStatus
	line string
	done chan struct{} // closed when its stdout ends
}

// simStatus is what the simulator's status line says.
type simStatus struct {
	connected, refused, failed, reported, reportFailed, reconnects, acks, busy int
	lostPing, lostClosed, lostOther                                            int
	byGateway                                                                  map[string]int
}

var (
	simStatusRe = regexp.MustCompile(`connected=(\d+) refused=(\d+) failed=(\d+) reported=(\d+) report_failed=(\d+) reconnects=(\d+) .*acks=(\d+)`)
	simByGwRe   = regexp.MustCompile(`(\S+://\S+?)=(\d+)`)
	simBusyRe   = regexp.MustCompile(` busy=(\d+)`)
	simLostRe   = regexp.MustCompile(` lost_ping=(\d+) lost_closed=(\d+) lost_other=(\d+)`)
)

func parseSimStatus(line string) (simStatus, bool) {
	m := simStatusRe.FindStringSubmatch(line)
	if m == nil {
		return simStatus{}, false
	}
	var v [7]int
	for i := range v {
		v[i], _ = strconv.Atoi(m[i+1])
	}
	st := simStatus{connected: v[0], refused: v[1], failed: v[2], reported: v[3], reportFailed: v[4], reconnects: v[5], acks: v[6], byGateway: map[string]int{}}
	if b := simBusyRe.FindStringSubmatch(line); b != nil {
		st.busy, _ = strconv.Atoi(b[1])
	}
	if l := simLostRe.FindStringSubmatch(line); l != nil {
		st.lostPing, _ = strconv.Atoi(l[1])
		st.lostClosed, _ = strconv.Atoi(l[2])
		st.lostOther, _ = strconv.Atoi(l[3])
	}
	if i := strings.Index(line, "by_gateway["); i >= 0 {
		for _, g := range simByGwRe.FindAllStringSubmatch(line[i+len("by_gateway["):], -1) {
			st.byGateway[g[1]], _ = strconv.Atoi(g[2])
		}
	}
	return st, true
}

func (s *simProc) status() (simStatus, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last, s.line
}

// startFleet starts the NATS node(s), the worker, provisions n devices and starts the gateways (not yet the
// simulators), each a process of the CLI or the worker binary; everything stops when b ends.
func startFleet(b *testing.B, ctx context.Context, n int) *fleetRig {
	b.Helper()
	be := openBackend(b, testenv.Postgres(b), "bench-fleet")
	f := &fleetRig{backend: be, n: n, dir: b.TempDir(), others: map[string]int{}, cpu: newCPUGroups(b)}
	if fleetLogs != "" {
		if err := os.MkdirAll(fleetLogs, 0o700); err != nil {
			b.Fatal(err)
		}
		f.dir = fleetLogs
	}

	// NATS: K nodes of `fleetflow nats-node`, routed into one cluster when K > 1.
	var clientURLs, routeURLs, listens, routeListens []string
	for j := 0; j < max(1, fleetNATSNodes); j++ {
		for _, l := range []*[]string{&listens, &routeListens} {
			p, err := stack.FreePort()
			if err != nil {
				b.Fatal(err)
			}
			*l = append(*l, fmt.Sprintf("127.0.0.1:%d", p))
		}
		clientURLs = append(clientURLs, "nats://"+listens[j])
		routeURLs = append(routeURLs, "nats://"+routeListens[j])
	}
	for j := range listens {
		args := []string{"nats-node", "--name", fmt.Sprintf("bench-n%d", j+1), "--listen", listens[j]}
		if len(listens) > 1 {
			args = append(args, "--cluster-listen", routeListens[j], "--routes", strings.Join(routeURLs, ","))
		}
		name := fmt.Sprintf("nats-%d", j+1)
		f.others[name] = f.start(b, ctx, nil, name, bins.CLI, args...).Process.Pid
	}
	for _, l := range listens {
		waitReachable(b, l)
	}
	f.natsURL = strings.Join(clientURLs, ",")
	f.env = be.env("FLEETFLOW_NATS_URL="+f.natsURL, "FLEETFLOW_GATEWAY_METRICS=", "FLEETFLOW_WORKER_METRICS=")

	f.others["worker"] = f.start(b, ctx, nil, "worker", bins.Worker).Process.Pid

	credsFile := filepath.Join(f.dir, "fleet.ndjson")
	t0 := time.Now()
	run(b, ctx, f.env, "provision", "--count", strconv.Itoa(n), "--prefix", "fl-", "--tags", "fleet=sim", "--creds-out", credsFile, "-o", "json")
	fmt.Printf("provisioned %d devices in %s\n", n, time.Since(t0).Round(time.Millisecond))
	list, err := creds.ReadFile(credsFile)
	if err != nil || len(list) != n {
		b.Fatalf("credentials: %d of %d, %v", len(list), n, err)
	}
	for _, c := range list {
		f.ids = append(f.ids, c.ID)
	}

	// Gateways: gateway i on 127.0.0.(i+1), all on the same ports, so that each simulator's connections
	// to one gateway have an ephemeral-port range of their own (the kernel needs only the 4-tuple unique).
	g := fleetGateways
	if g <= 0 {
		g = max(6, int(math.Ceil(float64(n)/maxPerGateway))+1)
	}
	port, err := stack.FreePort()
	if err != nil {
		b.Fatal(err)
	}
	tlsPort, err := stack.FreePort()
	if err != nil {
		b.Fatal(err)
	}
	var tlsFiles pki.Local
	if fleetTLS {
		hosts := []string{"127.0.0.1"}
		for i := 1; i <= g; i++ {
			hosts = append(hosts, fmt.Sprintf("127.0.0.%d", i+1))
		}
		if tlsFiles, err = pki.EnsureLocal(filepath.Join(f.dir, "tls"), hosts, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
	for i := 1; i <= g; i++ {
		host := fmt.Sprintf("127.0.0.%d", i+1)
		listen, tlsListen := fmt.Sprintf("%s:%d", host, port), fmt.Sprintf("%s:%d", host, tlsPort)
		env := []string{"FLEETFLOW_GATEWAY_LISTEN=" + listen, "FLEETFLOW_GATEWAY_TLS_LISTEN=" + tlsListen}
		env = append(env, strings.Fields(fleetGatewayEnv)...)
		url := "tcp://" + listen
		if fleetTLS {
			env = append(env, "FLEETFLOW_TLS_CERT="+tlsFiles.Cert, "FLEETFLOW_TLS_KEY="+tlsFiles.Key)
			url = "ssl://" + tlsListen
		}
		f.urls = append(f.urls, url)
		args := []string{"gateway"}
		if i == 1 && fleetPprof != "" {
			args = append(args, "--pprof", fleetPprof)
		}
		f.gateways = append(f.gateways, f.start(b, ctx, env, fmt.Sprintf("gateway-%d", i), bins.CLI, args...))
	}
	for i, gw := range f.gateways {
		waitReachable(b, strings.TrimPrefix(strings.TrimPrefix(f.urls[i], "tcp://"), "ssl://"))
		time.Sleep(200 * time.Millisecond)
		rss, err := rssKiB(gw.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		f.gwBase = append(f.gwBase, rss)
	}

	// Simulators: contiguous slices of the credentials, each process spreading its devices over every gateway.
	s := max(2, int(math.Ceil(float64(n)/float64(fleetPerSimProc))))
	per := (n + s - 1) / s
	for j := 0; j < s; j++ {
		part := list[j*per : min(n, (j+1)*per)]
		f.simCreds = append(f.simCreds, part)
	}
	if fleetTLS {
		f.env = append(f.env, "FLEETFLOW_MQTT_CA="+tlsFiles.CA)
	}
	return f
}

// start runs bin with args in the fleet's environment plus env until b ends, its output going to
// name.log in the rig's directory.
func (f *fleetRig) start(b *testing.B, ctx context.Context, env []string, name, bin string, args ...string) *exec.Cmd {
	b.Helper()
	logf, err := os.Create(filepath.Join(f.dir, name+".log"))
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(append(os.Environ(), f.env...), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	if err := f.cpu.addServer(cmd.Process.Pid); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = logf.Close()
	})
	return cmd
}

func waitReachable(b *testing.B, addr string) {
	b.Helper()
	deadline := time.Now().Add(time.Minute)
	for !stack.Reachable(addr, 200*time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("%s not reachable after a minute", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// connect starts every simulator at once and reports connects per second of the whole fleet and the
// memory per device of each gateway and simulator process.
func (f *fleetRig) connect(b *testing.B, ctx context.Context) {
	b.Helper()
	t0 := time.Now()
	f.simStart = t0
	for j, part := range f.simCreds {
		file := filepath.Join(f.dir, fmt.Sprintf("sim-%d.ndjson", j+1))
		if err := writeCreds(file, part); err != nil {
			b.Fatal(err)
		}
		logf, err := os.Create(filepath.Join(f.dir, fmt.Sprintf("simulator-%d.log", j+1)))
		if err != nil {
			b.Fatal(err)
		}
		cmd := exec.CommandContext(ctx, bins.CLI, "simulate", "--creds", file, "--mqtt-url", strings.Join(f.urls, ","),
			"--telemetry-every", "0", "--concurrency", "64", "--status-every", "1s", "--reconnect-jitter", fleetJitter,
			"--ping-timeout", fleetPingTimeout)
		if j == 0 && fleetSimPprof != "" {
			cmd.Args = append(cmd.Args, "--pprof", fleetSimPprof)
		}
		if fleetSimMemory > 0 {
			cmd.Args = append(cmd.Args, "--memory-per-device", strconv.Itoa(fleetSimMemory))
		}
		cmd.Env = append(os.Environ(), f.env...)
		cmd.Stderr = logf
		out, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		if err := f.cpu.addSimulator(cmd.Process.Pid); err != nil {
			b.Fatal(err)
		}
		sp := &simProc{cmd: cmd, done: make(chan struct{})}
		b.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			_ = logf.Close()
		})
		go func() {
			defer close(sp.done)
			sc := bufio.NewScanner(out)
			sc.Buffer(make([]byte, 64*1024), 1<<20)
			for sc.Scan() {
				if st, ok := parseSimStatus(sc.Text()); ok {
					sp.mu.Lock()
					sp.last, sp.line = st, sc.Text()
					sp.mu.Unlock()
				}
			}
			_, _ = io.Copy(io.Discard, out)
		}()
		f.sims = append(f.sims, sp)
	}
	connectedIn := f.waitSims(b, 10*time.Minute, "every device connected", func(st simStatus, j int) bool {
		return st.connected == len(f.simCreds[j])
	})
	reportedIn := f.waitSims(b, 10*time.Minute, "every capabilities report acknowledged", func(st simStatus, j int) bool {
		return st.reported == len(f.simCreds[j])
	})
	onlineIn := f.waitOnline(b, ctx, t0, 10*time.Minute)
	time.Sleep(2 * time.Second) // let the connect storm's batches and buffers settle before reading memory

	perGateway := f.perGateway()
	var gwKiB, simKiB []float64
	var gwTotal, simTotal int64
	for i, gw := range f.gateways {
		rss, err := rssKiB(gw.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		gwTotal += rss
		gwKiB = append(gwKiB, float64(rss-f.gwBase[i])/float64(perGateway[f.urls[i]]))
	}
	for j, sp := range f.sims {
		rss, err := rssKiB(sp.cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		simTotal += rss
		simKiB = append(simKiB, float64(rss)/float64(len(f.simCreds[j])))
	}
	if fleetSimPprof != "" {
		saveSimProfiles(b, f.dir)
	}
	f.connectsPS = float64(f.n) / connectedIn.Seconds()
	transport := "plaintext MQTT"
	if fleetTLS {
		transport = "MQTT over TLS"
	}
	fmt.Printf("%d devices, %s, %d gateway processes, %d simulator processes, %d NATS node(s), 1 worker, Postgres and Temporal "+
		"on the machine's 2 cores; devices per gateway: %v\n", f.n, transport, len(f.gateways), len(f.sims), max(1, fleetNATSNodes), perGateway)
	fmt.Printf("%s\n", f.cpu)
	report(b, "device connects per second, whole fleet (CONNECT+SUBSCRIBE+birth+twin/get)", f.connectsPS, "device-connects/s")
	report(b, "  seconds until every device connected", connectedIn.Seconds(), "s-connected")
	report(b, "  seconds until every capabilities report was acknowledged", reportedIn.Seconds(), "s-reported")
	report(b, "  seconds until the registry showed every device online", onlineIn.Seconds(), "s-online")
	report(b, "gateway RSS growth per connected device, worst gateway (target <= 100)", maxOf(gwKiB), "KiB/dev-gateway-max")
	report(b, "  mean over the gateways", meanOf(gwKiB), "KiB/dev-gateway-mean")
	report(b, "  all gateways' RSS", float64(gwTotal)/1024, "MiB-gateways")
	report(b, "simulator RSS per device, whole process, worst simulator (target <= 64)", maxOf(simKiB), "KiB/dev-simulator-max")
	report(b, "  mean over the simulators", meanOf(simKiB), "KiB/dev-simulator-mean")
	report(b, "  all simulators' RSS", float64(simTotal)/1024, "MiB-simulators")
}

// waitSims waits until ok holds for the latest status of every simulator, failing on a refused or failed
// device, and returns the time since the first simulator started.
func (f *fleetRig) waitSims(b *testing.B, limit time.Duration, what string, ok func(simStatus, int) bool) time.Duration {
	b.Helper()
	t0 := time.Now()
	for {
		all := true
		var lines []string
		for j, sp := range f.sims {
			st, line := sp.status()
			lines = append(lines, line)
			if st.refused > 0 || st.failed > 0 || st.reportFailed > 0 {
				b.Fatalf("simulator %d: %s", j+1, line)
			}
			if !ok(st, j) {
				all = false
			}
			select {
			case <-sp.done:
				b.Fatalf("simulator %d ended: %s", j+1, line)
			default:
			}
		}
		if all {
			return time.Since(f.simStart)
		}
		if time.Since(t0) > limit {
			b.Fatalf("not %s after %s:\n%s", what, limit, strings.Join(lines, "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (f *fleetRig) waitOnline(b *testing.B, ctx context.Context, t0 time.Time, limit time.Duration) time.Duration {
	b.Helper()
	for {
		var online int
		if err := f.reg.Pool().QueryRow(ctx, "SELECT count(*) FROM devices WHERE online AND tags @> '{\"fleet\":\"sim\"}'").Scan(&online); err != nil {
			b.Fatal(err)
		}
		if online == f.n {
			return time.Since(t0)
		}
		if time.Since(t0) > limit {
			b.Fatalf("registry shows %d of %d devices online", online, f.n)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// busy sums the CONNECTs the gateways refused as busy (admission control), as the simulators counted them.
func (f *fleetRig) busy() int {
	n := 0
	for _, sp := range f.sims {
		st, _ := sp.status()
		n += st.busy
	}
	return n
}

// reconnects sums the simulators' reconnections (a device connecting again after its connection was lost).
func (f *fleetRig) reconnects() int {
	n := 0
	for _, sp := range f.sims {
		st, _ := sp.status()
		n += st.reconnects
	}
	return n
}

// schedPIDs names the processes whose scheduling the failover reports: the gateways but the killed one
// (k), the other servers, and the simulators.
func (f *fleetRig) schedPIDs(k int) (map[string]int, []string) {
	pids := map[string]int{}
	var names []string
	for i, gw := range f.gateways {
		if i != k {
			name := fmt.Sprintf("gw%d", i+1)
			pids[name] = gw.Process.Pid
			names = append(names, name)
		}
	}
	for name, pid := range f.others {
		pids[name] = pid
		names = append(names, name)
	}
	sort.Strings(names[len(f.gateways)-1:])
	for j, sp := range f.sims {
		name := fmt.Sprintf("sim%d", j+1)
		pids[name] = sp.cmd.Process.Pid
		names = append(names, name)
	}
	return pids, names
}

// simTotals sums the simulators' status counters that tell a failover's course.
func (f *fleetRig) simTotals() string {
	var connected, busy, reconnects, lostPing, lostClosed, lostOther int
	for _, sp := range f.sims {
		st, _ := sp.status()
		connected, busy, reconnects = connected+st.connected, busy+st.busy, reconnects+st.reconnects
		lostPing, lostClosed, lostOther = lostPing+st.lostPing, lostClosed+st.lostClosed, lostOther+st.lostOther
	}
	return fmt.Sprintf("%d connected, %d refused busy, %d reconnects, lost: %d ping, %d closed, %d other (simulators' totals)",
		connected, busy, reconnects, lostPing, lostClosed, lostOther)
}

// perGateway sums the simulators' connected devices by gateway URL.
func (f *fleetRig) perGateway() map[string]int {
	out := map[string]int{}
	for _, sp := range f.sims {
		st, _ := sp.status()
		for u, c := range st.byGateway {
			out[u] += c
		}
	}
	return out
}

func (f *fleetRig) checkJob(b *testing.B, ctx context.Context, id string, n int) workflows.JobResult {
	b.Helper()
	res := f.jobResult(b, ctx, id)
	if res.Counts.Succeeded != int64(n) {
		b.Fatalf("job %s: %+v", id, res.Counts)
	}
	return res
}

// jobResult waits for the job's workflow and returns its result.
func (f *fleetRig) jobResult(b *testing.B, ctx context.Context, id string) workflows.JobResult {
	b.Helper()
	var res workflows.JobResult
	if err := f.tc.GetWorkflow(ctx, id, "").Get(ctx, &res); err != nil {
		b.Fatal(err)
	}
	return res
}

// checkReported asserts that every simulated device's reported properties satisfy cond (with $1 = arg).
func (f *fleetRig) checkReported(b *testing.B, ctx context.Context, cond, arg string, n int) {
	b.Helper()
	got := f.countReported(b, ctx, cond, arg)
	if got != n {
		b.Fatalf("%d of %d devices satisfy %s ($1 = %s)", got, n, cond, arg)
	}
}

func (f *fleetRig) countReported(b *testing.B, ctx context.Context, cond, arg string) int {
	b.Helper()
	var got int
	if err := f.reg.Pool().QueryRow(ctx, "SELECT count(*) FROM devices WHERE tags @> '{\"fleet\":\"sim\"}' AND "+cond, arg).Scan(&got); err != nil {
		b.Fatal(err)
	}
	return got
}

// rollout runs a four-wave firmware rollout (1%,10%,50%,100%, no bake) over the query as
// BenchmarkConfigure10k does, and returns the time from claiming the devices to the workflow's end.
func (f *fleetRig) rollout(b *testing.B, ctx context.Context, query string, n int) time.Duration {
	b.Helper()
	version := fmt.Sprintf("3.%d.0", n)
	r := f.runRollout(b, ctx, version, "cd", query, n, func() {})
	f.checkReported(b, ctx, "reported #>> '{firmware,version}' = $1", version, n)
	return r.wall
}

// failover starts a desired job over the fleet, SIGKILLs the last gateway a second later and measures the
// time until every device of that gateway holds a newer session on another gateway, and until every device
// of the fleet acknowledged the change; nothing may be lost.
func (f *fleetRig) failover(b *testing.B, ctx context.Context, query string) {
	b.Helper()
	k := len(f.gateways) - 1
	victim := f.urls[k]
	onVictim := f.perGateway()[victim]
	reconnectsBefore, busyBefore := f.reconnects(), f.busy()
	var sessionMax int64
	if err := f.reg.Pool().QueryRow(ctx, "SELECT coalesce(max(session), 0) FROM devices").Scan(&sessionMax); err != nil {
		b.Fatal(err)
	}
	value := strconv.Itoa(500 + f.n%1000)
	type jobOut struct {
		out  string
		wall time.Duration
		err  error
	}
	jobDone := make(chan jobOut, 1)
	jobDir := b.TempDir()
	startJob := func() {
		t0 := time.Now()
		go func() {
			out, err := runCLI(ctx, jobDir, f.env, "job", "start", "--query", query, "--set-desired", `{"telemetryInterval": `+value+`}`, "--timeout", "10m")
			jobDone <- jobOut{out, time.Since(t0), err}
		}()
	}
	if !fleetQuietKill {
		startJob()
		time.Sleep(time.Second)
	}
	killedAt := time.Now()
	if err := f.gateways[k].Process.Signal(syscall.SIGKILL); err != nil {
		b.Fatal(err)
	}
	// Who waits for a core after the kill: every process's CPU and run-queue wait, per window of 15 s and
	// over the whole failover, beside the simulators' counters.
	pids, names := f.schedPIDs(k)
	atKill := sampleSched(pids)
	window, nextReport := atKill, killedAt.Add(15*time.Second)
	jobStarted := !fleetQuietKill
	ackedBeforeKill := f.countReported(b, ctx, "reported->>'telemetryInterval' = $1", value)

	// Its devices are all connected elsewhere when the simulators count none on it and every device
	// connected, and the registry holds at least that many sessions newer than any before the kill (the
	// simulators' counts are read once a second, so this is the time to within a second).
	var reconnectedIn, convergedIn time.Duration
	for reconnectedIn == 0 || convergedIn == 0 {
		if reconnectedIn == 0 {
			elsewhere := true
			for j, sp := range f.sims {
				st, _ := sp.status()
				if st.byGateway[victim] != 0 || st.connected != len(f.simCreds[j]) {
					elsewhere = false
				}
			}
			var moved int
			if err := f.reg.Pool().QueryRow(ctx, "SELECT count(*) FROM devices WHERE online AND session > $1", sessionMax).Scan(&moved); err != nil {
				b.Fatal(err)
			}
			if elsewhere && moved >= onVictim {
				reconnectedIn = time.Since(killedAt)
			}
		}
		if !jobStarted {
			if reconnectedIn == 0 {
				time.Sleep(250 * time.Millisecond)
				continue
			}
			startJob()
			jobStarted = true
		}
		acked := f.countReported(b, ctx, "reported->>'telemetryInterval' = $1", value)
		if convergedIn == 0 && acked == f.n {
			convergedIn = time.Since(killedAt)
		}
		if time.Now().After(nextReport) {
			now := sampleSched(pids)
			fmt.Printf("failover +%.0fs: %d acknowledged; %s\n  cpu and run-queue wait, s per s: %s\n  %s\n", time.Since(killedAt).Seconds(), acked, f.simTotals(),
				schedReport(window, now, names), pgSample(ctx, f.reg.Pool()))
			window, nextReport = now, nextReport.Add(15*time.Second)
		}
		if time.Since(killedAt) > fleetFailoverLimit {
			fmt.Printf("whole failover, cpu and run-queue wait, s per s: %s\n", schedReport(atKill, sampleSched(pids), names))
			for j, sp := range f.sims {
				_, line := sp.status()
				b.Logf("simulator %d: %s", j+1, line) // lost_ping / lost_closed tell starvation from drops
			}
			b.Fatalf("after %s: reconnected in %s, converged in %s (0: not yet)", fleetFailoverLimit, reconnectedIn, convergedIn)
		}
		time.Sleep(250 * time.Millisecond)
	}
	wholeSched := schedReport(atKill, sampleSched(pids), names)
	jo := <-jobDone
	// The job ends once no connected device is left waiting: a target whose device was still offline then
	// is closed "offline" (it receives the desired state on reconnect; the CLI exits 3, completed with
	// failures). Such a target counts as converged only through the checks below, which require every
	// device of the fleet online with the job's value reported — the figure is the fleet's
	// convergence, and the job's bookkeeping at its close is reported beside it.
	var exit *exec.ExitError
	if jo.err != nil && !(errors.As(jo.err, &exit) && exit.ExitCode() == 3) {
		b.Fatal(jo.err)
	}
	jobRes := f.jobResult(b, ctx, jobID(b, jo.out))
	if c := jobRes.Counts; c.Succeeded+c.Offline != int64(f.n) {
		b.Fatalf("job: %+v", c)
	}
	f.checkReported(b, ctx, "reported->>'telemetryInterval' = $1", value, f.n)
	var online int
	if err := f.reg.Pool().QueryRow(ctx, "SELECT count(*) FROM devices WHERE online AND tags @> '{\"fleet\":\"sim\"}'").Scan(&online); err != nil {
		b.Fatal(err)
	}
	if online != f.n {
		b.Fatalf("registry shows %d of %d devices online after the failover", online, f.n)
	}
	// Nothing lost: every device's reported state holds its latest desired value.
	var stale int
	if err := f.reg.Pool().QueryRow(ctx, "SELECT count(*) FROM devices WHERE tags @> '{\"fleet\":\"sim\"}' AND "+
		"reported->'telemetryInterval' IS DISTINCT FROM desired->'telemetryInterval'").Scan(&stale); err != nil {
		b.Fatal(err)
	}
	if stale != 0 {
		b.Fatalf("%d devices have not acknowledged their latest desired state after the failover", stale)
	}
	// The simulators see every device connected again, none on the killed gateway.
	f.waitSims(b, 5*time.Minute, "every device connected after the failover", func(st simStatus, j int) bool {
		return st.connected == len(f.simCreds[j]) && st.byGateway[victim] == 0
	})
	perGateway := f.perGateway()
	fmt.Printf("devices reconnect after a random wait below %s (simulate --reconnect-jitter)\n", fleetJitter)
	when, jobStart := "1 s into", "1 s before"
	if fleetQuietKill {
		when, jobStart = "then, once they were connected elsewhere,", "after their reconnection, not at"
	}
	fmt.Printf("gateway %s SIGKILLed with %d devices, %s a set_desired job over %d devices (%d had acked at the kill); "+
		"devices per gateway afterwards: %v\n", victim, onVictim, when, f.n, ackedBeforeKill, perGateway)
	fmt.Printf("%s\nkill to convergence, cpu and run-queue wait, s per s: %s\nsimulators at the end: %s\n", f.cpu, wholeSched, f.simTotals())
	report(b, "until every one of its devices had a newer session elsewhere", reconnectedIn.Seconds(), "s-failover-reconnected")
	report(b, "  yardstick: its devices at the fleet's connect rate", float64(onVictim)/f.connectsPS, "s-failover-at-connect-rate")
	report(b, "until every device of the fleet acknowledged the change", convergedIn.Seconds(), "s-failover-converged")
	report(b, "  the job, CLI end to end (started "+jobStart+" the kill)", jo.wall.Seconds(), "s-failover-job")
	report(b, "  job targets closed offline (their device reconnected and acknowledged after the job's end)",
		float64(jobRes.Counts.Offline), "job-offline-at-close")
	report(b, "  devices online in the registry afterwards (each acknowledged the change)", float64(online), "devices-online")
	report(b, "  reconnects of simulated devices before the kill (connections lost under load)", float64(reconnectsBefore), "reconnects-before-kill")
	report(b, "  reconnects after the kill", float64(f.reconnects()-reconnectsBefore), "reconnects-after-kill")
	report(b, "  CONNECTs refused busy by admission control after the kill (devices backed off)", float64(f.busy()-busyBefore), "busy-after-kill")
}

func writeCreds(path string, list []creds.Credential) error {
	w, err := creds.Create(path)
	if err != nil {
		return err
	}
	for _, c := range list {
		if err := w.Write(c); err != nil {
			w.Close()
			return err
		}
	}
	return w.Close()
}

// rawDesiredBurst publishes one desired patch (version 1, which every device ignores as not newer) to each
// device's subject on a bare NATS connection and returns the time until the server confirmed them all.
func rawDesiredBurst(b *testing.B, nc *nats.Conn, ids []string) time.Duration {
	b.Helper()
	t0 := time.Now()
	for _, id := range ids {
		if err := nc.PublishMsg(desiredMsg(id, 1, `{}`)); err != nil {
			b.Fatalf("raw burst: %v", err)
		}
	}
	if err := nc.FlushTimeout(time.Minute); err != nil {
		b.Fatalf("raw burst: %v", err)
	}
	return time.Since(t0)
}

// rawMethodFanout requests ping of every device on a bare NATS connection, window requests in flight, and
// returns the time until every device answered 200. A request left unanswered past its timeout (its device's
// connection dropped after the gateway relayed it, and the gateway forgets a request whose caller's timeout
// has passed) counts as failed and frees its slot, so a lost answer cannot stall the yardstick.
func rawMethodFanout(b *testing.B, nc *nats.Conn, ids []string, window int) time.Duration {
	b.Helper()
	const timeout = 30 * time.Second
	inbox := nats.NewInbox()
	slots := make(chan struct{}, window)
	var mu sync.Mutex
	answered, failed, expired := 0, 0, 0
	sent := map[int]time.Time{} // requests in flight by index, and when they were sent
	all := make(chan struct{})
	done := func() {
		if answered+failed+expired == len(ids) {
			close(all)
		}
	}
	sub, err := nc.Subscribe(inbox+".*", func(m *nats.Msg) {
		i, err := strconv.Atoi(m.Subject[len(inbox)+1:])
		mu.Lock()
		defer mu.Unlock()
		if _, waiting := sent[i]; err != nil || !waiting {
			return // late: already counted as expired
		}
		delete(sent, i)
		if m.Header.Get(protocol.HeaderStatus) == "200" {
			answered++
		} else {
			failed++
		}
		<-slots
		done()
	})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	sub.SetPendingLimits(-1, -1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-t.C:
				mu.Lock()
				for i, at := range sent {
					if now.Sub(at) > timeout+5*time.Second {
						delete(sent, i)
						expired++
						<-slots
						done()
					}
				}
				mu.Unlock()
			}
		}
	}()
	t0 := time.Now()
	for i, id := range ids {
		slots <- struct{}{}
		m := nats.NewMsg(protocol.DeviceSubject(id, protocol.SubjectMethod))
		m.Reply = inbox + "." + strconv.Itoa(i)
		m.Header.Set(protocol.HeaderMethod, "ping")
		m.Header.Set(protocol.HeaderTimeout, protocol.FormatTimeout(timeout))
		m.Data = []byte(`{}`)
		mu.Lock()
		sent[i] = time.Now()
		mu.Unlock()
		if err := nc.PublishMsg(m); err != nil {
			b.Fatalf("raw request: %v", err)
		}
	}
	select {
	case <-all:
	case <-time.After(5 * time.Minute):
		mu.Lock()
		defer mu.Unlock()
		b.Fatalf("raw fan-out: %d answered, %d failed, %d unanswered of %d after 5 minutes", answered, failed, expired, len(ids))
	}
	took := time.Since(t0)
	mu.Lock()
	defer mu.Unlock()
	if failed+expired > 0 {
		// A connection lost under load during the fan-out (the simulators' status lines count them) fails
		// its device's request; the yardstick still measures the fleet's round trips.
		fmt.Printf("raw fan-out: %d of %d requests failed and %d went unanswered (connections lost meanwhile)\n", failed, len(ids), expired)
	}
	return took
}

func maxOf(v []float64) float64 {
	m := math.Inf(-1)
	for _, x := range v {
		m = math.Max(m, x)
	}
	return m
}

func meanOf(v []float64) float64 {
	var s float64
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

// saveSimProfiles saves the first simulator's heap profile (sim-1.heap.pb.gz, for go tool pprof) and its
// goroutine and heap summaries (sim-1.goroutine.txt; sim-1.heap.txt with runtime.MemStats as the memory was
// read, sim-1.heap-gc.txt after two more collections, which shrink goroutine stacks grown during the
// connect storm) in dir.
func saveSimProfiles(b *testing.B, dir string) {
	b.Helper()
	for _, p := range []struct{ name, path string }{
		{"sim-1.heap.txt", "/debug/pprof/heap?debug=1"},
		{"sim-1.goroutine.txt", "/debug/pprof/goroutine?debug=1"},
		{"", "/debug/pprof/heap?gc=1"},
		{"sim-1.heap.pb.gz", "/debug/pprof/heap?gc=1"},
		{"sim-1.heap-gc.txt", "/debug/pprof/heap?debug=1"},
	} {
		resp, err := http.Get("http://" + fleetSimPprof + p.path)
		if err != nil {
			b.Logf("simulator profile %s: %v", p.path, err)
			continue
		}
		data, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil || p.name == "" {
			continue
		}
		if err = os.WriteFile(filepath.Join(dir, p.name), data, 0o644); err != nil {
			b.Logf("simulator profile %s: %v", p.name, err)
			continue
		}
		fmt.Printf("simulator 1 profile saved: %s\n", filepath.Join(dir, p.name))
	}
}
