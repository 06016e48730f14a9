package metrics_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/metrics"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestOperation(t *testing.T) {
	for sql, want := range map[string]string{
		"SELECT 1":                              "select",
		"  \n\tselect * from devices":           "select",
		"-- name: x\nINSERT INTO t VALUES ($1)": "insert",
		"/* hint */ UPDATE devices SET x = 1":   "update",
		"delete from t":                         "delete",
		"WITH a AS (SELECT 1) SELECT * FROM a":  "select",
		"WITH RECURSIVE a(n) AS (SELECT 1 UNION SELECT n+1 FROM a WHERE n < 3), b AS MATERIALIZED (SELECT ')' AS p) " +
			"UPDATE t SET x = (SELECT count(*) FROM a)": "update",
		`with "select" as (select 1) insert into t select * from "select"`: "insert",
		"with x as (delete from t returning *) select count(*) from x":     "select",
		"begin":                                "begin",
		"COMMIT":                               "commit",
		"SELECT pg_advisory_lock($1)":          "select",
		"CREATE TABLE IF NOT EXISTS x (a int)": "create",
		"frobnicate":                           "other",
		"":                                     "other",
		"(SELECT 1)":                           "other",
		"WITH a AS (SELECT 1":                  "other",
	} {
		assert.Equal(t, want, metrics.Operation(sql), "%q", sql)
	}
}

// TestQueryTracer opens the real registry with the tracer installed and checks that its statements (the
// schema check, a transaction, a query, a failure, a batch, a COPY and pool acquires) are recorded.
func TestQueryTracer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := metrics.NewRegistry()
	reg, err := registry.OpenWithOptions(ctx, testenv.Postgres(t), registry.Options{Tracer: metrics.NewQueryTracer(r)})
	require.NoError(t, err)
	defer reg.Close()
	metrics.RegisterPool(r, reg.Pool())

	duration := func(op string) *metrics.Histogram {
		return r.HistogramVec("fleetflow_registry_query_duration_seconds", "", metrics.LatencyBuckets, "operation").With(op)
	}
	errs := func(op string) float64 {
		return r.CounterVec("fleetflow_registry_query_errors_total", "", "operation").With(op).Value()
	}
	assert.NotZero(t, duration("select").Count(), "Open's schema check")
	require.NoError(t, pgx.BeginFunc(ctx, reg.Pool(), func(pgx.Tx) error { return nil }))
	assert.NotZero(t, duration("begin").Count(), "a transaction")

	pool := reg.Pool()
	selects := duration("select").Count()
	var n int
	require.NoError(t, pool.QueryRow(ctx, "SELECT 41 + 1").Scan(&n))
	assert.Equal(t, selects+1, duration("select").Count())

	_, err = pool.Exec(ctx, "SELECT * FROM no_such_table")
	require.Error(t, err)
	assert.Equal(t, 1.0, errs("select"))

	_, err = pool.Exec(ctx, "CREATE TABLE metrics_copy (x int)")
	require.NoError(t, err)
	rows := [][]any{{1}, {2}, {3}}
	copied, err := pool.CopyFrom(ctx, pgx.Identifier{"metrics_copy"}, []string{"x"}, pgx.CopyFromRows(rows))
	require.NoError(t, err)
	require.Equal(t, int64(3), copied)
	assert.Equal(t, uint64(1), duration("copy").Count())

	b := &pgx.Batch{}
	b.Queue("INSERT INTO metrics_copy VALUES (4)")
	b.Queue("UPDATE metrics_copy SET x = x / 0") // division by zero
	err = pool.SendBatch(ctx, b).Close()
	require.Error(t, err)
	assert.Equal(t, uint64(1), duration("batch").Count())
	assert.Equal(t, 1.0, errs("update"), "a failed statement of a batch counts under its own verb")
	assert.Equal(t, 1.0, errs("batch"))

	out := scrape(t, r)
	assertValidExposition(t, out)
	assert.Regexp(t, `(?m)^fleetflow_registry_query_duration_seconds_bucket\{operation="select",le="\+Inf"\} [1-9]\d*$`, out)
	assert.Regexp(t, `(?m)^fleetflow_registry_pool_acquire_duration_seconds_count [1-9]\d*$`, out)
	assert.Regexp(t, `(?m)^fleetflow_registry_pool_connections\{state="idle"\} [1-9]\d*$`, out)
	assert.Regexp(t, `(?m)^fleetflow_registry_pool_max_connections 16$`, out)
	assert.Regexp(t, `(?m)^fleetflow_registry_pool_acquires_total [1-9]\d*$`, out)
}
