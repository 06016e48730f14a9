package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/fleetworker"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/stack"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

// lateJoiners is how many devices BenchmarkConfigLateJoiners provisions after the configuration is applied
// (FLEETFLOW_BENCH_LATE_DEVICES overrides it); bystanders is the rest of the fleet, which the target does
// not select.
var (
	lateJoiners = config.EnvInt("FLEETFLOW_BENCH_LATE_DEVICES", 1_000)
	bystanders  = config.EnvInt("FLEETFLOW_BENCH_LATE_BYSTANDERS", 20_000)
)

// BenchmarkConfigLateJoiners applies a declarative configuration (`fleetflow config apply`), then provisions
// lateJoiners devices its target selects (`fleetflow provision`) and connects them with the simulator, and
// measures how long until the configuration is applied to every one of them (written to their desired
// properties) and acknowledged by every one (reported back by the connected devices). Nothing tells the
// configuration about the new devices but the registry's wake-up (docs/architecture.md, "Declarative
// configurations"). Gateway and simulator run as processes of the CLI, the worker in this process.
func BenchmarkConfigLateJoiners(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	be := openBackend(b, testenv.Postgres(b), "bench-config-late")
	port, err := stack.FreePort()
	if err != nil {
		b.Fatal(err)
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	f := &configureFleet{backend: be, mqttURL: "tcp://" + listen, natsURL: testenv.NATS(b)}
	f.env = be.env("FLEETFLOW_MQTT_URL="+f.mqttURL, "FLEETFLOW_GATEWAY_LISTEN="+listen, "FLEETFLOW_NATS_URL="+f.natsURL)
	dir := b.TempDir()
	f.startProcess(b, ctx, filepath.Join(dir, "gateway.log"), "gateway")
	for !stack.Reachable(listen, 200*time.Millisecond) {
		time.Sleep(50 * time.Millisecond)
	}
	ch, err := channel.Dial(ctx, channel.Config{URL: f.natsURL, Name: "bench-worker", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(ch.Close)
	acts := activities.New(be.reg, ch)
	feed := registry.NewChangeFeed(be.reg)
	go feed.Run(ctx)
	acts.Changes = feed
	w := fleetworker.New(be.tc, be.queue, acts)
	if err := w.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(w.Stop)

	run(b, ctx, f.env, "provision", "--count", fmt.Sprint(bystanders), "--prefix", "other-", "--tags", "site=other",
		"--creds-out", filepath.Join(dir, "other.ndjson"), "-o", "json")
	run(b, ctx, f.env, "config", "apply", "late", "--target", "SELECT * FROM devices WHERE tags.site = 'late'", "--priority", "1",
		"--set-desired", `{"telemetryInterval": 45, "mode": "eco"}`, "--metric", "online=SELECT * FROM devices WHERE connectionState = 'connected'")
	for {
		if _, err := be.reg.GetConfig(ctx, "late"); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // the configuration's first pass is watching
	fmt.Printf("configuration applied over a fleet of %d other devices; load average before measuring: %s\n", bystanders, loadAvg())

	b.ResetTimer()
	t0 := time.Now()
	lateFile := filepath.Join(dir, "late.ndjson")
	run(b, ctx, f.env, "provision", "--count", fmt.Sprint(lateJoiners), "--prefix", "late-", "--tags", "site=late",
		"--creds-out", lateFile, "-o", "json")
	provisioned := time.Since(t0)
	sim := f.startProcess(b, ctx, filepath.Join(dir, "simulator.log"), "simulate", "--creds", lateFile, "--telemetry-every", "0",
		"--concurrency", "128", "--status-every", "1s")
	connected := make(chan time.Duration, 1)
	go func() {
		re := regexp.MustCompile(`connected=(\d+)`)
		sc := bufio.NewScanner(sim)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil && m[1] == fmt.Sprint(lateJoiners) {
				connected <- time.Since(t0)
				break
			}
		}
		_, _ = io.Copy(io.Discard, sim)
	}()
	var applied, acked time.Duration
	for applied == 0 || acked == 0 {
		c, err := be.reg.ConfigCounts(ctx, "late")
		if err != nil {
			b.Fatal(err)
		}
		if applied == 0 && c.Applied == int64(lateJoiners) {
			applied = time.Since(t0)
		}
		if acked == 0 && c.Acked == int64(lateJoiners) {
			acked = time.Since(t0)
		}
		if time.Since(t0) > 3*time.Minute {
			b.Fatalf("after 3 minutes: %+v", c)
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.StopTimer()
	var conn time.Duration
	select {
	case conn = <-connected:
	case <-time.After(10 * time.Second):
	}
	fmt.Printf("%d late joiners (tag site=late) among %d other devices, configuration applied before they existed\n", lateJoiners, bystanders)
	report(b, "provision command (devices exist)", provisioned.Seconds(), "s-provisioned")
	report(b, "configuration written to every late joiner", applied.Seconds(), "s-applied")
	report(b, "every late joiner connected (simulator)", conn.Seconds(), "s-connected")
	report(b, "every late joiner acknowledged (target <= 30 s)", acked.Seconds(), "s-acked")
}
