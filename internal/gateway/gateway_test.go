package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
)

var _ gateway.Store = (*gatewaytest.Store)(nil)

func connectDevice(t *testing.T, url, id, secret string, mod ...func(*device.Config)) (*device.Device, error) {
	t.Helper()
	cfg := device.Config{BrokerURL: url, ID: id, Secret: secret, Logger: gatewaytest.Logger(t),
		RequestTimeout: 5 * time.Second, MaxReconnectInterval: time.Second}
	for _, m := range mod {
		m(&cfg)
	}
	d, err := device.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Connect(ctx); err != nil {
		return nil, err
	}
	t.Cleanup(d.Close)
	return d, nil
}

func mustConnect(t *testing.T, url, id, secret string, mod ...func(*device.Config)) *device.Device {
	t.Helper()
	d, err := connectDevice(t, url, id, secret, mod...)
	require.NoError(t, err)
	return d
}

func TestAuthentication(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-ok", "s3cret")
	store.Add("dev-off", "s3cret")
	store.SetStatus("dev-off", fleet.StatusDisabled)
	store.Add("dev-gone", "s3cret")
	store.SetStatus("dev-gone", fleet.StatusRetired)
	store.Add("dev-rot", "old")
	store.SetSecondary("dev-rot", "new")
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	url := gatewaytest.URL(g)

	mustConnect(t, url, "dev-ok", "s3cret")
	mustConnect(t, url, "dev-rot", "new") // the secondary slot works during a rotation

	for _, tc := range []struct{ name, id, secret string }{
		{"wrong secret", "dev-ok", "nope"},
		{"unknown device", "dev-unknown", "s3cret"},
		{"disabled", "dev-off", "s3cret"},
		{"retired", "dev-gone", "s3cret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := g.Stats().AuthFailures
			_, err := connectDevice(t, url, tc.id, tc.secret)
			require.ErrorIs(t, err, device.ErrNotAuthorized)
			assert.Equal(t, before+1, g.Stats().AuthFailures, "exactly one CONNECT (no MQTT 3.1 fallback)")
		})
	}

	t.Run("client id differs from username", func(t *testing.T) {
		_, err := gatewaytest.Dial(t, url, "dev-other", "dev-ok", "s3cret")
		require.Error(t, err)
	})
	t.Run("invalid device id", func(t *testing.T) {
		_, err := gatewaytest.Dial(t, url, "Dev_OK", "Dev_OK", "s3cret")
		require.Error(t, err)
	})
	t.Run("reserved id", func(t *testing.T) {
		store.Add("inline", "s3cret") // mochi's inline client id (the device package refuses it before dialing)
		_, err := gatewaytest.Dial(t, url, "inline", "inline", "s3cret")
		require.Error(t, err)
	})
	t.Run("will on another device's topic", func(t *testing.T) {
		before := g.Stats().ACLDenials
		c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("dev-ok").SetUsername("dev-ok").
			SetPassword("s3cret").SetProtocolVersion(4).SetWill("devices/dev-rot/state", "{}", 1, true))
		tok := c.Connect()
		require.True(t, tok.WaitTimeout(5*time.Second))
		require.Error(t, tok.Error())
		assert.Greater(t, g.Stats().ACLDenials, before)
	})
	t.Run("services no longer log in over MQTT", func(t *testing.T) {
		// Workers and the CLI reach devices over NATS; the service username is refused whatever the
		// password, and a client id that is a device id does not help.
		before := g.Stats().AuthFailures
		for _, id := range []string{"svc:test", "dev-ok"} {
			_, err := gatewaytest.Dial(t, url, id, gateway.ServiceUsername, "any-token")
			require.Error(t, err, id)
		}
		assert.Equal(t, before+2, g.Stats().AuthFailures)
	})

	st := g.Stats()
	assert.GreaterOrEqual(t, st.Connects, int64(2))
	assert.GreaterOrEqual(t, st.AuthFailures, int64(7))
}

