package registry_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/registry/registrytest"
)

// Maintenance windows are read from devices' tags: per device for a job's batch, grouped for a plan.
func TestWindowTags(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Open(t)
	registrytest.Provision(t, reg, "win", 4)
	setTags(t, reg, "win-00", `{"maintenance": "Sun 02:00-04:00", "timezone": "Europe/Berlin", "site": "a"}`)
	setTags(t, reg, "win-01", `{"maintenance": "Sun 02:00-04:00", "timezone": "Europe/Berlin", "site": "a"}`)
	setTags(t, reg, "win-02", `{"maintenance": "daily 01:00-02:00", "site": "a"}`)
	setTags(t, reg, "win-03", `{"site": "b", "timezone": 3}`)

	got, err := reg.TargetTags(ctx, []string{"win-00", "win-02", "win-03", "nope"}, []string{"maintenance", "timezone"})
	require.NoError(t, err)
	assert.Equal(t, map[string]map[string]string{
		"win-00": {"maintenance": "Sun 02:00-04:00", "timezone": "Europe/Berlin"},
		"win-02": {"maintenance": "daily 01:00-02:00"},
		"win-03": {"timezone": "3"},
	}, got)

	counts, err := reg.WindowCounts(ctx, "SELECT * FROM devices WHERE tags.site = 'a'", "maintenance", "timezone")
	require.NoError(t, err)
	assert.Equal(t, []registry.WindowCount{
		{Window: "Sun 02:00-04:00", Timezone: "Europe/Berlin", Devices: 2},
		{Window: "daily 01:00-02:00", Timezone: "", Devices: 1},
	}, counts)
}
