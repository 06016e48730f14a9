package device_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
)

func setup(t *testing.T, ids ...string) (*gatewaytest.Store, *gateway.Gateway, string) {
	t.Helper()
	store := gatewaytest.New()
	for _, id := range ids {
		store.Add(id, "secret-"+id)
	}
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	return store, g, gatewaytest.URL(g)
}

func newDevice(t *testing.T, url, id string, mod ...func(*device.Config)) *device.Device {
	t.Helper()
	cfg := device.Config{BrokerURL: url, ID: id, Secret: "secret-" + id, Logger: gatewaytest.Logger(t),
		RequestTimeout: 5 * time.Second, MaxReconnectInterval: time.Second}
	for _, m := range mod {
		m(&cfg)
	}
	d, err := device.New(cfg)
	require.NoError(t, err)
	t.Cleanup(d.Close)
	return d
}

func connect(t *testing.T, d *device.Device) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, d.Connect(ctx))
}

func TestDesiredPatchesApplyInVersionOrder(t *testing.T) {
	store, _, url := setup(t, "dev-1")
	_, err := store.SetDesired("dev-1", json.RawMessage(`{"interval":60}`))
	require.NoError(t, err)
	d := newDevice(t, url, "dev-1")
	var rec gatewaytest.DesiredRecorder
	d.OnDesired(rec.Handle)
	connect(t, d)

	doc, v := d.Desired()
	assert.JSONEq(t, `{"interval":60}`, string(doc))
	assert.Equal(t, int64(1), v)
	require.Equal(t, []int64{1}, rec.Versions())
	assert.True(t, rec.Updates()[0].Full)

	svc := gatewaytest.Service(t, url, "svc:test")
	pub := func(version, patch string) {
		require.NoError(t, svc.Pub(t, "devices/dev-1/twin/desired/"+version, 1, patch))
	}
	pub("5", `{"mode":"eco","$version":5}`)
	pub("3", `{"mode":"stale"}`)        // older: ignored
	pub("5", `{"mode":"duplicate"}`)    // not newer: ignored
	pub("6", `{"interval":null,"x":1}`) // null deletes (RFC 7386)
	require.Eventually(t, func() bool { _, v := d.Desired(); return v == 6 }, 2*time.Second, 5*time.Millisecond)
	doc, _ = d.Desired()
	assert.JSONEq(t, `{"mode":"eco","x":1}`, string(doc))
	assert.Equal(t, []int64{1, 5, 6}, rec.Versions())
	assert.False(t, rec.Updates()[1].Full)
	assert.JSONEq(t, `{"mode":"eco","$version":5}`, string(rec.Updates()[1].Patch))
	assert.JSONEq(t, `{"interval":60,"mode":"eco"}`, string(rec.Updates()[1].Desired))
}

