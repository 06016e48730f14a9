package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/nats-io/nats.go"
	"go.temporal.io/sdk/client"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleetworker"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/internal/stack"
	"github.com/fleetflow/fleetflow/internal/testenv"
	"github.com/fleetflow/fleetflow/workflows"
)

// configureDevices is the fleet BenchmarkConfigure10k configures (FLEETFLOW_BENCH_CONFIGURE_DEVICES overrides
// it). A fleet a tenth of that size runs first, so that history sizes can be compared across fleet sizes.
var configureDevices = config.EnvInt("FLEETFLOW_BENCH_CONFIGURE_DEVICES", 10_000)

// Sample counts of the sequential round-trip measurements (after a few warm-up calls each).
const (
	rawSamples = 500
	// rawFanoutWindow is how many raw method requests are in flight at once: as many as the fleet benchmark's
	// raw fan-out, far more than the worker's channel keeps in flight, so the yardstick is the bare path's.
	rawFanoutWindow = 2000
	invokeSamples   = 200
	warmupSamples   = 10
)

// configureHistory is the Temporal history (events over all continue-as-new runs, and runs) of one fleet
// size's operations, for the comparison across sizes.
type configureHistory struct {
	desired, method, rollout             int
	desiredRuns, methodRuns, rolloutRuns int
}

// BenchmarkConfigure10k connects a simulated fleet over MQTT (gateway and simulator in processes of their
// own, the worker in this one with a device channel) and measures, next to yardsticks measured on the same
// gateway in the same run with a bare NATS connection and a bare paho device — sequential round trips, a
// pipelined burst of one desired message to every device, and a pipelined method request to every device
// until every answer:
//
//   - a set_desired FleetJob over every device, started with `fleetflow job start --set-desired`, until
//     every device has acknowledged the change in its reported properties;
//   - a method FleetJob (ping) over every device, started with `fleetflow job start --method ping`;
//   - single method round trips through channel.Invoke;
//   - a four-wave firmware rollout (1%,10%,50%,100%, no bake, instant simulated updates);
//   - the Temporal history of each, at a tenth of the fleet and at the full fleet.
func BenchmarkConfigure10k(b *testing.B) {
	sizes := []int{configureDevices}
	if small := configureDevices / 10; small >= 10 {
		sizes = []int{small, configureDevices}
	}
	hist := map[int]configureHistory{}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("devices=%d", n), func(b *testing.B) { hist[n] = benchConfigure(b, n) })
	}
	if len(sizes) < 2 || len(hist) < 2 {
		return
	}
	s, l := hist[sizes[0]], hist[sizes[1]]
	fmt.Printf("Temporal history (events over all runs) at %d and %d devices\n", sizes[0], sizes[1])
	for _, op := range []struct {
		name                 string
		small, large, sr, lr int
	}{
		{"set_desired job", s.desired, l.desired, s.desiredRuns, l.desiredRuns},
		{"method job", s.method, l.method, s.methodRuns, l.methodRuns},
		{"4-wave rollout", s.rollout, l.rollout, s.rolloutRuns, l.rolloutRuns},
	} {
		fmt.Printf("    %-16s %6d events (%d runs) -> %6d events (%d runs): x%.2f for x%d devices\n", op.name, op.small, op.sr,
			op.large, op.lr, float64(op.large)/float64(op.small), sizes[1]/sizes[0])
	}
}

