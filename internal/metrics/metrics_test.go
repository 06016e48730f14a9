package metrics_test

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/metrics"
)

func scrape(t *testing.T, r *metrics.Registry) string {
	t.Helper()
	var b bytes.Buffer
	n, err := r.WriteTo(&b)
	require.NoError(t, err)
	require.Equal(t, int64(b.Len()), n, "WriteTo's count")
	return b.String()
}

func TestExpositionFormat(t *testing.T) {
	r := metrics.NewRegistry()
	r.Counter("b_total", "B help.").Add(3)
	v := r.CounterVec("a_total", "A with \\ and\nnewline.", "x", "code")
	v.With("2", "200").Inc()
	v.With("1", "500").Add(2.5)
	v.With("1", "500").Add(-1) // ignored: counters never go down
	r.Gauge("c", "C.").Set(-1.5)
	h := r.HistogramVec("d_seconds", "D.", []float64{0.25, 1}, "op")
	h.With("q").Observe(0.25) // on a bound: le is inclusive
	h.With("q").Observe(0.5)
	h.With("q").Observe(7)
	r.GaugeFunc("e", "E.", func() float64 { return 42 })
	r.CounterVec("empty_total", "No series yet, so not written.", "l")
	r.Gauge("f", "Large and special values.").Set(1.5e21)
	r.GaugeVec("g", "G.", "v").With("inf").Set(posInf())

	want := `# HELP a_total A with \\ and\nnewline.
# TYPE a_total counter
a_total{code="200",x="2"} 1
a_total{code="500",x="1"} 2.5
# HELP b_total B help.
# TYPE b_total counter
b_total 3
# HELP c C.
# TYPE c gauge
c -1.5
# HELP d_seconds D.
# TYPE d_seconds histogram
d_seconds_bucket{op="q",le="0.25"} 1
d_seconds_bucket{op="q",le="1"} 2
d_seconds_bucket{op="q",le="+Inf"} 3
d_seconds_sum{op="q"} 7.75
d_seconds_count{op="q"} 3
# HELP e E.
# TYPE e gauge
e 42
# HELP f Large and special values.
# TYPE f gauge
f 1.5e+21
# HELP g G.
# TYPE g gauge
g{v="inf"} +Inf
`
	assert.Equal(t, want, scrape(t, r))
	assert.Equal(t, want, scrape(t, r), "a second scrape is identical")
}

func posInf() float64 { var zero float64; return 1 / zero }

func TestLabelEscaping(t *testing.T) {
	r := metrics.NewRegistry()
	r.GaugeVec("x", "X.", "path").With("a\"b\\c\nd").Set(1)
	assert.Contains(t, scrape(t, r), `x{path="a\"b\\c\nd"} 1`+"\n")
}

func TestHistogramBuckets(t *testing.T) {
	r := metrics.NewRegistry()
	h := r.Histogram("lat_seconds", "L.", []float64{0.001, 0.01, 0.1, posInf()}) // a trailing +Inf is implied anyway
	for _, d := range []time.Duration{500 * time.Microsecond, time.Millisecond, 5 * time.Millisecond, 50 * time.Millisecond, 2 * time.Second} {
		h.ObserveDuration(d)
	}
	h.Observe(nan())
	assert.Equal(t, uint64(5), h.Count())
	assert.InDelta(t, 2.0565, h.Sum(), 1e-9)
	out := scrape(t, r)
	for _, line := range []string{
		`lat_seconds_bucket{le="0.001"} 2`,
		`lat_seconds_bucket{le="0.01"} 3`,
		`lat_seconds_bucket{le="0.1"} 4`,
		`lat_seconds_bucket{le="+Inf"} 5`,
		`lat_seconds_count 5`,
	} {
		assert.Contains(t, out, line+"\n")
	}
	assert.Equal(t, 1, strings.Count(out, `le="+Inf"`), "+Inf appears once even when given")

	assert.Panics(t, func() { r.Histogram("bad_seconds", "B.", []float64{1, 1}) }, "buckets must increase")
	assert.Panics(t, func() { r.HistogramVec("bad2_seconds", "B.", metrics.LatencyBuckets, "le") }, "le is reserved")
}

