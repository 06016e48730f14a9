package metrics

import (
	"context"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// QueryTracer records the latency of every registry round trip, by operation:
//
//	fleetflow_registry_query_duration_seconds{operation}   histogram
//	fleetflow_registry_query_errors_total{operation}       counter
//	fleetflow_registry_pool_acquire_duration_seconds       histogram (waiting for a pooled connection)
//
// operation is the statement's SQL verb in lower case (select, insert, update, delete, begin, commit, ...;
// for WITH queries the verb of the main statement), "batch" for a whole pgx.Batch, "copy" for CopyFrom and
// "other" for anything else, so that the label stays a small set whatever SQL the registry grows.
//
// It implements pgx.QueryTracer, pgx.BatchTracer, pgx.CopyFromTracer and pgxpool.AcquireTracer; install it as
// the pool's ConnConfig.Tracer (registry.OpenWithOptions does).
type QueryTracer struct {
	duration *prometheus.HistogramVec
	errors   *prometheus.CounterVec
	acquire  prometheus.Histogram
}

var (
	_ pgx.QueryTracer       = (*QueryTracer)(nil)
	_ pgx.BatchTracer       = (*QueryTracer)(nil)
	_ pgx.CopyFromTracer    = (*QueryTracer)(nil)
	_ pgxpool.AcquireTracer = (*QueryTracer)(nil)
)

// NewQueryTracer registers the tracer's metrics in r (or reuses them, when r already has them).
func NewQueryTracer(r prometheus.Registerer) *QueryTracer {
	t := &QueryTracer{
		duration: Register(r, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fleetflow_registry_query_duration_seconds",
			Help:    "Latency of registry (Postgres) round trips by SQL verb; batch and copy are whole pgx batches and COPYs.",
			Buckets: LatencyBuckets,
		}, []string{"operation"})),
		errors: Register(r, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetflow_registry_query_errors_total",
			Help: "Registry (Postgres) statements that failed, by SQL verb.",
		}, []string{"operation"})),
		acquire: Register(r, prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fleetflow_registry_pool_acquire_duration_seconds",
			Help:    "Time spent waiting for a connection from the registry's pool.",
			Buckets: LatencyBuckets,
		})),
	}
	// The error series of the common verbs exist from the start at 0, so that an error-rate query or alert
	// sees a rate of zero rather than no data.
	for _, op := range []string{"select", "insert", "update", "delete", "batch", "copy"} {
		t.errors.WithLabelValues(op)
	}
	return t
}

// Context keys of the trace start times; distinct because an acquire and a query overlap on one context.
type (
	queryStartKey   struct{}
	acquireStartKey struct{}
)

type queryStart struct {
	at time.Time
	op string
}

// TraceQueryStart implements pgx.QueryTracer.
func (t *QueryTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	return context.WithValue(ctx, queryStartKey{}, queryStart{at: time.Now(), op: Operation(data.SQL)})
}

// TraceQueryEnd implements pgx.QueryTracer.
func (t *QueryTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryEndData) {
	t.end(ctx, data.Err)
}

// TraceBatchStart implements pgx.BatchTracer.
func (t *QueryTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return context.WithValue(ctx, queryStartKey{}, queryStart{at: time.Now(), op: "batch"})
}

// TraceBatchQuery implements pgx.BatchTracer: the statements of a batch share one round trip, so only their
// failures are counted, under their own verb.
func (t *QueryTracer) TraceBatchQuery(_ context.Context, _ *pgx.Conn, data pgx.TraceBatchQueryData) {
	if data.Err != nil {
		t.errors.WithLabelValues(Operation(data.SQL)).Inc()
	}
}

// TraceBatchEnd implements pgx.BatchTracer.
func (t *QueryTracer) TraceBatchEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceBatchEndData) {
	t.end(ctx, data.Err)
}

// TraceCopyFromStart implements pgx.CopyFromTracer.
func (t *QueryTracer) TraceCopyFromStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceCopyFromStartData) context.Context {
	return context.WithValue(ctx, queryStartKey{}, queryStart{at: time.Now(), op: "copy"})
}

// TraceCopyFromEnd implements pgx.CopyFromTracer.
func (t *QueryTracer) TraceCopyFromEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceCopyFromEndData) {
	t.end(ctx, data.Err)
}

