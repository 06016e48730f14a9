package gateway_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
)

// An expired credential is refused at CONNECT even when the gateway has the device's record cached: the
// expiry is checked against each CONNECT's clock, not when the record was loaded. The refusal is counted and
// put on the device's timeline (a ConnRefused event), once however often the device retries.
func TestExpiredCredentialsRefusedFromCache(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-exp", "s3cret")
	store.Add("dev-past", "s3cret")
	store.SetExpiry("dev-past", time.Now().Add(-time.Hour))
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	url := gatewaytest.URL(g)

	_, err := connectDevice(t, url, "dev-past", "s3cret")
	require.ErrorIs(t, err, device.ErrNotAuthorized, "an expired credential is refused")
	assert.Equal(t, int64(1), g.Stats().AuthExpired)

	// Valid for a few seconds: the first CONNECT loads and caches the record, then it expires silently (no
	// change is announced, as with a real expiry).
	expires := time.Now().Add(3 * time.Second)
	store.Fleet.Mu.Lock()
	store.Fleet.Devices["dev-exp"].CredentialExpiresAt = expires
	store.Fleet.Mu.Unlock()
	d := mustConnect(t, url, "dev-exp", "s3cret")
	d.Close()
	lookups := store.AuthLookups()

	deadline := time.Now().Add(30 * time.Second)
	for {
		d, err := connectDevice(t, url, "dev-exp", "s3cret")
		if err == nil {
			d.Close() // or it would reconnect, and be refused, behind the test's back
		} else {
			require.ErrorIs(t, err, device.ErrNotAuthorized)
			break
		}
		require.True(t, time.Now().Before(deadline), "still admitted long after its credentials expired")
		time.Sleep(200 * time.Millisecond)
	}
	require.False(t, time.Now().Before(expires), "refused before the expiry")
	assert.Equal(t, lookups, store.AuthLookups(), "the refusal came from the cached record")
	// A retry is refused too, and counted, but not put on the timeline again.
	_, err = connectDevice(t, url, "dev-exp", "s3cret")
	require.ErrorIs(t, err, device.ErrNotAuthorized)
	assert.Equal(t, int64(3), g.Stats().AuthExpired)

	// A wrong secret is a wrong secret, expired or not: only a device that proves who it is is told.
	_, err = connectDevice(t, url, "dev-exp", "nope")
	require.ErrorIs(t, err, device.ErrNotAuthorized)
	assert.Equal(t, int64(3), g.Stats().AuthExpired)

	require.Eventually(t, func() bool {
		n := 0
		for _, e := range store.Events() {
			if e.DeviceID == "dev-exp" && e.Kind == fleet.ConnRefused {
				n++
				if !strings.Contains(e.Reason, "credentials expired") {
					return false
				}
			}
		}
		return n == 1
	}, 10*time.Second, 50*time.Millisecond, "one refusal on the timeline: %v", store.Events())
}

// The gateway records with each session which secret slot the device authenticated with, and that slot's
// digest, which a credential rotation compares with the registry's.
func TestSessionRecordsCredentialSlot(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-rot", "old")
	store.SetSecondary("dev-rot", "new")
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	url := gatewaytest.URL(g)

	d := mustConnect(t, url, "dev-rot", "old")
	d.Close()
	mustConnect(t, url, "dev-rot", "new")
	var ups []fleet.ConnEvent
	require.Eventually(t, func() bool {
		ups = ups[:0]
		for _, e := range store.Events() {
			if e.DeviceID == "dev-rot" && e.Kind == fleet.ConnUp {
				ups = append(ups, e)
			}
		}
		return len(ups) == 2
	}, 10*time.Second, 50*time.Millisecond)
	assert.Equal(t, 1, ups[0].Slot)
	assert.True(t, bytes.Equal(creds.Digest("old"), ups[0].Digest))
	assert.Equal(t, 2, ups[1].Slot)
	assert.True(t, bytes.Equal(creds.Digest("new"), ups[1].Digest))
}
