package gateway_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

func TestJobStatusIngestion(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "sa")
	store.Add("dev-b", "sb")
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	url := gatewaytest.URL(g)
	a := mustConnect(t, url, "dev-a", "sa")
	raw, err := gatewaytest.Dial(t, url, "dev-b", "dev-b", "sb")
	require.NoError(t, err)

	ctx := context.Background()
	before := time.Now()
	require.NoError(t, a.ReportJobStatus(ctx, "rollout-2.0.0-1", "downloading", "", 40))
	require.NoError(t, a.ReportJobStatus(ctx, "rollout-2.0.0-1", "failed", "install failed: checksum mismatch", 0))
	// Extra fields are tolerated and a fractional progress is rounded.
	require.NoError(t, raw.Pub(t, "devices/dev-b/jobs/rollout-2.0.0-1/status", 1, `{"status":"installing","progress":49.6,"eta":12}`))
	require.Eventually(t, func() bool { return g.Stats().JobStatus == 3 }, 2*time.Second, 5*time.Millisecond)

	got := store.JobStatusesOf("rollout-2.0.0-1", "dev-a")
	require.Len(t, got, 2)
	assert.Equal(t, "downloading", got[0].Status)
	assert.Equal(t, 40, got[0].Progress)
	assert.Empty(t, got[0].Reason)
	assert.Equal(t, "failed", got[1].Status)
	assert.Equal(t, "install failed: checksum mismatch", got[1].Reason)
	assert.False(t, got[1].At.Before(before), "stamped on arrival")
	assert.WithinDuration(t, time.Now(), got[1].At, 5*time.Second)
	b, ok := store.LatestJobStatus("rollout-2.0.0-1", "dev-b")
	require.True(t, ok)
	assert.Equal(t, "installing", b.Status)
	assert.Equal(t, 50, b.Progress)

	// Malformed payloads are counted and dropped; the device stays connected.
	malformedBefore := g.Stats().Malformed
	bad := []string{
		`not json`,
		`[1,2]`,
		`null`,
		`"succeeded"`,
		`{}`,
		`{"status":"done"}`,
		`{"status":"SUCCEEDED"}`,
		`{"status":7}`,
		`{"status":"failed","reason":"` + strings.Repeat("x", 1025) + `"}`,
		`{"status":"failed","reason":5}`,
		`{"status":"downloading","progress":150}`,
		`{"status":"downloading","progress":-1}`,
		`{"status":"downloading","progress":"40"}`,
		`{"status":"succeeded","pad":"` + strings.Repeat("x", 4100) + `"}`,
		`{"status":"succeeded"} trailing`,
	}
	for _, p := range bad {
		require.NoError(t, raw.Pub(t, "devices/dev-b/jobs/job-bad/status", 1, p))
	}
	// A 1 KiB reason is still fine, and so is a job id at the topic's limit.
	okReason := strings.Repeat("r", 1024)
	require.NoError(t, raw.Pub(t, "devices/dev-b/jobs/job-bad/status", 1, `{"status":"failed","reason":"`+okReason+`"}`))
	require.Eventually(t, func() bool { return g.Stats().Malformed == malformedBefore+int64(len(bad)) }, 2*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool { return g.Stats().JobStatus == 4 }, 2*time.Second, 5*time.Millisecond)
	badGot := store.JobStatusesOf("job-bad", "dev-b")
	require.Len(t, badGot, 1, "only the valid one is recorded")
	assert.Equal(t, okReason, badGot[0].Reason)
	// A job status on a malformed topic is malformed too.
	require.NoError(t, raw.Pub(t, "devices/dev-b/jobs/bad!id/status", 1, `{"status":"succeeded"}`))
	require.Eventually(t, func() bool { return g.Stats().Malformed == malformedBefore+int64(len(bad))+1 }, 2*time.Second, 5*time.Millisecond)
	assert.False(t, raw.Lost())
	assert.Zero(t, g.Stats().JobStatusDropped)
}

