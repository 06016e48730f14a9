package metrics_test

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/metrics"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// scrape gathers r, failing the test on any gathering error (an inconsistent family, a duplicate series),
// and returns the text exposition that a scraper asking for text would get.
func scrape(t *testing.T, r *metrics.Registry) string {
	t.Helper()
	mfs, err := r.Gather()
	require.NoError(t, err)
	var b bytes.Buffer
	for _, mf := range mfs {
		_, err := expfmt.MetricFamilyToText(&b, mf)
		require.NoError(t, err)
	}
	return b.String()
}

// exposedNames are the sample names r exposes: a counter's or gauge's name, a histogram's _bucket, _sum
// and _count.
func exposedNames(t *testing.T, r *metrics.Registry) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for name := range exposedLabels(t, r) {
		out[name] = true
	}
	return out
}

// exposedLabels maps each sample name r exposes (see exposedNames) to the label names its series carry;
// a histogram's _bucket has le besides.
func exposedLabels(t *testing.T, r *metrics.Registry) map[string]map[string]bool {
	t.Helper()
	mfs, err := r.Gather()
	require.NoError(t, err)
	out := map[string]map[string]bool{}
	add := func(name string, m *dto.Metric, extra ...string) {
		if out[name] == nil {
			out[name] = map[string]bool{}
		}
		for _, l := range m.GetLabel() {
			out[name][l.GetName()] = true
		}
		for _, l := range extra {
			out[name][l] = true
		}
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch mf.GetType() {
			case dto.MetricType_HISTOGRAM:
				add(mf.GetName()+"_bucket", m, "le")
				add(mf.GetName()+"_sum", m)
				add(mf.GetName()+"_count", m)
			case dto.MetricType_SUMMARY:
				add(mf.GetName(), m, "quantile")
				add(mf.GetName()+"_sum", m)
				add(mf.GetName()+"_count", m)
			default:
				add(mf.GetName(), m)
			}
		}
	}
	return out
}

// sampleLine returns the value part of the sample line that starts with series (name and labels).
func sampleLine(t *testing.T, out, series string) string {
	t.Helper()
	for line := range strings.SplitSeq(out, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	t.Fatalf("no sample %s in:\n%s", series, out)
	return ""
}

// sampleValue is sampleLine's value as a number.
func sampleValue(t *testing.T, out, series string) float64 {
	t.Helper()
	var v float64
	_, err := fmt.Sscanf(sampleLine(t, out, series), "%g", &v)
	require.NoError(t, err, series)
	return v
}

var (
	commentLine = regexp.MustCompile(`^# (HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*|TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram|summary|untyped))$`)
	sampleRe    = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})? (-?[0-9.e+-]+|[+-]Inf|NaN)$`)
)

// assertValidExposition checks every line against the text format's grammar, and that each family's
// TYPE comes before its samples.
func assertValidExposition(t *testing.T, out string) {
	t.Helper()
	require.True(t, strings.HasSuffix(out, "\n"), "ends with a newline")
	typed := map[string]bool{}
	for line := range strings.SplitSeq(strings.TrimSuffix(out, "\n"), "\n") {
		if strings.HasPrefix(line, "#") {
			assert.Regexp(t, commentLine, line)
			if f := strings.Fields(line); f[1] == "TYPE" {
				assert.False(t, typed[f[2]], "one TYPE line per family: %s", f[2])
				typed[f[2]] = true
			}
			continue
		}
		assert.Regexp(t, sampleRe, line)
		name := line[:strings.IndexAny(line, "{ ")]
		base := name
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(name, suf); ok && typed[b] {
				base = b
			}
		}
		assert.True(t, typed[base], "sample of %s before its TYPE", name)
	}
}
