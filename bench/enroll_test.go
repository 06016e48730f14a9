package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/enroll"
	"github.com/fleetflow/fleetflow/internal/fleetworker"
	"github.com/fleetflow/fleetflow/internal/stack"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

var (
	// enrollDevices is how many first contacts BenchmarkEnroll1k registers (FLEETFLOW_BENCH_ENROLL_DEVICES).
	enrollDevices = config.EnvInt("FLEETFLOW_BENCH_ENROLL_DEVICES", 1000)
	// enrollConcurrency is how many of them are CONNECTing at once, as a factory line or a fleet powering up
	// after shipping would (FLEETFLOW_BENCH_ENROLL_CONCURRENCY).
	enrollConcurrency = config.EnvInt("FLEETFLOW_BENCH_ENROLL_CONCURRENCY", 100)
)

// BenchmarkEnroll1k measures zero-touch enrollment (docs/architecture.md, "Zero-touch enrollment"): 1,000
// devices the registry has never seen connect with secrets derived from a group key, each first contact
// held by the gateway process while a RegisterDevice workflow registers it (Temporal server, a worker,
// Postgres), then admitted. The yardstick of the same run is 1,000 provisioned devices connecting for the
// first time (bare CONNECTs against the registry, a cold cache): what a device pays without enrollment.
func BenchmarkEnroll1k(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	be := openBackend(b, testenv.Postgres(b), "bench-enroll")
	w := fleetworker.New(be.tc, be.queue, &activities.Activities{Provision: be.reg, Monitor: be.reg, Enroll: be.reg})
	if err := w.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(w.Stop)
	master, err := enroll.NewKey()
	if err != nil {
		b.Fatal(err)
	}
	port, err := stack.FreePort()
	if err != nil {
		b.Fatal(err)
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	env := be.env("FLEETFLOW_MQTT_URL=tcp://"+listen, "FLEETFLOW_GATEWAY_LISTEN="+listen, "FLEETFLOW_GATEWAY_METRICS=",
		"FLEETFLOW_NATS_URL="+testenv.NATS(b), enroll.MasterKeyEnv+"="+enroll.EncodeKey(master))
	dir := b.TempDir()
	keyFile := filepath.Join(dir, "bench.key")
	run(b, ctx, env, "enroll", "create", "bench", "--tags", `{"site":"bench"}`, "--desired", `{"interval":60}`, "--key-out", keyFile)
	kb, err := os.ReadFile(keyFile)
	if err != nil {
		b.Fatal(err)
	}
	key, err := enroll.ParseKey(string(kb))
	if err != nil {
		b.Fatal(err)
	}
	credsFile := filepath.Join(dir, "known.ndjson")
	run(b, ctx, env, "provision", "--count", fmt.Sprint(enrollDevices), "--prefix", "known-", "--creds-out", credsFile, "-o", "json")
	known, err := creds.ReadFile(credsFile)
	if err != nil {
		b.Fatal(err)
	}
	fresh := make([]creds.Credential, enrollDevices)
	for i := range fresh {
		id := fmt.Sprintf("new-%05d", i)
		fresh[i] = creds.Credential{ID: id, Secret: enroll.DeriveSecret(key, id)}
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

	// The yardstick: provisioned devices' first connects, as many at once.
	knownRate := connectAll(b, "tcp://"+listen, known, enrollConcurrency)
	b.ResetTimer()
	t0 := time.Now()
	connectAll(b, "tcp://"+listen, fresh, enrollConcurrency) // fails the benchmark unless every one is admitted
	wall := time.Since(t0)
	b.StopTimer()

	var registered, fromGroup int64
	if err := be.reg.Pool().QueryRow(ctx, "SELECT registered FROM enrollment_groups WHERE name = 'bench'").Scan(&registered); err != nil {
		b.Fatal(err)
	}
	if err := be.reg.Pool().QueryRow(ctx, `SELECT count(*) FROM devices WHERE enrollment_group = 'bench' AND tags = '{"site":"bench"}'
		AND desired = '{"interval":60}'`).Scan(&fromGroup); err != nil {
		b.Fatal(err)
	}
	if registered != int64(enrollDevices) || fromGroup != int64(enrollDevices) {
		b.Fatalf("group counts %d registrations and %d devices carry its tags and desired properties; want %d", registered, fromGroup, enrollDevices)
	}
	fmt.Printf("%d first contacts, %d at a time; gateway process, worker, Temporal dev server and Postgres share the machine's 2 cores\n",
		enrollDevices, enrollConcurrency)
	report(b, fmt.Sprintf("seconds until %d first contacts were registered and admitted (target <= 10)", enrollDevices), wall.Seconds(), "s-enrolled")
	report(b, "first-contact registrations per second", float64(enrollDevices)/wall.Seconds(), "registrations/s")
	report(b, "yardstick: provisioned devices' first connects per second", knownRate, "connects/s")
	report(b, "ratio: time per enrollment / time per provisioned first connect", knownRate*wall.Seconds()/float64(enrollDevices), "x")
}
