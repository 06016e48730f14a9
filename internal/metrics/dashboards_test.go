package metrics_test

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
	"github.com/fleetflow/fleetflow/internal/metrics"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

// dashboardDir holds the Grafana dashboards that ship with fleetflow.
const dashboardDir = "../../deploy/grafana"

// TestDashboardsQueryExposedMetrics keeps the shipped dashboards honest: every metric name in every PromQL
// expression of every dashboard (panels and template variables) must be exposed by the worker's or the
// gateway's registry, wired as worker/main.go and starter/cmd_gateway.go wire them, after some activity.
func TestDashboardsQueryExposedMetrics(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(dashboardDir, "*.json"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(files), 2, "the Temporal SDK and the fleetflow dashboards")
	used := map[string][]string{} // metric name -> where it is used
	type query struct{ where, expr string }
	var queries []query
	for _, f := range files {
		exprs := dashboardExprs(t, f)
		require.NotEmpty(t, exprs, f)
		for where, expr := range exprs {
			names := promqlMetricNames(expr)
			require.NotEmpty(t, names, "%s: %s queries no metric: %s", f, where, expr)
			for _, n := range names {
				used[n] = append(used[n], filepath.Base(f)+": "+where)
			}
			queries = append(queries, query{filepath.Base(f) + ": " + where, expr})
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	worker, gw := metrics.NewRegistry(), metrics.NewRegistry()

	// The worker: process basics, the registry's tracer and pool, the Temporal SDK running workflows.
	metrics.RegisterProcess(worker, "worker")
	wreg, err := registry.OpenWithOptions(ctx, testenv.Postgres(t), registry.Options{Tracer: metrics.NewQueryTracer(worker)})
	require.NoError(t, err)
	defer wreg.Close()
	metrics.RegisterPool(worker, wreg.Pool())
	_, err = wreg.Pool().Exec(ctx, "SELECT * FROM no_such_table")
	require.Error(t, err, "a failing query")
	h, err := metrics.NewTemporalHandler(worker, nil)
	require.NoError(t, err)
	runSDKWorkload(t, h)

	// The gateway: process basics, its registry's tracer and pool, and a started gateway that refuses a
	// device with a wrong secret and serves one with the right one.
	metrics.RegisterProcess(gw, "gateway")
	greg, err := registry.OpenWithOptions(ctx, testenv.Postgres(t), registry.Options{Tracer: metrics.NewQueryTracer(gw)})
	require.NoError(t, err)
	defer greg.Close()
	metrics.RegisterPool(gw, greg.Pool())
	store := gatewaytest.New()
	store.Add("dev-dash", "s3cret")
	g := gatewaytest.StartGateway(t, store, gateway.Config{Metrics: gw})
	_, err = gatewaytest.Dial(t, gatewaytest.URL(g), "dev-dash", "dev-dash", "wrong")
	require.Error(t, err)
	c, err := gatewaytest.Dial(t, gatewaytest.URL(g), "dev-dash", "dev-dash", "s3cret")
	require.NoError(t, err)
	require.NoError(t, c.Pub(t, "devices/dev-dash/telemetry", 0, `{"temp":21}`))

	// Some SDK series appear just after the workflows finish (the worker reports its last task first).
	missing := func() []string {
		exposed := exposedNames(t, worker)
		maps.Copy(exposed, exposedNames(t, gw))
		var out []string
		for n := range used {
			if !exposed[n] {
				out = append(out, n)
			}
		}
		slices.Sort(out)
		return out
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(missing()) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	for _, n := range missing() {
		t.Errorf("%s is queried but exposed by neither the worker nor the gateway (used in %v)", n, used[n])
	}

	// The labels an expression matches on or groups by must be labels of its metrics (or the target
	// labels Prometheus adds), else the panel shows one series, or none, instead of one per value.
	labels := exposedLabels(t, worker)
	for name, ls := range exposedLabels(t, gw) {
		if labels[name] == nil {
			labels[name] = map[string]bool{}
		}
		maps.Copy(labels[name], ls)
	}
	for _, q := range queries {
		for _, l := range promqlLabelNames(q.expr) {
			if l == "job" || l == "instance" {
				continue
			}
			found := false
			for _, n := range promqlMetricNames(q.expr) {
				found = found || labels[n][l]
			}
			assert.True(t, found, "%s: label %s is on none of the metrics of %s", q.where, l, q.expr)
		}
	}
	assert.Greater(t, counterValue(t, gw, "fleetflow_gateway_auth_failures_total", "", ""), 0.0, "the refused device was counted")
	assert.Equal(t, 1.0, counterValue(t, worker, "fleetflow_registry_query_errors_total", "operation", "select"), "the failing query was counted")
}

// dashboardExprs returns the PromQL expressions of a Grafana dashboard, keyed by where they are: panel
// targets (rows' nested panels included) and query variables.
func dashboardExprs(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	type panel struct {
		Title   string `json:"title"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var d struct {
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	require.NoError(t, json.Unmarshal(b, &d), path)
	out := map[string]string{}
	var walk func([]json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			require.NoError(t, json.Unmarshal(r, &p), path)
			for _, tg := range p.Targets {
				require.NotEmpty(t, tg.Expr, "%s: panel %q target %s has no expression", path, p.Title, tg.RefID)
				out["panel "+p.Title+" "+tg.RefID] = tg.Expr
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		// Grafana stores a variable's query as a string or, in newer versions, as an object.
		var q string
		if json.Unmarshal(v.Query, &q) != nil {
			var obj struct {
				Query string `json:"query"`
			}
			require.NoError(t, json.Unmarshal(v.Query, &obj), path)
			q = obj.Query
		}
		out["variable "+v.Name] = q
	}
	return out
}

var (
	labelValuesRe = regexp.MustCompile(`label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)`)
	stringRe      = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	matchersRe    = regexp.MustCompile(`\{[^}]*\}|\[[^\]]*\]`)
	groupingRe    = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	identRe       = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promqlWords   = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true,
		"group_right": true, "bool": true, "offset": true, "and": true, "or": true, "unless": true, "inf": true, "nan": true}
)

// promqlMetricNames returns the metric names an expression selects: identifiers outside strings, label
// matchers, ranges and grouping clauses that are neither functions (followed by a parenthesis) nor PromQL
// keywords. A Grafana label_values(metric, label) variable query selects its first argument.
func promqlMetricNames(expr string) []string {
	if m := labelValuesRe.FindStringSubmatch(expr); m != nil {
		return []string{m[1]}
	}
	e := stringRe.ReplaceAllString(expr, `""`)
	e = matchersRe.ReplaceAllString(e, " ")
	e = groupingRe.ReplaceAllString(e, " ")
	var out []string
	for _, loc := range identRe.FindAllStringIndex(e, -1) {
		word := e[loc[0]:loc[1]]
		if loc[0] > 0 && strings.ContainsRune("0123456789.$", rune(e[loc[0]-1])) {
			continue // part of a number (1e3) or a Grafana variable
		}
		if rest := strings.TrimLeft(e[loc[1]:], " \t\n"); strings.HasPrefix(rest, "(") || promqlWords[strings.ToLower(word)] {
			continue
		}
		if !slices.Contains(out, word) {
			out = append(out, word)
		}
	}
	return out
}

var (
	matcherNameRe    = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)`)
	groupingListRe   = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	labelValuesArgRe = regexp.MustCompile(`label_values\([^,]*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)`)
)