// benchConfigure runs every measurement over a fleet of n devices and returns the history sizes.
func benchConfigure(b *testing.B, n int) configureHistory {
	if lim, err := openFileLimit(); err == nil && lim < uint64(n)+1000 {
		b.Fatalf("open-file limit %d is too low for %d connections", lim, n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := startConfigureBackend(b, ctx, n)
	fleetQuery := "SELECT * FROM devices WHERE tags.fleet = 'sim'"
	fmt.Printf("%d simulated devices connected and reported; gateway, simulator, worker (this process), Postgres and "+
		"Temporal share the machine's 2 cores; reported schema in force: %v; load average before measuring: %s\n", n, reportedScheme, loadAvg())

	// The yardsticks: the same path without fleetflow's channel, workflows or SDK: a bare NATS connection
	// for the service and a bare paho device on the same gateway.
	rig := startEchoRig(b, f)
	pubAck := rig.pubAcks(b, rawSamples)
	desiredEcho := rig.roundTrips(b, rawSamples, "desired")
	methodEcho := rig.roundTrips(b, rawSamples, "method")
	burst := rig.burst(b, f.fleet)
	ids := make([]string, len(f.fleet))
	for i, c := range f.fleet {
		ids[i] = c.ID
	}
	fanout := rawMethodFanout(b, rig.svc, ids, rawFanoutWindow)
	rig.close()
	time.Sleep(time.Second)

	fmt.Println("raw NATS -> gateway -> MQTT device (bare nats.go connection, bare paho device)")
	report(b, "sequential PUBLISH + flush, service->NATS, p50", ms(pct(pubAck, 50)), "ms-raw-puback-p50")
	report(b, "desired: service PUBLISH -> NATS -> gateway -> device, p50", ms(pct(desiredEcho, 50)), "ms-raw-desired-echo-p50")
	report(b, "desired p99", ms(pct(desiredEcho, 99)), "ms-raw-desired-echo-p99")
	report(b, "method echo: request -> NATS -> gateway -> device -> response -> service, p50", ms(pct(methodEcho, 50)), "ms-raw-method-echo-p50")
	report(b, "method echo p99", ms(pct(methodEcho, 99)), "ms-raw-method-echo-p99")
	report(b, fmt.Sprintf("pipelined burst, 1 desired msg to each of %d devices, all confirmed by the NATS server", n), burst.Seconds(), "s-raw-burst")
	report(b, "  raw burst throughput", float64(n)/burst.Seconds(), "msg/s-raw-burst")
	report(b, fmt.Sprintf("method request to each of %d devices, %d in flight, until every answer", n, rawFanoutWindow), fanout.Seconds(), "s-raw-fanout")

	// set_desired over the whole fleet, through the CLI as an operator starts it.
	b.ResetTimer()
	value := strconv.Itoa(30 + n%1000)
	t0 := time.Now()
	out := run(b, ctx, f.env, "job", "start", "--query", fleetQuery, "--set-desired", `{"telemetryInterval": `+value+`}`, "--timeout", "2m")
	desiredWall := time.Since(t0)
	b.StopTimer()
	desiredID := jobID(b, out)
	var dres workflows.JobResult
	if err := f.tc.GetWorkflow(ctx, desiredID, "").Get(ctx, &dres); err != nil {
		b.Fatal(err)
	}
	if dres.Counts.Succeeded != int64(n) {
		b.Fatalf("set_desired job: %+v\n%s", dres.Counts, out)
	}
	var acked int
	if err := f.reg.Pool().QueryRow(ctx, "SELECT count(*) FROM devices WHERE tags @> '{\"fleet\":\"sim\"}' AND reported->>'telemetryInterval' = $1",
		value).Scan(&acked); err != nil {
		b.Fatal(err)
	}
	if acked != n {
		b.Fatalf("%d of %d devices report telemetryInterval %s after the job", acked, n, value)
	}
	dEvents, dRuns, dWorkflow := waitHistory(b, ctx, f.tc, desiredID, dres.Runs)
	fmt.Printf("set_desired job %s over %d devices\n", desiredID, n)
	report(b, "until every device acknowledged in reported, CLI end to end (target <= 10 s)", desiredWall.Seconds(), "s-desired")
	report(b, "  of which the FleetJob workflow (start to close)", dWorkflow.Seconds(), "s-desired-workflow")
	report(b, "  time per device", ms(desiredWall/time.Duration(n)), "ms/dev-desired")
	report(b, "  ratio whole job / raw desired burst", float64(desiredWall)/float64(burst), "x-desired-vs-burst")
	report(b, "  history events (all runs)", float64(dEvents), "events-desired")
	report(b, "  workflow runs", float64(dRuns), "runs-desired")
	time.Sleep(time.Second)

	// A method on every device.
	b.StartTimer()
	t0 = time.Now()
	out = run(b, ctx, f.env, "job", "start", "--query", fleetQuery, "--method", "ping")
	methodWall := time.Since(t0)
	b.StopTimer()
	methodID := jobID(b, out)
	var mres workflows.JobResult
	if err := f.tc.GetWorkflow(ctx, methodID, "").Get(ctx, &mres); err != nil {
		b.Fatal(err)
	}
	if mres.Counts.Succeeded != int64(n) {
		b.Fatalf("method job: %+v\n%s", mres.Counts, out)
	}
	mEvents, mRuns, mWorkflow := waitHistory(b, ctx, f.tc, methodID, mres.Runs)
	fmt.Printf("method job %s (ping) over %d devices\n", methodID, n)
	report(b, "until every response was recorded, CLI end to end (target <= 10 s)", methodWall.Seconds(), "s-method")
	report(b, "  of which the FleetJob workflow (start to close)", mWorkflow.Seconds(), "s-method-workflow")
	report(b, "  time per device", ms(methodWall/time.Duration(n)), "ms/dev-method")
	report(b, "  ratio whole job / raw method fan-out", float64(methodWall)/float64(fanout), "x-method-vs-fanout")
	report(b, "  ratio whole job / raw desired burst", float64(methodWall)/float64(burst), "x-method-vs-burst")
	report(b, "  history events (all runs)", float64(mEvents), "events-method")
	report(b, "  workflow runs", float64(mRuns), "runs-method")
	time.Sleep(time.Second)

	// Single method round trips, as `fleetflow method invoke` makes them.
	invoke := f.invokeRoundTrips(b, ctx, f.fleet[0].ID, invokeSamples)
	fmt.Printf("channel.Invoke(ping) on %s, %d sequential calls\n", f.fleet[0].ID, invokeSamples)
	report(b, "method round trip p50 (target <= 20 ms)", ms(pct(invoke, 50)), "ms-invoke-p50")
	report(b, "method round trip p99", ms(pct(invoke, 99)), "ms-invoke-p99")
	report(b, "  ratio p50 / raw method echo p50", float64(pct(invoke, 50))/float64(pct(methodEcho, 50)), "x-invoke-vs-echo")
	time.Sleep(time.Second)

	// A four-wave rollout over the fleet.
	version := fmt.Sprintf("2.%d.0", n)
	r := f.runRollout(b, ctx, version, "ab", fleetQuery, n, b.StartTimer)
	b.StopTimer()
	rolloutID, rres, rolloutWall, claimed := r.id, r.result, r.wall, r.claim
	var updated int
	if err := f.reg.Pool().QueryRow(ctx, "SELECT count(*) FROM devices WHERE reported #>> '{firmware,version}' = $1", version).Scan(&updated); err != nil {
		b.Fatal(err)
	}
	if updated != n {
		b.Fatalf("%d of %d devices report firmware %s after the rollout", updated, n, version)
	}
	rEvents, rRuns, rWorkflow := waitHistory(b, ctx, f.tc, rolloutID, rres.Runs)
	fmt.Printf("rollout %s: waves 1%%,10%%,50%%,100%%, bake 0, poll 250 ms, simulated updates without delay\n", rolloutID)
	report(b, "claim + all four waves completed (target <= 60 s)", rolloutWall.Seconds(), "s-rollout")
	report(b, "  of which CreateRollout (claim the devices)", claimed.Seconds(), "s-rollout-claim")
	report(b, "  of which the FirmwareRollout workflow (start to close)", rWorkflow.Seconds(), "s-rollout-workflow")
	report(b, "  time per device", ms(rolloutWall/time.Duration(n)), "ms/dev-rollout")
	report(b, "  ratio whole rollout / raw burst", float64(rolloutWall)/float64(burst), "x-rollout-vs-burst")
	report(b, "  history events (all runs)", float64(rEvents), "events-rollout")
	report(b, "  workflow runs", float64(rRuns), "runs-rollout")
	return configureHistory{desired: dEvents, method: mEvents, rollout: rEvents, desiredRuns: dRuns, methodRuns: mRuns, rolloutRuns: rRuns}
}

// configureFleet is one fleet size's backend: registry, Temporal, a gateway and a simulator process, and a
// worker in this process whose activities reach the devices through a channel.
type configureFleet struct {
	*backend
	env     []string
	mqttURL string
	natsURL string
	fleet   []creds.Credential // the simulated devices (tag fleet=sim)
	dir     string             // the logs and credentials files (fleet.ndjson: the simulator's)
	echo    creds.Credential   // a device driven by a bare paho client (tag fleet=echo)
}

// startConfigureBackend provisions n simulated devices and one echo device into a fresh database, starts
// a NATS node in this process, the gateway (relaying from it) and the simulator as processes of the CLI, and a worker in this
// process with the registry and a device channel; it returns once every device is connected, has
// reported its capabilities and shows online in the registry. Everything stops when b ends.
func startConfigureBackend(b *testing.B, ctx context.Context, n int) *configureFleet {
	b.Helper()
	return startFleetBackend(b, ctx, n, false)
}

// startFleetBackend is startConfigureBackend; with x509 the simulated devices are provisioned with client
// certificates of a fleet CA of their own (`provision --auth x509`) and connect to the gateway's TLS listener,
// which trusts that CA, and the worker signs certificate renewals with it (docs/architecture.md,
// "Certificate renewal").
func startFleetBackend(b *testing.B, ctx context.Context, n int, x509 bool) *configureFleet {
	b.Helper()
	be := openBackend(b, testenv.Postgres(b), fmt.Sprintf("bench-configure-%d", n))
	reg, tc := be.reg, be.tc

	port, err := stack.FreePort()
	if err != nil {
		b.Fatal(err)
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	f := &configureFleet{backend: be, mqttURL: "tcp://" + listen}
	// The gateway relays downlinks from a NATS node of this process; the worker's channel reaches devices
	// through it.
	natsURL := testenv.NATS(b)
	f.natsURL = natsURL
	f.env = be.env("FLEETFLOW_MQTT_URL="+f.mqttURL, "FLEETFLOW_GATEWAY_LISTEN="+listen, "FLEETFLOW_NATS_URL="+natsURL)

	dir := b.TempDir()
	f.dir = dir
	gatewayArgs := []string{"gateway"}
	var simArgs []string
	caDir := filepath.Join(dir, "ca")
	tlsListen := ""
	if x509 {
		run(b, ctx, f.env, "ca", "init", "--ca-dir", caDir, "-o", "json")
		l, err := pki.EnsureLocal(filepath.Join(dir, "tls"), pki.LocalHosts, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		tport, err := stack.FreePort()
		if err != nil {
			b.Fatal(err)
		}
		tlsListen = fmt.Sprintf("127.0.0.1:%d", tport)
		gatewayArgs = append(gatewayArgs, "--tls-listen", tlsListen, "--tls-cert", l.Cert, "--tls-key", l.Key,
			"--device-ca", pki.DeviceCAIn(caDir).Cert)
		simArgs = []string{"--mqtt-url", "ssl://" + tlsListen, "--ca-file", l.CA}
	}
	f.startProcess(b, ctx, filepath.Join(dir, "gateway.log"), gatewayArgs...)
	for !stack.Reachable(listen, 200*time.Millisecond) || (tlsListen != "" && !stack.Reachable(tlsListen, 200*time.Millisecond)) {
		time.Sleep(50 * time.Millisecond)
	}

	ch, err := channel.Dial(ctx, channel.Config{URL: natsURL, Name: "bench-worker", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(ch.Close)
	acts := activities.New(reg, ch)
	if x509 {
		acts.CA = pki.NewSigner(caDir)
	}
	w := fleetworker.New(tc, be.queue, acts)
	if err := w.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(w.Stop)

	// Provisioning runs on the worker too.
	fleetFile, echoFile := filepath.Join(dir, "fleet.ndjson"), filepath.Join(dir, "echo.ndjson")
	provision := []string{"provision", "--count", fmt.Sprint(n), "--prefix", fmt.Sprintf("cfg%d-", n), "--tags", "fleet=sim",
		"--creds-out", fleetFile, "-o", "json"}
	if x509 {
		provision = append(provision, "--auth", "x509", "--ca-dir", caDir)
	}
	run(b, ctx, f.env, provision...)
	run(b, ctx, f.env, "provision", "--count", "1", "--prefix", fmt.Sprintf("echo%d-", n), "--tags", "fleet=echo",
		"--creds-out", echoFile, "-o", "json")
	if f.fleet, err = creds.ReadFile(fleetFile); err != nil {
		b.Fatal(err)
	}
	echo, err := creds.ReadFile(echoFile)
	if err != nil || len(echo) != 1 || len(f.fleet) != n {
		b.Fatalf("credentials: %d devices, %d echo devices, %v", len(f.fleet), len(echo), err)
	}
	f.echo = echo[0]
	if reportedScheme {
		// Set on the running gateway, which follows it; the echo device checks it is enforced.
		setReportedScheme(b, ctx, f.env)
		requireReportedScheme(b, f.mqttURL, f.echo)
	}

	// The simulator prints a status line every second; stdout, not debug logging, so that it costs the
	// simulated devices nothing while the benchmark measures.
	t0 := time.Now()
	sim := f.startProcess(b, ctx, filepath.Join(dir, "simulator.log"), append([]string{"simulate", "--creds", fleetFile, "--telemetry-every", "0",
		"--concurrency", "128", "--status-every", "1s"}, simArgs...)...)
	statusRe := regexp.MustCompile(`connected=(\d+) refused=(\d+) failed=(\d+) reported=(\d+)`)
	var last string
	for sc := bufio.NewScanner(sim); ; {
		if !sc.Scan() {
			b.Fatalf("simulator ended: %v; last status: %s", sc.Err(), last)
		}
		last = sc.Text()
		m := statusRe.FindStringSubmatch(last)
		if m == nil {
			continue
		}
		if m[2] != "0" || m[3] != "0" {
			b.Fatalf("simulator: %s", last)
		}
		if m[1] == fmt.Sprint(n) && m[4] == fmt.Sprint(n) {
			go func() { _, _ = io.Copy(io.Discard, sim) }()
			break
		}
		if time.Since(t0) > 3*time.Minute {
			b.Fatalf("simulator not ready after 3 minutes: %s", last)
		}
	}
	for {
		var online int
		if err := reg.Pool().QueryRow(ctx, "SELECT count(*) FROM devices WHERE online AND tags @> '{\"fleet\":\"sim\"}'").Scan(&online); err != nil {
			b.Fatal(err)
		}
		if online == n {
			break
		}
		if time.Since(t0) > 4*time.Minute {
			b.Fatalf("registry shows %d of %d devices online", online, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Printf("fleet of %d connected and reported in %s\n", n, time.Since(t0).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // let the connect storm's batches settle
	return f
}

// startProcess runs the CLI with args in the fleet's environment until b ends, its stderr going to logPath,
// and returns its stdout.
func (f *configureFleet) startProcess(b *testing.B, ctx context.Context, logPath string, args ...string) io.Reader {
	b.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, bins.CLI, args...)
	cmd.Env = append(os.Environ(), f.env...)
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = logf.Close()
	})
	return out
}

// invokeRoundTrips times sequential channel.Invoke calls of ping on one device through a channel of its own,
// as `fleetflow method invoke` makes them.
func (f *configureFleet) invokeRoundTrips(b *testing.B, ctx context.Context, id string, samples int) []time.Duration {
	ch, err := channel.Dial(ctx, channel.Config{URL: f.natsURL, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer ch.Close()
	var ds []time.Duration
	for i := 0; i < warmupSamples+samples; i++ {
		t0 := time.Now()
		res, err := ch.Invoke(ctx, fleet.MethodCall{DeviceID: id, Method: "ping"}, 5*time.Second)
		took := time.Since(t0)
		if err != nil || res.Outcome != fleet.MethodSucceeded {
			b.Fatalf("invoke ping on %s: %+v, %v", id, res, err)
		}
		if i >= warmupSamples {
			ds = append(ds, took)
		}
	}
	return ds
}

// echoRig is a bare NATS connection standing for a service and a bare paho device that echoes what it gets:
// it signals each desired patch it receives, and answers method requests 200.
type echoRig struct {
	svc *nats.Conn
	dev paho.Client
	id  string
	got chan string // desired topics the device received
}

func startEchoRig(b *testing.B, f *configureFleet) *echoRig {
	b.Helper()
	r := &echoRig{id: f.echo.ID, got: make(chan string, 64)}
	prefix := "devices/" + r.id + "/"
	dev := paho.NewClient(paho.NewClientOptions().AddBroker(f.mqttURL).SetClientID(r.id).SetUsername(r.id).
		SetPassword(f.echo.Secret).SetProtocolVersion(4).SetAutoReconnect(false).SetOrderMatters(false))
	connect(b, dev)
	r.dev = dev
	echo := func(_ paho.Client, m paho.Message) {
		parts := strings.Split(strings.TrimPrefix(m.Topic(), prefix), "/")
		switch {
		case len(parts) == 3 && parts[0] == "twin" && parts[1] == "desired":
			select {
			case r.got <- m.Topic():
			default:
			}
		case len(parts) == 4 && parts[0] == "methods" && parts[1] == "req":
			dev.Publish(prefix+"methods/res/200/"+parts[3], 1, false, []byte(`{"pong":true}`))
		}
	}
	subscribe(b, dev, map[string]byte{prefix + "twin/desired/+": 1, prefix + "methods/req/+/+": 0}, echo)

	svc, err := nats.Connect(f.natsURL)
	if err != nil {
		b.Fatalf("raw NATS connect: %v", err)
	}
	r.svc = svc
	// The gateway's subscription for the device is in place once a request finds it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := r.request(5 * time.Second); err == nil {
			break
		} else if time.Now().After(deadline) {
			b.Fatalf("raw method to %s: %v", r.id, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return r
}

func (r *echoRig) request(timeout time.Duration) (*nats.Msg, error) {
	m := nats.NewMsg(protocol.DeviceSubject(r.id, protocol.SubjectMethod))
	m.Header.Set(protocol.HeaderMethod, "ping")
	m.Header.Set(protocol.HeaderTimeout, protocol.FormatTimeout(timeout))
	m.Data = []byte(`{}`)
	return r.svc.RequestMsg(m, timeout)
}

func desiredMsg(id string, version int, body string) *nats.Msg {
	m := nats.NewMsg(protocol.DeviceSubject(id, protocol.SubjectDesired))
	m.Header.Set(protocol.HeaderVersion, strconv.Itoa(version))
	m.Data = []byte(body)
	return m
}

func connect(b *testing.B, c paho.Client) {
	b.Helper()
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatalf("raw connect: %v", tok.Error())
	}
}

func subscribe(b *testing.B, c paho.Client, filters map[string]byte, h paho.MessageHandler) {
	b.Helper()
	tok := c.SubscribeMultiple(filters, h)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatalf("raw subscribe: %v", tok.Error())
	}
}

func (r *echoRig) close() {
	r.svc.Close()
	r.dev.Disconnect(100)
}

// pubAcks times sequential publishes of the service connection, each until the NATS server confirmed it
// (a flush), to a device subject no gateway subscribes to.
func (r *echoRig) pubAcks(b *testing.B, samples int) []time.Duration {
	var ds []time.Duration
	for i := 0; i < warmupSamples+samples; i++ {
		t0 := time.Now()
		if err := r.svc.PublishMsg(desiredMsg("bench-nobody", 1, `{}`)); err != nil {
			b.Fatalf("raw publish: %v", err)
		}
		if err := r.svc.FlushTimeout(5 * time.Second); err != nil {
			b.Fatalf("raw flush: %v", err)
		}
		if i >= warmupSamples {
			ds = append(ds, time.Since(t0))
		}
	}
	return ds
}

// roundTrips times sequential trips through the device: kind "desired" publishes a desired patch and waits
// until the device has it; "method" makes a method request and waits for the device's answer.
func (r *echoRig) roundTrips(b *testing.B, samples int, kind string) []time.Duration {
	prefix := "devices/" + r.id + "/"
	var ds []time.Duration
	for i := 0; i < warmupSamples+samples; i++ {
		v := i + 2
		t0 := time.Now()
		if kind == "method" {
			if _, err := r.request(5 * time.Second); err != nil {
				b.Fatalf("raw method %d: %v", v, err)
			}
		} else {
			want := prefix + "twin/desired/" + strconv.Itoa(v)
			if err := r.svc.PublishMsg(desiredMsg(r.id, v, `{"telemetryInterval":`+strconv.Itoa(v)+`}`)); err != nil {
				b.Fatalf("raw desired %d: %v", v, err)
			}
			timeout := time.After(5 * time.Second)
		wait:
			for {
				select {
				case got := <-r.got:
					if got == want {
						break wait
					}
				case <-timeout:
					b.Fatalf("raw desired %d: not delivered in 5 s", v)
				}
			}
		}
		if i >= warmupSamples {
			ds = append(ds, time.Since(t0))
		}
	}
	return ds
}

// burst publishes one desired patch to each device as fast as one NATS connection pipelines them and returns
// the time until the server confirmed them all. Version 1 is the devices' current desired version or older,
// so devices receive the message and ignore it.
func (r *echoRig) burst(b *testing.B, fleet []creds.Credential) time.Duration {
	t0 := time.Now()
	for _, c := range fleet {
		if err := r.svc.PublishMsg(desiredMsg(c.ID, 1, `{}`)); err != nil {
			b.Fatalf("raw burst: %v", err)
		}
	}
	if err := r.svc.FlushTimeout(time.Minute); err != nil {
		b.Fatalf("raw burst: %v", err)
	}
	return time.Since(t0)
}

var jobIDRe = regexp.MustCompile(`(?m)^job (\S+) started`)

// jobID reads the workflow id from `fleetflow job start` output.
func jobID(b *testing.B, out string) string {
	m := jobIDRe.FindStringSubmatch(out)
	if m == nil {
		b.Fatalf("no job id in:\n%s", out)
	}
	return m[1]
}

// waitHistory is historySize once visibility lists every run of the chain, closed.
func waitHistory(b *testing.B, ctx context.Context, tc client.Client, id string, runs int) (int, int, time.Duration) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		events, got, took := historySize(b, ctx, tc, id)
		if (got >= runs && took > 0) || time.Now().After(deadline) {
			return events, got, took
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// pct is the p-th percentile of ds (nearest rank).
func pct(ds []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p/100*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// loadAvg is the machine's 1, 5 and 15 minute load averages, so a reader can see whether something else ran.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
