package registry_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/query"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/registry/registrytest"
	"github.com/fleetflow/fleetflow/internal/scheme"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// floors is a scheme: a region from a list and an integer floor, both required.
const floors = `{"type":"object","properties":{"region":{"enum":["eu","us"]},"floor":{"type":"integer"}},"required":["region","floor"]}`

// siteFleet provisions five devices, two of which violate floors (a quoted floor, a missing region).
func siteFleet(t *testing.T, reg *registry.Registry) {
	t.Helper()
	stage(t, reg, "op-sites", []registry.StagedRow{
		{ID: "a-1", Tags: `{"region":"eu","floor":1}`},
		{ID: "a-2", Tags: `{"region":"eu","floor":"3"}`},
		{ID: "a-3", Tags: `{"region":"us","floor":3}`},
		{ID: "a-4", Tags: `{"floor":3}`},
		{ID: "a-5", Tags: `{"region":"us","floor":2}`},
	})
	c, err := reg.ProvisionBatch(context.Background(), "op-sites", 0, 5, 0)
	require.NoError(t, err)
	require.Equal(t, int64(5), c.Created)
}

func TestSchemeVersionsCheckAndHistory(t *testing.T) {
	reg := open(t)
	ctx := context.Background()
	siteFleet(t, reg)
	_, err := reg.SchemeVersion(ctx, 0)
	require.ErrorIs(t, err, fleet.ErrNoScheme)

	// The fleet violates it: refused, with each violating device recorded (batches of 2: three batches
	// and an empty one).
	end := registrytest.SetScheme(t, reg, "scheme-set-1", []byte(floors), nil, false, 2)
	require.Equal(t, fleet.SchemeCheckEnd{Version: 1, State: fleet.SchemeRefused, Checked: 5, Violating: 2}, end)
	_, err = reg.ActiveSchemeVersion(ctx)
	require.ErrorIs(t, err, fleet.ErrNoScheme, "a refused version is not in force")
	viol, err := reg.SchemeCheckViolations(ctx, "scheme-set-1", 10)
	require.NoError(t, err)
	require.Equal(t, []fleet.DeviceViolations{
		{DeviceID: "a-2", Violations: []fleet.SchemeViolation{{Path: "tags.floor", Rule: "got string, want integer"}}},
		{DeviceID: "a-4", Violations: []fleet.SchemeViolation{{Path: "tags", Rule: "missing property 'region'"}}},
	}, viol)

	// A batch an earlier attempt committed is not counted again.
	p, err := reg.SchemeCheckBatch(ctx, "scheme-set-1", "", 2)
	require.NoError(t, err)
	require.Equal(t, int64(5), p.Checked)
	require.Equal(t, int64(2), p.Violating)

	// Allowed: in force, with the debt on record.
	end = registrytest.SetScheme(t, reg, "scheme-set-2", []byte(floors), nil, true, 100)
	require.Equal(t, fleet.SchemeCheckEnd{Version: 2, State: fleet.SchemeActive, Checked: 5, Violating: 2}, end)
	v, err := reg.ActiveSchemeVersion(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(2), v)
	chk, err := reg.GetSchemeCheck(ctx, "")
	require.NoError(t, err)
	require.Equal(t, "scheme-set-2", chk.ID)
	require.Equal(t, int64(2), chk.Violating)

	// A retry of the stage step finds its version.
	again, err := reg.StageScheme(ctx, "scheme-set-2", []byte(floors), nil, true)
	require.NoError(t, err)
	require.Equal(t, int64(2), again)
	_, err = reg.StageScheme(ctx, "scheme-set-bad", []byte(`{"type":"string"}`), nil, false)
	require.ErrorIs(t, err, scheme.ErrInvalidScheme)

	hist, err := reg.SchemeVersions(ctx)
	require.NoError(t, err)
	require.Len(t, hist, 2)
	require.Equal(t, fleet.SchemeActive, hist[0].State)
	require.Equal(t, fleet.SchemeRefused, hist[1].State)
	require.JSONEq(t, floors, string(hist[0].Tags))
}

