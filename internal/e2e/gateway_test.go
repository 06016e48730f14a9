package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/fleet"
)

// provisionDirect provisions devices through the workflow with the CLI and returns their credentials.
func provisionDirect(t *testing.T, e *env, prefix string, n int) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	credsFile := t.TempDir() + "/creds.ndjson"
	_, err := e.cli(ctx, "provision", "--count", itoa(n), "--prefix", prefix, "--creds-out", credsFile, "-o", "json")
	require.NoError(t, err)
	out := map[string]string{}
	for _, c := range mustCreds(t, credsFile) {
		out[c.ID] = c.Secret
	}
	require.Len(t, out, n)
	return out
}

func rawClient(t *testing.T, url, id, secret string) (paho.Client, error) {
	t.Helper()
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetUsername(id).SetPassword(secret).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second)
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, errors.New("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

func TestGatewayAuthenticatesAndConfinesDevicesAgainstTheRegistry(t *testing.T) {
	e := newEnv(t)
	e.startWorker()
	secrets := provisionDirect(t, e, "gw-", 4)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// The right secret connects; a wrong one, an unknown device and a disabled device are refused.
	// The honest device is gw-0004; gw-0001's credentials are used below by a raw client playing attacker,
	// which would otherwise take this session over.
	d1, err := device.New(device.Config{BrokerURL: e.mqttURL, ID: "gw-0004", Secret: secrets["gw-0004"]})
	require.NoError(t, err)
	require.NoError(t, d1.Connect(ctx))
	defer d1.Close()
	bad, err := device.New(device.Config{BrokerURL: e.mqttURL, ID: "gw-0002", Secret: secrets["gw-0001"]})
	require.NoError(t, err)
	require.ErrorIs(t, bad.Connect(ctx), device.ErrNotAuthorized)
	ghost, err := device.New(device.Config{BrokerURL: e.mqttURL, ID: "gw-9999", Secret: secrets["gw-0001"]})
	require.NoError(t, err)
	require.ErrorIs(t, ghost.Connect(ctx), device.ErrNotAuthorized)
	require.NoError(t, e.reg.SetStatus(ctx, "gw-0003", fleet.StatusDisabled))
	off, err := device.New(device.Config{BrokerURL: e.mqttURL, ID: "gw-0003", Secret: secrets["gw-0003"]})
	require.NoError(t, err)
	require.ErrorIs(t, off.Connect(ctx), device.ErrNotAuthorized)
	require.GreaterOrEqual(t, e.gw.Stats().AuthFailures, int64(3))

	// The victim listens on its own topics; the attacker tries to reach them.
	victim, err := rawClient(t, e.mqttURL, "gw-0002", secrets["gw-0002"])
	require.NoError(t, err)
	var received atomic.Int64
	tok := victim.Subscribe("devices/gw-0002/#", 1, func(paho.Client, paho.Message) { received.Add(1) })
	require.True(t, tok.WaitTimeout(5*time.Second))
	require.NoError(t, tok.Error())

	_, err = rawClient(t, e.mqttURL, "gw-0001-raw", "x")
	require.Error(t, err, "client id must equal the username and a provisioned device")
	attacker, err := rawClient(t, e.mqttURL, "gw-0001", secrets["gw-0001"])
	require.NoError(t, err)
	denialsBefore := e.gw.Stats().ACLDenials
	attacker.Publish("devices/gw-0002/twin/desired/99", 0, false, `{"evil":true}`).WaitTimeout(time.Second)
	for _, filter := range []string{"devices/gw-0002/#", "devices/+/twin/desired/#", "#", "$share/g/devices/gw-0001/#"} {
		st := attacker.Subscribe(filter, 0, nil)
		st.WaitTimeout(5 * time.Second)
		if st.Error() == nil {
			// paho keys the result by the filter without a $share prefix, so look at the only entry.
			res := st.(*paho.SubscribeToken).Result()
			require.Len(t, res, 1)
			for _, code := range res {
				require.Equal(t, byte(0x80), code, "subscription to %s must be refused", filter)
			}
		}
	}
	time.Sleep(300 * time.Millisecond)
	require.Zero(t, received.Load(), "the victim received nothing from the attacker")
	require.Greater(t, e.gw.Stats().ACLDenials, denialsBefore)

	// A malformed reported patch is counted, answered 400 and changes nothing; the gateway keeps serving.
	twBefore, err := e.reg.GetTwin(ctx, "gw-0002")
	require.NoError(t, err)
	statuses := make(chan string, 4)
	tok = victim.Subscribe("devices/gw-0002/twin/res/#", 1, func(_ paho.Client, m paho.Message) { statuses <- m.Topic() })
	require.True(t, tok.WaitTimeout(5*time.Second))
	malformedBefore := e.gw.Stats().Malformed
	victim.Publish("devices/gw-0002/twin/reported/r1", 1, false, `{"model": "x1",`).WaitTimeout(5 * time.Second)
	select {
	case topic := <-statuses:
		require.Equal(t, "devices/gw-0002/twin/res/400/r1", topic)
	case <-time.After(10 * time.Second):
		t.Fatal("no answer to the malformed patch")
	}
	require.Greater(t, e.gw.Stats().Malformed, malformedBefore)
	twAfter, err := e.reg.GetTwin(ctx, "gw-0002")
	require.NoError(t, err)
	require.Equal(t, twBefore.Properties.Reported.Version, twAfter.Properties.Reported.Version)

	// The gateway still serves: a valid patch from the honest device lands.
	v, err := d1.ReportPatch(ctx, map[string]any{"model": "x1"})
	require.NoError(t, err)
	tw, err := e.reg.GetTwin(ctx, "gw-0004")
	require.NoError(t, err)
	require.Equal(t, v, tw.Properties.Reported.Version)
	var rep map[string]any
	require.NoError(t, json.Unmarshal(tw.Properties.Reported.Doc, &rep))
	require.Equal(t, "x1", rep["model"])

	// Disabling a connected device drops its session at once, and its reconnect is refused.
	lost := make(chan struct{}, 1)
	d2, err := device.New(device.Config{BrokerURL: e.mqttURL, ID: "gw-0003", Secret: secrets["gw-0003"],
		OnConnectionLost: func(error) { lost <- struct{}{} }})
	require.NoError(t, err)
	require.NoError(t, e.reg.SetStatus(ctx, "gw-0003", fleet.StatusActive))
	require.Eventually(t, func() bool { return d2.Connect(ctx) == nil }, 5*time.Second, 100*time.Millisecond)
	defer d2.Close()
	start := time.Now()
	require.NoError(t, e.reg.SetStatus(ctx, "gw-0003", fleet.StatusDisabled))
	select {
	case <-lost:
		require.Less(t, time.Since(start), time.Second, "revocation must drop the session within a second")
	case <-time.After(5 * time.Second):
		t.Fatal("the disabled device's session was not dropped")
	}
	again, err := device.New(device.Config{BrokerURL: e.mqttURL, ID: "gw-0003", Secret: secrets["gw-0003"]})
	require.NoError(t, err)
	require.ErrorIs(t, again.Connect(ctx), device.ErrNotAuthorized)
}