// A registry that cannot hand out a session number refuses the CONNECT as a failed lookup would: "server
// unavailable", the gateway's trouble and not the device's credentials (docs/architecture.md, "Admission
// control: refusing what cannot be served"), counted as a busy refusal and a store error; once it answers
// again the device connects.
func TestConnectRefusedWithoutSessionNumber(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "s")
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	url := gatewaytest.URL(g)
	store.FailSessions(errors.New("registry down"))
	_, err := connectDevice(t, url, "dev-a", "s")
	require.ErrorIs(t, err, device.ErrServerBusy)
	assert.Equal(t, int64(1), g.Stats().RefusedBusy)
	assert.Zero(t, g.Stats().AuthFailures)
	assert.Equal(t, int64(1), g.Stats().StoreErrors)
	assert.Zero(t, g.Stats().Connected)

	store.FailSessions(nil)
	mustConnect(t, url, "dev-a", "s")
	require.Eventually(t, func() bool { return g.Stats().Connected == 1 }, time.Second, 5*time.Millisecond)
	assert.Zero(t, g.Stats().AuthFailures)
}

func TestConcurrentConnectsShareOneLookup(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "s")
	store.AuthDelay = 200 * time.Millisecond
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	url := gatewaytest.URL(g)
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Same id each time: every CONNECT takes over the previous session, which is fine here.
			_, _ = gatewaytest.Dial(t, url, "dev-a", "dev-a", "s")
		}()
	}
	wg.Wait()
	assert.Equal(t, 1, store.AuthLookups(), "concurrent CONNECTs of one id share a registry lookup")
	// Later CONNECTs are answered from the cache.
	_, err := gatewaytest.Dial(t, url, "dev-a", "dev-a", "s")
	require.NoError(t, err)
	assert.Equal(t, 1, store.AuthLookups())
	assert.GreaterOrEqual(t, g.Stats().AuthCacheHits, int64(1))
}

func TestACL(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "sa")
	store.Add("dev-b", "sb")
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	url := gatewaytest.URL(g)

	b, err := gatewaytest.Dial(t, url, "dev-b", "dev-b", "sb")
	require.NoError(t, err)
	require.Equal(t, []byte{1}, b.Sub(t, 1, "devices/dev-b/#"))
	spy := gatewaytest.Service(t, url, "svc:spy")
	spy.Sub(t, 0, "devices/#")

	a, err := gatewaytest.Dial(t, url, "dev-a", "dev-a", "sa")
	require.NoError(t, err)

	// Subscriptions outside its own subtree, wildcards at or above its level, $share and $SYS are refused.
	denied := []string{
		"devices/dev-b/#", "devices/dev-b/twin/desired/+", "devices/+/twin/res/#", "devices/#", "#", "+/dev-a/#",
		"$share/g/devices/dev-a/#", "$share/g/devices/#", "$SYS/#", "devices/dev-a", "devices/dev-ab/#",
	}
	before := g.Stats().ACLDenials
	codes := a.Sub(t, 1, denied...)
	for i, f := range denied {
		assert.Equal(t, byte(0x80), codes[i], "filter %q must be refused", f)
	}
	assert.Equal(t, before+int64(len(denied)), g.Stats().ACLDenials)
	// Its own subtree, including wildcards below its level, is allowed.
	assert.Equal(t, []byte{1, 1}, a.Sub(t, 1, "devices/dev-a/twin/res/#", "devices/dev-a/+/x"))

	// QoS 0 publishes to another device's topics are dropped and counted.
	before = g.Stats().ACLDenials
	for _, topic := range []string{"devices/dev-b/twin/desired/9", "devices/dev-b/methods/req/reboot/1", "other/topic", "devices/dev-ab/telemetry"} {
		require.NoError(t, a.Pub(t, topic, 0, `{"evil":true}`))
	}
	require.NoError(t, a.Pub(t, "devices/dev-a/telemetry", 0, `{"t":1}`)) // its own: delivered
	_, ok := spy.WaitMessage(t, "devices/dev-a/telemetry", 2*time.Second)
	require.True(t, ok, "own telemetry must be delivered")
	assert.Equal(t, before+4, g.Stats().ACLDenials)
	assert.Empty(t, b.Messages(), "the other device received nothing")
	for _, m := range spy.Messages() {
		assert.True(t, strings.HasPrefix(m.Topic, "devices/dev-a/"), "leaked %s", m.Topic)
	}

	// A denied QoS 1 publish disconnects an MQTT 3.1.1 client (mochi; 3.1.1 has no negative PUBACK).
	before = g.Stats().ACLDenials
	_ = a.Pub(t, "devices/dev-b/twin/desired/10", 1, `{}`)
	require.Eventually(t, a.Lost, 2*time.Second, 10*time.Millisecond)
	assert.Equal(t, before+1, g.Stats().ACLDenials)
	time.Sleep(100 * time.Millisecond)
	assert.Empty(t, b.Messages(), "the other device received nothing")
	assert.False(t, b.Lost(), "other devices are not affected")

	// The gateway itself (relaying from the bus) reaches any device.
	require.NoError(t, spy.Pub(t, "devices/dev-b/methods/req/ping/r1", 0, `{}`))
	_, ok = b.WaitMessage(t, "devices/dev-b/methods/req/ping/r1", 2*time.Second)
	assert.True(t, ok)
}

