package activities

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleet/fleettest"
	"github.com/fleetflow/fleetflow/internal/query"
	"github.com/fleetflow/fleetflow/workflows"
)

func appError(t *testing.T, err error) *temporal.ApplicationError {
	t.Helper()
	var app *temporal.ApplicationError
	require.True(t, errors.As(err, &app), "want an application error, got %v", err)
	return app
}

func TestJobCreateIsIdempotentAndTypesWhatARetryCannotChange(t *testing.T) {
	s := fleettest.New()
	for _, id := range []string{"a", "b"} {
		s.AddDevice(id, fleettest.Device{})
	}
	s.Selects["q"] = []string{"b", "a"}
	s.Selects["none"] = nil
	a := &Activities{Jobs: s}
	ctx := context.Background()
	in := workflows.JobCreateInput{JobID: "job-1", Kind: fleet.JobSetTags, Query: "q"}
	res, err := a.JobCreate(ctx, in)
	require.NoError(t, err)
	require.Equal(t, workflows.JobCreateResult{Total: 2}, res)
	res, err = a.JobCreate(ctx, in)
	require.NoError(t, err)
	require.Equal(t, workflows.JobCreateResult{Total: 2}, res, "a retry returns what the first attempt froze")
	require.Len(t, s.Targets["job-1"], 2)

	_, err = a.JobCreate(ctx, workflows.JobCreateInput{JobID: "job-2", Kind: fleet.JobSetTags, Query: "none"})
	app := appError(t, err)
	require.Equal(t, workflows.ErrTypeEmptyTarget, app.Type())
	require.True(t, app.NonRetryable())

	s.Fail = map[string]error{"CreateJob": &query.SyntaxError{Msg: "unexpected end"}}
	_, err = a.JobCreate(ctx, workflows.JobCreateInput{JobID: "job-3", Kind: fleet.JobSetTags, Query: "SELECT"})
	app = appError(t, err)
	require.Equal(t, workflows.ErrTypeInvalidQuery, app.Type())
	require.True(t, app.NonRetryable())

	s.Fail = map[string]error{"CreateJob": errors.New("connection reset")}
	_, err = a.JobCreate(ctx, workflows.JobCreateInput{JobID: "job-4", Kind: fleet.JobSetTags, Query: "q"})
	require.Error(t, err)
	var app2 *temporal.ApplicationError
	require.False(t, errors.As(err, &app2) && app2.NonRetryable(), "a lost connection stays retryable")

	_, err = (&Activities{}).JobCreate(ctx, in)
	require.Equal(t, "NoStore", appError(t, err).Type())
}

func TestRolloutCreateTypesConflictsWithTheOtherRolloutAsDetails(t *testing.T) {
	s := fleettest.New()
	s.AddDevice("a", fleettest.Device{ReportedVersion: "1.0"})
	s.AddDevice("b", fleettest.Device{ReportedVersion: "1.0"})
	s.Selects["q"] = []string{"a", "b"}
	a := &Activities{Rollouts: s}
	ctx := context.Background()
	in := workflows.RolloutCreateInput{RolloutID: "rollout-2.0-1", Version: "2.0", Query: "q"}
	_, err := a.RolloutCreate(ctx, in)
	require.Equal(t, workflows.ErrTypeUnknownFirmware, appError(t, err).Type())

	s.FirmwareURL["2.0"] = "https://fw/2.0"
	res, err := a.RolloutCreate(ctx, in)
	require.NoError(t, err)
	require.Equal(t, workflows.RolloutCreateResult{Total: 2}, res)
	res, err = a.RolloutCreate(ctx, in)
	require.NoError(t, err)
	require.Equal(t, int64(2), res.Total, "a retry finds its own claims")

	_, err = a.RolloutCreate(ctx, workflows.RolloutCreateInput{RolloutID: "rollout-2.0-2", Version: "2.0", Query: "q"})
	app := appError(t, err)
	require.Equal(t, workflows.ErrTypeRolloutConflict, app.Type())
	require.True(t, app.NonRetryable())
	var conflict fleet.RolloutConflictError
	require.NoError(t, app.Details(&conflict))
	require.Equal(t, fleet.RolloutConflictError{Rollout: "rollout-2.0-1", Devices: 2}, conflict)
}

func TestRunHealthCheckDropsStaleStagingFirst(t *testing.T) {
	now := time.Date(2026, 12, 6, 4, 0, 0, 0, time.UTC)
	s := fleettest.New()
	s.Now = func() time.Time { return now }
	s.Stage("provision-old", []fleettest.StagedRow{{Line: 2, ID: "x"}})
	now = now.Add(fleet.StaleStagingAfter + time.Minute)
	s.Stage("provision-new", []fleettest.StagedRow{{Line: 2, ID: "y"}})
	a := &Activities{Provision: s, Monitor: s}
	_, err := a.RunHealthCheck(context.Background(), workflows.RunHealthCheckInput{RunID: "healthcheck-1"})
	require.NoError(t, err)
	require.Len(t, s.HealthCalls, 1, "the check runs after the cleanup")
	require.Empty(t, s.Staged["provision-old"], "rows no workflow read for a day are dropped")
	require.Len(t, s.Staged["provision-new"], 1, "fresh staging is kept")

	s.Fail = map[string]error{"DropStaleStaging": errors.New("database away")}
	_, err = a.RunHealthCheck(context.Background(), workflows.RunHealthCheckInput{RunID: "healthcheck-2"})
	require.NoError(t, err, "a failed cleanup does not fail the health check")
}