func TestJobStatusesAreBatchedAndRetried(t *testing.T) {
	store := gatewaytest.New()
	const n = 200
	for i := range n {
		store.Add(fmt.Sprintf("dev-%03d", i), "s")
	}
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	url := gatewaytest.URL(g)
	devs := make([]*device.Device, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := connectDevice(t, url, fmt.Sprintf("dev-%03d", i), "s")
			assert.NoError(t, err)
			devs[i] = d
		}()
	}
	wg.Wait()
	require.False(t, t.Failed())

	// The first two writes fail: the batch is retried, not lost.
	store.FailJobStatusWrites(2)
	errBefore := g.Stats().StoreErrors
	start := make(chan struct{})
	for _, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			assert.NoError(t, d.ReportJobStatus(context.Background(), "job-1", "succeeded", "", 100))
		}()
	}
	close(start)
	wg.Wait()
	require.Eventually(t, func() bool { return g.Stats().JobStatus == n }, 5*time.Second, 10*time.Millisecond)
	calls := store.JobStatusCalls()
	t.Logf("%d job statuses in %d RecordJobStatuses calls (2 failed)", n, calls)
	assert.LessOrEqual(t, calls, n/10, "job statuses must be batched")
	assert.Len(t, store.JobStatuses(), n)
	for _, d := range devs {
		st, ok := store.LatestJobStatus("job-1", d.ID())
		require.True(t, ok, d.ID())
		assert.Equal(t, "succeeded", st.Status)
		assert.Equal(t, 100, st.Progress)
	}
	assert.Equal(t, errBefore+2, g.Stats().StoreErrors)
	assert.Zero(t, g.Stats().JobStatusDropped)

	// A registry that keeps failing costs the batch, which is counted, and the gateway goes on.
	store.FailJobStatusWrites(3)
	require.NoError(t, devs[0].ReportJobStatus(context.Background(), "job-2", "downloading", "", 0))
	require.Eventually(t, func() bool { return g.Stats().JobStatusDropped == 1 }, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, devs[0].ReportJobStatus(context.Background(), "job-2", "installing", "", 0))
	require.Eventually(t, func() bool { return g.Stats().JobStatus == n+1 }, 5*time.Second, 10*time.Millisecond)
	st, _ := store.LatestJobStatus("job-2", devs[0].ID())
	assert.Equal(t, "installing", st.Status)
}

// Statuses still queued when the gateway closes are written before Close returns.
func TestJobStatusesFlushedOnClose(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "sa")
	g := gatewaytest.StartGateway(t, store, gateway.Config{ReportedWait: time.Hour, ReportedBatch: 1000})
	c, err := gatewaytest.Dial(t, gatewaytest.URL(g), "dev-a", "dev-a", "sa")
	require.NoError(t, err)
	for i := range 5 {
		require.NoError(t, c.Pub(t, "devices/dev-a/jobs/job-1/status", 1, fmt.Sprintf(`{"status":"downloading","progress":%d}`, i*10)))
	}
	time.Sleep(50 * time.Millisecond)
	assert.Empty(t, store.JobStatuses(), "the batch is still waiting for company")
	require.NoError(t, g.Close())
	assert.Len(t, store.JobStatuses(), 5)
	assert.Equal(t, int64(5), g.Stats().JobStatus)
}

// Method calls travel over NATS: the gateway relays a call to a device it holds and sends the device's
// answer back; a device no gateway holds is answered offline at once by NATS itself; a device that
// publishes a method request on its own topics is nobody's caller.
func TestMethodCallsOverTheBus(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-on", "s")
	store.Add("dev-off", "s")
	natsURL := testenv.NATS(t)
	g, relay := gatewaytest.StartGatewayOnNATS(t, store, gateway.Config{}, natsURL)
	url := gatewaytest.URL(g)
	on := mustConnect(t, url, "dev-on", "s")
	on.OnMethod("ping", func(context.Context, []byte) (any, error) { return map[string]any{"pong": true}, nil })
	assert.Equal(t, 1, relay.Attached())

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ch, err := channel.Dial(ctx, channel.Config{URL: natsURL, Logger: gatewaytest.Logger(t)})
	require.NoError(t, err)
	t.Cleanup(ch.Close)
	call := func(id string) fleet.MethodResult {
		t.Helper()
		res, err := ch.Invoke(ctx, fleet.MethodCall{DeviceID: id, Method: "ping"}, 5*time.Second)
		require.NoError(t, err)
		return res
	}

	start := time.Now()
	res := call("dev-off")
	assert.Equal(t, fleet.MethodOffline, res.Outcome)
	assert.Less(t, time.Since(start), time.Second)
	assert.JSONEq(t, `{"error":"device offline","code":"DeviceNotOnline"}`, string(res.Payload))
	assert.Equal(t, fleet.MethodOffline, call("dev-unknown").Outcome, "a device the registry does not know is not online either")

	res = call("dev-on")
	assert.Equal(t, fleet.MethodSucceeded, res.Outcome)
	assert.JSONEq(t, `{"pong":true}`, string(res.Payload))
	st := g.Stats()
	assert.Equal(t, int64(1), st.MethodsRelayed)
	assert.Zero(t, st.MethodsPending, "the answer settled the gateway's pending entry")

	// Once it disconnects, its subjects are released and calls fail fast again.
	on.Close()
	require.Eventually(t, func() bool { return g.Stats().Connected == 0 && relay.Attached() == 0 }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, fleet.MethodOffline, call("dev-on").Outcome)

	// A device publishing a request on its own topics is not relayed anywhere, nor answered.
	dev, err := gatewaytest.Dial(t, url, "dev-off", "dev-off", "s")
	require.NoError(t, err)
	require.NoError(t, dev.Pub(t, "devices/dev-off/methods/req/ping/r5", 0, `{}`))
	require.NoError(t, dev.Pub(t, "devices/dev-off/methods/res/200/g1", 1, `{}`)) // an answer to nothing
	time.Sleep(200 * time.Millisecond)
	assert.Equal(t, int64(1), g.Stats().MethodsRelayed)
	assert.Zero(t, g.Stats().MethodsOffline)
}
