package gateway

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/registry"
)

func TestDeviceMayUse(t *testing.T) {
	for topic, want := range map[string]bool{
		"devices/d1/telemetry":         true,
		"devices/d1/twin/res/#":        true,
		"devices/d1/+/x":               true,
		"devices/d1/#":                 true,
		"devices/d1/":                  false,
		"devices/d1":                   false,
		"devices/d10/telemetry":        false,
		"devices/d2/telemetry":         false,
		"devices/+/telemetry":          false,
		"devices/#":                    false,
		"#":                            false,
		"$share/g/devices/d1/#":        false,
		"$SYS/broker/uptime":           false,
		"other/d1/telemetry":           false,
		"devices//d1/x":                false,
		"/devices/d1/x":                false,
		"devices/d1.x/telemetry":       false,
		"devices/d1/twin/reported/abc": true,
	} {
		assert.Equal(t, want, deviceMayUse("d1", topic), topic)
	}
	assert.False(t, deviceMayUse("", "devices//x"))
	assert.False(t, deviceMayUse("+", "devices/+/x"))
}

func TestServiceMayUse(t *testing.T) {
	for topic, want := range map[string]bool{
		"devices/d1/methods/req/ping/1":       true,
		"devices/+/twin/reported/+":           true,
		"devices/#":                           true,
		"$share/engine/devices/+/telemetry/#": true,
		"$SHARE/engine/devices/#":             true,
		"$share//devices/#":                   false,
		"$share/+/devices/#":                  false,
		"$share/engine":                       false,
		"$share/engine/other/#":               false,
		"$SYS/#":                              false,
		"#":                                   false,
		"devices/":                            false,
		"devicesx/#":                          false,
	} {
		assert.Equal(t, want, serviceMayUse(topic), topic)
	}
}

func TestParseDeviceTopic(t *testing.T) {
	for topic, want := range map[string]deviceTopic{
		"devices/d1/telemetry":           {kind: kindTelemetry, id: "d1"},
		"devices/d1/telemetry/env/room":  {kind: kindTelemetry, id: "d1"},
		"devices/d1/telemetry/":          {},
		"devices/d1/state":               {kind: kindState, id: "d1"},
		"devices/d1/state/x":             {},
		"devices/d1/twin/get/r-1":        {kind: kindTwinGet, id: "d1", rid: "r-1"},
		"devices/d1/twin/get":            {},
		"devices/d1/twin/get/a/b":        {},
		"devices/d1/twin/reported/R_2.x": {kind: kindTwinReported, id: "d1", rid: "R_2.x"},
		"devices/d1/twin/reported/bad!":  {},
		"devices/d1/twin/res/200/r":      {},
		"devices/d1/twin/desired/4":      {},
		"devices/d1/jobs/job-7/status":   {kind: kindJobStatus, id: "d1", jobID: "job-7"},
		"devices/d1/jobs/job-7":          {},
		"devices/d1/methods/res/200/r9":  {kind: kindMethodResponse, id: "d1", status: 200, rid: "r9"},
		"devices/d1/methods/res/abc/r9":  {},
		"devices/d1/methods/res/700/r9":  {},
		"devices/d1/methods/req/ping/r9": {},
		"devices/d1/unknown":             {},
		"devices/d1":                     {},
		"elsewhere/d1/telemetry":         {},
	} {
		got := parseDeviceTopic(topic)
		if want.kind == kindInvalid {
			assert.Equal(t, kindInvalid, got.kind, topic)
			continue
		}
		assert.Equal(t, want, got, topic)
	}
	long := make([]byte, maxRIDLen+1)
	for i := range long {
		long[i] = 'a'
	}
	assert.Equal(t, kindInvalid, parseDeviceTopic("devices/d1/twin/get/"+string(long)).kind)
}

func TestParseMethodRequest(t *testing.T) {
	for topic, want := range map[string]methodRequest{
		"devices/d1/methods/req/ping/r9":            {id: "d1", method: "ping", rid: "r9"},
		"devices/dev.7/methods/req/diagnostics/a_b": {id: "dev.7", method: "diagnostics", rid: "a_b"},
		"devices/d1/methods/req//r9":                {},
		"devices/d1/methods/req/ping/bad!":          {},
		"devices/d1/methods/req/ping":               {},
		"devices/d1/methods/req/ping/r9/x":          {},
		"devices/d1/methods/res/200/r9":             {},
		"devices/D1/methods/req/ping/r9":            {}, // not a device id: nothing to answer for
		"devices/+/methods/req/ping/r9":             {},
		"other/d1/methods/req/ping/r9":              {},
	} {
		got, ok := parseMethodRequest(topic)
		assert.Equal(t, want.id != "", ok, topic)
		assert.Equal(t, want, got, topic)
	}
	assert.Equal(t, "devices/d1/methods/res/404/r9", methodResponseTopic("d1", 404, "r9"))
}

// A change that arrives while a lookup is in flight must not let the stale answer be used or cached.
func TestAuthCacheInvalidationDuringLookup(t *testing.T) {
	var calls atomic.Int32
	release := make(chan struct{})
	status := atomic.Value{}
	status.Store(registry.StatusActive)
	load := func(ctx context.Context, id string) (registry.DeviceAuth, error) {
		if calls.Add(1) == 1 {
			<-release
			return registry.DeviceAuth{ID: id, Status: registry.StatusActive}, nil // stale by now
		}
		return registry.DeviceAuth{ID: id, Status: fleet.DeviceStatus(status.Load().(string))}, nil
	}
	c := newAuthCache(load, 10, 4, 5*time.Second)
	done := make(chan registry.DeviceAuth)
	go func() {
		a, _, err := c.get("d1")
		assert.NoError(t, err)
		done <- a
	}()
	require.Eventually(t, func() bool { return calls.Load() == 1 }, time.Second, time.Millisecond)
	status.Store(registry.StatusDisabled)
	c.invalidate("d1")
	close(release)
	a := <-done
	assert.Equal(t, fleet.StatusDisabled, a.Status, "the lookup is repeated after the change")
	assert.False(t, c.has("d1"), "inactive devices are not cached")
	assert.Equal(t, int32(2), calls.Load())

	status.Store(registry.StatusActive)
	a, _, err := c.get("d1")
	require.NoError(t, err)
	assert.Equal(t, fleet.StatusActive, a.Status)
	assert.True(t, c.has("d1"))
	_, cached, err := c.get("d1")
	require.NoError(t, err)
	assert.True(t, cached)
}

func TestAuthCacheIsBounded(t *testing.T) {
	load := func(ctx context.Context, id string) (registry.DeviceAuth, error) {
		return registry.DeviceAuth{ID: id, Status: registry.StatusActive}, nil
	}
	c := newAuthCache(load, 3, 1, time.Second)
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		_, _, err := c.get(id)
		require.NoError(t, err)
	}
	assert.Equal(t, 3, c.len())
}
