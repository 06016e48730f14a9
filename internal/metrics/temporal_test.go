package metrics_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/metrics"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

func TestTemporalHandler(t *testing.T) {
	r := metrics.NewRegistry()
	var logs bytes.Buffer
	h, err := metrics.NewTemporalHandler(r, slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, err)

	root := h.WithTags(map[string]string{"namespace": "default", "client_name": "temporal_go"})
	w := root.WithTags(map[string]string{"task_queue": "q", "worker_type": "ActivityWorker"})
	w.Gauge("temporal_worker_task_slots_available").Update(1000)
	w.Gauge("temporal_worker_task_slots_available").Update(998) // gauges keep the last value
	w.Counter("temporal_request").Inc(2)
	root.Counter("temporal_request").Inc(1) // the same name with fewer tags is its own series
	w.WithTags(map[string]string{"namespace": "other"}).Counter("temporal_request").Inc(5)
	w.WithTags(map[string]string{"activity_type": "Provision"}).Timer("temporal_activity_execution_latency").Record(1500 * time.Millisecond)
	h.WithTags(map[string]string{"bad-key": "v"}).Counter("my.custom-metric").Inc(1)

	out := scrape(t, r)
	assertValidExposition(t, out)
	for _, line := range []string{
		"# TYPE temporal_worker_task_slots_available gauge",
		`temporal_worker_task_slots_available{client_name="temporal_go",namespace="default",task_queue="q",worker_type="ActivityWorker"} 998`,
		"# TYPE temporal_request_total counter",
		`temporal_request_total{client_name="temporal_go",namespace="default"} 1`,
		`temporal_request_total{client_name="temporal_go",namespace="default",task_queue="q",worker_type="ActivityWorker"} 2`,
		`temporal_request_total{client_name="temporal_go",namespace="other",task_queue="q",worker_type="ActivityWorker"} 5`,
		"# TYPE temporal_activity_execution_latency_seconds histogram",
		`temporal_activity_execution_latency_seconds_bucket{activity_type="Provision",client_name="temporal_go",namespace="default",task_queue="q",worker_type="ActivityWorker",le="1"} 0`,
		`temporal_activity_execution_latency_seconds_bucket{activity_type="Provision",client_name="temporal_go",namespace="default",task_queue="q",worker_type="ActivityWorker",le="2.5"} 1`,
		`temporal_activity_execution_latency_seconds_bucket{activity_type="Provision",client_name="temporal_go",namespace="default",task_queue="q",worker_type="ActivityWorker",le="14400"} 1`,
		`temporal_activity_execution_latency_seconds_sum{activity_type="Provision",client_name="temporal_go",namespace="default",task_queue="q",worker_type="ActivityWorker"} 1.5`,
		`my_custom_metric_total{bad_key="v"} 1`,
	} {
		assert.Contains(t, out, line+"\n")
	}
	assert.NotContains(t, out, "otel_scope", "no scope labels")
	assert.NotContains(t, out, "target_info", "no resource metric")
	assert.Empty(t, logs.String())
}

// TestTemporalHandlerConcurrency hammers the handler from many goroutines while scraping; run with -race.
// The totals must come out exact.
func TestTemporalHandlerConcurrency(t *testing.T) {
	r := metrics.NewRegistry()
	h, err := metrics.NewTemporalHandler(r, nil)
	require.NoError(t, err)
	const workers, n = 16, 500
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
				_, _ = r.Gather()
				scrapes++
			}
		}
	}()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			tagged := h.WithTags(map[string]string{"worker": fmt.Sprint(w % 4)})
			for range n {
				tagged.Counter("temporal_request").Inc(1)
				tagged.Timer("temporal_request_latency").Record(time.Millisecond)
			}
		})
	}
	wg.Wait()
	close(stop)
	t.Logf("%d concurrent scrapes", <-scraped)
	out := scrape(t, r)
	var requests, latencies float64
	for w := range 4 {
		requests += sampleValue(t, out, fmt.Sprintf(`temporal_request_total{worker="%d"}`, w))
		latencies += sampleValue(t, out, fmt.Sprintf(`temporal_request_latency_seconds_count{worker="%d"}`, w))
	}
	assert.Equal(t, float64(workers*n), requests)
	assert.Equal(t, float64(workers*n), latencies)
}

