package workflows_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	sdkpb "go.temporal.io/api/sdk/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/health"
	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/workflows"
)

// healthActs is a fake RunHealthCheck: it fails the first failures attempts with err, then returns res.
type healthActs struct {
	mu       sync.Mutex
	reqs     []workflows.RunHealthCheckInput
	infos    []activity.Info
	failures int
	err      error
	res      workflows.HealthCheckResult
}

func (h *healthActs) run(ctx context.Context, req workflows.RunHealthCheckInput) (workflows.HealthCheckResult, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reqs = append(h.reqs, req)
	h.infos = append(h.infos, activity.GetInfo(ctx))
	if len(h.reqs) <= h.failures {
		return workflows.HealthCheckResult{}, h.err
	}
	r := h.res
	r.RunID = req.RunID
	return r, nil
}

// saRecord is one UpsertTypedSearchAttributes call, as the values it set.
type saRecord struct {
	op, state string
	total     int64
	hasTotal  bool
}

func newHealthEnv(t *testing.T, h *healthActs) (*testsuite.TestWorkflowEnvironment, *[]saRecord) {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.SetStartTime(testStart)
	env.SetTestTimeout(10 * time.Second)
	env.RegisterWorkflow(workflows.FleetHealthCheck)
	env.RegisterActivityWithOptions(h.run, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.RunHealthCheck)})
	var upserts []saRecord
	env.OnUpsertTypedSearchAttributes(mock.Anything).Run(func(args mock.Arguments) {
		sa := args.Get(0).(temporal.SearchAttributes)
		var r saRecord
		r.op, _ = sa.GetKeyword(searchattr.Op)
		r.state, _ = sa.GetKeyword(searchattr.State)
		r.total, r.hasTotal = sa.GetInt64(searchattr.Total)
		upserts = append(upserts, r)
	}).Return(nil)
	return env, &upserts
}

// currentDetails reads what the UI would show as the workflow's current details.
func currentDetails(t *testing.T, env *testsuite.TestWorkflowEnvironment) string {
	t.Helper()
	v, err := env.QueryWorkflow("__temporal_workflow_metadata")
	require.NoError(t, err)
	var md sdkpb.WorkflowMetadata
	require.NoError(t, v.Get(&md))
	return md.GetCurrentDetails()
}

var sampleHealth = workflows.HealthCheckResult{Devices: 1000, Active: 990, Online: 980, Offline: 20,
	Problems: fleet.ProblemCounts{Offline: 12, Unhealthy: 3}, Opened: 2, Resolved: 5, Open: 17}

func TestFleetHealthCheckRunsOneCheckWithDefaults(t *testing.T) {
	h := &healthActs{res: sampleHealth}
	env, upserts := newHealthEnv(t, h)
	env.ExecuteWorkflow(workflows.FleetHealthCheck, workflows.HealthCheckInput{})
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	var res workflows.HealthCheckResult
	require.NoError(t, env.GetWorkflowResult(&res))

	require.Len(t, h.reqs, 1)
	require.Equal(t, workflows.RunHealthCheckInput{RunID: "default-test-workflow-id", OfflineAfter: health.DefaultOfflineAfter,
		AckWithin: health.DefaultAckWithin, ExpiringWithin: health.DefaultExpiringWithin}, h.reqs[0])
	want := sampleHealth
	want.RunID = "default-test-workflow-id"
	require.Equal(t, want, res)

	info := h.infos[0]
	require.Positive(t, info.HeartbeatTimeout, "a long transaction must be seen to be alive")
	require.GreaterOrEqual(t, info.StartToCloseTimeout, 5*time.Minute)

	require.Equal(t, []saRecord{
		{op: searchattr.OpHealthCheck, state: searchattr.StateRunning},
		{state: searchattr.StateCompleted, total: 1000, hasTotal: true},
	}, *upserts)
	details := currentDetails(t, env)
	require.Contains(t, details, "offline 12 · unhealthy 3 · opened 2 · resolved 5 · open 17")
	require.Contains(t, details, "1,000 devices")
}

