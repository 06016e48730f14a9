package registry_test

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/health"
	"github.com/fleetflow/fleetflow/internal/query"
	"github.com/fleetflow/fleetflow/internal/registry"
)

// tagDevice sets a device's tags with direct SQL.
func tagDevice(t *testing.T, reg *registry.Registry, id, tags string) {
	t.Helper()
	_, err := reg.Pool().Exec(context.Background(), "UPDATE devices SET tags = $2 WHERE id = $1", id, tags)
	require.NoError(t, err)
}

// openAlertsOf returns the open alerts of a rule as "device/kind", sorted.
func openAlertsOf(t *testing.T, reg *registry.Registry, rule string) []string {
	t.Helper()
	alerts, err := reg.ListAlerts(context.Background(), registry.AlertFilter{Open: true, Rule: rule})
	require.NoError(t, err)
	out := []string{}
	for _, a := range alerts {
		require.Equal(t, rule, a.Rule)
		out = append(out, a.DeviceID+"/"+string(a.Kind))
	}
	sort.Strings(out)
	return out
}

// Two rules with different limits over one fleet open and resolve their own alerts; a group rule checks its
// members only, resolved at every run; a group a rule uses cannot be deleted.
func TestHealthRulesKeepTheirOwnAlerts(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	insertDevice(t, reg, "gw-1", "active", false, 5*time.Minute, `{}`)  // 5 min offline: a 2m rule's alert, not the fleet's
	insertDevice(t, reg, "gw-2", "active", false, 30*time.Minute, `{}`) // offline for both
	insertDevice(t, reg, "gw-3", "active", true, 0, `{}`)               // fine
	insertDevice(t, reg, "s-1", "active", false, 5*time.Minute, `{}`)   // not in the group: no rule alert
	insertDevice(t, reg, "s-2", "active", false, 30*time.Minute, `{}`)  // the fleet's alert only
	for _, id := range []string{"gw-1", "gw-2", "gw-3"} {
		tagDevice(t, reg, id, `{"role": "gateway"}`)
	}
	require.NoError(t, reg.CreateGroup(ctx, "hospital-gw", "SELECT * FROM devices WHERE tags.role = 'gateway'"))

	_, err := reg.RunHealthRule(ctx, "hc-x", "critical")
	require.ErrorIs(t, err, fleet.ErrHealthRuleNotFound)
	require.Error(t, reg.SaveHealthRule(ctx, fleet.HealthRule{Name: health.FleetRule, Query: fleet.GroupQuery("hospital-gw"), Every: time.Minute}),
		"the fleet-wide check's name is reserved")
	var se *query.SemanticError
	require.ErrorAs(t, reg.SaveHealthRule(ctx, fleet.HealthRule{Name: "ghost", Query: fleet.GroupQuery("nope"), Every: time.Minute}), &se,
		"a rule naming an unknown group is refused")
	require.NoError(t, reg.SaveHealthRule(ctx, fleet.HealthRule{Name: "critical", Query: fleet.GroupQuery("hospital-gw"), Group: "hospital-gw",
		Rules: health.Rules{OfflineAfter: 2 * time.Minute}, Every: time.Minute}))
	rule, err := reg.HealthRule(ctx, "critical")
	require.NoError(t, err)
	require.Equal(t, health.Rules{OfflineAfter: 2 * time.Minute, AckWithin: health.DefaultAckWithin, ExpiringWithin: health.DefaultExpiringWithin},
		rule.Rules, "defaults are filled in when saved")
	require.Equal(t, "hospital-gw", rule.Group)

	crit, err := reg.RunHealthRule(ctx, "hc-crit-1", "critical")
	require.NoError(t, err)
	require.Equal(t, "critical", crit.Rule)
	require.Equal(t, int64(3), crit.Devices, "the group's members only")
	require.Equal(t, int64(2), crit.Opened)
	require.Equal(t, []string{"gw-1/offline", "gw-2/offline"}, openAlertsOf(t, reg, "critical"))

	fleetWide, err := reg.RunHealthCheck(ctx, "hc-fleet-1", health.Rules{})
	require.NoError(t, err)
	require.Equal(t, health.FleetRule, fleetWide.Rule)
	require.Equal(t, int64(5), fleetWide.Devices)
	require.Equal(t, int64(2), fleetWide.Opened)
	require.Zero(t, fleetWide.Resolved, "the fleet-wide check does not resolve the rule's alerts")
	require.Equal(t, []string{"gw-2/offline", "s-2/offline"}, openAlertsOf(t, reg, health.FleetRule))
	require.Equal(t, []string{"gw-1/offline", "gw-2/offline"}, openAlertsOf(t, reg, "critical"), "nor the rule the fleet's")

	// gw-1 comes back: only the rule had an alert for it. gw-2 leaves the group (membership is the query,
	// resolved at each run): its rule alert resolves, its fleet alert stays. s-1 joins and is 5 min offline.
	_, err = reg.Pool().Exec(ctx, "UPDATE devices SET online = true, last_seen = now() WHERE id = 'gw-1'")
	require.NoError(t, err)
	tagDevice(t, reg, "gw-2", `{"role": "sensor"}`)
	tagDevice(t, reg, "s-1", `{"role": "gateway"}`)
	crit2, err := reg.RunHealthRule(ctx, "hc-crit-2", "critical")
	require.NoError(t, err)
	require.Equal(t, int64(1), crit2.Opened)
	require.Equal(t, int64(2), crit2.Resolved)
	require.Equal(t, int64(1), crit2.Open)
	require.Equal(t, []string{"s-1/offline"}, openAlertsOf(t, reg, "critical"))
	fleet2, err := reg.RunHealthCheck(ctx, "hc-fleet-2", health.Rules{})
	require.NoError(t, err)
	require.Zero(t, fleet2.Opened+fleet2.Resolved)
	require.Equal(t, []string{"gw-2/offline", "s-2/offline"}, openAlertsOf(t, reg, health.FleetRule))

	// A stricter rule over a query (not a group) alongside: same device, its own alert.
	require.NoError(t, reg.SaveHealthRule(ctx, fleet.HealthRule{Name: "sensors", Query: "SELECT * FROM devices WHERE tags.role = 'sensor'",
		Rules: health.Rules{OfflineAfter: time.Minute}, Every: time.Minute}))
	_, err = reg.RunHealthRule(ctx, "hc-sensors-1", "sensors")
	require.NoError(t, err)
	require.Equal(t, []string{"gw-2/offline"}, openAlertsOf(t, reg, "sensors"))

	// The runs are recorded per rule; the rules list with their latest run.
	runs, err := reg.HealthRunsOf(ctx, "critical", 10)
	require.NoError(t, err)
	require.Len(t, runs, 2)
	require.Equal(t, "hc-crit-2", runs[0].ID)
	require.Equal(t, "critical", runs[0].Rule)
	require.Equal(t, int64(1), runs[0].Summary.Open)
	all, err := reg.HealthRuns(ctx, 10)
	require.NoError(t, err)
	require.Len(t, all, 5)
	views, err := reg.ListHealthRules(ctx)
	require.NoError(t, err)
	require.Len(t, views, 2)
	require.Equal(t, "critical", views[0].Name)
	require.NotNil(t, views[0].LastRun)
	require.Equal(t, "hc-crit-2", views[0].LastRun.ID)
	rep, err := reg.ReportData(ctx)
	require.NoError(t, err)
	require.Len(t, rep.Health, 2, "the report's trend is the fleet-wide check's")
	for _, h := range rep.Health {
		require.Equal(t, health.FleetRule, h.Rule)
	}
	require.Len(t, rep.HealthRules, 2)
	require.Equal(t, int64(1), rep.HealthRules[0].LastRun.Summary.Open)

	// The group is in use while the rule exists; deleting the rule releases it and resolves its alerts.
	err = reg.DeleteGroup(ctx, "hospital-gw")
	require.ErrorIs(t, err, fleet.ErrGroupInUse)
	require.Contains(t, err.Error(), "health rule critical")
	g, err := reg.Group(ctx, "hospital-gw")
	require.NoError(t, err)
	require.Equal(t, []string{"health rule critical"}, g.UsedBy)
	require.NoError(t, reg.DeleteHealthRule(ctx, "critical"))
	require.ErrorIs(t, reg.DeleteHealthRule(ctx, "critical"), fleet.ErrHealthRuleNotFound)
	require.Empty(t, openAlertsOf(t, reg, "critical"))
	require.Equal(t, []string{"gw-2/offline", "s-2/offline"}, openAlertsOf(t, reg, health.FleetRule))
	require.NoError(t, reg.DeleteGroup(ctx, "hospital-gw"))
}

// Alerts raised before rules existed are the fleet-wide check's: the next check refreshes them rather than
// opening duplicates.
func TestAlertsBeforeRulesBelongToTheFleetRule(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	insertDevice(t, reg, "old", "active", false, time.Hour, `{}`)
	_, err := reg.Pool().Exec(ctx, `INSERT INTO alerts (device_id, kind, detail, first_seen, last_seen)
		VALUES ('old', 'offline', 'x', now() - interval '1 hour', now() - interval '1 hour')`)
	require.NoError(t, err)
	s, err := reg.RunHealthCheck(ctx, "hc-1", health.Rules{})
	require.NoError(t, err)
	require.Zero(t, s.Opened)
	require.Equal(t, int64(1), s.Open)
	require.Equal(t, []string{"old/offline"}, openAlertsOf(t, reg, health.FleetRule))
}
