package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
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
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleetworker"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/rollout"
	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/internal/stack"
	"github.com/fleetflow/fleetflow/internal/testenv"
	"github.com/fleetflow/fleetflow/workflows"
)

// configureDevices is the fleet BenchmarkConfigure10k configures (FLEETFLOW_BENCH_CONFIGURE_DEVICES overrides
// it). A fleet a tenth of that size runs first, so that history sizes can be compared across fleet sizes.
var configureDevices = config.EnvInt("FLEETFLOW_BENCH_CONFIGURE_DEVICES", 10_000)

// Sample counts of the sequential round-trip measurements (after a few warm-up calls each).
const (
	rawSamples    = 500
	invokeSamples = 200
	warmupSamples = 10
)

// configureHistory is the Temporal history (events over all continue-as-new runs, and runs) of one fleet
// size's operations, for the comparison across sizes.
type configureHistory struct {
	desired, method, rollout             int
	desiredRuns, methodRuns, rolloutRuns int
}

// BenchmarkConfigure10k connects a simulated fleet over MQTT (gateway and simulator in processes of their
// own, the worker in this one with a device channel) and measures, against raw MQTT round trips and a raw
// QoS 1 publish burst measured on the same gateway in the same run:
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
		"Temporal share the machine's 2 cores; load average before measuring: %s\n", n, loadAvg())

	// The yardsticks: raw MQTT through the same gateway, with a bare paho device and service client.
	rig := startEchoRig(b, f)
	pubAck := rig.pubAcks(b, rawSamples)
	desiredEcho := rig.roundTrips(b, rawSamples, "desired")
	methodEcho := rig.roundTrips(b, rawSamples, "method")
	burst := rig.burst(b, f.fleet)
	rig.close()
	time.Sleep(time.Second)

	fmt.Println("raw MQTT through the gateway (bare paho clients)")
	report(b, "sequential QoS 1 PUBLISH->PUBACK, service->gateway, p50", ms(pct(pubAck, 50)), "ms-raw-puback-p50")
	report(b, "desired echo: service PUBLISH -> device -> reported topic -> service, p50", ms(pct(desiredEcho, 50)), "ms-raw-desired-echo-p50")
	report(b, "desired echo p99", ms(pct(desiredEcho, 99)), "ms-raw-desired-echo-p99")
	report(b, "method echo: request -> device -> response -> service, p50", ms(pct(methodEcho, 50)), "ms-raw-method-echo-p50")
	report(b, "method echo p99", ms(pct(methodEcho, 99)), "ms-raw-method-echo-p99")
	report(b, fmt.Sprintf("pipelined QoS 1 burst, 1 desired msg to each of %d devices, all PUBACKed", n), burst.Seconds(), "s-raw-burst")
	report(b, "  raw burst throughput", float64(n)/burst.Seconds(), "msg/s-raw-burst")

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
	report(b, "  ratio per device / raw desired echo p50", float64(desiredWall)/float64(n)/float64(pct(desiredEcho, 50)), "x-desired-vs-echo")
	report(b, "  ratio per device / raw PUBLISH->PUBACK p50", float64(desiredWall)/float64(n)/float64(pct(pubAck, 50)), "x-desired-vs-puback")
	report(b, "  ratio whole job / raw burst (per device / per raw message)", float64(desiredWall)/float64(burst), "x-desired-vs-burst")
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
	report(b, "  ratio per device / raw method echo p50", float64(methodWall)/float64(n)/float64(pct(methodEcho, 50)), "x-method-vs-echo")
	report(b, "  ratio whole job / raw burst", float64(methodWall)/float64(burst), "x-method-vs-burst")
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
	fw, err := f.reg.AddFirmware(ctx, fleet.Firmware{Version: version, URL: "https://fw.example/" + version + ".bin",
		SHA256: strings.Repeat("ab", 32)})
	if err != nil {
		b.Fatal(err)
	}
	waves, err := rollout.ParseWaves("1%,10%,50%,100%")
	if err != nil {
		b.Fatal(err)
	}
	th, err := rollout.ParseThreshold("5%")
	if err != nil {
		b.Fatal(err)
	}
	rolloutID := "rollout-" + version + "-1"
	b.StartTimer()
	t0 = time.Now()
	total, err := f.reg.CreateRollout(ctx, fleet.NewRollout{ID: rolloutID, Version: version, Query: fleetQuery, Spec: []byte("{}")})
	if err != nil {
		b.Fatal(err)
	}
	claimed := time.Since(t0)
	rrun, err := f.tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: rolloutID, TaskQueue: f.queue, WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
		TypedSearchAttributes: temporal.NewSearchAttributes(searchattr.Op.ValueSet(searchattr.OpRollout),
			searchattr.State.ValueSet(searchattr.StateRunning), searchattr.Total.ValueSet(total), searchattr.Stage.ValueSet("starting")),
	}, workflows.FirmwareRollout, workflows.RolloutInput{RolloutID: rolloutID,
		Firmware: workflows.FirmwareRef{Version: fw.Version, URL: fw.URL, SHA256: fw.SHA256},
		Total:    total, Waves: waves, MaxFailures: th, PollInterval: 250 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	var rres workflows.RolloutResult
	err = rrun.Get(ctx, &rres)
	rolloutWall := time.Since(t0)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if total != int64(n) || rres.State != "completed" || rres.Counts.Succeeded != total {
		b.Fatalf("rollout of %d devices: %s, %s", total, rres.State, rres.Counts)
	}
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
	token   string
	fleet   []creds.Credential // the simulated devices (tag fleet=sim)
	echo    creds.Credential   // a device driven by a bare paho client (tag fleet=echo)
}

