package channel_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
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
	"github.com/fleetflow/fleetflow/internal/natsnode"
	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// rig is a NATS node and a gateway attached to it.
type rig struct {
	store *gatewaytest.Store
	mqtt  string // the gateway, for devices
	nats  string // the bus, for channels
	relay *channel.Relay
	gw    *gateway.Gateway
}

// startGateway runs a NATS node and a gateway on it whose fake registry holds ids (secret "secret-"+id).
func startGateway(t testing.TB, ids ...string) rig {
	t.Helper()
	store := gatewaytest.New()
	for _, id := range ids {
		store.Add(id, "secret-"+id)
	}
	natsURL := testenv.NATS(t)
	g, r := gatewaytest.StartGatewayOnNATS(t, store, gateway.Config{}, natsURL)
	return rig{store: store, mqtt: gatewaytest.URL(g), nats: natsURL, relay: r, gw: g}
}

// newDevice connects a device with the standard method handlers: "echo" answers {"id":…,"in":payload},
// "fail" a 500 MethodError, "slow" sleeps 2 s before answering.
func newDevice(t testing.TB, url, id string, onDesired device.DesiredHandler) *device.Device {
	t.Helper()
	d, err := device.New(device.Config{BrokerURL: url, ID: id, Secret: "secret-" + id, Logger: gatewaytest.Logger(t),
		RequestTimeout: 10 * time.Second, MaxReconnectInterval: time.Second})
	require.NoError(t, err)
	d.OnMethod("echo", func(ctx context.Context, payload []byte) (any, error) {
		return map[string]any{"id": id, "in": json.RawMessage(payload)}, nil
	})
	d.OnMethod("fail", func(ctx context.Context, payload []byte) (any, error) {
		return nil, &device.MethodError{Status: 500, Message: "disk full"}
	})
	d.OnMethod("slow", func(ctx context.Context, payload []byte) (any, error) {
		select {
		case <-time.After(2 * time.Second):
		case <-ctx.Done():
		}
		return map[string]any{"late": true}, nil
	})
	if onDesired != nil {
		d.OnDesired(onDesired)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, d.Connect(ctx))
	t.Cleanup(d.Close)
	return d
}

// connectDevices connects ids concurrently (a few dozen at a time, like a fleet coming up).
func connectDevices(t testing.TB, url string, ids []string) {
	t.Helper()
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			newDevice(t, url, id, nil)
		}()
	}
	wg.Wait()
}

func dial(t testing.TB, url string) *channel.Channel {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := channel.Dial(ctx, channel.Config{URL: url, Logger: gatewaytest.Logger(t)})
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return c
}

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%04d", prefix, i)
	}
	return out
}

func TestPublishDesiredReachesDevicesInVersionOrder(t *testing.T) {
	rig := startGateway(t, "dev-1", "dev-2")
	var rec1, rec2 gatewaytest.DesiredRecorder
	d1 := newDevice(t, rig.mqtt, "dev-1", rec1.Handle)
	d2 := newDevice(t, rig.mqtt, "dev-2", rec2.Handle)
	c := dial(t, rig.nats)

	n, err := c.PublishDesired(context.Background(), []fleet.DesiredPush{
		{DeviceID: "dev-1", Version: 1, Patch: []byte(`{"interval":60,"mode":"eco"}`)},
		{DeviceID: "dev-2", Version: 7, Patch: []byte(`{"led":"on"}`)},
		{DeviceID: "dev-1", Version: 2, Patch: []byte(`{"interval":30}`)},
		{DeviceID: "dev-1", Version: 3, Patch: []byte(`{"mode":null,"x":1}`)},
		{DeviceID: "dev-1", Version: 2, Patch: []byte(`{"interval":999}`)}, // a stale re-send: ignored by the device
	})
	require.NoError(t, err)
	assert.Equal(t, 5, n, "every patch acknowledged")

	require.Eventually(t, func() bool { _, v := d1.Desired(); return v == 3 }, 3*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool { _, v := d2.Desired(); return v == 7 }, 3*time.Second, 5*time.Millisecond)
	doc, _ := d1.Desired()
	assert.JSONEq(t, `{"interval":30,"x":1}`, string(doc))
	doc, _ = d2.Desired()
	assert.JSONEq(t, `{"led":"on"}`, string(doc))
	// Version 0 is the (empty) document of the twin/get at connect; the patches follow in order.
	assert.Equal(t, []int64{0, 1, 2, 3}, rec1.Versions())
	assert.Equal(t, []int64{0, 7}, rec2.Versions())
	assert.Equal(t, int64(5), c.Stats().DesiredSent)
}

