package healthsched_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/health"
	"github.com/fleetflow/fleetflow/internal/healthsched"
	"github.com/fleetflow/fleetflow/internal/registry/registrytest"
	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/internal/testenv"
	"github.com/fleetflow/fleetflow/workflows"
)

func TestMain(m *testing.M) { testenv.Main(m) }

type quiet struct{}

func (quiet) Debug(string, ...any) {}
func (quiet) Info(string, ...any)  {}
func (quiet) Warn(string, ...any)  {}
func (quiet) Error(string, ...any) {}

func TestValidateEvery(t *testing.T) {
	require.NoError(t, healthsched.ValidateEvery(10*time.Second))
	require.NoError(t, healthsched.ValidateEvery(5*time.Minute))
	err := healthsched.ValidateEvery(5 * time.Second)
	require.EqualError(t, err, "--every 5s: checks at most every 10s (each is a pass over the whole fleet)")
	require.Error(t, healthsched.ValidateEvery(0))
}

// TestScheduleRunsHealthChecks creates the schedule on a real dev server through the functions the CLI
// uses, triggers it with a worker running the real activity against a test Postgres, and checks that a run
// happened: in the schedule's recent actions, as a completed workflow with the monitor's search attributes,
// and as a health_runs row.
func TestScheduleRunsHealthChecks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reg := registrytest.Open(t)
	_, err := reg.Pool().Exec(ctx, `INSERT INTO devices (id, online, last_seen, created_at, reported) VALUES
		('s-1', false, now() - interval '1 hour', now() - interval '1 day', '{}'),
		('s-2', true, now(), now() - interval '1 day', '{"health":{"status":"failing"}}'),
		('s-3', true, now(), now() - interval '1 day', '{}')`)
	require.NoError(t, err)

	c, err := client.Dial(client.Options{HostPort: testenv.Temporal(t), Logger: quiet{}})
	require.NoError(t, err)
	t.Cleanup(c.Close)
	const queue = "healthsched-test"
	w := worker.New(c, queue, worker.Options{})
	w.RegisterWorkflow(workflows.FleetHealthCheck)
	w.RegisterActivity(&activities.Activities{Provision: reg, Monitor: reg}) // as the worker binary registers it
	require.NoError(t, w.Start())
	t.Cleanup(w.Stop)

	_ = healthsched.DeleteHealthSchedule(ctx, c) // a leftover of an earlier run on the same server
	t.Cleanup(func() { _ = healthsched.DeleteHealthSchedule(context.Background(), c) })

	ok, err := healthsched.Exists(ctx, c)
	require.NoError(t, err)
	require.False(t, ok)
	_, err = healthsched.Describe(ctx, c)
	require.ErrorIs(t, err, healthsched.ErrNotScheduled)
	require.ErrorIs(t, healthsched.Trigger(ctx, c), healthsched.ErrNotScheduled)

	in := workflows.HealthCheckInput{OfflineAfter: 5 * time.Minute}
	require.NoError(t, healthsched.EnsureHealthSchedule(ctx, c, queue, time.Hour, in))
	d, err := healthsched.Describe(ctx, c)
	require.NoError(t, err)
	require.Equal(t, time.Hour, healthsched.Every(d))
	require.Equal(t, enumspb.SCHEDULE_OVERLAP_POLICY_SKIP, d.Schedule.Policy.Overlap)
	require.Equal(t, healthsched.CatchupWindow, d.Schedule.Policy.CatchupWindow)
	act := d.Schedule.Action.(*client.ScheduleWorkflowAction)
	require.Equal(t, workflows.HealthCheckIDPrefix, act.ID)
	require.Equal(t, queue, act.TaskQueue)
	got, ok := healthsched.Input(d)
	require.True(t, ok)
	require.Equal(t, in, got)
	require.NotEmpty(t, d.Info.NextActionTimes)

	// Scheduling again updates the one schedule.
	in.AckWithin = 20 * time.Minute
	require.NoError(t, healthsched.EnsureHealthSchedule(ctx, c, queue, 30*time.Minute, in))
	d, err = healthsched.Describe(ctx, c)
	require.NoError(t, err)
	require.Equal(t, 30*time.Minute, healthsched.Every(d))
	got, _ = healthsched.Input(d)
	require.Equal(t, in, got)
	require.Equal(t, enumspb.SCHEDULE_OVERLAP_POLICY_SKIP, d.Schedule.Policy.Overlap)

	// Bad periods and rules are refused before reaching the server.
	require.Error(t, healthsched.EnsureHealthSchedule(ctx, c, queue, 5*time.Second, in))
	require.Error(t, healthsched.EnsureHealthSchedule(ctx, c, queue, time.Minute, workflows.HealthCheckInput{AckWithin: -1}))

	// Trigger a run and wait for it to show in the schedule.
	require.NoError(t, healthsched.Trigger(ctx, c))
	var wfID string
	require.Eventually(t, func() bool {
		d, err := healthsched.Describe(ctx, c)
		if err != nil || len(d.Info.RecentActions) == 0 {
			return false
		}
		wfID = d.Info.RecentActions[len(d.Info.RecentActions)-1].StartWorkflowResult.WorkflowID
		return true
	}, 30*time.Second, 100*time.Millisecond)
	require.True(t, strings.HasPrefix(wfID, workflows.HealthCheckIDPrefix+"-"), wfID)

	var res workflows.HealthCheckResult
	require.NoError(t, c.GetWorkflow(ctx, wfID, "").Get(ctx, &res))
	require.Equal(t, wfID, res.RunID)
	require.Equal(t, int64(3), res.Devices)
	require.Equal(t, int64(1), res.Problems.Offline)
	require.Equal(t, int64(1), res.Problems.Unhealthy)
	require.Equal(t, int64(2), res.Opened)

	desc, err := c.DescribeWorkflow(ctx, wfID, "")
	require.NoError(t, err)
	op, _ := desc.TypedSearchAttributes.GetKeyword(searchattr.Op)
	state, _ := desc.TypedSearchAttributes.GetKeyword(searchattr.State)
	total, _ := desc.TypedSearchAttributes.GetInt64(searchattr.Total)
	require.Equal(t, searchattr.OpHealthCheck, op)
	require.Equal(t, searchattr.StateCompleted, state)
	require.Equal(t, int64(3), total)

	runs, err := reg.HealthRuns(ctx, 5)
	require.NoError(t, err)
	require.Len(t, runs, 1)
	require.Equal(t, wfID, runs[0].ID)
	require.Equal(t, int64(2), runs[0].Summary.Open)
	require.Equal(t, 5*time.Minute, runs[0].Summary.Rules.OfflineAfter, "the schedule's rules reached the check")
	require.Equal(t, 20*time.Minute, runs[0].Summary.Rules.AckWithin)

	// Unschedule; a second time there is nothing to remove.
	require.NoError(t, healthsched.DeleteHealthSchedule(ctx, c))
	err = healthsched.DeleteHealthSchedule(ctx, c)
	require.True(t, errors.Is(err, healthsched.ErrNotScheduled), "%v", err)
	ok, err = healthsched.Exists(ctx, c)
	require.NoError(t, err)
	require.False(t, ok)
}