func TestReconnectResyncsTwin(t *testing.T) {
	store, g, url := setup(t, "dev-1")
	connected := make(chan int64, 4)
	d := newDevice(t, url, "dev-1", func(c *device.Config) {
		c.OnConnected = func(session int64, err error) {
			assert.NoError(t, err)
			connected <- session
		}
	})
	connect(t, d)
	first := <-connected

	svc := gatewaytest.Service(t, url, "svc:test")
	svc.Sub(t, 0, "devices/dev-1/state")

	// Desired state changed while the device was away is picked up by the twin/get after reconnecting.
	_, err := store.SetDesired("dev-1", json.RawMessage(`{"led":"on"}`))
	require.NoError(t, err)
	require.True(t, g.Kick("dev-1"))
	var second int64
	select {
	case second = <-connected:
	case <-time.After(5 * time.Second):
		t.Fatal("no reconnect")
	}
	assert.Greater(t, second, first, "every connection has a newer session number")
	doc, v := d.Desired()
	assert.JSONEq(t, `{"led":"on"}`, string(doc))
	assert.Equal(t, int64(1), v)

	// The kicked connection's LWT and the new birth both carry their session numbers. Nothing orders the
	// two (the LWT is published when the gateway closes the old connection, the birth when the new one
	// starts), so the test waits for each rather than expecting one once the other has arrived.
	hasBirth := func() bool {
		for _, m := range svc.Messages() {
			var st struct {
				Online  bool  `json:"online"`
				Session int64 `json:"session"`
			}
			if json.Unmarshal(m.Payload, &st) == nil && st.Online && st.Session == second {
				return true
			}
		}
		return false
	}
	hasLWT := func() bool {
		for _, m := range svc.Messages() {
			if string(m.Payload) == `{"online":false,"session":`+itoa(first)+`}` {
				return true
			}
		}
		return false
	}
	require.Eventually(t, hasBirth, 10*time.Second, 10*time.Millisecond, "no birth of the second session")
	require.Eventually(t, hasLWT, 10*time.Second, 10*time.Millisecond, "no LWT of the first session")
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestMethods(t *testing.T) {
	_, _, url := setup(t, "dev-1")
	d := newDevice(t, url, "dev-1")
	d.OnMethod("ping", func(ctx context.Context, payload []byte) (any, error) {
		return map[string]any{"pong": json.RawMessage(payload)}, nil
	})
	d.OnMethod("reboot", func(ctx context.Context, payload []byte) (any, error) {
		return nil, &device.MethodError{Status: 409, Message: "busy updating"}
	})
	d.OnMethod("fail", func(ctx context.Context, payload []byte) (any, error) {
		return nil, errors.New("boom")
	})
	connect(t, d)

	svc := gatewaytest.Service(t, url, "svc:test")
	svc.Sub(t, 1, "devices/dev-1/methods/res/+/+")
	call := func(method, rid, payload, wantTopic string) gatewaytest.Message {
		t.Helper()
		require.NoError(t, svc.Pub(t, "devices/dev-1/methods/req/"+method+"/"+rid, 0, payload))
		m, ok := svc.WaitMessage(t, wantTopic, 3*time.Second)
		require.True(t, ok, "no response on %s; got %v", wantTopic, svc.Messages())
		return m
	}
	m := call("ping", "r1", `{"n":1}`, "devices/dev-1/methods/res/200/r1")
	assert.JSONEq(t, `{"pong":{"n":1}}`, string(m.Payload))
	m = call("nope", "r2", `{}`, "devices/dev-1/methods/res/404/r2")
	assert.JSONEq(t, `{"error":"unknown method \"nope\""}`, string(m.Payload))
	m = call("reboot", "r3", `{}`, "devices/dev-1/methods/res/409/r3")
	assert.JSONEq(t, `{"error":"busy updating"}`, string(m.Payload))
	m = call("fail", "r4", `{}`, "devices/dev-1/methods/res/500/r4")
	assert.JSONEq(t, `{"error":"boom"}`, string(m.Payload))
}

func TestConnectErrors(t *testing.T) {
	store, _, url := setup(t, "dev-1")
	d, err := device.New(device.Config{BrokerURL: url, ID: "dev-1", Secret: "wrong", Logger: gatewaytest.Logger(t)})
	require.NoError(t, err)
	err = d.Connect(context.Background())
	require.ErrorIs(t, err, device.ErrNotAuthorized)
	// A refused device may try again, e.g. after it was enabled or its secret fixed.
	store.SetPrimary("dev-1", "wrong")
	require.NoError(t, d.Connect(context.Background()))
	d.Close()

	_, err = device.New(device.Config{BrokerURL: url, ID: "Bad ID", Secret: "x"})
	require.Error(t, err)

	d2 := newDevice(t, "tcp://127.0.0.1:1", "dev-2", func(c *device.Config) { c.ConnectTimeout = time.Second })
	err = d2.Connect(context.Background())
	require.Error(t, err)
	assert.NotErrorIs(t, err, device.ErrNotAuthorized)

	_, err = d2.ReportPatch(context.Background(), map[string]any{"a": 1})
	require.ErrorIs(t, err, device.ErrNotConnected)
	require.ErrorIs(t, d2.PublishTelemetry("", map[string]any{"a": 1}), device.ErrNotConnected)
}

func TestReportPatchErrors(t *testing.T) {
	_, _, url := setup(t, "dev-1")
	d := newDevice(t, url, "dev-1")
	connect(t, d)
	_, err := d.ReportPatch(context.Background(), json.RawMessage(`{"$bad":1}`))
	var re *device.ResponseError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 400, re.Status)
	v, err := d.ReportPatch(context.Background(), map[string]any{"good": 1})
	require.NoError(t, err)
	assert.Equal(t, int64(1), v)
}

func TestReportJobStatus(t *testing.T) {
	store, g, url := setup(t, "dev-1")
	d := newDevice(t, url, "dev-1")
	connect(t, d)
	svc := gatewaytest.Service(t, url, "svc:test")
	svc.Sub(t, 1, "devices/+/jobs/+/status")

	ctx := context.Background()
	require.NoError(t, d.ReportJobStatus(ctx, "fw-2.0.0-1", "downloading", "", 40))
	require.NoError(t, d.ReportJobStatus(ctx, "fw-2.0.0-1", "failed", "install failed: disk full", 0))
	// The wire format (the test client may see the two in either order).
	var payloads []string
	require.Eventually(t, func() bool {
		payloads = payloads[:0]
		for _, m := range svc.Messages() {
			if m.Topic == "devices/dev-1/jobs/fw-2.0.0-1/status" {
				payloads = append(payloads, string(m.Payload))
			}
		}
		return len(payloads) == 2
	}, 2*time.Second, 5*time.Millisecond)
	assert.ElementsMatch(t, []string{`{"status":"downloading","progress":40}`,
		`{"status":"failed","reason":"install failed: disk full"}`}, payloads)
	require.Eventually(t, func() bool { return len(store.JobStatusesOf("fw-2.0.0-1", "dev-1")) == 2 }, 2*time.Second, 5*time.Millisecond)
	got := store.JobStatusesOf("fw-2.0.0-1", "dev-1")
	assert.Equal(t, "downloading", got[0].Status)
	assert.Equal(t, 40, got[0].Progress)
	assert.Equal(t, "failed", got[1].Status)
	assert.Equal(t, "install failed: disk full", got[1].Reason)
	// The gateway counts a batch once the store has taken it, so the counter may trail the store a moment.
	require.Eventually(t, func() bool { return g.Stats().JobStatus == 2 }, 5*time.Second, 5*time.Millisecond,
		"job status counter")

	// Arguments that the gateway would drop are refused before publishing.
	require.ErrorContains(t, d.ReportJobStatus(ctx, "a/b", "succeeded", "", 0), "job id")
	require.ErrorContains(t, d.ReportJobStatus(ctx, "", "succeeded", "", 0), "job id")
	require.ErrorContains(t, d.ReportJobStatus(ctx, "j1", "", "", 0), "status")
	require.ErrorContains(t, d.ReportJobStatus(ctx, "j1", "downloading", "", 101), "progress")

	d.Close()
	require.ErrorIs(t, d.ReportJobStatus(ctx, "j1", "succeeded", "", 0), device.ErrNotConnected)
}

