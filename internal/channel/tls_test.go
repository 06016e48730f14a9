package channel_test

import (
	"context"
	"encoding/json"
	"strings"
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
	"github.com/fleetflow/fleetflow/internal/pki"
)

// A service reaches a device over TLS end to end: the device verifies the gateway and the channel the NATS
// server against the CA file, and a channel given another CA is refused before it sends its credentials.
func TestMethodOverTLS(t *testing.T) {
	l, err := pki.EnsureLocal(t.TempDir(), pki.LocalHosts, time.Now())
	require.NoError(t, err)
	store := gatewaytest.New()
	store.Add("dev-tls", "secret-dev-tls")
	node, err := natsnode.Start(natsnode.Config{Listen: "127.0.0.1:0", TLSCertFile: l.Cert, TLSKeyFile: l.Key,
		User: "svc", Password: "pw"})
	require.NoError(t, err)
	t.Cleanup(node.Close)
	natsURL := strings.Replace(node.ClientURL(), "tls://", "tls://svc:pw@", 1)
	r, err := channel.DialRelay(channel.Config{URL: natsURL, CAFile: l.CA, Logger: gatewaytest.Logger(t)})
	require.NoError(t, err)
	t.Cleanup(r.Close)
	g := gatewaytest.StartGateway(t, store, gateway.Config{TLSListen: "127.0.0.1:0", TLSCertFile: l.Cert, TLSKeyFile: l.Key, Downlinks: r})
	url := "ssl://" + g.TLSAddr()

	d, err := device.New(device.Config{BrokerURL: url, CAFile: l.CA, ID: "dev-tls", Secret: "secret-dev-tls",
		Logger: gatewaytest.Logger(t)})
	require.NoError(t, err)
	d.OnMethod("echo", func(ctx context.Context, payload []byte) (any, error) {
		return map[string]any{"in": json.RawMessage(payload)}, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, d.Connect(ctx))
	t.Cleanup(d.Close)

	ch, err := channel.Dial(ctx, channel.Config{URL: natsURL, CAFile: l.CA, Logger: gatewaytest.Logger(t)})
	require.NoError(t, err)
	t.Cleanup(ch.Close)
	res, err := ch.Invoke(ctx, fleet.MethodCall{DeviceID: "dev-tls", Method: "echo", Payload: json.RawMessage(`{"n":1}`)}, 5*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 200, res.Status)
	assert.JSONEq(t, `{"in":{"n":1}}`, string(res.Payload))

	other, err := pki.EnsureLocal(t.TempDir(), pki.LocalHosts, time.Now())
	require.NoError(t, err)
	_, err = channel.Dial(ctx, channel.Config{URL: natsURL, CAFile: other.CA, Logger: gatewaytest.Logger(t)})
	require.ErrorContains(t, err, "certificate signed by unknown authority")
	assert.NotContains(t, err.Error(), "pw@", "the password is not repeated in the error")
}
