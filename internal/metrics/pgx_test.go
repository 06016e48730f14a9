package metrics_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/metrics"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

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

	duration := func(op string) uint64 {
		return histogramCount(t, r, "fleetflow_registry_query_duration_seconds", "operation", op)
	}
	errs := func(op string) float64 {
		return counterValue(t, r, "fleetflow_registry_query_errors_total", "operation", op)
	}
	assert.NotZero(t, duration("select"), "Open's schema check")
	require.NoError(t, pgx.BeginFunc(ctx, reg.Pool(), func(pgx.Tx) error { return nil }))
	assert.NotZero(t, duration("begin"), "a transaction")

	pool := reg.Pool()
	selects := duration("select")
	var n int
	require.NoError(t, pool.QueryRow(ctx, "SELECT 41 + 1").Scan(&n))
	assert.Equal(t, selects+1, duration("select"))

	_, err = pool.Exec(ctx, "SELECT * FROM no_such_table")
	require.Error(t, err)
	assert.Equal(t, 1.0, errs("select"))

	_, err = pool.Exec(ctx, "CREATE TABLE metrics_copy (x int)")
	require.NoError(t, err)
	rows := [][]any{{1}, {2}, {3}}
	copied, err := pool.CopyFrom(ctx, pgx.Identifier{"metrics_copy"}, []string{"x"}, pgx.CopyFromRows(rows))
	require.NoError(t, err)
	require.Equal(t, int64(3), copied)
	assert.Equal(t, uint64(1), duration("copy"))

	b := &pgx.Batch{}
	b.Queue("INSERT INTO metrics_copy VALUES (4)")
	b.Queue("UPDATE metrics_copy SET x = x / 0") // division by zero
	err = pool.SendBatch(ctx, b).Close()
	require.Error(t, err)
	assert.Equal(t, uint64(1), duration("batch"))
	assert.Equal(t, 1.0, errs("update"), "a failed statement of a batch counts under its own verb")
	assert.Equal(t, 1.0, errs("batch"))

	out := scrape(t, r)
	assertValidExposition(t, out)
	assert.Regexp(t, `(?m)^fleetflow_registry_query_duration_seconds_bucket\{operation="select",le="\+Inf"\} [1-9]\d*$`, out)
	assert.Regexp(t, `(?m)^fleetflow_registry_pool_acquire_duration_seconds_count [1-9]\d*$`, out)
	assert.Regexp(t, `(?m)^fleetflow_registry_pool_connections\{state="idle"\} [1-9]\d*$`, out)
	assert.Regexp(t, `(?m)^fleetflow_registry_pool_max_connections 16$`, out)
	assert.Regexp(t, `(?m)^fleetflow_registry_pool_acquires_total [1-9]\d*$`, out)
	assert.Regexp(t, `(?m)^fleetflow_registry_pool_canceled_acquires_total 0$`, out)
	assert.Regexp(t, `(?m)^fleetflow_registry_query_errors_total\{operation="delete"\} 0$`, out, "common verbs' error series start at 0")

	// A second tracer and pool on the same registry (a component restarted in one process) reuse the
	// histograms and replace the pool's collector rather than panic.
	again := metrics.NewQueryTracer(r)
	ctx2 := again.TraceQueryStart(ctx, nil, pgx.TraceQueryStartData{SQL: "DELETE FROM t"})
	again.TraceQueryEnd(ctx2, nil, pgx.TraceQueryEndData{})
	assert.Equal(t, uint64(1), duration("delete"))
	metrics.RegisterPool(r, reg.Pool())
	assert.Regexp(t, `(?m)^fleetflow_registry_pool_max_connections 16$`, scrape(t, r))
}

// histogramCount is the observation count of one series of a histogram family in r, 0 when absent.
func histogramCount(t *testing.T, r *metrics.Registry, name, label, value string) uint64 {
	t.Helper()
	m := findMetric(t, r, name, label, value)
	if m == nil {
		return 0
	}
	return m.GetHistogram().GetSampleCount()
}

// counterValue is the value of one series of a counter family in r (the first, when label is ""), 0 when
// absent.
func counterValue(t *testing.T, r *metrics.Registry, name, label, value string) float64 {
	t.Helper()
	m := findMetric(t, r, name, label, value)
	if m == nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

func findMetric(t *testing.T, r *metrics.Registry, name, label, value string) *dto.Metric {
	t.Helper()
	mfs, err := r.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" {
				return m
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m
				}
			}
		}
	}
	return nil
}
