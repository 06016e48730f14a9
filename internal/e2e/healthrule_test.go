package e2e

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/registry"
)

// A health rule through the real binaries (docs/architecture.md, "Health rules"): `health rule set` on a
// group writes the rule through its workflow and schedules it; `health run --rule` checks the group's members
// only with the rule's limits and keeps its alerts apart from the fleet-wide check's; the group cannot be
// deleted while the rule exists; `health rule delete` frees it and resolves the rule's alerts.
func TestHealthRuleOnAGroup(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e.workerProcess()
	cs := e.fleet(ctx, 2, "hr") // never connected: offline once a rule's limit has passed since creation
	_, err := e.cli(ctx, "group", "create", "gw", "--static")
	require.NoError(t, err)
	_, err = e.cli(ctx, "group", "add", "gw", cs[0].ID)
	require.NoError(t, err)

	out, err := e.cli(ctx, "health", "rule", "set", "critical", "--group", "gw", "--offline-after", "1s", "--every", "24h", "-o", "json")
	require.NoError(t, err)
	var set struct {
		Name    string `json:"name"`
		Created bool   `json:"created"`
		Devices int64  `json:"devices"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &set), out)
	assert.Equal(t, "critical", set.Name)
	assert.True(t, set.Created)
	assert.EqualValues(t, 1, set.Devices)

	// The devices were created before the rule: wait for the rule's one-second limit to pass since then.
	time.Sleep(1500 * time.Millisecond)
	out, err = e.cli(ctx, "health", "run", "--rule", "critical")
	require.NoError(t, err)
	assert.Contains(t, out, "rule")
	assert.Contains(t, out, "offline 1")
	// The fleet-wide check with its default 10 minutes finds nothing, and leaves the rule's alert open.
	_, err = e.cli(ctx, "health", "run")
	require.NoError(t, err)
	crit, err := e.reg.ListAlerts(ctx, registry.AlertFilter{Open: true, Rule: "critical"})
	require.NoError(t, err)
	require.Len(t, crit, 1)
	assert.Equal(t, cs[0].ID, crit[0].DeviceID, "the group's member only")
	fleetWide, err := e.reg.ListAlerts(ctx, registry.AlertFilter{Open: true, Rule: "fleet"})
	require.NoError(t, err)
	assert.Empty(t, fleetWide)
	out, err = e.cli(ctx, "alerts", "list", "--open")
	require.NoError(t, err)
	assert.Contains(t, out, "critical")

	out, err = e.cli(ctx, "health", "rule", "list", "-o", "json")
	require.NoError(t, err)
	var rules []struct {
		Name     string `json:"name"`
		Schedule string `json:"schedule"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &rules), out)
	require.Len(t, rules, 1)
	assert.Equal(t, "active", rules[0].Schedule)
	out, err = e.cli(ctx, "health", "status")
	require.NoError(t, err)
	assert.Contains(t, out, "critical")

	out, err = e.cliCombined(ctx, "group", "delete", "gw")
	require.Error(t, err)
	assert.Equal(t, 2, exitCodeOf(err), out)
	assert.Contains(t, out, "health rule critical")

	_, err = e.cli(ctx, "health", "rule", "delete", "critical")
	require.NoError(t, err)
	crit, err = e.reg.ListAlerts(ctx, registry.AlertFilter{Open: true, Rule: "critical"})
	require.NoError(t, err)
	assert.Empty(t, crit, "a deleted rule's alerts resolve")
	_, err = e.cli(ctx, "group", "delete", "gw")
	require.NoError(t, err)
	_, err = e.cliCombined(ctx, "health", "run", "--rule", "critical")
	assert.Equal(t, 2, exitCodeOf(err), "a rule that is gone: %v", err)
}
