package device_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
	"github.com/fleetflow/fleetflow/internal/protocol"
)

// waitConnUp waits until the gateway has recorded a session of id authenticated with digest in slot.
func waitConnUp(t *testing.T, store *gatewaytest.Store, id string, slot int, secret string) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, e := range store.Events() {
			if e.DeviceID == id && e.Kind == fleet.ConnUp && e.Slot == slot && bytes.Equal(e.Digest, creds.Digest(secret)) {
				return true
			}
		}
		return false
	}, 20*time.Second, 20*time.Millisecond, "no session of %s with slot %d: %+v", id, slot, store.Events())
}

// The rotateCredentials method: the device stores the new secret before it answers, then reconnects with
// it; when a retried rotation step has replaced that secret in the registry meanwhile, it comes back with its
// other slot's secret, and takes the next delivery.
func TestRotateCredentials(t *testing.T) {
	store, _, url := setup(t, "dev-1")
	var mu sync.Mutex
	var saved []device.Credentials
	var stored atomic.Int64
	failSave := atomic.Bool{}
	d := newDevice(t, url, "dev-1", func(c *device.Config) {
		c.SaveCredentials = func(_ context.Context, cr device.Credentials) error {
			if failSave.Load() {
				return errors.New("disk full")
			}
			mu.Lock()
			saved = append(saved, cr)
			mu.Unlock()
			stored.Add(1)
			return nil
		}
	})
	connect(t, d)
	waitConnUp(t, store, "dev-1", 1, "secret-dev-1")

	svc := gatewaytest.Service(t, url, "svc:test")
	svc.Sub(t, 1, "devices/dev-1/methods/res/+/+")
	call := func(rid string, r protocol.RotateCredentials, wantTopic string) gatewaytest.Message {
		t.Helper()
		require.NoError(t, svc.Pub(t, "devices/dev-1/methods/req/"+protocol.MethodRotateCredentials+"/"+rid, 0, string(r.Payload())))
		m, ok := svc.WaitMessage(t, wantTopic, 10*time.Second)
		require.True(t, ok, "no response on %s; got %v", wantTopic, svc.Messages())
		return m
	}

	// The rotation writes the digest first, then delivers the secret.
	store.SetSecondary("dev-1", "new-1")
	call("r1", protocol.RotateCredentials{Slot: 2, Secret: "new-1"}, "devices/dev-1/methods/res/200/r1")
	require.Equal(t, int64(1), stored.Load(), "the secret was stored before the answer")
	mu.Lock()
	assert.Equal(t, device.Credentials{Secret: "secret-dev-1", Secret2: "new-1", Slot: 2}, saved[0])
	mu.Unlock()
	waitConnUp(t, store, "dev-1", 2, "new-1")
	assert.Equal(t, 2, d.ConnectedSlot())

	// A retried step wrote another digest into slot 2 and has not delivered it yet: the session with new-1
	// is dropped by the gateway, new-1 is refused, and the device comes back with slot 1.
	store.SetSecondary("dev-1", "new-2")
	require.Eventually(t, func() bool {
		n := 0
		for _, e := range store.Events() {
			if e.DeviceID == "dev-1" && e.Kind == fleet.ConnUp && e.Slot == 1 {
				n++
			}
		}
		return n == 2
	}, 30*time.Second, 20*time.Millisecond, "the device did not fall back to slot 1")
	require.Eventually(t, d.IsConnected, 10*time.Second, 20*time.Millisecond)
	call("r2", protocol.RotateCredentials{Slot: 2, Secret: "new-2"}, "devices/dev-1/methods/res/200/r2")
	waitConnUp(t, store, "dev-1", 2, "new-2")
	assert.Equal(t, device.Credentials{Secret: "secret-dev-1", Secret2: "new-2", Slot: 2}, d.Credentials())

	// A secret the device cannot store is refused and changes nothing.
	require.Eventually(t, d.IsConnected, 10*time.Second, 20*time.Millisecond)
	failSave.Store(true)
	m := call("r3", protocol.RotateCredentials{Slot: 1, Secret: "new-3"}, "devices/dev-1/methods/res/500/r3")
	assert.Contains(t, string(m.Payload), "disk full")
	assert.Equal(t, device.Credentials{Secret: "secret-dev-1", Secret2: "new-2", Slot: 2}, d.Credentials())

	call("r4", protocol.RotateCredentials{Slot: 3, Secret: "x"}, "devices/dev-1/methods/res/400/r4")
}

// A device without SaveCredentials does not know the method: a rotation reports it failed instead of
// handing it a secret it would lose.
func TestRotateCredentialsNeedsStorage(t *testing.T) {
	_, _, url := setup(t, "dev-1")
	d := newDevice(t, url, "dev-1")
	connect(t, d)
	svc := gatewaytest.Service(t, url, "svc:test")
	svc.Sub(t, 1, "devices/dev-1/methods/res/+/+")
	require.NoError(t, svc.Pub(t, "devices/dev-1/methods/req/"+protocol.MethodRotateCredentials+"/r1", 0,
		string(protocol.RotateCredentials{Slot: 2, Secret: "s"}.Payload())))
	_, ok := svc.WaitMessage(t, "devices/dev-1/methods/res/404/r1", 10*time.Second)
	require.True(t, ok, "got %v", svc.Messages())
}

// A device whose configured slot is refused connects with its other slot.
func TestConnectFallsBackToOtherSlot(t *testing.T) {
	store, _, url := setup(t, "dev-1")
	d := newDevice(t, url, "dev-1", func(c *device.Config) { c.Secret2, c.Slot = "not-in-the-registry", 2 })
	connect(t, d)
	assert.Equal(t, 1, d.ConnectedSlot())
	waitConnUp(t, store, "dev-1", 1, "secret-dev-1")
}