func TestTagWritesRespectTheScheme(t *testing.T) {
	reg := open(t)
	ctx := context.Background()
	siteFleet(t, reg)
	registrytest.SetScheme(t, reg, "scheme-set-1", []byte(floors), nil, true, 100)

	_, err := reg.UpdateTwin(ctx, "a-1", twin.Tags, []byte(`{"floor":"4"}`), "")
	require.ErrorIs(t, err, scheme.ErrViolation)
	require.EqualError(t, err, "device a-1: tags violates the metadata scheme: tags.floor: got string, want integer")
	tw, err := reg.UpdateTwin(ctx, "a-1", twin.Tags, []byte(`{"floor":4}`), "")
	require.NoError(t, err)
	require.JSONEq(t, `{"region":"eu","floor":4}`, string(tw.Tags))
	// Desired properties are not the scheme's business.
	_, err = reg.UpdateTwin(ctx, "a-1", twin.Desired, []byte(`{"floor":"4"}`), "")
	require.NoError(t, err)

	// A batch: the device whose merge breaks the scheme is refused alone. a-2 already violates it and a
	// patch that does not fix it leaves it refused; a patch that fixes it is taken.
	res, err := reg.PatchTwins(ctx, twin.Tags, []fleet.DevicePatch{
		{DeviceID: "a-2", Patch: []byte(`{"region":"us"}`)},
		{DeviceID: "a-3", Patch: []byte(`{"region":"mars"}`)},
		{DeviceID: "a-4", Patch: []byte(`{"region":"eu"}`)},
	})
	require.NoError(t, err)
	require.ErrorIs(t, res[0].Err, scheme.ErrViolation)
	require.ErrorIs(t, res[1].Err, scheme.ErrViolation)
	require.Contains(t, res[1].Err.Error(), "tags.region: value must be one of 'eu', 'us'")
	require.NoError(t, res[2].Err)
	require.Equal(t, int64(2), res[2].Version)
}

func TestQueriesAreTypedAndWarnedByTheScheme(t *testing.T) {
	reg := open(t)
	ctx := context.Background()
	siteFleet(t, reg)
	res, err := reg.Query(ctx, "SELECT deviceId FROM devices WHERE tags.floor = '3' ORDER BY deviceId", query.Options{})
	require.NoError(t, err)
	require.Len(t, res.Rows, 1, "without a scheme, '3' is the string it is written as")
	require.Empty(t, res.Warnings)

	registrytest.SetScheme(t, reg, "scheme-set-1", []byte(floors), nil, true, 100)
	res, err = reg.Query(ctx, "SELECT deviceId FROM devices WHERE tags.floor = '3' ORDER BY deviceId", query.Options{})
	require.NoError(t, err)
	require.Equal(t, [][]any{{"a-3"}, {"a-4"}}, res.Rows)
	require.Equal(t, []string{"tags.floor is an integer in the scheme: string '3' compared as 3"}, res.Warnings)

	n, warnings, err := reg.PreviewTargets(ctx, "SELECT * FROM devices WHERE tags.regoin = 'eu'")
	require.NoError(t, err)
	require.Zero(t, n)
	require.Equal(t, []string{"tags.regoin is not in the scheme; did you mean tags.region?"}, warnings)
}