func nan() float64 { var zero float64; return zero / zero }

func TestRegistration(t *testing.T) {
	r := metrics.NewRegistry()
	c := r.Counter("x_total", "X.")
	assert.Same(t, c, r.Counter("x_total", "Other help is ignored."), "re-registration returns the same counter")
	v := r.CounterVec("y_total", "Y.", "a", "b")
	assert.Same(t, v.With("1", "2"), r.CounterVec("y_total", "Y.", "a", "b").With("1", "2"))

	for name, f := range map[string]func(){
		"invalid name":         func() { r.Counter("1x", "X.") },
		"invalid label":        func() { r.CounterVec("z_total", "Z.", "a-b") },
		"reserved label":       func() { r.CounterVec("z_total", "Z.", "__a") },
		"repeated label":       func() { r.CounterVec("z_total", "Z.", "a", "a") },
		"type conflict":        func() { r.Gauge("x_total", "X.") },
		"label conflict":       func() { r.CounterVec("y_total", "Y.", "a") },
		"wrong value count":    func() { v.With("1") },
		"bucket conflict":      func() { r.Histogram("h", "H.", []float64{1}); r.Histogram("h", "H.", []float64{2}) },
		"counter set by func":  func() { r.CounterFunc("f_total", "F.", func() float64 { return 1 }); r.Counter("f_total", "F.") },
		"empty name":           func() { r.Gauge("", "E.") },
		"colon in label names": func() { r.GaugeVec("g", "G.", "a:b") },
	} {
		assert.Panics(t, f, name)
	}
}

