package metrics_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/metrics"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

func TestTemporalHandler(t *testing.T) {
	r := metrics.NewRegistry()
	var logs bytes.Buffer
	var h client.MetricsHandler = metrics.NewTemporalHandler(r, slog.New(slog.NewTextHandler(&logs, nil)))

	root := h.WithTags(map[string]string{"namespace": "default", "client_name": "temporal_go"})
	w := root.WithTags(map[string]string{"task_queue": "q", "worker_type": "ActivityWorker"})
	w.Gauge("temporal_worker_task_slots_available").Update(1000)
	w.Gauge("temporal_worker_task_slots_available").Update(998) // gauges keep the last value
	w.Counter("temporal_request").Inc(2)
	root.Counter("temporal_request").Inc(1) // the same name with fewer tags is its own series
	w.WithTags(map[string]string{"namespace": "other"}).Counter("temporal_request").Inc(5)
	w.WithTags(map[string]string{"activity_type": "Provision"}).Timer("temporal_activity_execution_latency").Record(1500 * time.Millisecond)
	h.WithTags(map[string]string{"bad-key": "v", "9": "x"}).Counter("my.custom-metric").Inc(1)
	h.WithTags(nil).Counter("temporal_request").Inc(0)

	// A name the SDK would use with two types: the second is dropped (and logged once), not a panic.
	h.Counter("temporal_conflict").Inc(1)
	h.Gauge("temporal_conflict").Update(3)
	h.Gauge("temporal_conflict").Update(4)

	out := scrape(t, r)
	assertValidExposition(t, out)
	for _, line := range []string{
		"# TYPE temporal_worker_task_slots_available gauge",
		`temporal_worker_task_slots_available{client_name="temporal_go",namespace="default",task_queue="q",worker_type="ActivityWorker"} 998`,
		"# TYPE temporal_request counter",
		`temporal_request 0`,
		`temporal_request{client_name="temporal_go",namespace="default"} 1`,
		`temporal_request{client_name="temporal_go",namespace="default",task_queue="q",worker_type="ActivityWorker"} 2`,
		`temporal_request{client_name="temporal_go",namespace="other",task_queue="q",worker_type="ActivityWorker"} 5`,
		"# TYPE temporal_activity_execution_latency histogram",
		`temporal_activity_execution_latency_bucket{activity_type="Provision",client_name="temporal_go",namespace="default",task_queue="q",worker_type="ActivityWorker",le="1"} 0`,
		`temporal_activity_execution_latency_bucket{activity_type="Provision",client_name="temporal_go",namespace="default",task_queue="q",worker_type="ActivityWorker",le="2.5"} 1`,
		`temporal_activity_execution_latency_sum{activity_type="Provision",client_name="temporal_go",namespace="default",task_queue="q",worker_type="ActivityWorker"} 1.5`,
		`my_custom_metric{_9="x",bad_key="v"} 1`,
		`temporal_conflict 1`,
	} {
		assert.Contains(t, out, line+"\n")
	}
	assert.Equal(t, 1, strings.Count(logs.String(), "dropping a Temporal SDK metric"), logs.String())
}

// TestTemporalWorkerMetrics runs a real worker against the test Temporal server with the handler installed
// and checks that the SDK's worker, request and activity series appear.
func TestTemporalWorkerMetrics(t *testing.T) {
	r := metrics.NewRegistry()
	c, err := client.Dial(client.Options{HostPort: testenv.Temporal(t), Logger: nopLogger{},
		MetricsHandler: metrics.NewTemporalHandler(r, nil)})
	require.NoError(t, err)
	defer c.Close()

	queue := "metrics-" + strings.ToLower(t.Name())
	w := worker.New(c, queue, worker.Options{})
	w.RegisterWorkflowWithOptions(greetWorkflow, workflow.RegisterOptions{Name: "MetricsGreet"})
	w.RegisterActivityWithOptions(greet, activity.RegisterOptions{Name: "MetricsGreetActivity"})
	require.NoError(t, w.Start())
	defer w.Stop()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: queue + "-" + fmt.Sprint(time.Now().UnixNano()), TaskQueue: queue}, "MetricsGreet", "fleet")
	require.NoError(t, err)
	var got string
	require.NoError(t, run.Get(ctx, &got))
	require.Equal(t, "hello fleet", got)

	want := []*regexp.Regexp{
		regexp.MustCompile(`(?m)^temporal_worker_task_slots_available\{[^}]*task_queue="` + queue + `"[^}]*worker_type="ActivityWorker"[^}]*\} \d+$`),
		regexp.MustCompile(`(?m)^temporal_activity_execution_latency_count\{[^}]*activity_type="MetricsGreetActivity"[^}]*\} 1$`),
		regexp.MustCompile(`(?m)^temporal_workflow_completed\{[^}]*workflow_type="MetricsGreet"[^}]*\} 1$`),
		regexp.MustCompile(`(?m)^temporal_request_latency_bucket\{[^}]*operation="StartWorkflowExecution"[^}]*le="\+Inf"\} [1-9]`),
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
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: 10 * time.Second})
	var out string
	err := workflow.ExecuteActivity(ctx, "MetricsGreetActivity", name).Get(ctx, &out)
	return out, err
}

func greet(_ context.Context, name string) (string, error) { return "hello " + name, nil }

// nopLogger keeps the SDK quiet in tests.
type nopLogger struct{}

func (nopLogger) Debug(string, ...any) {}
func (nopLogger) Info(string, ...any)  {}
func (nopLogger) Warn(string, ...any)  {}
func (nopLogger) Error(string, ...any) {}
