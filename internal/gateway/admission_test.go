package gateway_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
)

// A burst of CONNECTs beyond what the gateway authenticates at once is refused "server unavailable" at
// once, not as bad credentials; the refused devices come back after a random wait and all get in.
func TestBusyGatewayRefusesTheBurstsExcessAndEveryDeviceGetsIn(t *testing.T) {
	const n = 24
	store := gatewaytest.New()
	store.AuthDelay = 100 * time.Millisecond // lookups that take a while, so the burst piles up
	for i := range n {
		store.Add(fmt.Sprintf("adm-%02d", i), "s")
	}
	g := gatewaytest.StartGateway(t, store, gateway.Config{AdmitPending: 2, AdmitLag: -1})
	url := gatewaytest.URL(g)

	var mu sync.Mutex
	busy := 0
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("adm-%02d", i)
			deadline := time.Now().Add(45 * time.Second)
			for {
				_, err := connectDevice(t, url, id, "s")
				if err == nil {
					return
				}
				if !assert.ErrorIs(t, err, device.ErrServerBusy, "%s: a busy gateway is not an authorization failure", id) ||
					time.Now().After(deadline) {
					errs <- fmt.Errorf("%s: %w", id, err)
					return
				}
				mu.Lock()
				busy++
				mu.Unlock()
				time.Sleep(time.Duration(50+i*10) * time.Millisecond) // spread the retries
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st := g.Stats()
	assert.Positive(t, busy, "a burst of %d against 2 CONNECTs in authentication got no refusal", n)
	assert.Equal(t, int64(busy), st.RefusedBusy, "every busy refusal the devices saw is counted")
	assert.Zero(t, st.AuthFailures, "busy refusals are not authentication failures")
	assert.Zero(t, st.AuthRateLimited)
	require.Eventually(t, func() bool { return g.Stats().Connected == n }, 10*time.Second, 10*time.Millisecond)
	assert.Zero(t, g.Stats().AdmitPending, "nothing left in authentication")
}

// A CONNECT whose registry lookup outlasts AdmitWait is refused busy; the lookup goes on and fills the cache,
// so the device's next attempt is admitted without another query.
func TestSlowLookupIsRefusedBusyAndTheRetryUsesTheCache(t *testing.T) {
	store := gatewaytest.New()
	store.AuthDelay = 400 * time.Millisecond
	store.Add("adm-slow", "s")
	g := gatewaytest.StartGateway(t, store, gateway.Config{AdmitWait: 50 * time.Millisecond, AdmitLag: -1})
	url := gatewaytest.URL(g)

	_, err := connectDevice(t, url, "adm-slow", "s")
	require.ErrorIs(t, err, device.ErrServerBusy)
	assert.Equal(t, int64(1), g.Stats().RefusedBusy)
	require.Eventually(t, func() bool { return g.Stats().AuthCacheSize == 1 }, 10*time.Second, 10*time.Millisecond,
		"the refused CONNECT's lookup went on and filled the cache")
	_, err = connectDevice(t, url, "adm-slow", "s")
	require.NoError(t, err)
	assert.Equal(t, 1, store.AuthLookups(), "the retry was served from the cache")
	assert.Zero(t, g.Stats().AuthFailures)

	// A wrong secret is still an authorization failure, however busy the gateway: the refusal says why.
	_, err = connectDevice(t, url, "adm-slow", "wrong")
	require.ErrorIs(t, err, device.ErrNotAuthorized)
}

// A device that loses its gateway keeps reconnecting through busy refusals of the others and gets in.
func TestDeviceReconnectsThroughBusyRefusals(t *testing.T) {
	store := gatewaytest.New()
	store.AuthDelay = 300 * time.Millisecond
	store.Add("adm-move", "s")
	a := gatewaytest.StartGateway(t, store, gateway.Config{})
	b := gatewaytest.StartGateway(t, store, gateway.Config{AdmitWait: 50 * time.Millisecond, AdmitLag: -1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := device.New(device.Config{BrokerURLs: []string{gatewaytest.URL(a), gatewaytest.URL(b)}, ID: "adm-move", Secret: "s",
		Logger: gatewaytest.Logger(t), RequestTimeout: 5 * time.Second, MaxReconnectInterval: time.Second})
	require.NoError(t, err)
	require.NoError(t, d.Connect(ctx))
	defer d.Close()
	require.NoError(t, a.Close())
	// b's first lookup of the device outlasts its admission wait: refused busy, then served from the cache.
	require.Eventually(t, func() bool { return d.IsConnected() && d.Broker() == gatewaytest.URL(b) }, 30*time.Second, 20*time.Millisecond)
	assert.Positive(t, b.Stats().RefusedBusy)
	assert.Zero(t, b.Stats().AuthFailures)
}