func TestTwinGetAndReported(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "sa")
	store.Add("dev-b", "sb")
	_, err := store.SetDesired("dev-a", json.RawMessage(`{"interval":30}`))
	require.NoError(t, err)
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	url := gatewaytest.URL(g)

	// The device package asks twin/get on connect.
	a := mustConnect(t, url, "dev-a", "sa")
	doc, v := a.Desired()
	assert.JSONEq(t, `{"interval":30}`, string(doc))
	assert.Equal(t, int64(1), v)

	// A raw round trip shows the exact response format.
	raw, err := gatewaytest.Dial(t, url, "dev-b", "dev-b", "sb")
	require.NoError(t, err)
	raw.Sub(t, 1, "devices/dev-b/twin/res/#")
	require.NoError(t, raw.Pub(t, "devices/dev-b/twin/reported/r1", 1, `{"fw":"1.0"}`))
	m, ok := raw.WaitMessage(t, "devices/dev-b/twin/res/204/r1", 2*time.Second)
	require.True(t, ok)
	assert.JSONEq(t, `{"version":1}`, string(m.Payload))
	require.NoError(t, raw.Pub(t, "devices/dev-b/twin/get/r2", 1, ``))
	m, ok = raw.WaitMessage(t, "devices/dev-b/twin/res/200/r2", 2*time.Second)
	require.True(t, ok)
	assert.JSONEq(t, `{"desired":{"$version":0},"reported":{"$version":1,"fw":"1.0"}}`, string(m.Payload))

	// Reported patch through the device package.
	ver, err := a.ReportPatch(context.Background(), map[string]any{"firmware": map[string]any{"version": "1.2.3"}})
	require.NoError(t, err)
	assert.Equal(t, int64(1), ver)
	rep, rv := store.Reported("dev-a")
	assert.JSONEq(t, `{"firmware":{"version":"1.2.3"}}`, string(rep))
	assert.Equal(t, int64(1), rv)

	// Malformed payloads are answered 400 and counted; the gateway keeps serving.
	before := g.Stats()
	require.NoError(t, raw.Pub(t, "devices/dev-b/twin/reported/r3", 1, `not json`))
	m, ok = raw.WaitMessage(t, "devices/dev-b/twin/res/400/r3", 2*time.Second)
	require.True(t, ok)
	assert.Contains(t, string(m.Payload), `"error"`)
	require.NoError(t, raw.Pub(t, "devices/dev-b/twin/reported/r4", 1, `[1,2]`))
	_, ok = raw.WaitMessage(t, "devices/dev-b/twin/res/400/r4", 2*time.Second)
	require.True(t, ok)
	deep := strings.Repeat(`{"a":`, 12) + "1" + strings.Repeat("}", 12)
	_, err = a.ReportPatch(context.Background(), json.RawMessage(deep))
	var re *device.ResponseError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 400, re.Status)
	assert.Contains(t, re.Message, "depth")
	// Malformed topics are counted and dropped.
	require.NoError(t, raw.Pub(t, "devices/dev-b/twin/get", 0, ``))
	require.NoError(t, raw.Pub(t, "devices/dev-b/twin/reported/bad!rid", 0, `{}`))
	require.NoError(t, raw.Pub(t, "devices/dev-b/twin/res/200/x", 0, `{}`))
	require.NoError(t, raw.Pub(t, "devices/dev-b/nonsense", 0, `{}`))
	require.Eventually(t, func() bool { return g.Stats().Malformed >= before.Malformed+7 }, 2*time.Second, 10*time.Millisecond)
	assert.False(t, raw.Lost())

	// Other devices are unaffected.
	ver, err = a.ReportPatch(context.Background(), map[string]any{"ok": true})
	require.NoError(t, err)
	assert.Equal(t, int64(2), ver)

	// A device the registry no longer knows (notification missed) gets 404.
	store.Forget("dev-a")
	_, err = a.ReportPatch(context.Background(), map[string]any{"x": 1})
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 404, re.Status)

	st := g.Stats()
	assert.Equal(t, int64(3), st.ReportedApplied)
	assert.GreaterOrEqual(t, st.TwinGets, int64(2))
	assert.Greater(t, st.MessagesIn, int64(0))
	assert.Greater(t, st.MessagesOut, int64(0))
}