func TestPublishDesiredManyDevices(t *testing.T) {
	devs := ids("fleet", 100)
	rig := startGateway(t, devs...)
	connectDevices(t, rig.mqtt, devs)
	c := dial(t, rig.nats)

	// Ten patches per device, interleaved across devices, like one rollout wave.
	var msgs []fleet.DesiredPush
	for v := int64(1); v <= 10; v++ {
		for _, id := range devs {
			msgs = append(msgs, fleet.DesiredPush{DeviceID: id, Version: v, Patch: fmt.Appendf(nil, `{"step":%d}`, v)})
		}
	}
	start := time.Now()
	n, err := c.PublishDesired(context.Background(), msgs)
	require.NoError(t, err)
	assert.Equal(t, len(msgs), n)
	t.Logf("published %d desired patches in %s", n, time.Since(start))
}

func TestPublishDesiredRefusesInvalidBatch(t *testing.T) {
	rig := startGateway(t, "dev-1")
	c := dial(t, rig.nats)
	for name, m := range map[string]fleet.DesiredPush{
		"bad id":      {DeviceID: "Dev/1", Version: 1, Patch: []byte(`{}`)},
		"version 0":   {DeviceID: "dev-1", Version: 0, Patch: []byte(`{}`)},
		"not object":  {DeviceID: "dev-1", Version: 1, Patch: []byte(`[1]`)},
		"not JSON":    {DeviceID: "dev-1", Version: 1, Patch: []byte(`{`)},
		"over 128KiB": {DeviceID: "dev-1", Version: 1, Patch: []byte(`{"a":"` + strings.Repeat("x", 128*1024) + `"}`)},
	} {
		ok := fleet.DesiredPush{DeviceID: "dev-1", Version: 1, Patch: []byte(`{}`)}
		n, err := c.PublishDesired(context.Background(), []fleet.DesiredPush{ok, m})
		assert.Error(t, err, name)
		assert.Contains(t, err.Error(), "message 1", name)
		assert.Zero(t, n, "%s: nothing is sent from an invalid batch", name)
	}
	assert.Zero(t, c.Stats().DesiredSent)
}

func TestInvokeRoundTrip(t *testing.T) {
	rig := startGateway(t, "dev-1")
	newDevice(t, rig.mqtt, "dev-1", nil)
	c := dial(t, rig.nats)

	res, err := c.Invoke(context.Background(), fleet.MethodCall{DeviceID: "dev-1", Method: "echo", Payload: []byte(`{"n":1}`)}, 5*time.Second)
	require.NoError(t, err)
	assert.Equal(t, fleet.MethodSucceeded, res.Outcome)
	assert.Equal(t, 200, res.Status)
	assert.Equal(t, "dev-1", res.DeviceID)
	assert.JSONEq(t, `{"id":"dev-1","in":{"n":1}}`, string(res.Payload))
	assert.Greater(t, res.Latency, time.Duration(0))
	assert.Less(t, res.Latency, 5*time.Second)

	// An empty payload is sent as {}.
	res, err = c.Invoke(context.Background(), fleet.MethodCall{DeviceID: "dev-1", Method: "echo"}, 5*time.Second)
	require.NoError(t, err)
	assert.Equal(t, fleet.MethodSucceeded, res.Outcome)
	assert.JSONEq(t, `{"id":"dev-1","in":{}}`, string(res.Payload))

	// The result survives a JSON round trip (it travels in Temporal payloads).
	b, err := json.Marshal(res)
	require.NoError(t, err)
	var back fleet.MethodResult
	require.NoError(t, json.Unmarshal(b, &back))
	assert.Equal(t, res.Outcome, back.Outcome)
	assert.JSONEq(t, string(res.Payload), string(back.Payload))
}

