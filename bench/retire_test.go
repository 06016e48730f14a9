package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleetworker"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/testenv"
	"github.com/fleetflow/fleetflow/workflows"
)

// retireFleet is how many devices BenchmarkRetire100k retires (FLEETFLOW_BENCH_RETIRE_DEVICES overrides it).
func retireFleet() int {
	if n, err := strconv.Atoi(os.Getenv("FLEETFLOW_BENCH_RETIRE_DEVICES")); err == nil && n > 0 {
		return n
	}
	return 100000
}

// startRetireBackend opens a fresh registry and Temporal and runs a worker with the retire stage.
func startRetireBackend(b *testing.B, queue string) *backend {
	b.Helper()
	be := openBackend(b, testenv.Postgres(b), queue)
	w := fleetworker.New(be.tc, queue, activities.New(be.reg, nil))
	if err := w.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(w.Stop)
	return be
}

// insertDevices creates n devices id prefix-000001… tagged batch=batch directly in SQL (provisioning is
// measured elsewhere), each with a small twin and a few timeline events so that archiving has work to do.
func insertDevices(b *testing.B, ctx context.Context, reg *registry.Registry, prefix, batch string, n int) {
	b.Helper()
	_, err := reg.Pool().Exec(ctx, `INSERT INTO devices (id, secret1_hash, tags, reported, desired)
		SELECT $1 || lpad(i::text, 6, '0'), '\x00'::bytea, jsonb_build_object('batch', $2::text, 'site', 'site-' || (i % 100)),
			jsonb_build_object('firmware', jsonb_build_object('version', '1.' || (i % 7) || '.0'), 'health', jsonb_build_object('status', 'ok')),
			jsonb_build_object('telemetryInterval', 30)
		FROM generate_series(1, $3::int) AS i`, prefix, batch, n)
	if err != nil {
		b.Fatal(err)
	}
	_, err = reg.Pool().Exec(ctx, `INSERT INTO device_events (device_id, kind, detail)
		SELECT $1 || lpad(i::text, 6, '0'), k, '{}'::jsonb FROM generate_series(1, $2::int) AS i, unnest(ARRAY['connected', 'disconnected']) AS k`,
		prefix, n)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := reg.Pool().Exec(ctx, "ANALYZE devices"); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRetire100k retires 100,000 devices selected by a query through the CLI and the Decommission
// workflow, and compares it with the same work (archive the twins, revoke) as two hand-written statements in
// one transaction on another 100,000 devices of the same registry.
func BenchmarkRetire100k(b *testing.B) {
	ctx := context.Background()
	n := retireFleet()
	be := startRetireBackend(b, "bench-retire")
	insertDevices(b, ctx, be.reg, "reta-", "a", n)
	insertDevices(b, ctx, be.reg, "retb-", "b", n)
	fmt.Printf("%d + %d devices in the registry\n", n, n)

	start := time.Now()
	out := run(b, ctx, be.env(), "retire", "--query", "SELECT * FROM devices WHERE tags.batch = 'a'", "--reason", "bench")
	product := time.Since(start)
	var retired int64
	if err := be.reg.Pool().QueryRow(ctx, "SELECT count(*) FROM devices WHERE tags @> '{\"batch\":\"a\"}' AND status = 'retired' AND secret1_hash IS NULL").Scan(&retired); err != nil {
		b.Fatal(err)
	}
	var archived int64
	if err := be.reg.Pool().QueryRow(ctx, "SELECT count(*) FROM devices_archive WHERE id LIKE 'reta-%'").Scan(&archived); err != nil {
		b.Fatal(err)
	}
	if retired != int64(n) || archived != int64(n) {
		b.Fatalf("retired %d, archived %d of %d\n%s", retired, archived, n, out)
	}

	start = time.Now()
	tx, err := be.reg.Pool().Begin(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO devices_archive (id, retired_at, reason, twin, history)
		SELECT d.id, now(), 'raw', jsonb_build_object('tags', d.tags, 'desired', d.desired, 'reported', d.reported),
			coalesce((SELECT jsonb_agg(jsonb_build_object('at', e.at, 'kind', e.kind)) FROM device_events e WHERE e.device_id = d.id), '[]')
		FROM devices d WHERE d.tags @> '{"batch":"b"}'`); err != nil {
		b.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE devices SET status = 'retired', retired_at = now(), secret1_hash = NULL, secret2_hash = NULL
		WHERE tags @> '{"batch":"b"}'`); err != nil {
		b.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		b.Fatal(err)
	}
	raw := time.Since(start)

	fmt.Printf("retire %d devices selected by a query\n", n)
	report(b, "fleetflow retire --query, CLI end to end (target <= 20 s)", product.Seconds(), "s-retire")
	report(b, "hand-written archive + revoke, one transaction", raw.Seconds(), "s-raw")
	report(b, "ratio", product.Seconds()/raw.Seconds(), "x-retire-vs-raw")
}

// BenchmarkRevocationLatency connects 100 devices to the gateway and retires them one at a time (each its own
// Decommission workflow, as `fleetflow retire ID` does), measuring from the start of the retire to the moment
// the device sees its session dropped.
func BenchmarkRevocationLatency(b *testing.B) {
	ctx := context.Background()
	const n = 100
	be := startRetireBackend(b, "bench-revoke")
	gw := gateway.New(gateway.Config{Listen: "127.0.0.1:0"}, be.reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := gw.Start(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { gw.Close() })
	ids := make([]string, n)
	secrets := make([]string, n)
	digests := make([][]byte, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("rev-%03d", i)
		s, err := creds.NewSecret()
		if err != nil {
			b.Fatal(err)
		}
		secrets[i], digests[i] = s, creds.Digest(s)
	}
	if _, err := be.reg.Pool().Exec(ctx, `INSERT INTO devices (id, secret1_hash) SELECT * FROM unnest($1::text[], $2::bytea[])`, ids, digests); err != nil {
		b.Fatal(err)
	}
	lost := make([]chan time.Time, n)
	for i := range ids {
		lost[i] = make(chan time.Time, 1)
		ch := lost[i]
		d, err := device.New(device.Config{BrokerURL: "tcp://" + gw.Addr(), ID: ids[i], Secret: secrets[i],
			MaxReconnectInterval: time.Minute, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			OnConnectionLost: func(error) {
				select {
				case ch <- time.Now():
				default:
				}
			}})
		if err != nil {
			b.Fatal(err)
		}
		if err := d.Connect(ctx); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(d.Close)
	}
	lat := make([]time.Duration, n)
	for i, id := range ids {
		job := fmt.Sprintf("decommission-bench-%03d", i)
		start := time.Now()
		total, err := be.reg.CreateJobForIDs(ctx, fleet.NewJob{ID: job, Kind: fleet.JobRetire, Query: "ids: " + id, Spec: []byte("{}")}, []string{id})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := be.tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: job, TaskQueue: be.queue}, workflows.Decommission,
			workflows.JobInput{JobID: job, Kind: fleet.JobRetire, Total: total, Reason: "bench"}); err != nil {
			b.Fatal(err)
		}
		select {
		case at := <-lost[i]:
			lat[i] = at.Sub(start)
		case <-time.After(30 * time.Second):
			b.Fatalf("device %s was not dropped within 30 s", id)
		}
	}
	slices.Sort(lat)
	fmt.Printf("revocation latency over %d devices, from the start of the retire to the session dropped\n", n)
	report(b, "p50 (target <= 1 s)", float64(lat[n/2].Microseconds())/1000, "ms-revoke-p50")
	report(b, "max (target <= 1 s)", float64(lat[n-1].Microseconds())/1000, "ms-revoke-max")
}
