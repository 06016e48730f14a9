package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/creds"
)

// rotateFanoutWindow is the raw fan-out's requests in flight: the device channel's default window.
const rotateFanoutWindow = 1024

// rotateDevices selects BenchmarkRotate10k and sizes its fleet (FLEETFLOW_BENCH_ROTATE=10000 for the issue's
// figure; unset, the benchmark is skipped: it connects a fleet of its own, which takes minutes).
var rotateDevices = config.EnvInt("FLEETFLOW_BENCH_ROTATE", 0)

// BenchmarkRotate10k rotates the credentials of a connected simulated fleet (gateway and simulator in
// processes of their own, the worker in this one with a device channel) with `fleetflow credentials rotate`,
// until every device has connected with its new secret and its old one is revoked (docs/architecture.md,
// "Credential rotation"; target <= 60 s for 10,000 devices). The yardsticks, measured on the same fleet in
// the same run, are the two halves of the work without fleetflow around them: a raw method fan-out over NATS
// (one request per device, pipelined on one bare connection, until every device answered) and raw digest
// UPDATEs (the new digests written in batches of 1,000, as the rotation's batches do, with the same auth
// trigger firing).
func BenchmarkRotate10k(b *testing.B) {
	n := rotateDevices
	if n <= 0 {
		b.Skip("set FLEETFLOW_BENCH_ROTATE=10000 (the number of devices)")
	}
	if lim, err := openFileLimit(); err == nil && lim < uint64(n)+1000 {
		b.Fatalf("open-file limit %d is too low for %d connections", lim, n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := startConfigureBackend(b, ctx, n)
	fleetQuery := "SELECT * FROM devices WHERE tags.fleet = 'sim'"
	fmt.Printf("%d simulated devices connected and reported; load average before measuring: %s\n", n, loadAvg())

	nc, err := nats.Connect(f.natsURL)
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, n)
	for i, c := range f.fleet[:n] {
		ids[i] = c.ID
	}
	fanout := rawMethodFanout(b, nc, ids, rotateFanoutWindow)
	nc.Close()
	updates := rawDigestUpdates(b, ctx, f, n)
	fmt.Println("yardsticks (same fleet, same run)")
	report(b, fmt.Sprintf("raw method fan-out over NATS: ping to %d devices, all answered", n), fanout.Seconds(), "s-raw-fanout")
	report(b, fmt.Sprintf("raw digest UPDATEs, %d rows in batches of 1,000 (auth trigger on)", n), updates.Seconds(), "s-raw-updates")
	report(b, "  sum of the two", (fanout + updates).Seconds(), "s-raw-sum")
	time.Sleep(2 * time.Second)

	b.ResetTimer()
	t0 := time.Now()
	out := run(b, ctx, f.env, "credentials", "rotate", "--query", fleetQuery, "--grace", "10m", "-o", "json")
	wall := time.Since(t0)
	b.StopTimer()
	var res struct {
		ID      string `json:"id"`
		State   string `json:"state"`
		Rotated int    `json:"rotated"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Rotated != n {
		b.Fatalf("rotation: %v\n%s", err, out)
	}
	var confirmed int
	if err := f.reg.Pool().QueryRow(ctx, `SELECT count(*) FROM devices WHERE tags @> '{"fleet":"sim"}'
		AND secret1_hash IS NULL AND secret2_hash = auth_digest AND auth_slot = 2`).Scan(&confirmed); err != nil {
		b.Fatal(err)
	}
	if confirmed != n {
		b.Fatalf("%d of %d devices hold only their new secret and connected with it", confirmed, n)
	}
	stored, err := creds.ReadFile(filepath.Join(f.dir, "fleet.ndjson"))
	if err != nil {
		b.Fatal(err)
	}
	onDisk := 0
	for _, c := range stored {
		if c.Slot == 2 && c.Secret2 != "" {
			onDisk++
		}
	}
	if onDisk != n {
		b.Fatalf("%d of %d devices' new secrets are in the simulator's credentials file", onDisk, n)
	}
	events, runs, took := waitHistory(b, ctx, f.tc, res.ID, 1)
	fmt.Printf("credential rotation %s over %d devices (batches of 1,000, window 8)\n", res.ID, n)
	report(b, "every device connected with its new secret, old revoked, CLI end to end (target <= 60 s)", wall.Seconds(), "s-rotate")
	report(b, "  of which the RotateCredentials workflow (start to close)", took.Seconds(), "s-rotate-workflow")
	report(b, "  time per device", ms(wall/time.Duration(n)), "ms/dev-rotate")
	report(b, "  ratio / raw fan-out + raw UPDATEs", float64(wall)/float64(fanout+updates), "x-rotate-vs-raw")
	report(b, "  history events (all runs)", float64(events), "events-rotate")
	report(b, "  workflow runs", float64(runs), "runs-rotate")
}

// rawDigestUpdates writes a new digest into slot 2 of every device in batches of 1,000 and returns the time,
// then clears the slot again (not timed).
func rawDigestUpdates(b *testing.B, ctx context.Context, f *configureFleet, n int) time.Duration {
	const batch = 1000
	t0 := time.Now()
	for first := 0; first < n; first += batch {
		part := f.fleet[first:min(first+batch, n)]
		ids := make([]string, len(part))
		digests := make([][]byte, len(part))
		for i, c := range part {
			ids[i], digests[i] = c.ID, creds.Digest("raw-"+c.ID)
		}
		if _, err := f.reg.Pool().Exec(ctx, `UPDATE devices d SET secret2_hash = u.digest, updated_at = now()
			FROM unnest($1::text[], $2::bytea[]) AS u(id, digest) WHERE d.id = u.id`, ids, digests); err != nil {
			b.Fatal(err)
		}
	}
	took := time.Since(t0)
	if _, err := f.reg.Pool().Exec(ctx, `UPDATE devices SET secret2_hash = NULL WHERE tags @> '{"fleet":"sim"}'`); err != nil {
		b.Fatal(err)
	}
	return took
}
