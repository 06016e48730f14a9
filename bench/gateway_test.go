package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/stack"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

var connectDevices = config.EnvInt("FLEETFLOW_BENCH_CONNECT_DEVICES", 10_000)

// BenchmarkGatewayConnect10k connects 10,000 simulated devices (one process) to the gateway (another
// process) and reports connects per second and resident memory per connected device on both sides.
func BenchmarkGatewayConnect10k(b *testing.B) {
	if lim, err := openFileLimit(); err == nil && lim < uint64(connectDevices)+1000 {
		b.Fatalf("open-file limit %d is too low for %d connections", lim, connectDevices)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	be := startBackend(b, testenv.Postgres(b), "bench-gw")
	reg := be.reg
	port, err := stack.FreePort()
	if err != nil {
		b.Fatal(err)
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	env := be.env("FLEETFLOW_MQTT_URL=tcp://"+listen, "FLEETFLOW_GATEWAY_LISTEN="+listen)
	credsFile := filepath.Join(b.TempDir(), "creds.ndjson")
	run(b, ctx, env, "provision", "--count", fmt.Sprint(connectDevices), "--prefix", "gw-", "--creds-out", credsFile, "-o", "json")
	if reportedScheme {
		setReportedScheme(b, ctx, env)
	}

	gw := exec.CommandContext(ctx, bins.CLI, "gateway")
	gw.Env = append(os.Environ(), env...)
	gw.Stdout, gw.Stderr = io.Discard, io.Discard
	if err := gw.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = gw.Process.Kill(); _ = gw.Wait() }()
	for !stack.Reachable(listen, 200*time.Millisecond) {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	gwBase, err := rssKiB(gw.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}

	// Phase 1: bare MQTT CONNECTs (CONNECT to CONNACK, each authenticated against the registry with a cold
	// cache), 256 at a time, then disconnect them all.
	list, err := creds.ReadFile(credsFile)
	if err != nil {
		b.Fatal(err)
	}
	if reportedScheme {
		// One device of the fleet (the last) checks that the gateway refuses a violating report.
		requireReportedScheme(b, "tcp://"+listen, list[len(list)-1])
		time.Sleep(time.Second) // let the gateway record the disconnect
	}
	b.ResetTimer()
	bare := connectAll(b, "tcp://"+listen, list, 256)
	b.StopTimer()
	time.Sleep(time.Second) // let the gateway record the disconnects

	// Phase 2: the simulator, a device each: CONNECT, subscriptions, birth, twin/get, capabilities report.
	sim := exec.CommandContext(ctx, bins.CLI, "-v", "simulate", "--creds", credsFile, "--telemetry-every", "0",
		"--concurrency", "128", "--status-every", "1h")
	sim.Env = append(os.Environ(), env...)
	logs, err := sim.StderrPipe()
	if err != nil {
		b.Fatal(err)
	}
	sim.Stdout = io.Discard
	b.StartTimer()
	if err := sim.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = sim.Process.Kill(); _ = sim.Wait() }()
	// The simulator logs when every device has connected (CONNECT, subscriptions, birth and the twin/get the
	// contract requires on connect) and again when every capabilities report has been acknowledged.
	connectRe := regexp.MustCompile(`initial connects done.*elapsed=(\S+).*connected=(\d+)`)
	reportRe := regexp.MustCompile(`capabilities reported.*elapsed=(\S+).*reported=(\d+)`)
	var elapsed, reportedIn time.Duration
	var connected, reported string
	sc := bufio.NewScanner(logs)
	for sc.Scan() {
		if m := connectRe.FindStringSubmatch(sc.Text()); m != nil {
			if elapsed, err = time.ParseDuration(m[1]); err != nil {
				b.Fatal(err)
			}
			connected = m[2]
		}
		if m := reportRe.FindStringSubmatch(sc.Text()); m != nil {
			if reportedIn, err = time.ParseDuration(m[1]); err != nil {
				b.Fatal(err)
			}
			reported = m[2]
			break
		}
	}
	b.StopTimer()
	go func() { _, _ = io.Copy(io.Discard, logs) }()
	if connected != fmt.Sprint(connectDevices) || reported != fmt.Sprint(connectDevices) {
		b.Fatalf("simulator connected %s and reported %s of %d devices (last log line: %s)", connected, reported, connectDevices, sc.Text())
	}
	time.Sleep(2 * time.Second) // let buffers and batches settle before reading memory
	var online int
	if err := reg.Pool().QueryRow(ctx, "SELECT count(*) FROM devices WHERE online").Scan(&online); err != nil {
		b.Fatal(err)
	}
	if online != connectDevices {
		b.Fatalf("registry shows %d of %d devices online", online, connectDevices)
	}
	gwRSS, err := rssKiB(gw.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	simRSS, err := rssKiB(sim.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	fmt.Printf("%d devices; gateway, simulator and Postgres share the machine's 2 cores; reported schema in force: %v\n", connectDevices, reportedScheme)
	report(b, "bare MQTT connects per second, registry auth, cold cache (target >= 2,000)", bare, "connects/s")
	report(b, "device connects per second: CONNECT+SUBSCRIBE+birth+twin/get", float64(connectDevices)/elapsed.Seconds(), "device-connects/s")
	report(b, "seconds until every capabilities report was applied", reportedIn.Seconds(), "s-all-reported")
	report(b, "gateway RSS growth per connected device (target <= 100)", float64(gwRSS-gwBase)/float64(connectDevices), "KiB/dev-gateway")
	report(b, "gateway RSS total", float64(gwRSS)/1024, "MiB-gateway")
	report(b, "simulator RSS per device, whole process (target <= 64)", float64(simRSS)/float64(connectDevices), "KiB/dev-simulator")
}

// connectAll opens one bare MQTT connection per credential, concurrency at a time, and returns CONNECTs
// per second; every connection must be accepted. It closes them before returning.
func connectAll(b *testing.B, url string, list []creds.Credential, concurrency int) float64 {
	clients := make([]paho.Client, len(list))
	jobs := make(chan int)
	errs := make(chan error, len(list))
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				c := list[i]
				cl := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID(c.ID).SetUsername(c.ID).
					SetPassword(c.Secret).SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(30 * time.Second))
				tok := cl.Connect()
				tok.Wait()
				if err := tok.Error(); err != nil {
					errs <- fmt.Errorf("%s: %w", c.ID, err)
					continue
				}
				clients[i] = cl
			}
		}()
	}
	for i := range list {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(t0)
	close(errs)
	for err := range errs {
		b.Fatalf("bare connect refused: %v", err)
	}
	for _, cl := range clients {
		cl.Disconnect(0)
	}
	return float64(len(list)) / elapsed.Seconds()
}

func openFileLimit() (uint64, error) {
	var r syscall.Rlimit
	err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r)
	return r.Cur, err
}