func TestRevocationKicksAtOnce(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "sa")
	store.Add("dev-b", "sb")
	store.Add("dev-c", "sc")
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	url := gatewaytest.URL(g)

	lost := make(chan time.Time, 4)
	mustConnect(t, url, "dev-a", "sa", func(c *device.Config) {
		c.OnConnectionLost = func(error) { lost <- time.Now() }
	})
	b := mustConnect(t, url, "dev-b", "sb")
	require.Eventually(t, func() bool { return g.Stats().Connected == 2 }, time.Second, 5*time.Millisecond)

	failures := g.Stats().AuthFailures
	start := time.Now()
	store.SetStatus("dev-a", fleet.StatusDisabled)
	select {
	case at := <-lost:
		assert.Less(t, at.Sub(start), time.Second, "revocation must take effect well under 1 s")
		t.Logf("kicked after %s", at.Sub(start))
	case <-time.After(time.Second):
		t.Fatal("device was not kicked within 1 s")
	}
	assert.Equal(t, int64(1), g.Stats().Kicks)
	// Its automatic reconnect is refused, and so is a fresh CONNECT.
	require.Eventually(t, func() bool { return g.Stats().AuthFailures > failures }, 5*time.Second, 10*time.Millisecond)
	_, err := connectDevice(t, url, "dev-a", "sa")
	require.ErrorIs(t, err, device.ErrNotAuthorized)
	// Other devices stay connected.
	assert.True(t, b.IsConnected())
	_, err = b.ReportPatch(context.Background(), map[string]any{"still": "here"})
	require.NoError(t, err)

	// Re-enabling lets it in again at once (refusals are not cached).
	store.SetStatus("dev-a", fleet.StatusActive)
	mustConnect(t, url, "dev-a", "sa")

	// A credential rotation that drops the session's secret kicks it too.
	mustConnect(t, url, "dev-c", "sc")
	kicks := g.Stats().Kicks
	store.SetPrimary("dev-c", "rotated")
	require.Eventually(t, func() bool { return g.Stats().Kicks == kicks+1 }, time.Second, 5*time.Millisecond)
	mustConnect(t, url, "dev-c", "rotated")
}

func TestRetiredDeviceStateIsCleared(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "sa")
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	url := gatewaytest.URL(g)
	mustConnect(t, url, "dev-a", "sa")

	svc := gatewaytest.Service(t, url, "svc:watch")
	svc.Sub(t, 0, "devices/dev-a/state")
	m, ok := svc.WaitMessage(t, "devices/dev-a/state", 2*time.Second)
	require.True(t, ok)
	assert.True(t, m.Retained)
	assert.Contains(t, string(m.Payload), `"online":true`)

	store.SetStatus("dev-a", fleet.StatusRetired)
	require.Eventually(t, func() bool { return g.Stats().Connected == 0 }, time.Second, 5*time.Millisecond)
	// A new subscriber finds no retained state for the retired device.
	time.Sleep(50 * time.Millisecond)
	late := gatewaytest.Service(t, url, "svc:late")
	late.Sub(t, 0, "devices/dev-a/state")
	time.Sleep(200 * time.Millisecond)
	assert.Empty(t, late.Messages())
}