func TestFleetHealthCheckPassesRules(t *testing.T) {
	h := &healthActs{res: sampleHealth}
	env, _ := newHealthEnv(t, h)
	env.ExecuteWorkflow(workflows.FleetHealthCheck, workflows.HealthCheckInput{OfflineAfter: 5 * time.Minute, ExpiringWithin: time.Hour})
	require.NoError(t, env.GetWorkflowError())
	require.Equal(t, 5*time.Minute, h.reqs[0].OfflineAfter)
	require.Equal(t, health.DefaultAckWithin, h.reqs[0].AckWithin)
	require.Equal(t, time.Hour, h.reqs[0].ExpiringWithin)
}

func TestFleetHealthCheckRefusesBadRules(t *testing.T) {
	h := &healthActs{}
	env, _ := newHealthEnv(t, h)
	env.ExecuteWorkflow(workflows.FleetHealthCheck, workflows.HealthCheckInput{AckWithin: -time.Minute})
	err := env.GetWorkflowError()
	require.Error(t, err)
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr))
	require.Equal(t, workflows.ErrTypeInvalidInput, appErr.Type())
	require.Contains(t, err.Error(), "--ack-within")
	require.Empty(t, h.reqs, "nothing runs on bad rules")
}

func TestFleetHealthCheckRetriesTransientFailures(t *testing.T) {
	h := &healthActs{failures: 2, err: errors.New("connection reset"), res: sampleHealth}
	env, upserts := newHealthEnv(t, h)
	env.ExecuteWorkflow(workflows.FleetHealthCheck, workflows.HealthCheckInput{})
	require.NoError(t, env.GetWorkflowError())
	require.Len(t, h.reqs, 3)
	for _, r := range h.reqs {
		require.Equal(t, "default-test-workflow-id", r.RunID, "every attempt is the same run, so it replaces its health_runs row")
	}
	require.Equal(t, searchattr.StateCompleted, (*upserts)[len(*upserts)-1].state)
}

func TestFleetHealthCheckGivesUp(t *testing.T) {
	h := &healthActs{failures: 100, err: errors.New("database is down"), res: sampleHealth}
	env, upserts := newHealthEnv(t, h)
	env.ExecuteWorkflow(workflows.FleetHealthCheck, workflows.HealthCheckInput{})
	err := env.GetWorkflowError()
	require.Error(t, err)
	require.Contains(t, err.Error(), "database is down")
	require.Len(t, h.reqs, 5, "bounded attempts: the next scheduled check takes over")
	require.Equal(t, searchattr.StateFailed, (*upserts)[len(*upserts)-1].state)
	require.Contains(t, currentDetails(t, env), "failed")

	// A permanent error is not retried at all.
	h = &healthActs{failures: 100, err: temporal.NewNonRetryableApplicationError("no registry", "NoMonitorStore", nil)}
	env, _ = newHealthEnv(t, h)
	env.ExecuteWorkflow(workflows.FleetHealthCheck, workflows.HealthCheckInput{})
	require.Error(t, env.GetWorkflowError())
	require.Len(t, h.reqs, 1)
}

