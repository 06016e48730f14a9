package registry_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/query"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/registry/registrytest"
	"github.com/fleetflow/fleetflow/internal/twin"
)

func desiredOf(t *testing.T, reg *registry.Registry, id string) (map[string]any, int64) {
	t.Helper()
	tw, err := reg.GetTwin(context.Background(), id)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(tw.Properties.Desired.Doc, &m))
	return m, tw.Properties.Desired.Version
}

func setTags(t *testing.T, reg *registry.Registry, id, patch string) {
	t.Helper()
	_, err := reg.UpdateTwin(context.Background(), id, twin.Tags, []byte(patch), "")
	require.NoError(t, err)
}

// Configurations are applied once per device and version, follow retags, yield keys to higher-ranked
// configurations per device, and give them back when those are deleted.
func TestConfigReconcile(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Open(t)
	registrytest.Provision(t, reg, "cfg", 4)
	setTags(t, reg, "cfg-00", `{"site": "a"}`)
	setTags(t, reg, "cfg-01", `{"site": "a"}`)
	setTags(t, reg, "cfg-02", `{"site": "b"}`)

	base := fleet.ConfigSpec{Name: "base", Priority: 1, Section: twin.Desired,
		Target:  fleet.Target{Query: "SELECT * FROM devices WHERE tags.site = 'a'"},
		Patch:   json.RawMessage(`{"interval": 30, "mode": "eco"}`),
		Metrics: []fleet.ConfigMetric{{Name: "eco", Query: "SELECT * FROM devices WHERE properties.desired.mode = 'eco'"}}}
	hot := fleet.ConfigSpec{Name: "hot", Priority: 10, Section: twin.Desired,
		Target: fleet.Target{Query: "SELECT * FROM devices WHERE deviceId = 'cfg-01'"},
		Patch:  json.RawMessage(`{"interval": 5}`)}
	require.NoError(t, reg.SaveConfig(ctx, base, 1, fleet.ConfigActive))
	require.NoError(t, reg.SaveConfig(ctx, hot, 1, fleet.ConfigActive))

	got, err := reg.ReconcileConfig(ctx, "base", 100)
	require.NoError(t, err)
	assert.Equal(t, 2, got.Handled)
	assert.Equal(t, 2, got.Written)
	require.Len(t, got.Pushes, 2)
	assert.JSONEq(t, `{"mode": "eco"}`, string(got.Pushes[1].Patch), "hot outranks base on cfg-01's interval")
	d0, v0 := desiredOf(t, reg, "cfg-00")
	assert.Equal(t, map[string]any{"interval": 30.0, "mode": "eco"}, d0)

	again, err := reg.ReconcileConfig(ctx, "base", 100)
	require.NoError(t, err)
	assert.Equal(t, 0, again.Handled, "a second pass finds nothing behind")
	_, v0b := desiredOf(t, reg, "cfg-00")
	assert.Equal(t, v0, v0b, "a device is written once per version")

	_, err = reg.ReconcileConfig(ctx, "hot", 100)
	require.NoError(t, err)
	d1, _ := desiredOf(t, reg, "cfg-01")
	assert.Equal(t, map[string]any{"interval": 5.0, "mode": "eco"}, d1)

	conflicts, err := reg.ConfigConflicts(ctx, "base")
	require.NoError(t, err)
	assert.Equal(t, []fleet.ConfigConflict{{Key: "interval", Other: "hot", OtherPr: 10, Devices: 1, Winner: "hot"}}, conflicts)

	// A device retagged into the target is picked up; one retagged within it is evaluated, not rewritten.
	setTags(t, reg, "cfg-02", `{"site": "a"}`)
	setTags(t, reg, "cfg-00", `{"floor": 3}`)
	got, err = reg.ReconcileConfig(ctx, "base", 100)
	require.NoError(t, err)
	assert.Equal(t, 2, got.Handled)
	assert.Equal(t, 1, got.Written)
	_, v0c := desiredOf(t, reg, "cfg-00")
	assert.Equal(t, v0, v0c)

	// Acknowledgements come from reported properties.
	res, err := reg.ApplyReported(ctx, []fleet.ReportedPatch{{DeviceID: "cfg-00", RequestID: "r1", Patch: json.RawMessage(`{"interval": 30, "mode": "eco"}`)}})
	require.NoError(t, err)
	require.NoError(t, res[0].Err)
	waiting, _, err := reg.CollectConfigAcks(ctx, "base")
	require.NoError(t, err)
	assert.EqualValues(t, 2, waiting)
	counts, err := reg.ConfigCounts(ctx, "base")
	require.NoError(t, err)
	assert.Equal(t, fleet.ConfigCounts{Targeted: 3, Applied: 3, Acked: 1, Metrics: []fleet.ConfigMetricCount{{Name: "eco", Count: 3}}}, counts)

	// Deleting hot gives cfg-01's interval back to base.
	require.NoError(t, reg.DeleteConfig(ctx, "hot"))
	got, err = reg.ReconcileConfig(ctx, "base", 100)
	require.NoError(t, err)
	assert.Equal(t, 1, got.Written)
	d1, _ = desiredOf(t, reg, "cfg-01")
	assert.Equal(t, map[string]any{"interval": 30.0, "mode": "eco"}, d1)

	// A new version is applied to every device again; an older save is ignored.
	base.Patch = json.RawMessage(`{"interval": 60, "mode": "eco"}`)
	require.NoError(t, reg.SaveConfig(ctx, base, 2, fleet.ConfigActive))
	require.NoError(t, reg.SaveConfig(ctx, base, 1, fleet.ConfigActive))
	cfg, err := reg.GetConfig(ctx, "base")
	require.NoError(t, err)
	assert.EqualValues(t, 2, cfg.Version)
	got, err = reg.ReconcileConfig(ctx, "base", 100)
	require.NoError(t, err)
	assert.Equal(t, 3, got.Written)

	// Paused: nothing is written.
	require.NoError(t, reg.SaveConfig(ctx, base, 2, fleet.ConfigPaused))
	setTags(t, reg, "cfg-03", `{"site": "a"}`)
	got, err = reg.ReconcileConfig(ctx, "base", 100)
	require.NoError(t, err)
	assert.Equal(t, 0, got.Handled)
}

