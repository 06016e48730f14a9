package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/health"
)

// `health rule set` on an existing rule changes what its flags say and keeps the rest; a new rule takes the
// defaults and needs a target.
func TestRuleChangeApply(t *testing.T) {
	old := &fleet.HealthRule{Name: "critical", Query: fleet.GroupQuery("gw"), Group: "gw", Every: time.Minute,
		Rules: health.Rules{OfflineAfter: 2 * time.Minute, AckWithin: 5 * time.Minute, ExpiringWithin: 24 * time.Hour}}
	defaults := health.DefaultRules()
	for _, tc := range []struct {
		name string
		ch   ruleChange
		old  *fleet.HealthRule
		want fleet.HealthRule
		err  string
	}{
		{name: "new rule on a group, defaults", ch: ruleChange{name: "critical", group: "gw", limits: defaults},
			want: fleet.HealthRule{Name: "critical", Query: fleet.GroupQuery("gw"), Group: "gw", Every: defaultRuleEvery, Rules: defaults}},
		{name: "new rule on a query", ch: ruleChange{name: "eu", query: "SELECT * FROM devices WHERE tags.region = 'eu'", limits: defaults,
			every: 10 * time.Minute},
			want: fleet.HealthRule{Name: "eu", Query: "SELECT * FROM devices WHERE tags.region = 'eu'", Every: 10 * time.Minute, Rules: defaults}},
		{name: "new rule without a target", ch: ruleChange{name: "x", limits: defaults}, err: "--query or --group is required"},
		{name: "only the period changes", old: old, ch: ruleChange{name: "critical", limits: defaults, every: 30 * time.Second},
			want: fleet.HealthRule{Name: "critical", Query: old.Query, Group: "gw", Every: 30 * time.Second, Rules: old.Rules}},
		{name: "one limit changes", old: old, ch: ruleChange{name: "critical", limits: health.Rules{OfflineAfter: 3 * time.Minute,
			AckWithin: defaults.AckWithin, ExpiringWithin: defaults.ExpiringWithin}, offline: true},
			want: fleet.HealthRule{Name: "critical", Query: old.Query, Group: "gw", Every: time.Minute,
				Rules: health.Rules{OfflineAfter: 3 * time.Minute, AckWithin: 5 * time.Minute, ExpiringWithin: 24 * time.Hour}}},
		{name: "a query replaces the group", old: old, ch: ruleChange{name: "critical", query: "SELECT * FROM devices", limits: defaults},
			want: fleet.HealthRule{Name: "critical", Query: "SELECT * FROM devices", Every: time.Minute, Rules: old.Rules}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.ch.apply(tc.old)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}