func TestInvokeDeviceErrorIsFailed(t *testing.T) {
	rig := startGateway(t, "dev-1")
	newDevice(t, rig.mqtt, "dev-1", nil)
	c := dial(t, rig.nats)

	res, err := c.Invoke(context.Background(), fleet.MethodCall{DeviceID: "dev-1", Method: "fail"}, 5*time.Second)
	require.NoError(t, err, "a device's error answer is an outcome, not an error")
	assert.Equal(t, fleet.MethodFailed, res.Outcome)
	assert.Equal(t, 500, res.Status)
	assert.JSONEq(t, `{"error":"disk full"}`, string(res.Payload))

	// The device's own 404 (unknown method) is a failure, not Offline: it has no DeviceNotOnline code.
	res, err = c.Invoke(context.Background(), fleet.MethodCall{DeviceID: "dev-1", Method: "nope"}, 5*time.Second)
	require.NoError(t, err)
	assert.Equal(t, fleet.MethodFailed, res.Outcome)
	assert.Equal(t, 404, res.Status)
}

func TestInvokeSilentDeviceTimesOut(t *testing.T) {
	rig := startGateway(t, "dev-1")
	newDevice(t, rig.mqtt, "dev-1", nil)
	c := dial(t, rig.nats)

	start := time.Now()
	res, err := c.Invoke(context.Background(), fleet.MethodCall{DeviceID: "dev-1", Method: "slow"}, 300*time.Millisecond)
	require.NoError(t, err)
	elapsed := time.Since(start)
	assert.Equal(t, fleet.MethodTimedOut, res.Outcome)
	assert.Zero(t, res.Status)
	assert.GreaterOrEqual(t, elapsed, 300*time.Millisecond)
	assert.Less(t, elapsed, 1500*time.Millisecond, "Invoke returns at the timeout, not when the device answers")
	// The answer still arrives at the gateway later and goes no further: the caller's timeout bounded the
	// gateway's wait too.
	require.Eventually(t, func() bool { return rig.gw.Stats().MethodResponses == 1 }, 10*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool { return rig.gw.Stats().MethodsPending == 0 }, 10*time.Second, 10*time.Millisecond)
	assert.Zero(t, c.Stats().Responses)
}

func TestInvokeOfflineDevice(t *testing.T) {
	rig := startGateway(t, "dev-on", "dev-off")
	newDevice(t, rig.mqtt, "dev-on", nil)
	c := dial(t, rig.nats)

	res, err := c.Invoke(context.Background(), fleet.MethodCall{DeviceID: "dev-off", Method: "echo"}, 3*time.Second)
	require.NoError(t, err)
	assert.Equal(t, fleet.MethodOffline, res.Outcome, "no gateway holds a provisioned device that is not connected")
	assert.Equal(t, 404, res.Status)
	assert.JSONEq(t, string(protocol.OfflinePayload()), string(res.Payload), "the contract's offline answer")
	assert.Less(t, res.Latency, time.Second, "NATS answers at once instead of letting the call time out")
	assert.Equal(t, int64(1), c.Stats().Offline)

	results := c.InvokeMany(context.Background(), []fleet.MethodCall{
		{DeviceID: "dev-off", Method: "echo"},
		{DeviceID: "dev-on", Method: "echo"},
	}, 3*time.Second, 0)
	assert.Equal(t, fleet.MethodOffline, results[0].Outcome)
	assert.Equal(t, fleet.MethodSucceeded, results[1].Outcome)
}