// A tags configuration is acknowledged when written, and a lower-priority one loses the key.
func TestConfigTagsAndGroups(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Open(t)
	registrytest.Provision(t, reg, "tg", 2)
	low := fleet.ConfigSpec{Name: "low", Priority: 1, Section: twin.Tags, Target: fleet.Target{Query: "SELECT * FROM devices"},
		Patch: json.RawMessage(`{"ring": "beta"}`)}
	high := fleet.ConfigSpec{Name: "high", Priority: 2, Section: twin.Tags, Target: fleet.Target{Query: "SELECT * FROM devices WHERE deviceId = 'tg-00'"},
		Patch: json.RawMessage(`{"ring": "canary"}`)}
	require.NoError(t, reg.SaveConfig(ctx, low, 1, fleet.ConfigActive))
	require.NoError(t, reg.SaveConfig(ctx, high, 1, fleet.ConfigActive))
	for _, n := range []string{"low", "high", "low", "high"} {
		_, err := reg.ReconcileConfig(ctx, n, 100)
		require.NoError(t, err)
	}
	tw, err := reg.GetTwin(ctx, "tg-00")
	require.NoError(t, err)
	assert.JSONEq(t, `{"ring": "canary"}`, string(tw.Tags))
	c, err := reg.ConfigCounts(ctx, "low")
	require.NoError(t, err)
	assert.Equal(t, fleet.ConfigCounts{Targeted: 2, Applied: 1, Acked: 1, Superseded: 1}, c)

	grp := low
	grp.Name, grp.Target = "grp", fleet.Target{Group: "g"}
	// A group is selected with IN_GROUP('g'): one the registry cannot resolve is refused as that query is, with
	// the query language's own error (a syntax error where IN_GROUP is unknown, a semantic one for an unknown
	// group where it is).
	err = reg.SaveConfig(ctx, grp, 1, fleet.ConfigActive)
	var syntax *query.SyntaxError
	var semantic *query.SemanticError
	assert.True(t, errors.As(err, &syntax) || errors.As(err, &semantic), "got %v", err)
}

// Connected devices that have not acknowledged a write are pushed their desired document again, once per
// interval.
func TestConfigRepush(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Open(t)
	registrytest.Provision(t, reg, "rp", 2)
	spec := fleet.ConfigSpec{Name: "rp", Priority: 1, Section: twin.Desired, Target: fleet.Target{Query: "SELECT * FROM devices"},
		Patch: json.RawMessage(`{"interval": 30}`)}
	require.NoError(t, reg.SaveConfig(ctx, spec, 1, fleet.ConfigActive))
	_, err := reg.ReconcileConfig(ctx, "rp", 100)
	require.NoError(t, err)
	require.NoError(t, reg.RecordConnections(ctx, []fleet.ConnEvent{{DeviceID: "rp-00", Kind: fleet.ConnUp, Session: 1, At: time.Now()}}))

	again, err := reg.ConfigRepush(ctx, "rp", 0, 100)
	require.NoError(t, err)
	require.Len(t, again, 1, "only the connected device")
	assert.Equal(t, "rp-00", again[0].DeviceID)
	assert.EqualValues(t, 2, again[0].Version)
	assert.JSONEq(t, `{"interval": 30}`, string(again[0].Patch))
	again, err = reg.ConfigRepush(ctx, "rp", time.Hour, 100)
	require.NoError(t, err)
	assert.Empty(t, again, "its clock restarted")
}
