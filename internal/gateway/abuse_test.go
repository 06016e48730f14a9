package gateway

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// An unknown id is looked up once per negative TTL; a change notice for it, or the insert notice, lets it in
// at once.
func TestAuthCacheRemembersUnknownIDsUntilTheyAreProvisioned(t *testing.T) {
	var mu sync.Mutex
	exists := map[string]bool{}
	var calls atomic.Int32
	load := func(_ context.Context, id string) (fleet.DeviceAuth, error) {
		calls.Add(1)
		mu.Lock()
		defer mu.Unlock()
		if !exists[id] {
			return fleet.DeviceAuth{}, fleet.ErrNotFound
		}
		return fleet.DeviceAuth{ID: id, Status: fleet.StatusActive}, nil
	}
	now := time.Unix(1000, 0)
	c := newAuthCache(load, 100, 4, 5*time.Second)
	c.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	for range 5 {
		_, _, err := c.get("ghost")
		require.ErrorIs(t, err, fleet.ErrNotFound)
	}
	assert.Equal(t, int32(1), calls.Load(), "one registry query for five CONNECTs of an unknown id")
	assert.Equal(t, int64(4), c.negHits.Load())
	assert.Equal(t, 1, c.negativeLen())

	// The TTL passes: asked again.
	mu.Lock()
	now = now.Add(defaultNegativeTTL)
	mu.Unlock()
	_, _, err := c.get("ghost")
	require.ErrorIs(t, err, fleet.ErrNotFound)
	assert.Equal(t, int32(2), calls.Load())

	// Provisioned: the registry's insert notice admits it at once, long before the TTL.
	mu.Lock()
	exists["ghost"] = true
	mu.Unlock()
	c.forgetUnknown()
	a, _, err := c.get("ghost")
	require.NoError(t, err)
	assert.Equal(t, fleet.StatusActive, a.Status)

	// A per-id notice does the same.
	_, _, err = c.get("ghost-2")
	require.ErrorIs(t, err, fleet.ErrNotFound)
	mu.Lock()
	exists["ghost-2"] = true
	mu.Unlock()
	c.invalidate("ghost-2")
	_, _, err = c.get("ghost-2")
	require.NoError(t, err)
}

// A lookup that began before the insert notice must not cache its "not found": the device may be the new one.
func TestAuthCacheInsertNoticeDuringALookupCachesNoStaleUnknown(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int32
	load := func(_ context.Context, id string) (fleet.DeviceAuth, error) {
		if calls.Add(1) == 1 {
			<-release
		}
		return fleet.DeviceAuth{}, fleet.ErrNotFound
	}
	c := newAuthCache(load, 100, 4, 5*time.Second)
	done := make(chan error)
	go func() { _, _, err := c.get("new-1"); done <- err }()
	require.Eventually(t, func() bool { return calls.Load() == 1 }, 5*time.Second, time.Millisecond)
	c.forgetUnknown()
	close(release)
	require.ErrorIs(t, <-done, fleet.ErrNotFound)
	assert.Zero(t, c.negativeLen(), "the answer predates the notice")
}

// Lookups of ids never seen active use their own slots: a flood of them that holds every one of those slots
// does not delay a returning device, and beyond the queue bound they are refused at once.
func TestAuthCacheKeepsReturningDevicesOutOfTheFloodsSlots(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	load := func(ctx context.Context, id string) (fleet.DeviceAuth, error) {
		if id == "good" {
			return fleet.DeviceAuth{ID: id, Status: fleet.StatusActive}, nil
		}
		select {
		case <-block:
		case <-ctx.Done():
		}
		return fleet.DeviceAuth{}, fleet.ErrNotFound
	}
	c := newAuthCache(load, 100, 4, 30*time.Second)
	c.coldSem = make(chan struct{}, 2)
	c.coldQueue = 5
	_, _, err := c.get("good")
	require.NoError(t, err)
	c.invalidate("good") // changed since: the next CONNECT must query again, but it is known

	for i := range 5 {
		go func() { _, _, _ = c.get("flood-" + string(rune('a'+i))) }()
	}
	require.Eventually(t, func() bool { return c.coldWait.Load() == 5 }, 5*time.Second, time.Millisecond)
	_, _, err = c.get("flood-z")
	require.ErrorIs(t, err, errLookupsBusy, "the sixth unknown id waits for nothing")
	assert.Equal(t, int64(1), c.coldShed.Load())

	start := time.Now()
	a, _, err := c.get("good")
	require.NoError(t, err)
	assert.Equal(t, fleet.StatusActive, a.Status)
	assert.Less(t, time.Since(start), 10*time.Second, "a known device is not queued behind the flood")
}

func TestFailLimiterIsPerAddressAndRefills(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newFailLimiter(2, 3) // 3 failures at once, then 2 per second
	l.now = func() time.Time { return now }
	for range 3 {
		require.True(t, l.allowed("10.0.0.1:1234"))
		l.failed("10.0.0.1:1234")
	}
	assert.False(t, l.allowed("10.0.0.1:5555"), "the port does not matter: the address has used its failures")
	assert.True(t, l.allowed("10.0.0.2:1234"), "another address is not affected")
	now = now.Add(500 * time.Millisecond)
	assert.True(t, l.allowed("10.0.0.1:1"), "one failure refilled after half a second at 2/s")
	l.failed("10.0.0.1:1")
	assert.False(t, l.allowed("10.0.0.1:1"))
	now = now.Add(time.Hour)
	assert.True(t, l.allowed("10.0.0.1:1"))
	l.failed("[::1]:80")
	assert.Contains(t, l.buckets, "::1")

	var off *failLimiter = newFailLimiter(-1, 3)
	require.Nil(t, off)
	for range 100 {
		off.failed("10.0.0.1:1")
	}
	assert.True(t, off.allowed("10.0.0.1:1"), "a nil limiter limits nothing")
}
