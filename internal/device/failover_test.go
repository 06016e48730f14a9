package device_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
	"github.com/fleetflow/fleetflow/internal/registry/registrytest"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// A device given two gateways of one fleet (sharing the registry) connects to the first and, when that
// gateway goes away, reconnects through the second on its own; the registry then shows it online with a
// newer session.
func TestDeviceFailsOverToAnotherGateway(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Open(t)
	c := registrytest.Provision(t, reg, "lb-dev", 1)[0]

	cfg := gateway.Config{FlushInterval: 20 * time.Millisecond}
	a := gatewaytest.StartGateway(t, reg, cfg)
	b := gatewaytest.StartGateway(t, reg, cfg)
	d, err := device.New(device.Config{
		BrokerURLs: []string{gatewaytest.URL(a), gatewaytest.URL(b)},
		ID:         c.ID, Secret: c.Secret, Logger: gatewaytest.Logger(t),
		RequestTimeout: 5 * time.Second, MaxReconnectInterval: time.Second,
	})
	require.NoError(t, err)
	t.Cleanup(d.Close)
	d.OnDesired(func(device.DesiredUpdate) {})
	var lastSession int64
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	require.NoError(t, d.Connect(cctx))
	assert.Equal(t, gatewaytest.URL(a), d.Broker(), "the first URL of the list is tried first")
	require.Eventually(t, func() bool { return a.Stats().Connected == 1 }, 10*time.Second, 10*time.Millisecond)
	assert.Zero(t, b.Stats().Connected)
	require.Eventually(t, func() bool {
		dev, err := reg.GetDevice(ctx, c.ID)
		lastSession = dev.Session
		return err == nil && dev.Online
	}, 10*time.Second, 20*time.Millisecond)

	// Gateway A goes away; the device is connected again through B without anyone calling Connect.
	require.NoError(t, a.Close())
	require.Eventually(t, func() bool { return b.Stats().Connected == 1 && d.IsConnected() }, 30*time.Second, 20*time.Millisecond,
		"device did not reconnect through the second gateway")
	assert.Equal(t, gatewaytest.URL(b), d.Broker())
	require.Eventually(t, func() bool {
		dev, err := reg.GetDevice(ctx, c.ID)
		return err == nil && dev.Online && dev.Session > lastSession
	}, 10*time.Second, 20*time.Millisecond, "registry shows the device online with its newer session")

	// The session on B is a full one: the device's twin requests are served there.
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	v, err := d.ReportPatch(rctx, map[string]any{"via": "b"})
	require.NoError(t, err)
	assert.Positive(t, v)
}

// A gateway of the list that does not answer is passed over at the first connect too.
func TestDeviceSkipsAGatewayThatDoesNotAnswer(t *testing.T) {
	_, g, url := setup(t, "dev-1")
	d := newDevice(t, "", "dev-1", func(c *device.Config) {
		c.BrokerURLs = []string{"tcp://127.0.0.1:1", url}
		c.ConnectTimeout = 2 * time.Second
	})
	connect(t, d)
	assert.Equal(t, url, d.Broker())
	assert.Equal(t, int64(1), g.Stats().Connected)

	_, err := device.New(device.Config{ID: "dev-1", Secret: "s", BrokerURLs: []string{"127.0.0.1:1883"}})
	require.ErrorContains(t, err, "not of the form")
	_, err = device.New(device.Config{ID: "dev-1", Secret: "s"})
	require.ErrorContains(t, err, "broker URL")
}