func TestReportedPatchesAreBatched(t *testing.T) {
	store := gatewaytest.New()
	const n = 200
	for i := range n {
		store.Add(fmt.Sprintf("dev-%03d", i), "s")
	}
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	url := gatewaytest.URL(g)
	devs := make([]*device.Device, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := connectDevice(t, url, fmt.Sprintf("dev-%03d", i), "s")
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
			}
			devs[i] = d
		}()
	}
	wg.Wait()
	require.Empty(t, errs)

	callsBefore, _ := store.ApplyCalls()
	start := make(chan struct{})
	for i, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			v, err := d.ReportPatch(context.Background(), map[string]any{"index": i})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
			} else if v != 1 {
				errs = append(errs, fmt.Errorf("%s: version %d", d.ID(), v))
			}
		}()
	}
	close(start)
	wg.Wait()
	require.Empty(t, errs)
	calls, patches := store.ApplyCalls()
	calls -= callsBefore
	t.Logf("%d patches in %d ApplyReported calls", n, calls)
	assert.Equal(t, n, patches)
	assert.LessOrEqual(t, calls, n/10, "patches must be batched")
	assert.Equal(t, int64(n), g.Stats().ReportedApplied)
	rep, _ := store.Reported("dev-007")
	assert.JSONEq(t, `{"index":7}`, string(rep))
}

// A reported patch that waited in its lane longer than RequestMaxWait (its device has stopped waiting, in the
// SDK's default) is answered 503 without reaching the registry, and the device's retry is served.
func TestOverdueReportedPatchIsAnsweredUnserved(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "sa")
	store.Add("dev-b", "sb")
	const maxWait = 200 * time.Millisecond
	g := gatewaytest.StartGateway(t, store, gateway.Config{ReportedLanes: 1, RequestMaxWait: maxWait})
	url := gatewaytest.URL(g)
	a := mustConnect(t, url, "dev-a", "sa")
	b := mustConnect(t, url, "dev-b", "sb")

	hold := make(chan struct{})
	store.HoldReported(hold)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	aDone := make(chan error, 1)
	go func() {
		_, err := a.ReportPatch(ctx, map[string]any{"temp": 21})
		aDone <- err
	}()
	require.Eventually(t, func() bool { return store.HeldReported() == 1 }, 30*time.Second, 10*time.Millisecond,
		"dev-a's batch reached the registry, which holds it")
	in := g.Stats().MessagesIn
	bDone := make(chan error, 1)
	go func() {
		_, err := b.ReportPatch(ctx, map[string]any{"temp": 22})
		bDone <- err
	}()
	require.Eventually(t, func() bool { return g.Stats().MessagesIn > in }, 30*time.Second, 10*time.Millisecond,
		"dev-b's patch is queued behind the held batch")
	time.Sleep(3 * maxWait) // it can only grow more overdue
	store.HoldReported(nil)
	close(hold)

	require.NoError(t, <-aDone)
	var rerr *device.ResponseError
	require.ErrorAs(t, <-bDone, &rerr)
	assert.Equal(t, 503, rerr.Status)
	assert.Empty(t, store.ReportedPatches("dev-b"), "the overdue patch never reached the registry")
	assert.Equal(t, int64(1), g.Stats().Overdue)

	v, err := b.ReportPatch(ctx, map[string]any{"temp": 22})
	require.NoError(t, err, "the retry is served")
	assert.Equal(t, int64(1), v)
	rep, _ := store.Reported("dev-b")
	assert.JSONEq(t, `{"temp":22}`, string(rep))
}

