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
	"strings"
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
	// the same columns, defaults and GIN index. Measured before and after the product path, and the faster
	// of the two is the yardstick, so drift on the machine cannot flatter the ratio.
	rows := make([][]any, fleetSize)
	for i := range rows {
		id, region, site, model := manifestRow(i)
		var secret [32]byte
		_, _ = rand.Read(secret[:])
		tags, _ := json.Marshal(map[string]string{"region": region, "site": site, "model": model})
		rows[i] = []any{id, creds.Digest(string(secret[:])), string(tags)}
	}
	b.ResetTimer()
	rawBefore := rawCopy(b, ctx, reg, rows)

	// The product path, end to end as an operator runs it: parse the manifest, generate secrets, stage,
	// run the workflow, write the credentials file.
	env := be.env()
	profileDir := os.Getenv("FLEETFLOW_BENCH_PROFILE")
	var cpuBefore cpuSnapshot
	statements := func() {}
	if profileDir != "" {
		// The CLI's CPU profile, and every statement Postgres runs during the product path with its
		// duration (the worker's profile is go test's -cpuprofile: the worker runs in this process), the
		// statements' totals (pg_stat_statements, when preloaded) and the CPU time of every process.
		env = append(env, "FLEETFLOW_CPUPROFILE="+filepath.Join(profileDir, "cli.pprof"))
		logStatements(b, ctx, reg, filepath.Join(profileDir, "postgres.log"))
		statements = statementStats(b, ctx, reg, filepath.Join(profileDir, "statements.txt"))
		cpuBefore = snapshotCPU()
		// Markers for a system profiler started from outside (perf record until "product-end" exists).
		mark(b, filepath.Join(profileDir, "product-start"))
	}
	t0 := time.Now()
	args := []string{"provision", "--file", manifest, "--creds-out", filepath.Join(dir, "creds.ndjson"), "-o", "json"}
	// FLEETFLOW_BENCH_PROVISION_FLAGS adds flags (e.g. "--batch-size 20000 --window 2"), for trying settings.
	args = append(args, strings.Fields(os.Getenv("FLEETFLOW_BENCH_PROVISION_FLAGS"))...)
	out := run(b, ctx, env, args...)
	viaWorkflow := time.Since(t0)
	if profileDir != "" {
		mark(b, filepath.Join(profileDir, "product-end"))
		reportCPU(b, "the product path", cpuSince(cpuBefore))
		statements()
	}
	cpuRaw := snapshotCPU()
	rawAfter := rawCopy(b, ctx, reg, rows)
	if profileDir != "" {
		reportCPU(b, "the raw COPY after it (with its DROP TABLE and CHECKPOINT)", cpuSince(cpuRaw))
	}
	raw := min(rawBefore, rawAfter)
	b.StopTimer()
	var sum struct {
		WorkflowID string `json:"workflowId"`
		Counts     struct{ Created int64 }
	}
	if err := json.Unmarshal([]byte(out), &sum); err != nil || sum.Counts.Created != int64(fleetSize) {
		b.Fatalf("provision summary %q: %v", out, err)
	}
	events, runs, workflowOnly := historySize(b, ctx, tc, sum.WorkflowID)

	fmt.Println("provisioning")
	report(b, "raw COPY into the same schema, before the workflow", rawBefore.Seconds(), "s-raw-copy-1")
	report(b, "raw COPY into the same schema, after the workflow", rawAfter.Seconds(), "s-raw-copy-2")
	report(b, "fleetflow provision end to end (parse, secrets, staging COPY, workflow)", viaWorkflow.Seconds(), "s-provision")
	report(b, "  of which the ProvisionFleet workflow (start to close)", workflowOnly.Seconds(), "s-workflow")
	report(b, "ratio end to end / faster raw COPY (target <= 1.5, issue 10)", viaWorkflow.Seconds()/raw.Seconds(), "x-provision")
	report(b, "ratio workflow / faster raw COPY (target <= 2)", workflowOnly.Seconds()/raw.Seconds(), "x-workflow")
	report(b, "devices per second through the workflow", float64(fleetSize)/viaWorkflow.Seconds(), "devices/s")
	report(b, "workflow history events (all runs)", float64(events), "events")
	report(b, "workflow runs (continue-as-new)", float64(runs), "runs")

	if os.Getenv("FLEETFLOW_BENCH_PROVISION_ONLY") == "" {
		benchQueries(b, ctx, reg)
	}
	if os.Getenv("FLEETFLOW_BENCH_SCHEME") != "" {
		benchSchemeCost(b, ctx, be, manifest, dir)
	}
}

