package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/query"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

// fleetSize is the fleet the provisioning and query benchmarks build (FLEETFLOW_BENCH_DEVICES overrides it
// for a quick run).
var fleetSize = config.EnvInt("FLEETFLOW_BENCH_DEVICES", 1_000_000)

var regions = []string{"eu", "us", "apac"}

// manifestRow is the i-th device of the benchmark fleet: 3 regions, 1,000 sites (~333 devices per site).
func manifestRow(i int) (id, region, site, model string) {
	region = regions[i%3]
	return fmt.Sprintf("bench-%07d", i), region, fmt.Sprintf("%s-site-%d", region, i%1000), fmt.Sprintf("m%d", i%5)
}

// BenchmarkProvisionAndQuery1M provisions the fleet through the CLI and the ProvisionFleet workflow and
// compares it with a raw COPY of the same rows into a table of the same schema, then compares twin queries
// over that fleet with the hand-written SQL they stand for.
func BenchmarkProvisionAndQuery1M(b *testing.B) {
	ctx := context.Background()
	// A cluster of its own: nothing else competes for it.
	be := startBackend(b, testenv.StartPostgres(b), "bench")
	reg, tc := be.reg, be.tc

	dir := b.TempDir()
	manifest := filepath.Join(dir, "fleet.csv")
	writeManifest(b, manifest)
	fmt.Printf("fleet of %d devices (3 regions, 1,000 sites, 5 models)\n", fleetSize)

	// The raw limit: COPY the same rows (id, credential digest, tags) into a copy of the devices table with
	// the same columns, defaults and GIN index.
	if _, err := reg.Pool().Exec(ctx, "CREATE TABLE devices_raw (LIKE devices INCLUDING ALL)"); err != nil {
		b.Fatal(err)
	}
	rows := make([][]any, fleetSize)
	for i := range rows {
		id, region, site, model := manifestRow(i)
		var secret [32]byte
		_, _ = rand.Read(secret[:])
		tags, _ := json.Marshal(map[string]string{"region": region, "site": site, "model": model})
		rows[i] = []any{id, creds.Digest(string(secret[:])), string(tags)}
	}
	b.ResetTimer()
	t0 := time.Now()
	n, err := reg.Pool().CopyFrom(ctx, pgx.Identifier{"devices_raw"}, []string{"id", "secret1_hash", "tags"}, pgx.CopyFromRows(rows))
	raw := time.Since(t0)
	if err != nil || n != int64(fleetSize) {
		b.Fatalf("raw copy: %d rows, %v", n, err)
	}
	rows = nil
	if _, err := reg.Pool().Exec(ctx, "DROP TABLE devices_raw"); err != nil {
		b.Fatal(err)
	}
	if _, err := reg.Pool().Exec(ctx, "CHECKPOINT"); err != nil {
		b.Fatal(err)
	}

	// The product path, end to end as an operator runs it: parse the manifest, generate secrets, stage,
	// run the workflow, write the credentials file.
	env := be.env()
	t0 = time.Now()
	out := run(b, ctx, env, "provision", "--file", manifest, "--creds-out", filepath.Join(dir, "creds.ndjson"), "-o", "json")
	viaWorkflow := time.Since(t0)
	b.StopTimer()
	var sum struct {
		WorkflowID string `json:"workflowId"`
		Counts     struct{ Created int64 }
	}
	if err := json.Unmarshal([]byte(out), &sum); err != nil || sum.Counts.Created != int64(fleetSize) {
		b.Fatalf("provision summary %q: %v", out, err)
	}
	events, runs := historySize(b, ctx, tc, sum.WorkflowID)

	fmt.Println("provisioning")
	report(b, "raw COPY into the same schema", raw.Seconds(), "s-raw-copy")
	report(b, "fleetflow provision (CLI + ProvisionFleet workflow)", viaWorkflow.Seconds(), "s-workflow")
	report(b, "ratio workflow / raw COPY (target <= 2)", viaWorkflow.Seconds()/raw.Seconds(), "x-provision")
	report(b, "devices per second through the workflow", float64(fleetSize)/viaWorkflow.Seconds(), "devices/s")
	report(b, "workflow history events (all runs)", float64(events), "events")
	report(b, "workflow runs (continue-as-new)", float64(runs), "runs")

	benchQueries(b, ctx, reg)
}