func TestPayloadLimit(t *testing.T) {
	rig := startGateway(t, "dev-1")
	newDevice(t, rig.mqtt, "dev-1", nil)
	c := dial(t, rig.nats)
	big := []byte(`"` + strings.Repeat("x", channel.MaxMethodPayload) + `"`) // valid JSON, 2 bytes over

	res, err := c.Invoke(context.Background(), fleet.MethodCall{DeviceID: "dev-1", Method: "echo", Payload: big}, time.Second)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "exceeds the 131072-byte limit")
	assert.Equal(t, fleet.MethodFailed, res.Outcome)
	assert.Equal(t, fleet.StatusInvalid, res.Status)

	// Exactly at the limit is fine.
	atLimit := []byte(`"` + strings.Repeat("x", channel.MaxMethodPayload-2) + `"`)
	results := c.InvokeMany(context.Background(), []fleet.MethodCall{
		{DeviceID: "dev-1", Method: "echo", Payload: big},
		{DeviceID: "dev-1", Method: "echo", Payload: atLimit},
	}, 5*time.Second, 0)
	require.Len(t, results, 2)
	assert.Equal(t, fleet.MethodFailed, results[0].Outcome)
	assert.Equal(t, 400, results[0].Status)
	assert.Contains(t, string(results[0].Payload), "exceeds the 131072-byte limit")
	assert.Equal(t, fleet.MethodSucceeded, results[1].Outcome)
	assert.Equal(t, int64(1), c.Stats().MethodsSent, "only the call within the limit was sent")
}

func TestInvalidCallsAreRefused(t *testing.T) {
	rig := startGateway(t, "dev-1")
	c := dial(t, rig.nats)
	for name, call := range map[string]fleet.MethodCall{
		"device id":     {DeviceID: "Dev-1", Method: "echo"},
		"wildcard":      {DeviceID: "dev-1", Method: "#"},
		"level":         {DeviceID: "dev-1", Method: "a/b"},
		"empty method":  {DeviceID: "dev-1"},
		"payload JSON":  {DeviceID: "dev-1", Method: "echo", Payload: []byte("not json")},
		"long method":   {DeviceID: "dev-1", Method: strings.Repeat("m", 65)},
		"plus in topic": {DeviceID: "dev-1", Method: "a+b"},
	} {
		res, err := c.Invoke(context.Background(), call, time.Second)
		assert.Error(t, err, name)
		assert.Equal(t, fleet.MethodFailed, res.Outcome, name)
		assert.Equal(t, fleet.StatusInvalid, res.Status, name)
	}
	assert.Zero(t, c.Stats().MethodsSent)
}

func TestInvokeManyReturnsResultsInOrder(t *testing.T) {
	devs := ids("fleet", 200)
	rig := startGateway(t, devs...)
	connectDevices(t, rig.mqtt, devs)
	c := dial(t, rig.nats)

	// Input order differs from any order the answers could come in: reversed, each device twice.
	var calls []fleet.MethodCall
	for i := len(devs) - 1; i >= 0; i-- {
		calls = append(calls, fleet.MethodCall{DeviceID: devs[i], Method: "echo", Payload: fmt.Appendf(nil, `{"i":%d}`, len(calls))})
	}
	for i := range devs {
		calls = append(calls, fleet.MethodCall{DeviceID: devs[i], Method: "echo", Payload: fmt.Appendf(nil, `{"i":%d}`, len(calls))})
	}
	start := time.Now()
	results := c.InvokeMany(context.Background(), calls, 10*time.Second, 0)
	elapsed := time.Since(start)
	require.Len(t, results, len(calls))
	for i, r := range results {
		require.Equal(t, fleet.MethodSucceeded, r.Outcome, "call %d: %+v", i, r)
		assert.Equal(t, calls[i].DeviceID, r.DeviceID)
		assert.Equal(t, 200, r.Status)
		assert.JSONEq(t, fmt.Sprintf(`{"id":%q,"in":{"i":%d}}`, calls[i].DeviceID, i), string(r.Payload))
	}
	t.Logf("%d calls to %d devices in %s", len(calls), len(devs), elapsed)
}

func TestInvokeManyRate(t *testing.T) {
	devs := ids("fleet", 20)
	rig := startGateway(t, devs...)
	connectDevices(t, rig.mqtt, devs)
	c := dial(t, rig.nats)
	calls := make([]fleet.MethodCall, len(devs))
	for i, id := range devs {
		calls[i] = fleet.MethodCall{DeviceID: id, Method: "echo"}
	}
	start := time.Now()
	results := c.InvokeMany(context.Background(), calls, 5*time.Second, 100) // 20 calls at 100/s: ≥ 190 ms
	elapsed := time.Since(start)
	for _, r := range results {
		assert.Equal(t, fleet.MethodSucceeded, r.Outcome)
	}
	assert.GreaterOrEqual(t, elapsed, 190*time.Millisecond)
	assert.Less(t, elapsed, 2*time.Second)
}