// TraceAcquireStart implements pgxpool.AcquireTracer.
func (t *QueryTracer) TraceAcquireStart(ctx context.Context, _ *pgxpool.Pool, _ pgxpool.TraceAcquireStartData) context.Context {
	return context.WithValue(ctx, acquireStartKey{}, time.Now())
}

// TraceAcquireEnd implements pgxpool.AcquireTracer.
func (t *QueryTracer) TraceAcquireEnd(ctx context.Context, _ *pgxpool.Pool, _ pgxpool.TraceAcquireEndData) {
	if at, ok := ctx.Value(acquireStartKey{}).(time.Time); ok {
		t.acquire.Observe(time.Since(at).Seconds())
	}
}

func (t *QueryTracer) end(ctx context.Context, err error) {
	st, ok := ctx.Value(queryStartKey{}).(queryStart)
	if !ok {
		return
	}
	t.duration.WithLabelValues(st.op).Observe(time.Since(st.at).Seconds())
	if err != nil {
		t.errors.WithLabelValues(st.op).Inc()
	}
}

// RegisterPool exports a pgx pool's own statistics, read once per scrape:
//
//	fleetflow_registry_pool_connections{state="acquired|idle|constructing"}  gauge
//	fleetflow_registry_pool_max_connections                                 gauge
//	fleetflow_registry_pool_acquires_total                                  counter
//	fleetflow_registry_pool_empty_acquires_total                            counter (had to wait or dial)
//	fleetflow_registry_pool_canceled_acquires_total                         counter (gave up waiting)
//
// A pool registered again in the same registry replaces the previous one.
func RegisterPool(r prometheus.Registerer, pool *pgxpool.Pool) {
	Replace(r, poolCollector{pool})
}

var (
	poolConnsDesc = prometheus.NewDesc("fleetflow_registry_pool_connections",
		"Connections of the registry's pool by state.", []string{"state"}, nil)
	poolMaxDesc = prometheus.NewDesc("fleetflow_registry_pool_max_connections",
		"Size limit of the registry's pool.", nil, nil)
	poolAcquiresDesc = prometheus.NewDesc("fleetflow_registry_pool_acquires_total",
		"Connections acquired from the registry's pool.", nil, nil)
	poolEmptyDesc = prometheus.NewDesc("fleetflow_registry_pool_empty_acquires_total",
		"Acquires that found no idle connection and had to wait for one (a sign the pool is too small).", nil, nil)
	poolCanceledDesc = prometheus.NewDesc("fleetflow_registry_pool_canceled_acquires_total",
		"Acquires whose context ended before a connection was available.", nil, nil)
)

// poolCollector reads a pool's statistics at scrape time; pgxpool keeps the counts already.
type poolCollector struct{ pool *pgxpool.Pool }