// TestConcurrency hammers every metric type, the lazy creation of series and the Temporal handler while
// scraping; run with -race. The totals must come out exact.
func TestConcurrency(t *testing.T) {
	r := metrics.NewRegistry()
	th := metrics.NewTemporalHandler(r, nil)
	const workers, n = 16, 2000
	var wg sync.WaitGroup
	stop := make(chan struct{})
	scraped := make(chan int)
	go func() {
		scrapes := 0
		for {
			select {
			case <-stop:
				scraped <- scrapes
				return
			default:
				var b bytes.Buffer
				_, _ = r.WriteTo(&b)
				scrapes++
			}
		}
	}()
	for w := range workers {
		wg.Go(func() {
			c := r.Counter("c_total", "C.")
			g := r.Gauge("g", "G.")
			vec := r.CounterVec("v_total", "V.", "k")
			h := r.HistogramVec("h_seconds", "H.", metrics.LatencyBuckets, "k")
			tagged := th.WithTags(map[string]string{"worker": fmt.Sprint(w % 4)})
			for i := range n {
				c.Inc()
				g.Add(1)
				vec.With(fmt.Sprint(i % 8)).Inc()
				h.With(fmt.Sprint(i % 3)).Observe(float64(i) / n)
				tagged.Counter("temporal_request").Inc(1)
				tagged.Timer("temporal_request_latency").Record(time.Millisecond)
			}
		})
	}
	wg.Wait()
	close(stop)
	t.Logf("%d concurrent scrapes", <-scraped)

	total := float64(workers * n)
	assert.Equal(t, total, r.Counter("c_total", "C.").Value())
	assert.Equal(t, total, r.Gauge("g", "G.").Value())
	var sum float64
	var hist uint64
	for k := range 8 {
		sum += r.CounterVec("v_total", "V.", "k").With(fmt.Sprint(k)).Value()
	}
	for k := range 3 {
		hist += r.HistogramVec("h_seconds", "H.", metrics.LatencyBuckets, "k").With(fmt.Sprint(k)).Count()
	}
	assert.Equal(t, total, sum)
	assert.Equal(t, uint64(total), hist)
	out := scrape(t, r)
	var requests float64
	for w := range 4 {
		var v float64
		_, err := fmt.Sscanf(sampleLine(t, out, fmt.Sprintf(`temporal_request{worker="%d"}`, w)), "%g", &v)
		require.NoError(t, err)
		requests += v
	}
	assert.Equal(t, total, requests)
	assertValidExposition(t, out)
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

var (
	commentLine = regexp.MustCompile(`^# (HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*|TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram))$`)
	sampleRe    = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})? (-?[0-9.e+-]+|[+-]Inf|NaN)$`)
)

// assertValidExposition checks every line against the text format's grammar, and that each family's
// TYPE comes right after its HELP and before its samples.
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

func TestHandler(t *testing.T) {
	r := metrics.NewRegistry()
	r.Counter("hits_total", "Hits.").Add(7)
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()

	res, err := http.Get(srv.URL) // Go's client asks for gzip and decodes it transparently
	require.NoError(t, err)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, metrics.ContentType, res.Header.Get("Content-Type"))
	assert.True(t, res.Uncompressed, "served gzip-compressed")
	assert.Contains(t, string(body), "hits_total 7\n")

	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	req.Header.Set("Accept-Encoding", "gzip")
	res, err = http.DefaultTransport.RoundTrip(req)
	require.NoError(t, err)
	assert.Equal(t, "gzip", res.Header.Get("Content-Encoding"))
	zr, err := gzip.NewReader(res.Body)
	require.NoError(t, err)
	body, _ = io.ReadAll(zr)
	res.Body.Close()
	assert.Contains(t, string(body), "hits_total 7\n")

	req.Header.Set("Accept-Encoding", "identity")
	res, err = http.DefaultTransport.RoundTrip(req)
	require.NoError(t, err)
	body, _ = io.ReadAll(res.Body)
	res.Body.Close()
	assert.Empty(t, res.Header.Get("Content-Encoding"))
	assert.Equal(t, "# HELP hits_total Hits.\n# TYPE hits_total counter\nhits_total 7\n", string(body))

	res, err = http.Post(srv.URL, "text/plain", nil)
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusMethodNotAllowed, res.StatusCode)
}

func TestServe(t *testing.T) {
	r := metrics.NewRegistry()
	r.Gauge("up_ish", "U.").Set(1)
	s, err := metrics.Serve("127.0.0.1:0", r.Handler(), nil)
	require.NoError(t, err)
	get := func(path string) (int, string) {
		res, err := http.Get("http://" + s.Addr() + path)
		require.NoError(t, err)
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	code, body := get("/metrics")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "up_ish 1\n")
	assert.Equal(t, "http://"+s.Addr()+"/metrics", s.URL())
	code, _ = get("/")
	assert.Equal(t, http.StatusOK, code)
	code, _ = get("/nope")
	assert.Equal(t, http.StatusNotFound, code)

	_, err = metrics.Serve(s.Addr(), r.Handler(), nil)
	require.Error(t, err, "a port in use is an error at start")
	require.NoError(t, s.Close())
	_, err = http.Get(s.URL())
	require.Error(t, err, "closed")
}

func TestProcessMetrics(t *testing.T) {
	r := metrics.NewRegistry()
	metrics.RegisterProcess(r, "test")
	out := scrape(t, r)
	assertValidExposition(t, out)
	for _, name := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes", "process_resident_memory_bytes",
		"process_cpu_seconds_total", "process_open_fds", "process_start_time_seconds"} {
		var v float64
		_, err := fmt.Sscanf(sampleLine(t, out, name), "%g", &v)
		require.NoError(t, err, name)
		assert.Greater(t, v, 0.0, name)
	}
	assert.Regexp(t, `(?m)^fleetflow_build_info\{component="test",go_version="go[^"]+",revision="[^"]+",version="[^"]+"\} 1$`, out)
}

func TestWorkerListen(t *testing.T) {
	assert.Equal(t, "127.0.0.1:9465", metrics.WorkerListen(1))
	assert.Equal(t, "127.0.0.1:9467", metrics.WorkerListen(3))
}