// benchScheme is a realistic metadata scheme for the benchmark fleet: every tag required and constrained
// (an enum, two patterns), no other tag allowed.
const benchScheme = `{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","properties":{
  "region":{"enum":["eu","us","apac"]},
  "site":{"type":"string","pattern":"^(eu|us|apac)-site-[0-9]{1,4}$"},
  "model":{"type":"string","pattern":"^m[0-9]$"}},
  "required":["region","site","model"],"additionalProperties":false}`

// benchSchemeCost measures what the metadata scheme costs provisioning (docs/architecture.md, "Metadata
// scheme"; issue 12: at most 20% over no scheme). It sets benchScheme with `scheme set` (whose SchemeCheck
// runs over the fleet provisioned above), then provisions the same manifest end to end into an emptied
// devices table, with and without the scheme in force, alternating which goes first, for
// FLEETFLOW_BENCH_SCHEME_ROUNDS rounds (default 2). The scheme is switched off and on by its row's state:
// the CLI has no "unset", on purpose.
func benchSchemeCost(b *testing.B, ctx context.Context, be *backend, manifest, dir string) {
	doc := benchScheme
	if os.Getenv("FLEETFLOW_BENCH_SCHEME") == "unique" {
		// The worst case for the staging memo: every row's tags differ (a serial number among them), so
		// every row is validated.
		doc = strings.Replace(benchScheme, `"model":{`, `"serial":{"type":"string","pattern":"^bench-[0-9]{7}$"},"model":{`, 1)
		manifest = filepath.Join(dir, "fleet-serials.csv")
		writeManifestWith(b, manifest, true)
	}
	path := filepath.Join(dir, "scheme.json")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		b.Fatal(err)
	}
	env := be.env()
	t0 := time.Now()
	run(b, ctx, env, "scheme", "set", path, "-o", "json")
	setTook := time.Since(t0)
	pool := be.reg.Pool()
	toggle := func(on bool) {
		_, err := pool.Exec(ctx, `UPDATE schemes SET state = CASE WHEN $1 THEN 'active' ELSE 'refused' END
			WHERE version = (SELECT max(version) FROM schemes)`, on)
		if err != nil {
			b.Fatal(err)
		}
	}
	rounds := config.EnvInt("FLEETFLOW_BENCH_SCHEME_ROUNDS", 2)
	var with, without []time.Duration
	for r := range rounds {
		for k, on := range []bool{r%2 == 1, r%2 == 0} {
			toggle(on)
			for _, q := range []string{"TRUNCATE devices CASCADE", "CHECKPOINT"} {
				if _, err := pool.Exec(ctx, q); err != nil {
					b.Fatal(err)
				}
			}
			t0 := time.Now()
			out := run(b, ctx, env, "provision", "--file", manifest, "--creds-out", filepath.Join(dir, fmt.Sprintf("creds-%d-%d.ndjson", r, k)), "-o", "json")
			took := time.Since(t0)
			var sum struct{ Counts struct{ Created int64 } }
			if err := json.Unmarshal([]byte(out), &sum); err != nil || sum.Counts.Created != int64(fleetSize) {
				b.Fatalf("provision summary %q: %v", out, err)
			}
			if on {
				with = append(with, took)
			} else {
				without = append(without, took)
			}
		}
	}
	toggle(true)
	fmt.Println("metadata scheme")
	report(b, "scheme set: SchemeCheck of the fleet above, end to end", setTook.Seconds(), "s-scheme-set")
	for i := range with {
		report(b, fmt.Sprintf("provision end to end without a scheme, round %d", i+1), without[i].Seconds(), fmt.Sprintf("s-no-scheme-%d", i+1))
		report(b, fmt.Sprintf("provision end to end with the scheme, round %d", i+1), with[i].Seconds(), fmt.Sprintf("s-scheme-%d", i+1))
	}
	report(b, "ratio with / without the scheme, best of each (target <= 1.2)", slicesMin(with).Seconds()/slicesMin(without).Seconds(), "x-scheme")
}