func TestGroups(t *testing.T) {
	reg := open(t)
	ctx := context.Background()
	siteFleet(t, reg)

	require.NoError(t, reg.CreateGroup(ctx, "eu", "SELECT * FROM devices WHERE tags.region = 'eu'"))
	require.NoError(t, reg.CreateGroup(ctx, "bench", ""))
	require.NoError(t, reg.CreateGroup(ctx, "eu-bench", "SELECT * FROM devices WHERE IN_GROUP('eu') AND IN_GROUP('bench')"))
	require.ErrorIs(t, reg.CreateGroup(ctx, "eu", ""), fleet.ErrGroupExists)
	var se *query.SemanticError
	require.ErrorAs(t, reg.CreateGroup(ctx, "loop", "SELECT * FROM devices WHERE IN_GROUP('loop')"), &se)
	require.ErrorAs(t, reg.CreateGroup(ctx, "nope", "SELECT * FROM devices WHERE IN_GROUP('missing')"), &se)
	require.ErrorAs(t, reg.CreateGroup(ctx, "top", "SELECT TOP 3 * FROM devices"), &se)
	_, err := reg.Group(ctx, "loop")
	require.ErrorIs(t, err, fleet.ErrGroupNotFound, "a refused group is not created")

	n, err := reg.AddGroupMembers(ctx, "bench", []string{"a-2", "a-3", "a-2"})
	require.NoError(t, err)
	require.Equal(t, int64(2), n)
	_, err = reg.AddGroupMembers(ctx, "bench", []string{"a-1", "ghost"})
	require.ErrorIs(t, err, fleet.ErrNotFound)
	require.Contains(t, err.Error(), "ghost")
	_, err = reg.AddGroupMembers(ctx, "eu", []string{"a-1"})
	require.ErrorIs(t, err, fleet.ErrGroupKind)

	groups, err := reg.ListGroups(ctx)
	require.NoError(t, err)
	counts := map[string]int64{}
	for _, g := range groups {
		counts[g.Name] = g.Members
	}
	require.Equal(t, map[string]int64{"bench": 2, "eu": 2, "eu-bench": 1}, counts)
	ids, err := reg.GroupMembers(ctx, "eu-bench", 10)
	require.NoError(t, err)
	require.Equal(t, []string{"a-2"}, ids)

	// Dynamic membership is always current.
	_, err = reg.UpdateTwin(ctx, "a-5", twin.Tags, []byte(`{"region":"eu"}`), "")
	require.NoError(t, err)
	g, err := reg.Group(ctx, "eu")
	require.NoError(t, err)
	require.Equal(t, int64(3), g.Members)

	// A job through a group records the use; delete is refused until the job ends.
	q, err := reg.ResolveGroup(ctx, "eu-bench")
	require.NoError(t, err)
	total, err := reg.CreateJob(ctx, fleet.NewJob{ID: "job-1", Kind: fleet.JobSetTags, Query: q, Spec: []byte(`{}`)})
	require.NoError(t, err)
	require.Equal(t, int64(1), total)
	for _, name := range []string{"eu-bench", "eu", "bench"} {
		err = reg.DeleteGroup(ctx, name)
		require.ErrorIs(t, err, fleet.ErrGroupInUse, name)
	}
	require.Contains(t, reg.DeleteGroup(ctx, "eu-bench").Error(), "job job-1")
	g, err = reg.Group(ctx, "bench")
	require.NoError(t, err)
	require.Equal(t, []string{"job job-1"}, g.UsedBy)
	require.NoError(t, reg.CloseJob(ctx, "job-1", fleet.JobCompleted))
	err = reg.DeleteGroup(ctx, "eu")
	require.ErrorIs(t, err, fleet.ErrGroupInUse, "the query of eu-bench still names it")
	require.Contains(t, err.Error(), "eu-bench")
	require.NoError(t, reg.DeleteGroup(ctx, "eu-bench"))
	require.NoError(t, reg.DeleteGroup(ctx, "eu"))
	require.ErrorIs(t, reg.DeleteGroup(ctx, "eu"), fleet.ErrGroupNotFound)
	_, err = reg.ResolveGroup(ctx, "eu")
	require.ErrorIs(t, err, fleet.ErrGroupNotFound)
	_, err = reg.CountTargets(ctx, fleet.GroupQuery("eu"))
	require.ErrorAs(t, err, &se)

	n, err = reg.RemoveGroupMembers(ctx, "bench", []string{"a-3", "a-9"})
	require.NoError(t, err)
	require.Equal(t, int64(1), n)
	require.NoError(t, reg.DeleteGroup(ctx, "bench"))
}