// promqlLabelNames returns the label names an expression matches on ({name="..."}), groups or joins by
// (by, without, on, ignoring, group_left, group_right), or, for label_values, asks for.
func promqlLabelNames(expr string) []string {
	var out []string
	add := func(l string) {
		if l != "" && !slices.Contains(out, l) {
			out = append(out, l)
		}
	}
	if m := labelValuesArgRe.FindStringSubmatch(expr); m != nil {
		add(m[1])
	}
	e := stringRe.ReplaceAllString(expr, `""`)
	for _, sel := range regexp.MustCompile(`\{[^}]*\}`).FindAllString(e, -1) {
		for _, m := range matcherNameRe.FindAllStringSubmatch(sel, -1) {
			add(m[1])
		}
	}
	for _, m := range groupingListRe.FindAllStringSubmatch(e, -1) {
		for l := range strings.SplitSeq(m[1], ",") {
			add(strings.TrimSpace(l))
		}
	}
	return out
}

func TestPromQLLabelNames(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (operation, le) (rate(x_bucket{namespace=~"$ns", a!="b,c"}[5m]))`:        {"namespace", "a", "operation", "le"},
		`a * on (job, instance) group_left (component) b`:                                {"job", "instance", "component"},
		`label_values(temporal_worker_task_slots_available{namespace=~"x"}, task_queue)`: {"task_queue", "namespace"},
		`sum(rate(y_total[1m]))`: nil,
	} {
		assert.Equal(t, want, promqlLabelNames(expr), expr)
	}
}

func TestPromQLMetricNames(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (operation) (rate(temporal_request_total{namespace=~"$namespace"}[$__rate_interval]))`: {"temporal_request_total"},
		`histogram_quantile(0.95, sum by (le, stream) (rate(x_seconds_bucket{a="b{c}"}[5m])))`:         {"x_seconds_bucket"},
		`sum(rate(a_sum[1m])) / sum(rate(a_count[1m])) > 1e3`:                                          {"a_sum", "a_count"},
		`rate(process_cpu_seconds_total[1m]) * on (job, instance) group_left (component) build_info`:   {"process_cpu_seconds_total", "build_info"},
		`up offset 5m or vector(0)`:                         {"up"},
		`label_values(temporal_request_total, namespace)`:   {"temporal_request_total"},
		`sum without (instance) (go_goroutines) and bool 1`: {"go_goroutines"},
	} {
		assert.Equal(t, want, promqlMetricNames(expr), expr)
	}
}