func slicesMin(d []time.Duration) time.Duration {
	m := d[0]
	for _, x := range d[1:] {
		m = min(m, x)
	}
	return m
}

// logStatements has Postgres log every statement with its duration from now on, and copies its log to
// path when the benchmark ends (before the throwaway cluster and its log are removed).
func logStatements(b *testing.B, ctx context.Context, reg *registry.Registry, path string) {
	var dataDir string
	if err := reg.Pool().QueryRow(ctx, "SHOW data_directory").Scan(&dataDir); err != nil {
		b.Fatal(err)
	}
	// Without the parameters' values: a staged record is a bind parameter of a few MB, whose hex rendering
	// into the log would cost Postgres more CPU than storing it.
	for _, q := range []string{"ALTER SYSTEM SET log_min_duration_statement = 0", "ALTER SYSTEM SET log_parameter_max_length = 0",
		"SELECT pg_reload_conf()"} {
		if _, err := reg.Pool().Exec(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() {
		// internal/testenv keeps the server's log next to its data directory.
		if log, err := os.ReadFile(filepath.Join(filepath.Dir(dataDir), "postgres.log")); err == nil {
			_ = os.WriteFile(path, log, 0o600)
		}
	})
}

// rawCopy copies rows into a fresh table shaped like devices (columns, defaults, indexes) and drops it.
func rawCopy(b *testing.B, ctx context.Context, reg *registry.Registry, rows [][]any) time.Duration {
	pool := reg.Pool()
	if _, err := pool.Exec(ctx, "CREATE TABLE devices_raw (LIKE devices INCLUDING ALL)"); err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	n, err := pool.CopyFrom(ctx, pgx.Identifier{"devices_raw"}, []string{"id", "secret1_hash", "tags"}, pgx.CopyFromRows(rows))
	took := time.Since(t0)
	if err != nil || n != int64(len(rows)) {
		b.Fatalf("raw copy: %d rows, %v", n, err)
	}
	for _, q := range []string{"DROP TABLE devices_raw", "CHECKPOINT"} {
		if _, err := pool.Exec(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
	return took
}

func writeManifest(b *testing.B, path string) { writeManifestWith(b, path, false) }

// writeManifestWith writes the benchmark fleet's manifest; with serials each row also has a serial tag
// (its id), so that no two rows' tags are the same.
func writeManifestWith(b *testing.B, path string, serials bool) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if serials {
		fmt.Fprintln(w, "id,region,site,model,serial")
	} else {
		fmt.Fprintln(w, "id,region,site,model")
	}
	for i := 0; i < fleetSize; i++ {
		id, region, site, model := manifestRow(i)
		if serials {
			fmt.Fprintf(w, "%s,%s,%s,%s,%s\n", id, region, site, model, id)
		} else {
			fmt.Fprintf(w, "%s,%s,%s,%s\n", id, region, site, model)
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
}

// historySize sums the history length of every run of a workflow chain (continue-as-new makes several) and
// returns how long the chain ran, from the first run's start to the last run's close.
func historySize(b *testing.B, ctx context.Context, tc client.Client, id string) (events, runs int, took time.Duration) {
	resp, err := tc.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
		Query: fmt.Sprintf("WorkflowId = '%s'", id)})
	if err != nil {
		b.Fatal(err)
	}
	var first, last time.Time
	for _, ex := range resp.GetExecutions() {
		events += int(ex.GetHistoryLength())
		runs++
		if st := ex.GetStartTime().AsTime(); first.IsZero() || st.Before(first) {
			first = st
		}
		if ct := ex.GetCloseTime().AsTime(); ct.After(last) {
			last = ct
		}
	}
	return events, runs, last.Sub(first)
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
	cases := []struct {
		name, q, hand string
		star          bool // the query language reads whole twins: decode the hand-written rows the same way
	}{
		{"selective tag query (~333 of 1M)",
			`SELECT * FROM devices WHERE tags.site = 'eu-site-42'`,
			`SELECT ` + query.StarColumns + ` FROM devices WHERE tags @> '{"site":"eu-site-42"}' AND status <> 'retired'`, true},
		{"tag + reported predicate",
			`SELECT * FROM devices WHERE tags.site = 'eu-site-42' AND properties.reported.firmware.version != '1.0.0'`,
			`SELECT ` + query.StarColumns + ` FROM devices WHERE tags @> '{"site":"eu-site-42"}' AND reported #>> '{firmware,version}' <> '1.0.0' AND status <> 'retired'`, true},
		{"GROUP BY reported model over 1M",
			`SELECT properties.reported.model, COUNT() AS n FROM devices GROUP BY properties.reported.model`,
			`SELECT reported -> 'model', count(*) FROM devices WHERE status <> 'retired' GROUP BY 1`, false},
	}
	fmt.Println("twin queries (medians, query language and SQL timed alternately)")
	for _, c := range cases {
		var rowsQL, rowsHand int
		viaQL, hand := interleaved(func() {
			res, err := reg.Query(ctx, c.q, query.Options{})
			if err != nil {
				b.Fatal(err)
			}
			rowsQL = len(res.Twins) + len(res.Rows)
		}, func() {
			rows, err := pool.Query(ctx, c.hand)
			if err != nil {
				b.Fatal(err)
			}
			rowsHand = 0
			for rows.Next() {
				if err := handDecode(rows, c.star); err != nil {
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

// handDecode reads a hand-written query's row the way the registry reads the query language's: for SELECT *
// (star) every StarColumns column into the same Go types the registry's twin scan uses — the JSONB documents
// as raw bytes, not decoded — and otherwise generic values (rows.Values, as the registry's column scan does,
// which decodes JSONB into Go values on both sides).
func handDecode(rows pgx.Rows, star bool) error {
	if !star {
		_, err := rows.Values()
		return err
	}
	var id, status string
	var online bool
	var lastSeen *time.Time
	var tags, desired, reported []byte
	var desiredVersion, reportedVersion, twinVersion, tagsVersion int64
	return rows.Scan(&id, &status, &online, &lastSeen, &tags, &desired, &desiredVersion, &reported, &reportedVersion,
		&twinVersion, &tagsVersion)
}

// interleaved times a and b alternately, so both see the same machine, and returns their medians: 101
// runs each for queries under 20 ms (where a millisecond of noise matters), 15 otherwise.
func interleaved(a, b func()) (time.Duration, time.Duration) {
	timed := func(fn func()) time.Duration { t0 := time.Now(); fn(); return time.Since(t0) }
	for i := 0; i < 3; i++ { // warm caches and plans
		timed(a)
		timed(b)
	}
	n := 15
	if timed(a) < 20*time.Millisecond {
		n = 101
	}
	da, db := make([]time.Duration, n), make([]time.Duration, n)
	for i := 0; i < n; i++ {
		da[i], db[i] = timed(a), timed(b)
	}
	med := func(ds []time.Duration) time.Duration {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return ds[len(ds)/2]
	}
	return med(da), med(db)
}