// Gateways enforce the reported-properties schema of the scheme in force, so they are told when another
// version is in force: a check that activates (or refuses) a version is announced as fleet.SchemeChanged,
// and ActiveScheme then returns it, compiled with its reported part. A gateway's refusal of a report lands
// on the device's timeline.
func TestSchemeChangesAreAnnouncedToGateways(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := open(t)
	siteFleet(t, reg)
	got := make(chan string, 100)
	go reg.ListenDeviceChanges(ctx, func(id string) { got <- id }) //nolint:errcheck
	waitFor := func(want string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case id := <-got:
				if id == want {
					return
				}
			case <-deadline:
				t.Fatalf("no %q notification", want)
			}
		}
	}
	waitFor("") // listening
	s, err := reg.ActiveScheme(ctx)
	require.NoError(t, err)
	require.Nil(t, s)

	const reported = `{"type":"object","properties":{"telemetryInterval":{"type":"integer"}}}`
	end := registrytest.SetScheme(t, reg, "scheme-set-rep", []byte(`{"type":"object"}`), []byte(reported), false, 100)
	require.Equal(t, fleet.SchemeActive, end.State)
	waitFor(fleet.SchemeChanged)
	s, err = reg.ActiveScheme(ctx)
	require.NoError(t, err)
	require.NotNil(t, s)
	require.Equal(t, end.Version, s.Version)
	require.True(t, s.HasReported())
	require.EqualError(t, s.CheckReportedPatch([]byte(`{"telemetryInterval":"x"}`)), "properties.reported.telemetryInterval: got string, want integer")

	// A refused version is announced too (its state changed), and the one in force stays.
	end = registrytest.SetScheme(t, reg, "scheme-set-refused", []byte(floors), nil, false, 100)
	require.Equal(t, fleet.SchemeRefused, end.State)
	waitFor(fleet.SchemeChanged)
	s, err = reg.ActiveScheme(ctx)
	require.NoError(t, err)
	require.True(t, s.HasReported())

	require.NoError(t, reg.RecordConnections(ctx, []fleet.ConnEvent{{DeviceID: "a-1", Kind: fleet.ConnReportRefused, At: time.Now(),
		Reason: "properties.reported.telemetryInterval: got string, want integer"}}))
	hist, err := reg.DeviceHistory(ctx, "a-1", 0)
	require.NoError(t, err)
	var found bool
	for _, h := range hist {
		if h.Kind == registry.EventReportRefused {
			found = true
			require.Equal(t, registry.StageMonitor, h.Stage)
			require.Equal(t, "reported patch refused by the scheme: properties.reported.telemetryInterval: got string, want integer", h.Summary)
		}
	}
	require.True(t, found, "the refusal is on the timeline: %v", hist)
}

// A declarative configuration never finishes by itself: the group it targets, by --group or through a query
// that names it, cannot be deleted while the configuration exists (paused or not), and can once it is gone.
func TestGroupOfAConfigurationCannotBeDeleted(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	require.NoError(t, reg.CreateGroup(ctx, "lab", ""))
	require.NoError(t, reg.CreateGroup(ctx, "eu", "SELECT * FROM devices WHERE tags.region = 'eu'"))
	require.NoError(t, reg.CreateGroup(ctx, "spare", ""))
	byGroup := fleet.ConfigSpec{Name: "lab-cfg", Priority: 1, Section: twin.Desired,
		Target: fleet.Target{Group: "lab"}, Patch: json.RawMessage(`{"interval": 30}`)}
	byQuery := fleet.ConfigSpec{Name: "eu-cfg", Priority: 2, Section: twin.Desired,
		Target: fleet.Target{Query: "SELECT * FROM devices WHERE IN_GROUP('eu') AND tags.floor = 3"}, Patch: json.RawMessage(`{"mode": "eco"}`)}
	require.NoError(t, reg.SaveConfig(ctx, byGroup, 1, fleet.ConfigPaused))
	require.NoError(t, reg.SaveConfig(ctx, byQuery, 1, fleet.ConfigActive))

	err := reg.DeleteGroup(ctx, "lab")
	require.ErrorIs(t, err, fleet.ErrGroupInUse)
	require.Contains(t, err.Error(), "configuration lab-cfg")
	require.Contains(t, err.Error(), "fleetflow config delete")
	err = reg.DeleteGroup(ctx, "eu")
	require.ErrorIs(t, err, fleet.ErrGroupInUse)
	require.Contains(t, err.Error(), "configuration eu-cfg")
	require.NoError(t, reg.DeleteGroup(ctx, "spare"), "a group no configuration names")
	g, err := reg.Group(ctx, "lab")
	require.NoError(t, err)
	require.Equal(t, []string{"configuration lab-cfg"}, g.UsedBy, "group show names it")

	require.NoError(t, reg.DeleteConfig(ctx, "lab-cfg"))
	require.NoError(t, reg.DeleteGroup(ctx, "lab"))
	require.NoError(t, reg.DeleteConfig(ctx, "eu-cfg"))
	require.NoError(t, reg.DeleteGroup(ctx, "eu"))
}