// startConfigureBackend provisions n simulated devices and one echo device into a fresh database, starts
// the gateway (with a service token) and the simulator as processes of the CLI, and a worker in this
// process with the registry and a device channel; it returns once every device is connected, has
// reported its capabilities and shows online in the registry. Everything stops when b ends.
func startConfigureBackend(b *testing.B, ctx context.Context, n int) *configureFleet {
	b.Helper()
	be := openBackend(b, testenv.Postgres(b), fmt.Sprintf("bench-configure-%d", n))
	reg, tc := be.reg, be.tc

	port, err := stack.FreePort()
	if err != nil {
		b.Fatal(err)
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	f := &configureFleet{backend: be, mqttURL: "tcp://" + listen, token: hex.EncodeToString(tok)}
	// The gateway relays downlinks from a NATS node of this process; the worker's channel reaches devices
	// through it.
	natsURL := testenv.NATS(b)
	f.natsURL = natsURL
	f.env = be.env("FLEETFLOW_MQTT_URL="+f.mqttURL, "FLEETFLOW_GATEWAY_LISTEN="+listen, "FLEETFLOW_SERVICE_TOKEN="+f.token,
		"FLEETFLOW_NATS_URL="+natsURL)

	dir := b.TempDir()
	f.startProcess(b, ctx, filepath.Join(dir, "gateway.log"), "gateway")
	for !stack.Reachable(listen, 200*time.Millisecond) {
		time.Sleep(50 * time.Millisecond)
	}

	ch, err := channel.Dial(ctx, channel.Config{URL: natsURL, Name: "bench-worker", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(ch.Close)
	w := fleetworker.New(tc, be.queue, activities.New(reg, ch))
	if err := w.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(w.Stop)

	// Provisioning runs on the worker too.
	fleetFile, echoFile := filepath.Join(dir, "fleet.ndjson"), filepath.Join(dir, "echo.ndjson")
	run(b, ctx, f.env, "provision", "--count", fmt.Sprint(n), "--prefix", fmt.Sprintf("cfg%d-", n), "--tags", "fleet=sim",
		"--creds-out", fleetFile, "-o", "json")
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

	// The simulator prints a status line every second; stdout, not debug logging, so that it costs the
	// simulated devices nothing while the benchmark measures.
	t0 := time.Now()
	sim := f.startProcess(b, ctx, filepath.Join(dir, "simulator.log"), "simulate", "--creds", fleetFile, "--telemetry-every", "0",
		"--concurrency", "128", "--status-every", "1s")
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

// echoRig is a bare paho service client and a bare paho device that echoes what it gets: desired patches
// back on its reported topic, method requests as 200 responses.
type echoRig struct {
	svc, dev paho.Client
	id       string
	got      chan string // topics the service client received
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
			dev.Publish(prefix+"twin/reported/"+parts[2], 1, false, m.Payload())
		case len(parts) == 4 && parts[0] == "methods" && parts[1] == "req":
			dev.Publish(prefix+"methods/res/200/"+parts[3], 1, false, []byte(`{"pong":true}`))
		}
	}
	subscribe(b, dev, map[string]byte{prefix + "twin/desired/+": 1, prefix + "methods/req/+/+": 0}, echo)

	svc := paho.NewClient(paho.NewClientOptions().AddBroker(f.mqttURL).SetClientID("svc:bench-raw").
		SetUsername(gateway.ServiceUsername).SetPassword(f.token).SetProtocolVersion(4).SetAutoReconnect(false).
		SetOrderMatters(false))
	connect(b, svc)
	r.svc = svc
	subscribe(b, svc, map[string]byte{prefix + "twin/reported/+": 0, prefix + "methods/res/+/+": 0},
		func(_ paho.Client, m paho.Message) {
			select {
			case r.got <- m.Topic():
			default:
			}
		})
	return r
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
	r.svc.Disconnect(100)
	r.dev.Disconnect(100)
}

// pubAcks times sequential QoS 1 publishes of the service client until each PUBACK, to a device topic no
// device subscribes to (only the gateway's own inline subscriber sees it).
func (r *echoRig) pubAcks(b *testing.B, samples int) []time.Duration {
	var ds []time.Duration
	for i := 0; i < warmupSamples+samples; i++ {
		t0 := time.Now()
		tok := r.svc.Publish("devices/"+r.id+"/bench/raw", 1, false, []byte(`{}`))
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			b.Fatalf("raw publish: %v", tok.Error())
		}
		if i >= warmupSamples {
			ds = append(ds, time.Since(t0))
		}
	}
	return ds
}

// roundTrips times sequential echoes through the device: kind "desired" publishes a desired patch (QoS 1)
// and waits for the device's reported publish; "method" publishes a method request and waits for its
// response.
func (r *echoRig) roundTrips(b *testing.B, samples int, kind string) []time.Duration {
	prefix := "devices/" + r.id + "/"
	var ds []time.Duration
	for i := 0; i < warmupSamples+samples; i++ {
		rid := strconv.Itoa(i + 2)
		topic, want, body := prefix+"twin/desired/"+rid, prefix+"twin/reported/"+rid, `{"telemetryInterval":`+rid+`}`
		if kind == "method" {
			topic, want, body = prefix+"methods/req/ping/"+rid, prefix+"methods/res/200/"+rid, `{}`
		}
		t0 := time.Now()
		r.svc.Publish(topic, 1, false, []byte(body))
		timeout := time.After(5 * time.Second)
	wait:
		for {
			select {
			case got := <-r.got:
				if got == want {
					break wait
				}
			case <-timeout:
				b.Fatalf("raw %s echo %s: no answer in 5 s", kind, rid)
			}
		}
		if i >= warmupSamples {
			ds = append(ds, time.Since(t0))
		}
	}
	return ds
}

// burst publishes one desired patch at QoS 1 to each device as fast as paho pipelines them on one
// connection and returns the time until the last PUBACK. Version 1 is the devices' current desired version
// or older, so devices receive the message and ignore it.
func (r *echoRig) burst(b *testing.B, fleet []creds.Credential) time.Duration {
	toks := make([]paho.Token, len(fleet))
	t0 := time.Now()
	for i, c := range fleet {
		toks[i] = r.svc.Publish("devices/"+c.ID+"/twin/desired/1", 1, false, []byte(`{}`))
	}
	for _, tok := range toks {
		if !tok.WaitTimeout(time.Minute) || tok.Error() != nil {
			b.Fatalf("raw burst: %v", tok.Error())
		}
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