func writeManifest(b *testing.B, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	fmt.Fprintln(w, "id,region,site,model")
	for i := 0; i < fleetSize; i++ {
		id, region, site, model := manifestRow(i)
		fmt.Fprintf(w, "%s,%s,%s,%s\n", id, region, site, model)
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
}

// historySize sums the history length of every run of a workflow chain (continue-as-new makes several).
func historySize(b *testing.B, ctx context.Context, tc client.Client, id string) (events, runs int) {
	resp, err := tc.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
		Query: fmt.Sprintf("WorkflowId = '%s'", id)})
	if err != nil {
		b.Fatal(err)
	}
	for _, ex := range resp.GetExecutions() {
		events += int(ex.GetHistoryLength())
		runs++
	}
	return events, runs
}

// benchQueries times each query through the query language and as hand-written SQL, median of 15 runs.
func benchQueries(b *testing.B, ctx context.Context, reg *registry.Registry) {
	pool := reg.Pool()
	// Give every device reported capabilities so GROUP BY has something to group; one set-based UPDATE.
	if _, err := pool.Exec(ctx, `UPDATE devices SET reported = jsonb_build_object('model', tags->>'model',
		'firmware', jsonb_build_object('version', '1.' || (abs(hashtext(id)) % 5) || '.0'))`); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "VACUUM ANALYZE devices"); err != nil {
		b.Fatal(err)
	}
	cases := []struct{ name, q, hand string }{
		{"selective tag query (~333 of 1M)",
			`SELECT * FROM devices WHERE tags.site = 'eu-site-42'`,
			`SELECT ` + query.StarColumns + ` FROM devices WHERE tags @> '{"site":"eu-site-42"}' AND status <> 'retired'`},
		{"tag + reported predicate",
			`SELECT * FROM devices WHERE tags.site = 'eu-site-42' AND properties.reported.firmware.version != '1.0.0'`,
			`SELECT ` + query.StarColumns + ` FROM devices WHERE tags @> '{"site":"eu-site-42"}' AND reported #>> '{firmware,version}' <> '1.0.0' AND status <> 'retired'`},
		{"GROUP BY reported model over 1M",
			`SELECT properties.reported.model, COUNT() AS n FROM devices GROUP BY properties.reported.model`,
			`SELECT reported -> 'model', count(*) FROM devices WHERE status <> 'retired' GROUP BY 1`},
	}
	fmt.Println("twin queries (median of 15)")
	for _, c := range cases {
		var rowsQL, rowsHand int
		viaQL := median(15, func() {
			res, err := reg.Query(ctx, c.q, query.Options{})
			if err != nil {
				b.Fatal(err)
			}
			rowsQL = len(res.Twins) + len(res.Rows)
		})
		hand := median(15, func() {
			rows, err := pool.Query(ctx, c.hand)
			if err != nil {
				b.Fatal(err)
			}
			rowsHand = 0
			for rows.Next() {
				if _, err := rows.Values(); err != nil {
					b.Fatal(err)
				}
				rowsHand++
			}
			if err := rows.Err(); err != nil {
				b.Fatal(err)
			}
		})
		if rowsQL != rowsHand || rowsQL == 0 {
			b.Fatalf("%s: query language returned %d rows, hand-written SQL %d", c.name, rowsQL, rowsHand)
		}
		fmt.Printf("  %s: %d rows\n", c.name, rowsQL)
		report(b, "  query language", float64(viaQL.Microseconds())/1000, "ms-ql")
		report(b, "  hand-written SQL", float64(hand.Microseconds())/1000, "ms-sql")
		report(b, "  ratio (target <= 1.5)", float64(viaQL)/float64(hand), "x-query")
	}
}

func median(n int, fn func()) time.Duration {
	ds := make([]time.Duration, n)
	for i := range ds {
		t0 := time.Now()
		fn()
		ds[i] = time.Since(t0)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[n/2]
}