// TestTwinGetsAreBatched: twin/get requests that queue while the registry is busy are answered from one
// registry read, each with its own device's twin, an unknown device's with 404.
func TestTwinGetsAreBatched(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "sa")
	store.Add("dev-b", "sb")
	_, err := store.SetDesired("dev-a", json.RawMessage(`{"interval":30}`))
	require.NoError(t, err)
	g := gatewaytest.StartGateway(t, store, gateway.Config{Workers: 1})
	url := gatewaytest.URL(g)
	a, err := gatewaytest.Dial(t, url, "dev-a", "dev-a", "sa")
	require.NoError(t, err)
	a.Sub(t, 1, "devices/dev-a/twin/res/#")
	b, err := gatewaytest.Dial(t, url, "dev-b", "dev-b", "sb")
	require.NoError(t, err)
	b.Sub(t, 1, "devices/dev-b/twin/res/#")

	hold := make(chan struct{})
	store.HoldGets(hold)
	require.NoError(t, a.Pub(t, "devices/dev-a/twin/get/first", 1, ``))
	require.Eventually(t, func() bool { return store.HeldGets() == 1 }, 5*time.Second, 5*time.Millisecond)
	// The only worker is busy: these queue, and are read together once it is free.
	const n = 20
	for i := range n {
		require.NoError(t, a.Pub(t, fmt.Sprintf("devices/dev-a/twin/get/a%d", i), 1, ``))
	}
	for i := range 3 {
		require.NoError(t, b.Pub(t, fmt.Sprintf("devices/dev-b/twin/get/b%d", i), 1, ``))
	}
	// Wait until all of them reached the gateway's queue (counted on arrival), then forget dev-b.
	require.Eventually(t, func() bool { return g.Stats().MessagesIn >= int64(n+4) }, 5*time.Second, 5*time.Millisecond)
	store.Forget("dev-b")
	batchesBefore := store.TwinGetBatches()
	store.HoldGets(nil)
	close(hold)

	_, ok := a.WaitMessage(t, "devices/dev-a/twin/res/200/first", 5*time.Second)
	require.True(t, ok)
	for i := range n {
		m, ok := a.WaitMessage(t, fmt.Sprintf("devices/dev-a/twin/res/200/a%d", i), 5*time.Second)
		require.True(t, ok, "answer to a%d", i)
		assert.JSONEq(t, `{"desired":{"$version":1,"interval":30},"reported":{"$version":0}}`, string(m.Payload))
	}
	for i := range 3 {
		_, ok := b.WaitMessage(t, fmt.Sprintf("devices/dev-b/twin/res/404/b%d", i), 5*time.Second)
		require.True(t, ok, "answer to b%d", i)
	}
	// One read for all of them; a request whose enqueue trailed its arrival count by a moment may make a second.
	batches := store.TwinGetBatches() - batchesBefore
	assert.GreaterOrEqual(t, batches, 1, "the queued requests must be read in batches")
	assert.LessOrEqual(t, batches, 2, "the queued requests must be read in batches")
}

func TestConnectionEvents(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "sa")
	g := gatewaytest.StartGateway(t, store, gateway.Config{FlushInterval: 20 * time.Millisecond})
	url := gatewaytest.URL(g)
	d := mustConnect(t, url, "dev-a", "sa")
	for range 50 {
		require.NoError(t, d.PublishTelemetry("env", map[string]any{"t": 21.5}))
	}
	require.Eventually(t, func() bool { return g.Stats().Telemetry == 50 }, 2*time.Second, 5*time.Millisecond)
	time.Sleep(60 * time.Millisecond)
	d.Close()
	require.Eventually(t, func() bool {
		ev := store.Events()
		return len(ev) > 0 && ev[len(ev)-1].Kind == fleet.ConnDown
	}, 2*time.Second, 10*time.Millisecond)

	ev := store.Events()
	require.Equal(t, fleet.ConnUp, ev[0].Kind)
	session := ev[0].Session
	seen := 0
	for _, e := range ev {
		assert.Equal(t, "dev-a", e.DeviceID)
		assert.Equal(t, session, e.Session)
		if e.Kind == fleet.ConnSeen {
			seen++
		}
	}
	// 50 telemetry messages plus birth and twin traffic become a handful of coalesced ConnSeen events.
	assert.GreaterOrEqual(t, seen, 1)
	assert.Less(t, seen, 10)
	assert.Equal(t, fleet.ConnDown, ev[len(ev)-1].Kind)
	require.Eventually(t, func() bool { return g.Stats().Connected == 0 }, time.Second, 5*time.Millisecond)

	// A reconnect gets a strictly newer session number.
	mustConnect(t, url, "dev-a", "sa")
	require.Eventually(t, func() bool {
		for _, e := range store.Events() {
			if e.Kind == fleet.ConnUp && e.Session > session {
				return true
			}
		}
		return false
	}, 2*time.Second, 10*time.Millisecond)
}