// runSDKWorkload runs a worker with the handler installed against the test Temporal server and drives the
// SDK through what a fleetflow worker does: a workflow with an activity that fails once and is retried, a
// local activity, a workflow that fails, and client requests that fail. It returns the task queue.
func runSDKWorkload(t *testing.T, h client.MetricsHandler) string {
	t.Helper()
	c, err := client.Dial(client.Options{HostPort: testenv.Temporal(t), Logger: nopLogger{}, MetricsHandler: h})
	require.NoError(t, err)
	t.Cleanup(c.Close)

	queue := "metrics-" + strings.ToLower(t.Name())
	w := worker.New(c, queue, worker.Options{})
	w.RegisterWorkflowWithOptions(greetWorkflow, workflow.RegisterOptions{Name: "MetricsGreet"})
	w.RegisterWorkflowWithOptions(failingWorkflow, workflow.RegisterOptions{Name: "MetricsFail"})
	var attempts sync.Map
	w.RegisterActivityWithOptions(func(ctx context.Context, name string) (string, error) {
		// The first attempt of each workflow's activity fails, so the retry path reports too.
		if _, again := attempts.LoadOrStore(activity.GetInfo(ctx).WorkflowExecution.ID, true); !again {
			return "", errors.New("first attempt fails")
		}
		return "hello " + name, nil
	}, activity.RegisterOptions{Name: "MetricsGreetActivity"})
	require.NoError(t, w.Start())
	t.Cleanup(w.Stop)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	id := fmt.Sprintf("%s-%d", queue, time.Now().UnixNano())
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: queue}, "MetricsGreet", "fleet")
	require.NoError(t, err)
	var got string
	require.NoError(t, run.Get(ctx, &got))
	require.Equal(t, "hello fleet", got)

	run, err = c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id + "-fail", TaskQueue: queue}, "MetricsFail")
	require.NoError(t, err)
	require.Error(t, run.Get(ctx, nil))

	// A request and a long poll for a workflow that does not exist fail.
	_, err = c.DescribeWorkflow(ctx, id+"-none", "")
	require.Error(t, err)
	require.Error(t, c.GetWorkflow(ctx, id+"-none", "").Get(ctx, nil))
	return queue
}

// TestTemporalWorkerMetrics runs a real worker against the test Temporal server with the handler installed
// and checks that the SDK's worker, request and activity series appear under the names Temporal's
// dashboards query.
func TestTemporalWorkerMetrics(t *testing.T) {
	r := metrics.NewRegistry()
	h, err := metrics.NewTemporalHandler(r, nil)
	require.NoError(t, err)
	queue := runSDKWorkload(t, h)

	want := []*regexp.Regexp{
		regexp.MustCompile(`(?m)^temporal_worker_task_slots_available\{[^}]*task_queue="` + queue + `"[^}]*worker_type="ActivityWorker"[^}]*\} \d+$`),
		regexp.MustCompile(`(?m)^temporal_activity_execution_latency_seconds_count\{[^}]*activity_type="MetricsGreetActivity"[^}]*\} 2$`),
		regexp.MustCompile(`(?m)^temporal_activity_execution_failed_total\{[^}]*activity_type="MetricsGreetActivity"[^}]*\} 1$`),
		regexp.MustCompile(`(?m)^temporal_workflow_completed_total\{[^}]*workflow_type="MetricsGreet"[^}]*\} 1$`),
		regexp.MustCompile(`(?m)^temporal_workflow_failed_total\{[^}]*workflow_type="MetricsFail"[^}]*\} 1$`),
		regexp.MustCompile(`(?m)^temporal_request_latency_seconds_bucket\{[^}]*operation="StartWorkflowExecution"[^}]*le="\+Inf"\} [1-9]`),
	}
	// The worker counts a completed workflow after it has reported the final workflow task, which may be
	// just after the client saw the result.
	var out string
	matched := func() bool {
		out = scrape(t, r)
		for _, re := range want {
			if !re.MatchString(out) {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(10 * time.Second)
	for !matched() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	assertValidExposition(t, out)
	for _, re := range want {
		assert.Regexp(t, re, out)
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", out)
	}
}

func greetWorkflow(ctx workflow.Context, name string) (string, error) {
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: 10 * time.Second,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: 10 * time.Millisecond}})
	var out string
	if err := workflow.ExecuteActivity(ctx, "MetricsGreetActivity", name).Get(ctx, &out); err != nil {
		return "", err
	}
	// A local activity too, so that its series exist.
	lctx := workflow.WithLocalActivityOptions(ctx, workflow.LocalActivityOptions{StartToCloseTimeout: 10 * time.Second})
	var n int
	if err := workflow.ExecuteLocalActivity(lctx, func(_ context.Context, s string) (int, error) { return len(s), nil }, out).Get(ctx, &n); err != nil {
		return "", err
	}
	return out, nil
}

func failingWorkflow(workflow.Context) error {
	return temporal.NewNonRetryableApplicationError("this workflow fails", "MetricsFailure", nil)
}

// nopLogger keeps the SDK quiet in tests.
type nopLogger struct{}

func (nopLogger) Debug(string, ...any) {}
func (nopLogger) Info(string, ...any)  {}
func (nopLogger) Warn(string, ...any)  {}
func (nopLogger) Error(string, ...any) {}