// Describe implements prometheus.Collector.
func (poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolConnsDesc, poolMaxDesc, poolAcquiresDesc, poolEmptyDesc, poolCanceledDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.pool.Stat()
	ch <- prometheus.MustNewConstMetric(poolConnsDesc, prometheus.GaugeValue, float64(st.AcquiredConns()), "acquired")
	ch <- prometheus.MustNewConstMetric(poolConnsDesc, prometheus.GaugeValue, float64(st.IdleConns()), "idle")
	ch <- prometheus.MustNewConstMetric(poolConnsDesc, prometheus.GaugeValue, float64(st.ConstructingConns()), "constructing")
	ch <- prometheus.MustNewConstMetric(poolMaxDesc, prometheus.GaugeValue, float64(st.MaxConns()))
	ch <- prometheus.MustNewConstMetric(poolAcquiresDesc, prometheus.CounterValue, float64(st.AcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolEmptyDesc, prometheus.CounterValue, float64(st.EmptyAcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolCanceledDesc, prometheus.CounterValue, float64(st.CanceledAcquireCount()))
}

// sqlVerbs are the statement keywords reported as operations; anything else is "other".
var sqlVerbs = map[string]bool{
	"select": true, "insert": true, "update": true, "delete": true, "merge": true, "values": true,
	"copy": true, "begin": true, "start": true, "commit": true, "end": true, "rollback": true, "savepoint": true,
	"release": true, "create": true, "alter": true, "drop": true, "truncate": true, "lock": true,
	"listen": true, "unlisten": true, "notify": true, "set": true, "show": true, "reset": true,
	"call": true, "do": true, "explain": true, "analyze": true, "vacuum": true, "refresh": true,
	"prepare": true, "execute": true, "deallocate": true, "discard": true, "grant": true, "revoke": true,
	"comment": true, "declare": true, "fetch": true, "close": true, "move": true,
}

// Operation returns the SQL verb of a statement, lower case, for the operation label: the first keyword after
// leading comments, or for WITH the first keyword after the common table expressions. Unknown keywords
// give "other".
func Operation(sql string) string {
	sc := sqlScanner{s: sql}
	w := sc.word()
	if w != "with" {
		return verb(w)
	}
	// Skip "name [(cols)] AS [NOT] [MATERIALIZED] (query) [, ...]": the main statement's verb is the first
	// known keyword that directly follows a parenthesised group at depth zero.
	for {
		w = sc.word()
		if w == "" {
			return "other"
		}
		if sc.prevWasParen && sqlVerbs[w] {
			return w
		}
	}
}

func verb(w string) string {
	if sqlVerbs[w] {
		return w
	}
	return "other"
}

// sqlScanner walks a statement's words at parenthesis depth zero, skipping comments, string literals,
// quoted identifiers and everything inside parentheses.
type sqlScanner struct {
	s string
	i int
	// prevWasParen is whether a parenthesised group ended right before the last word, which is what
	// separates a CTE's body from the main statement's verb ("... AS (SELECT ...) SELECT").
	prevWasParen bool
}

// word returns the next lower-cased word at depth zero, or "" at the end of the statement.
func (sc *sqlScanner) word() string {
	paren := false
	for sc.i < len(sc.s) {
		c := sc.s[sc.i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ',' || c == ';':
			sc.i++
		case sc.skipComment():
		case c == '(':
			sc.skipGroup()
			paren = true
		case c == '\'' || c == '"':
			sc.skipQuoted(c)
		case isLetter(c) || c == '_':
			j := sc.i
			for j < len(sc.s) && (isLetter(sc.s[j]) || isDigit(sc.s[j]) || sc.s[j] == '_' || sc.s[j] == '$') {
				j++
			}
			w := strings.ToLower(sc.s[sc.i:j])
			sc.i = j
			sc.prevWasParen = paren
			return w
		default:
			sc.i++
		}
	}
	return ""
}

// skipGroup skips a parenthesised group, including nested groups, literals and comments inside it.
func (sc *sqlScanner) skipGroup() {
	depth := 0
	for sc.i < len(sc.s) {
		c := sc.s[sc.i]
		switch {
		case c == '(':
			depth++
			sc.i++
		case c == ')':
			depth--
			sc.i++
			if depth == 0 {
				return
			}
		case c == '\'' || c == '"':
			sc.skipQuoted(c)
		case sc.skipComment():
		default:
			sc.i++
		}
	}
}

// skipComment skips a -- or /* */ comment starting at sc.i and reports whether there was one.
func (sc *sqlScanner) skipComment() bool {
	rest := sc.s[sc.i:]
	switch {
	case strings.HasPrefix(rest, "--"):
		if j := strings.IndexByte(rest, '\n'); j >= 0 {
			sc.i += j + 1
		} else {
			sc.i = len(sc.s)
		}
	case strings.HasPrefix(rest, "/*"):
		if j := strings.Index(rest[2:], "*/"); j >= 0 {
			sc.i += j + 4
		} else {
			sc.i = len(sc.s)
		}
	default:
		return false
	}
	return true
}

// skipQuoted skips a literal or quoted identifier starting at sc.i; a doubled quote is an escaped one.
func (sc *sqlScanner) skipQuoted(q byte) {
	sc.i++
	for sc.i < len(sc.s) {
		if sc.s[sc.i] == q {
			if sc.i+1 < len(sc.s) && sc.s[sc.i+1] == q {
				sc.i += 2
				continue
			}
			sc.i++
			return
		}
		sc.i++
	}
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isDigit(c byte) bool  { return c >= '0' && c <= '9' }