func TestKickAndClose(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "sa")
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	c, err := gatewaytest.Dial(t, gatewaytest.URL(g), "dev-a", "dev-a", "sa")
	require.NoError(t, err)
	require.Eventually(t, func() bool { return g.Stats().Connected == 1 }, time.Second, 5*time.Millisecond)
	assert.True(t, g.Kick("dev-a"))
	assert.False(t, g.Kick("dev-nobody"))
	require.Eventually(t, c.Lost, time.Second, 5*time.Millisecond)

	// Close records the disconnection of every session before returning.
	_, err = gatewaytest.Dial(t, gatewaytest.URL(g), "dev-a", "dev-a", "sa")
	require.NoError(t, err)
	require.Eventually(t, func() bool { return g.Stats().Connected == 1 }, time.Second, 5*time.Millisecond)
	require.NoError(t, g.Close())
	ev := store.Events()
	require.NotEmpty(t, ev)
	assert.Equal(t, fleet.ConnDown, ev[len(ev)-1].Kind)
	require.NoError(t, g.Close())
}

func TestStartFailsOnBusyAddress(t *testing.T) {
	store := gatewaytest.New()
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	g2 := gateway.New(gateway.Config{Listen: g.Addr()}, store, gatewaytest.Logger(t))
	err := g2.Start(context.Background())
	require.ErrorContains(t, err, "listen")
	require.NoError(t, g2.Close())
}

func TestResyncAfterMissedNotifications(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "sa")
	store.Add("dev-b", "sb")
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	url := gatewaytest.URL(g)
	a, err := gatewaytest.Dial(t, url, "dev-a", "dev-a", "sa")
	require.NoError(t, err)
	b, err := gatewaytest.Dial(t, url, "dev-b", "dev-b", "sb")
	require.NoError(t, err)

	// dev-a disappears while the gateway's listener was down: no notification for it. The store's
	// listener then says so with an empty id, and every live session is re-checked.
	store.Forget("dev-a")
	store.Notify("")
	require.Eventually(t, a.Lost, time.Second, 5*time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	assert.False(t, b.Lost())
	require.Eventually(t, func() bool { return g.Stats().Connected == 1 }, time.Second, 5*time.Millisecond)
}

// On a session takeover mochi publishes the old connection's LWT, often after the new connection's birth; it
// must not become the retained state, since the device is online.
func TestTakeoverLWTIsNotRetained(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "sa")
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	url := gatewaytest.URL(g)
	dial := func(session string, birth bool) paho.Client {
		c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("dev-a").SetUsername("dev-a").
			SetPassword("sa").SetProtocolVersion(4).SetAutoReconnect(false).
			SetWill("devices/dev-a/state", `{"online":false,"session":`+session+`}`, 1, true))
		tok := c.Connect()
		require.True(t, tok.WaitTimeout(5*time.Second))
		require.NoError(t, tok.Error())
		if birth {
			require.True(t, c.Publish("devices/dev-a/state", 1, true, `{"online":true,"session":`+session+`}`).WaitTimeout(5*time.Second))
		}
		return c
	}
	svc := gatewaytest.Service(t, url, "svc:watch")
	svc.Sub(t, 0, "devices/dev-a/state")
	first := dial("1", true)
	defer first.Disconnect(0)
	second := dial("2", false) // the birth is late: the old LWT arrives first
	defer second.Disconnect(0)
	require.Eventually(t, func() bool { return !first.IsConnectionOpen() }, 2*time.Second, 10*time.Millisecond)
	// The LWT is still delivered live...
	require.Eventually(t, func() bool {
		for _, m := range svc.Messages() {
			if string(m.Payload) == `{"online":false,"session":1}` {
				return true
			}
		}
		return false
	}, 2*time.Second, 10*time.Millisecond)
	// ...but a late subscriber sees the device online.
	late := gatewaytest.Service(t, url, "svc:late")
	late.Sub(t, 0, "devices/dev-a/state")
	m, ok := late.WaitMessage(t, "devices/dev-a/state", 2*time.Second)
	require.True(t, ok)
	assert.JSONEq(t, `{"online":true,"session":1}`, string(m.Payload))
	require.Eventually(t, func() bool { return g.Stats().Connected == 1 }, time.Second, 5*time.Millisecond)
}