func TestFullUpdateCarriesReported(t *testing.T) {
	store, g, url := setup(t, "dev-1")
	_, err := store.SetDesired("dev-1", json.RawMessage(`{"firmware":{"jobId":"j1","version":"2.0.0"}}`))
	require.NoError(t, err)
	first := newDevice(t, url, "dev-1")
	connect(t, first)
	_, err = first.ReportPatch(context.Background(), map[string]any{"firmware": map[string]any{"version": "2.0.0"}})
	require.NoError(t, err)
	first.Close()
	require.Eventually(t, func() bool { return g.Stats().Connected == 0 }, 2*time.Second, 5*time.Millisecond)

	// A restarted device learns what it reported before from its first twin/get.
	d := newDevice(t, url, "dev-1")
	var rec gatewaytest.DesiredRecorder
	d.OnDesired(rec.Handle)
	rep, _ := d.Reported()
	assert.Nil(t, rep)
	connect(t, d)
	require.Len(t, rec.Updates(), 1)
	u := rec.Updates()[0]
	assert.True(t, u.Full)
	assert.JSONEq(t, `{"firmware":{"version":"2.0.0"}}`, string(u.Reported))
	assert.Equal(t, int64(1), u.ReportedVersion)
	rep, v := d.Reported()
	assert.JSONEq(t, `{"firmware":{"version":"2.0.0"}}`, string(rep))
	assert.Equal(t, int64(1), v)

	// Patches do not carry it.
	svc := gatewaytest.Service(t, url, "svc:test")
	require.NoError(t, svc.Pub(t, "devices/dev-1/twin/desired/2", 1, `{"x":1}`))
	require.Eventually(t, func() bool { return len(rec.Versions()) == 2 }, 2*time.Second, 5*time.Millisecond)
	assert.Nil(t, rec.Updates()[1].Reported)
}

// A device whose first sync after connecting fails (the registry behind the gateway is unavailable) stays
// connected and retries the sync by itself, so the desired state written while it was away reaches it
// without waiting for its next reconnect.
func TestFailedSyncIsRetriedWhileConnected(t *testing.T) {
	store, _, url := setup(t, "dev-1")
	_, err := store.SetDesired("dev-1", json.RawMessage(`{"led":"on"}`))
	require.NoError(t, err)
	store.FailTwinGets(errors.New("registry down"))
	d := newDevice(t, url, "dev-1")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.Error(t, d.Connect(ctx), "the first sync cannot succeed while twin/get fails")
	assert.True(t, d.IsConnected(), "a failed sync does not drop the connection")
	_, v := d.Desired()
	assert.Zero(t, v)

	store.FailTwinGets(nil)
	require.Eventually(t, func() bool {
		_, v := d.Desired()
		return v == 1
	}, 30*time.Second, 20*time.Millisecond, "the device retried its sync and got the desired state")
	doc, _ := d.Desired()
	assert.JSONEq(t, `{"led":"on"}`, string(doc))
}

// A request whose connection drops before its answer fails at once with ErrConnectionLost, not at its
// deadline: the gateway answers on the connection the request came in on, which is gone (found by the chaos
// tests, where a gateway restart left reports waiting for minutes).
func TestRequestFailsWhenItsConnectionDrops(t *testing.T) {
	store, g, url := setup(t, "dev-1")
	d := newDevice(t, url, "dev-1")
	connect(t, d)
	hold := make(chan struct{})
	store.HoldReported(hold)
	defer close(hold)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := d.ReportPatch(ctx, map[string]any{"temp": 21})
		done <- err
	}()
	require.Eventually(t, func() bool { return store.HeldReported() == 1 }, 30*time.Second, 10*time.Millisecond,
		"the report reached the registry, which holds it unanswered")
	require.True(t, g.Kick("dev-1"), "the gateway drops the device's session")
	select {
	case err := <-done:
		require.ErrorIs(t, err, device.ErrConnectionLost)
		require.ErrorIs(t, err, device.ErrNotConnected, "callers that retry on ErrNotConnected retry it")
	case <-time.After(time.Minute):
		t.Fatal("the report still waits a minute after its connection dropped (its deadline is 5 minutes)")
	}
}
