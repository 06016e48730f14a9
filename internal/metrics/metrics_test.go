package metrics_test

import (
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/metrics"
)

func TestHandler(t *testing.T) {
	r := metrics.NewRegistry()
	hits := prometheus.NewCounter(prometheus.CounterOpts{Name: "hits_total", Help: "Hits."})
	r.MustRegister(hits)
	hits.Add(7)
	srv := httptest.NewServer(metrics.Handler(r))
	defer srv.Close()

	res, err := http.Get(srv.URL) // Go's client asks for gzip and decodes it transparently
	require.NoError(t, err)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.True(t, strings.HasPrefix(res.Header.Get("Content-Type"), "text/plain; version=0.0.4"), res.Header.Get("Content-Type"))
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
	up := prometheus.NewGauge(prometheus.GaugeOpts{Name: "up_ish", Help: "U."})
	r.MustRegister(up)
	up.Set(1)
	s, err := metrics.Serve("127.0.0.1:0", metrics.Handler(r), nil)
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
	s.HandleFunc("/nope", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("added\n")) })
	code, body = get("/nope")
	assert.Equal(t, http.StatusOK, code, "a handler added while serving answers")
	assert.Equal(t, "added\n", body)

	_, err = metrics.Serve(s.Addr(), metrics.Handler(r), nil)
	require.Error(t, err, "a port in use is an error at start")
	require.NoError(t, s.Close())
	_, err = http.Get(s.URL())
	require.Error(t, err, "closed")
}

func TestProcessMetrics(t *testing.T) {
	r := metrics.NewRegistry()
	metrics.RegisterProcess(r, "test")
	// Spend some CPU first: the kernel counts it in hundredths of a second, and a fresh test binary may
	// have used less.
	for start := time.Now(); time.Since(start) < 50*time.Millisecond; {
	}
	out := scrape(t, r)
	assertValidExposition(t, out)
	for _, name := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes", "go_memstats_sys_bytes",
		"go_sched_gomaxprocs_threads", "process_resident_memory_bytes", "process_virtual_memory_bytes",
		"process_cpu_seconds_total", "process_open_fds", "process_start_time_seconds"} {
		assert.Greater(t, sampleValue(t, out, name), 0.0, name)
	}
	assert.Contains(t, out, "# TYPE go_gc_duration_seconds summary\n", "GC cycles are its _count")
	assert.Regexp(t, `(?m)^fleetflow_build_info\{component="test",go_version="go[^"]+",revision="[^"]+",version="[^"]+"\} 1$`, out)
}

func TestRegisterAndReplace(t *testing.T) {
	r := metrics.NewRegistry()
	newVec := func() *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_total", Help: "X."}, []string{"k"})
	}
	first := metrics.Register(r, newVec())
	first.WithLabelValues("a").Inc()
	second := metrics.Register(r, newVec())
	assert.Same(t, first, second, "an equal collector is reused, so its series continue")
	assert.Panics(t, func() {
		metrics.Register(r, prometheus.NewGauge(prometheus.GaugeOpts{Name: "x_total", Help: "X."}))
	}, "the same name with another type is a programming error")

	gauge := func(v float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "y", Help: "Y."}, func() float64 { return v })
	}
	metrics.Replace(r, gauge(1))
	metrics.Replace(r, gauge(2))
	out := scrape(t, r)
	assert.Equal(t, 2.0, sampleValue(t, out, "y"), "the newer instance reports")
	assert.Equal(t, 1.0, sampleValue(t, out, `x_total{k="a"}`))
}

func TestWorkerListen(t *testing.T) {
	assert.Equal(t, "127.0.0.1:9465", metrics.WorkerListen(1))
	assert.Equal(t, "127.0.0.1:9467", metrics.WorkerListen(3))
}