// A kicked device that reconnects at once must get a fully working session: mochi v2.7.9 cleans up the old
// connection on its own goroutine by client id and could otherwise delete the new connection's
// subscriptions, leaving a device that is connected but deaf.
func TestImmediateReconnectsKeepWorking(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "sa")
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	synced := make(chan error, 1)
	d := mustConnect(t, gatewaytest.URL(g), "dev-a", "sa", func(c *device.Config) {
		c.MaxReconnectInterval = 100 * time.Millisecond
		c.OnConnected = func(_ int64, err error) {
			select {
			case synced <- err:
			default:
			}
		}
	})
	<-synced // the first connect
	for i := range 10 {
		require.True(t, g.Kick("dev-a"), "iteration %d", i)
		select {
		case err := <-synced:
			require.NoError(t, err, "iteration %d: twin sync after reconnect", i)
		case <-time.After(5 * time.Second):
			t.Fatalf("iteration %d: no reconnect", i)
		}
		require.Eventually(t, func() bool { return g.Stats().Connected == 1 }, time.Second, time.Millisecond)
	}
	_, err := d.ReportPatch(context.Background(), map[string]any{"alive": true})
	require.NoError(t, err)
}

// A rotation stages the new secret, delivers it, and the device reconnects with it at once, possibly before
// the registry's change notice has reached the gateway: a secret that does not match the cached record is
// decided again on a fresh read, so the device is admitted with its new secret instead of falling back to the
// old one and missing the rotation's grace. A wrong secret is still refused, after that one read.
func TestNewSecretAdmittedBeforeTheChangeNotice(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "old")
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	url := gatewaytest.URL(g)
	c, err := gatewaytest.Dial(t, url, "dev-a", "dev-a", "old")
	require.NoError(t, err)
	c.Disconnect(100)
	require.Equal(t, 1, store.AuthLookups(), "the record is cached")

	store.StageSecondaryUnannounced("dev-a", "new")
	_, err = gatewaytest.Dial(t, url, "dev-a", "dev-a", "new")
	require.NoError(t, err, "the new secret, staged but not yet announced")
	assert.Equal(t, 2, store.AuthLookups(), "one fresh read decided it")
	assert.Equal(t, int64(1), g.Stats().AuthRefetched)

	failures := g.Stats().AuthFailures
	_, err = gatewaytest.Dial(t, url, "dev-a", "dev-a", "guess")
	require.Error(t, err)
	assert.Equal(t, failures+1, g.Stats().AuthFailures)
	assert.Equal(t, 3, store.AuthLookups(), "a wrong secret costs one read, then is refused")
}

// Two devices sharing an id (a cloned credential) take each other's session over as soon as each has synced;
// the device's reconnect backoff must make that a slow loop, not one as fast as they can connect (the first
// reconnect after a loss has no floor, so only counting short-lived connections as failures bounds it).
func TestClonedDevicesBackOff(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-clone", "s")
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	url := gatewaytest.URL(g)
	slow := func(c *device.Config) { c.MaxReconnectInterval = 30 * time.Second }
	a := mustConnect(t, url, "dev-clone", "s", slow)
	defer a.Close()
	b := mustConnect(t, url, "dev-clone", "s", slow)
	defer b.Close()
	require.Eventually(t, func() bool { return g.Stats().Connects >= 4 }, 20*time.Second, 10*time.Millisecond,
		"the clones keep taking the session over")
	start := g.Stats().Connects
	time.Sleep(5 * time.Second)
	// Backing off (waits below 1 s, 2 s, 4 s… after each short-lived connection) allows a handful in 5 s;
	// reconnecting at once allowed hundreds. A loaded machine only makes them fewer.
	assert.Less(t, g.Stats().Connects-start, int64(20), "connects (each taking the other clone's session over) in 5 s")
}