func TestInvokeManyMixedOutcomes(t *testing.T) {
	rig := startGateway(t, "dev-1", "dev-2")
	newDevice(t, rig.mqtt, "dev-1", nil)
	newDevice(t, rig.mqtt, "dev-2", nil)
	c := dial(t, rig.nats)
	results := c.InvokeMany(context.Background(), []fleet.MethodCall{
		{DeviceID: "dev-1", Method: "slow"},
		{DeviceID: "dev-2", Method: "fail"},
		{DeviceID: "dev-2", Method: "echo", Payload: []byte(`{"ok":true}`)},
		{DeviceID: "dev-1", Method: "bad/name"},
	}, 500*time.Millisecond, 0)
	want := []struct {
		outcome fleet.MethodOutcome
		status  int
	}{{fleet.MethodTimedOut, 0}, {fleet.MethodFailed, 500}, {fleet.MethodSucceeded, 200}, {fleet.MethodFailed, 400}}
	require.Len(t, results, len(want))
	for i, w := range want {
		assert.Equal(t, w.outcome, results[i].Outcome, "call %d", i)
		assert.Equal(t, w.status, results[i].Status, "call %d", i)
	}
}

func TestChannelsGetOnlyTheirOwnResponses(t *testing.T) {
	devs := ids("fleet", 20)
	rig := startGateway(t, devs...)
	connectDevices(t, rig.mqtt, devs)
	a, b := dial(t, rig.nats), dial(t, rig.nats)
	calls := make([]fleet.MethodCall, len(devs))
	for i, id := range devs {
		calls[i] = fleet.MethodCall{DeviceID: id, Method: "echo"}
	}
	var wg sync.WaitGroup
	var ra, rb []fleet.MethodResult
	wg.Add(2)
	go func() { defer wg.Done(); ra = a.InvokeMany(context.Background(), calls, 5*time.Second, 0) }()
	go func() { defer wg.Done(); rb = b.InvokeMany(context.Background(), calls, 5*time.Second, 0) }()
	wg.Wait()
	for i := range calls {
		assert.Equal(t, fleet.MethodSucceeded, ra[i].Outcome)
		assert.Equal(t, fleet.MethodSucceeded, rb[i].Outcome)
	}
	// Answers go to the caller's own inbox: neither channel sees the other's.
	assert.Equal(t, int64(len(devs)), a.Stats().Responses)
	assert.Equal(t, int64(len(devs)), b.Stats().Responses)
	assert.Zero(t, a.Stats().ForeignResponses)
	assert.Zero(t, b.Stats().ForeignResponses)
}

func TestContextAndClose(t *testing.T) {
	rig := startGateway(t, "dev-1")
	newDevice(t, rig.mqtt, "dev-1", nil)
	c := dial(t, rig.nats)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	results := c.InvokeMany(ctx, []fleet.MethodCall{{DeviceID: "dev-1", Method: "echo"}}, time.Second, 0)
	assert.Equal(t, fleet.MethodFailed, results[0].Outcome)
	assert.Equal(t, fleet.StatusNotSent, results[0].Status)
	_, err := c.Invoke(ctx, fleet.MethodCall{DeviceID: "dev-1", Method: "echo"}, time.Second)
	assert.ErrorIs(t, err, context.Canceled)
	_, err = c.PublishDesired(ctx, []fleet.DesiredPush{{DeviceID: "dev-1", Version: 1, Patch: []byte(`{}`)}})
	assert.ErrorIs(t, err, context.Canceled)

	// A context ending while a call waits ends the wait at once.
	ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := c.Invoke(ctx, fleet.MethodCall{DeviceID: "dev-1", Method: "slow"}, 10*time.Second)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Equal(t, fleet.MethodTimedOut, res.Outcome)
	assert.Less(t, time.Since(start), 2*time.Second)

	// Close ends waiting calls, and later calls fail.
	done := make(chan fleet.MethodResult)
	go func() {
		r, _ := c.Invoke(context.Background(), fleet.MethodCall{DeviceID: "dev-1", Method: "slow"}, 10*time.Second)
		done <- r
	}()
	time.Sleep(100 * time.Millisecond)
	c.Close()
	select {
	case r := <-done:
		assert.Equal(t, fleet.MethodTimedOut, r.Outcome)
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not end a waiting call")
	}
	_, err = c.Invoke(context.Background(), fleet.MethodCall{DeviceID: "dev-1", Method: "echo"}, time.Second)
	assert.ErrorIs(t, err, channel.ErrClosed)
	_, err = c.PublishDesired(context.Background(), []fleet.DesiredPush{{DeviceID: "dev-1", Version: 1, Patch: []byte(`{}`)}})
	assert.ErrorIs(t, err, channel.ErrClosed)
}

