package device_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
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

// recorder collects desired updates.
type recorder struct {
	mu      sync.Mutex
	updates []device.DesiredUpdate
}

func (r *recorder) handle(u device.DesiredUpdate) {
	r.mu.Lock()
	r.updates = append(r.updates, u)
	r.mu.Unlock()
}

func (r *recorder) versions() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []int64
	for _, u := range r.updates {
		out = append(out, u.Version)
	}
	return out
}

func TestDesiredPatchesApplyInVersionOrder(t *testing.T) {
	store, _, url := setup(t, "dev-1")
	_, err := store.SetDesired("dev-1", json.RawMessage(`{"interval":60}`))
	require.NoError(t, err)
	d := newDevice(t, url, "dev-1")
	var rec recorder
	d.OnDesired(rec.handle)
	connect(t, d)

	doc, v := d.Desired()
	assert.JSONEq(t, `{"interval":60}`, string(doc))
	assert.Equal(t, int64(1), v)
	require.Equal(t, []int64{1}, rec.versions())
	assert.True(t, rec.updates[0].Full)

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
	assert.Equal(t, []int64{1, 5, 6}, rec.versions())
	rec.mu.Lock()
	assert.False(t, rec.updates[1].Full)
	assert.JSONEq(t, `{"mode":"eco","$version":5}`, string(rec.updates[1].Patch))
	assert.JSONEq(t, `{"interval":60,"mode":"eco"}`, string(rec.updates[1].Desired))
	rec.mu.Unlock()
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

	// The kicked connection's LWT and the new birth both carry their session numbers.
	require.Eventually(t, func() bool {
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
	}, 2*time.Second, 10*time.Millisecond)
	var lwt bool
	for _, m := range svc.Messages() {
		if string(m.Payload) == `{"online":false,"session":`+itoa(first)+`}` {
			lwt = true
		}
	}
	assert.True(t, lwt, "LWT of the first session: %v", svc.Messages())
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