// A rule's check hands the activity the rule's name only (the activity reads its target and limits) and
// shows the rule, its target and the limits it applied.
func TestFleetHealthCheckOfARule(t *testing.T) {
	limits := health.Rules{OfflineAfter: 2 * time.Minute, AckWithin: 5 * time.Minute, ExpiringWithin: health.DefaultExpiringWithin}
	res := sampleHealth
	res.Rule, res.Target, res.Rules = "critical", fleet.GroupQuery("hospital-gw"), &limits
	h := &healthActs{res: res}
	env, upserts := newHealthEnv(t, h)
	// Limits given beside a rule are ignored: the rule's are the ones that count.
	env.ExecuteWorkflow(workflows.FleetHealthCheck, workflows.HealthCheckInput{Rule: "critical", OfflineAfter: time.Hour})
	require.NoError(t, env.GetWorkflowError())
	require.Equal(t, []workflows.RunHealthCheckInput{{RunID: "default-test-workflow-id", Rule: "critical"}}, h.reqs)
	var got workflows.HealthCheckResult
	require.NoError(t, env.GetWorkflowResult(&got))
	require.Equal(t, "critical", got.Rule)
	require.Equal(t, &limits, got.Rules)
	details := currentDetails(t, env)
	require.Contains(t, details, "health rule critical")
	require.Contains(t, details, "IN_GROUP('hospital-gw')")
	require.Contains(t, details, "offline after 2m")
	require.Equal(t, searchattr.StateCompleted, (*upserts)[len(*upserts)-1].state)

	// The fleet-wide rule by name is the fleet-wide check, with its limits.
	h = &healthActs{res: sampleHealth}
	env, _ = newHealthEnv(t, h)
	env.ExecuteWorkflow(workflows.FleetHealthCheck, workflows.HealthCheckInput{Rule: health.FleetRule, OfflineAfter: time.Hour})
	require.NoError(t, env.GetWorkflowError())
	require.Equal(t, time.Hour, h.reqs[0].OfflineAfter)
	require.Empty(t, h.reqs[0].Rule)
}

// HealthRuleSave writes the rule with its defaults filled in, through its activity; a rule no store could
// save is refused before any activity, and a refusal of the activity is not retried.
func TestHealthRuleSave(t *testing.T) {
	var s testsuite.WorkflowTestSuite
	var saved []fleet.HealthRule
	fail := error(nil)
	newEnv := func() *testsuite.TestWorkflowEnvironment {
		env := s.NewTestWorkflowEnvironment()
		env.SetTestTimeout(10 * time.Second)
		env.RegisterWorkflow(workflows.HealthRuleSave)
		env.RegisterActivityWithOptions(func(_ context.Context, in workflows.HealthRuleSaveInput) (fleet.HealthRule, error) {
			saved = append(saved, in.Rule)
			return in.Rule, fail
		}, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.SaveHealthRule)})
		return env
	}
	env := newEnv()
	env.ExecuteWorkflow(workflows.HealthRuleSave, workflows.HealthRuleSaveInput{Rule: fleet.HealthRule{Name: "critical",
		Query: fleet.GroupQuery("hospital-gw"), Group: "hospital-gw", Rules: health.Rules{OfflineAfter: 2 * time.Minute}, Every: time.Minute}})
	require.NoError(t, env.GetWorkflowError())
	require.Len(t, saved, 1)
	require.Equal(t, health.DefaultAckWithin, saved[0].Rules.AckWithin, "defaults are filled in before the write")
	var got fleet.HealthRule
	require.NoError(t, env.GetWorkflowResult(&got))
	require.Equal(t, 2*time.Minute, got.Rules.OfflineAfter)
	require.Contains(t, currentDetails(t, env), "health rule critical")

	saved = nil
	for _, bad := range []fleet.HealthRule{
		{Name: health.FleetRule, Query: "SELECT * FROM devices", Every: time.Minute},
		{Name: "x", Every: time.Minute},
		{Name: "x", Query: "SELECT * FROM devices"},
		{Name: "x", Query: "SELECT * FROM devices", Every: time.Minute, Rules: health.Rules{AckWithin: -time.Second}},
	} {
		env := newEnv()
		env.ExecuteWorkflow(workflows.HealthRuleSave, workflows.HealthRuleSaveInput{Rule: bad})
		var appErr *temporal.ApplicationError
		require.ErrorAs(t, env.GetWorkflowError(), &appErr, "%+v", bad)
		require.Equal(t, workflows.ErrTypeInvalidInput, appErr.Type())
	}
	require.Empty(t, saved)

	fail = temporal.NewNonRetryableApplicationError("unknown group", workflows.ErrTypeInvalidInput, nil)
	env = newEnv()
	env.ExecuteWorkflow(workflows.HealthRuleSave, workflows.HealthRuleSaveInput{Rule: fleet.HealthRule{Name: "x",
		Query: fleet.GroupQuery("nope"), Every: time.Minute}})
	require.ErrorContains(t, env.GetWorkflowError(), "unknown group")
	require.Len(t, saved, 1, "a refused rule is not retried")
}