// A channel connected to a NATS node that goes away fails over to another node of the cluster and keeps
// its inbox subscription; so does the gateway's relay.
func TestFailoverToAnotherNATSNode(t *testing.T) {
	cluster := testenv.StartNATSCluster(t, 2)
	store := gatewaytest.New()
	store.Add("dev-1", "secret-dev-1")
	// The gateway uses node 2, the channel node 1, which is then stopped.
	g, _ := gatewaytest.StartGatewayOnNATS(t, store, gateway.Config{}, cluster.Nodes[1].ClientURL())
	newDevice(t, gatewaytest.URL(g), "dev-1", nil)
	c := dial(t, cluster.Nodes[0].ClientURL()+","+cluster.Nodes[1].ClientURL())
	ctx := context.Background()
	call := fleet.MethodCall{DeviceID: "dev-1", Method: "echo"}
	require.Eventually(t, func() bool {
		res, err := c.Invoke(ctx, call, time.Second)
		return err == nil && res.Outcome == fleet.MethodSucceeded
	}, 20*time.Second, 50*time.Millisecond, "the device's subscription reaches the channel's node")
	cluster.Nodes[0].Close()
	require.Eventually(t, func() bool {
		res, err := c.Invoke(ctx, call, time.Second)
		return err == nil && res.Outcome == fleet.MethodSucceeded
	}, 30*time.Second, 100*time.Millisecond, "the channel reconnected to the other node and resubscribed its inbox")
}

func TestDialErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	node, err := natsnode.Start(natsnode.Config{Listen: "127.0.0.1:0", User: "svc", Password: "right"})
	require.NoError(t, err)
	t.Cleanup(node.Close)
	hostPort := strings.TrimPrefix(node.ClientURL(), "nats://")

	_, err = channel.Dial(ctx, channel.Config{URL: "nats://svc:wrong@" + hostPort, Logger: gatewaytest.Logger(t)})
	require.Error(t, err, "wrong credentials are refused")
	assert.NotContains(t, err.Error(), "wrong", "the password is not repeated in the error")
	c, err := channel.Dial(ctx, channel.Config{URL: "nats://svc:right@" + hostPort, Logger: gatewaytest.Logger(t)})
	require.NoError(t, err, "credentials in the URL")
	c.Close()

	// A port nobody listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := "nats://" + ln.Addr().String()
	require.NoError(t, ln.Close())
	start := time.Now()
	_, err = channel.Dial(ctx, channel.Config{URL: dead, Logger: gatewaytest.Logger(t)})
	require.Error(t, err)
	assert.Contains(t, err.Error(), dead)
	assert.Less(t, time.Since(start), 5*time.Second, "an unreachable bus fails fast")

	_, err = channel.Dial(ctx, channel.Config{})
	assert.ErrorContains(t, err, "NATS URL is required")
}

