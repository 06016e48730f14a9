package gateway_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
)

// CONNECTs of an unknown id are answered from the negative cache after the first lookup; the device is
// admitted the moment it is provisioned (the store announces the insert as the registry's trigger does).
func TestUnknownIDsAreCachedUntilProvisioned(t *testing.T) {
	store := gatewaytest.New()
	// No per-address limit here: this test is about the cache.
	g := gatewaytest.StartGateway(t, store, gateway.Config{AuthFailRate: -1, AuthNegativeTTL: time.Hour})
	url := gatewaytest.URL(g)
	for range 5 {
		_, err := connectDevice(t, url, "dev-later", "s")
		require.ErrorIs(t, err, device.ErrNotAuthorized)
	}
	assert.Equal(t, 1, store.AuthLookups(), "one registry query for five CONNECTs of an unknown id")
	assert.Equal(t, int64(4), g.Stats().AuthNegativeHits)

	store.Add("dev-later", "s") // announced with fleet.DevicesInserted, like the registry's statement trigger
	require.Eventually(t, func() bool {
		d, err := connectDevice(t, url, "dev-later", "s")
		if err == nil {
			d.Close()
		}
		return err == nil
	}, 10*time.Second, 20*time.Millisecond, "the insert notice admits the device long before the hour-long TTL")
	assert.Equal(t, int64(5), g.Stats().AuthFailures)
}

// An address that has used up its failed CONNECTs is refused without a lookup, even with a good secret,
// until its bucket refills; the refusals are counted.
func TestFailedConnectsAreLimitedPerAddress(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "good")
	g := gatewaytest.StartGateway(t, store, gateway.Config{AuthFailRate: 0.001, AuthFailBurst: 3})
	url := gatewaytest.URL(g)
	for range 3 {
		_, err := connectDevice(t, url, "dev-a", "wrong")
		require.ErrorIs(t, err, device.ErrNotAuthorized)
	}
	lookups := store.AuthLookups()
	_, err := connectDevice(t, url, "dev-a", "good")
	require.ErrorIs(t, err, device.ErrNotAuthorized, "this address has no failures left")
	_, err = connectDevice(t, url, "dev-unknown", "x")
	require.ErrorIs(t, err, device.ErrNotAuthorized)
	st := g.Stats()
	assert.Equal(t, int64(2), st.AuthRateLimited)
	assert.Equal(t, int64(5), st.AuthFailures)
	assert.Equal(t, lookups, store.AuthLookups(), "a limited address costs no registry query")
}

// A retired or disabled device retrying with its right credentials is refused without costing its address
// anything: many of them behind one address must not lock out their neighbours.
func TestInactiveDevicesDoNotUseUpTheirAddressesFailures(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "good")
	store.Add("dev-off", "s")
	store.SetStatus("dev-off", fleet.StatusDisabled)
	g := gatewaytest.StartGateway(t, store, gateway.Config{AuthFailRate: 0.001, AuthFailBurst: 2})
	url := gatewaytest.URL(g)
	for range 5 {
		_, err := connectDevice(t, url, "dev-off", "s")
		require.ErrorIs(t, err, device.ErrNotAuthorized)
	}
	d, err := connectDevice(t, url, "dev-a", "good")
	require.NoError(t, err)
	d.Close()
	assert.Zero(t, g.Stats().AuthRateLimited)
}