// TestRuleScheduleChecksTheRule writes a health rule through its workflow, puts it on its own schedule beside
// nothing else, triggers it, and checks that the run checked the rule's group with its limits; then the
// schedule and the rule are deleted as `health rule delete` does, which frees the group.
func TestRuleScheduleChecksTheRule(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reg := registrytest.Open(t)
	_, err := reg.Pool().Exec(ctx, `INSERT INTO devices (id, online, last_seen, created_at, tags) VALUES
		('gw-1', false, now() - interval '5 minutes', now() - interval '1 day', '{"role":"gateway"}'),
		('gw-2', true, now(), now() - interval '1 day', '{"role":"gateway"}'),
		('s-1', false, now() - interval '1 hour', now() - interval '1 day', '{}')`)
	require.NoError(t, err)
	require.NoError(t, reg.CreateGroup(ctx, "gateways", "SELECT * FROM devices WHERE tags.role = 'gateway'"))

	c, err := client.Dial(client.Options{HostPort: testenv.Temporal(t), Logger: quiet{}})
	require.NoError(t, err)
	t.Cleanup(c.Close)
	const queue = "healthsched-rule-test"
	w := worker.New(c, queue, worker.Options{})
	for _, wf := range []any{workflows.FleetHealthCheck, workflows.HealthRuleSave, workflows.HealthRuleDelete} {
		w.RegisterWorkflow(wf)
	}
	w.RegisterActivity(activities.New(reg, nil))
	require.NoError(t, w.Start())
	t.Cleanup(w.Stop)
	_ = healthsched.DeleteRuleSchedule(ctx, c, "critical")
	t.Cleanup(func() { _ = healthsched.DeleteRuleSchedule(context.Background(), c, "critical") })

	save, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "save-critical", TaskQueue: queue}, workflows.HealthRuleSave,
		workflows.HealthRuleSaveInput{Rule: fleet.HealthRule{Name: "critical", Query: fleet.GroupQuery("gateways"), Group: "gateways",
			Rules: health.Rules{OfflineAfter: 2 * time.Minute}, Every: time.Hour}})
	require.NoError(t, err)
	require.NoError(t, save.Get(ctx, nil))
	require.NoError(t, healthsched.EnsureRuleSchedule(ctx, c, queue, "critical", time.Hour))
	d, err := healthsched.DescribeRule(ctx, c, "critical")
	require.NoError(t, err)
	require.Equal(t, time.Hour, healthsched.Every(d))
	in, ok := healthsched.Input(d)
	require.True(t, ok)
	require.Equal(t, workflows.HealthCheckInput{Rule: "critical"}, in, "the schedule carries the name; the registry the definition")
	_, err = healthsched.Describe(ctx, c)
	require.ErrorIs(t, err, healthsched.ErrNotScheduled, "a rule's schedule is not the fleet-wide one")

	require.NoError(t, c.ScheduleClient().GetHandle(ctx, healthsched.RuleScheduleID("critical")).Trigger(ctx, client.ScheduleTriggerOptions{}))
	var wfID string
	require.Eventually(t, func() bool {
		d, err := healthsched.DescribeRule(ctx, c, "critical")
		if err != nil || len(d.Info.RecentActions) == 0 {
			return false
		}
		wfID = d.Info.RecentActions[0].StartWorkflowResult.WorkflowID
		return true
	}, 30*time.Second, 100*time.Millisecond)
	require.True(t, strings.HasPrefix(wfID, healthsched.RuleWorkflowIDPrefix("critical")+"-"), wfID)
	var res workflows.HealthCheckResult
	require.NoError(t, c.GetWorkflow(ctx, wfID, "").Get(ctx, &res))
	require.Equal(t, "critical", res.Rule)
	require.Equal(t, int64(2), res.Devices, "the group's members only")
	require.Equal(t, int64(1), res.Problems.Offline, "gw-1, 5 minutes offline under a 2-minute rule")
	require.Equal(t, 2*time.Minute, res.Rules.OfflineAfter)

	require.ErrorIs(t, reg.DeleteGroup(ctx, "gateways"), fleet.ErrGroupInUse)
	require.NoError(t, healthsched.DeleteRuleSchedule(ctx, c, "critical"))
	del, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "delete-critical", TaskQueue: queue}, workflows.HealthRuleDelete,
		workflows.HealthRuleDeleteInput{Name: "critical"})
	require.NoError(t, err)
	var dres workflows.HealthRuleDeleteResult
	require.NoError(t, del.Get(ctx, &dres))
	require.True(t, dres.Deleted)
	require.NoError(t, reg.DeleteGroup(ctx, "gateways"))
}