// BenchmarkInvokeMany measures method calls through one channel to 1,000 connected devices, with one
// call per device (calls=1000) and ten per device (calls=10000, the size of one fleet-scale activity).
func BenchmarkInvokeMany(b *testing.B) {
	devs := ids("fleet", 1000)
	rig := startGateway(b, devs...)
	connectDevices(b, rig.mqtt, devs)
	c := dial(b, rig.nats)
	for _, perDevice := range []int{1, 10} {
		calls := make([]fleet.MethodCall, 0, len(devs)*perDevice)
		for range perDevice {
			for _, id := range devs {
				calls = append(calls, fleet.MethodCall{DeviceID: id, Method: "echo", Payload: []byte(`{"n":1}`)})
			}
		}
		b.Run(fmt.Sprintf("calls=%d", len(calls)), func(b *testing.B) {
			var total time.Duration
			for b.Loop() {
				start := time.Now()
				results := c.InvokeMany(context.Background(), calls, 30*time.Second, 0)
				total += time.Since(start)
				for i, r := range results {
					if r.Outcome != fleet.MethodSucceeded {
						b.Fatalf("call %d: %+v", i, r)
					}
				}
			}
			b.ReportMetric(float64(len(calls)*b.N)/total.Seconds(), "calls/s")
		})
	}
}

// BenchmarkPublishDesired measures desired patches acknowledged per second through one channel, ten per
// device to 1,000 connected devices.
func BenchmarkPublishDesired(b *testing.B) {
	devs := ids("fleet", 1000)
	rig := startGateway(b, devs...)
	connectDevices(b, rig.mqtt, devs)
	c := dial(b, rig.nats)
	version := int64(0)
	var total time.Duration
	n := 0
	for b.Loop() {
		msgs := make([]fleet.DesiredPush, 0, 10*len(devs))
		for range 10 {
			version++
			for _, id := range devs {
				msgs = append(msgs, fleet.DesiredPush{DeviceID: id, Version: version, Patch: fmt.Appendf(nil, `{"v":%d}`, version)})
			}
		}
		start := time.Now()
		published, err := c.PublishDesired(context.Background(), msgs)
		total += time.Since(start)
		if err != nil || published != len(msgs) {
			b.Fatalf("published %d of %d: %v", published, len(msgs), err)
		}
		n += published
	}
	b.ReportMetric(float64(n)/total.Seconds(), "patches/s")
}

func TestWindowDoesNotStallOnSilentDevices(t *testing.T) {
	devs := ids("fleet", 20)
	rig := startGateway(t, devs...)
	connectDevices(t, rig.mqtt, devs)
	ctx := context.Background()
	c, err := channel.Dial(ctx, channel.Config{URL: rig.nats, Logger: gatewaytest.Logger(t), MaxCallsInFlight: 16})
	require.NoError(t, err)
	t.Cleanup(c.Close)

	// 200 calls that nobody answers in time, through a window of 16: unanswered calls give their places
	// up after 100 ms, so sending takes ~1.2 s rather than 13 windows × the 500 ms timeout.
	var calls []fleet.MethodCall
	for range 10 {
		for _, id := range devs {
			calls = append(calls, fleet.MethodCall{DeviceID: id, Method: "slow"})
		}
	}
	start := time.Now()
	results := c.InvokeMany(ctx, calls, 500*time.Millisecond, 0)
	elapsed := time.Since(start)
	for i, r := range results {
		require.Equal(t, fleet.MethodTimedOut, r.Outcome, "call %d", i)
	}
	assert.Less(t, elapsed, 3*time.Second)
	t.Logf("%d silent calls through a window of 16 in %s", len(calls), elapsed)

	// Every slot came back: a full window of fresh calls goes out at once. (The devices are still busy
	// with the slow calls, so ask the gateway for a device that is not connected.)
	offline := make([]fleet.MethodCall, 16)
	for i := range offline {
		offline[i] = fleet.MethodCall{DeviceID: "not-connected", Method: "echo"}
	}
	start = time.Now()
	for _, r := range c.InvokeMany(ctx, offline, 5*time.Second, 0) {
		assert.Equal(t, fleet.MethodOffline, r.Outcome)
	}
	assert.Less(t, time.Since(start), 90*time.Millisecond, "no call waited for a slot to expire")
}
