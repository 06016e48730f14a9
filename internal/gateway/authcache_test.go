package gateway

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// A change that arrives while a lookup is in flight must not let the stale answer be used or cached.
func TestAuthCacheInvalidationDuringLookup(t *testing.T) {
	var calls atomic.Int32
	release := make(chan struct{})
	status := atomic.Value{}
	status.Store(string(fleet.StatusActive))
	load := func(ctx context.Context, id string) (fleet.DeviceAuth, error) {
		if calls.Add(1) == 1 {
			<-release
			return fleet.DeviceAuth{ID: id, Status: fleet.StatusActive}, nil // stale by now
		}
		return fleet.DeviceAuth{ID: id, Status: fleet.DeviceStatus(status.Load().(string))}, nil
	}
	c := newAuthCache(load, 10, 4, 5*time.Second)
	done := make(chan fleet.DeviceAuth)
	go func() {
		a, _, err := c.get("d1")
		assert.NoError(t, err)
		done <- a
	}()
	require.Eventually(t, func() bool { return calls.Load() == 1 }, time.Second, time.Millisecond)
	status.Store(string(fleet.StatusDisabled))
	c.invalidate("d1")
	close(release)
	a := <-done
	assert.Equal(t, fleet.StatusDisabled, a.Status, "the lookup is repeated after the change")
	assert.False(t, c.has("d1"), "inactive devices are not cached")
	assert.Equal(t, int32(2), calls.Load())

	status.Store(string(fleet.StatusActive))
	a, _, err := c.get("d1")
	require.NoError(t, err)
	assert.Equal(t, fleet.StatusActive, a.Status)
	assert.True(t, c.has("d1"))
	_, cached, err := c.get("d1")
	require.NoError(t, err)
	assert.True(t, cached)
}

func TestAuthCacheIsBounded(t *testing.T) {
	load := func(ctx context.Context, id string) (fleet.DeviceAuth, error) {
		return fleet.DeviceAuth{ID: id, Status: fleet.StatusActive}, nil
	}
	c := newAuthCache(load, 3, 1, time.Second)
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		_, _, err := c.get(id)
		require.NoError(t, err)
	}
	assert.Equal(t, 3, c.len())
}
