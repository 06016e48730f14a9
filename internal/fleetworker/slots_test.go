package fleetworker_test

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/fleetworker"
	"github.com/fleetflow/fleetflow/workflows"
)

// The activity slots never exceed the registry pool, and default to it less a quarter of headroom.
func TestSlots(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		pool, maxActs, maxWF int
		wantActs, wantWF     int
		wantErr              bool
	}{
		{name: "default pool", pool: 16, wantActs: 12, wantWF: 16},
		{name: "big pool", pool: 64, wantActs: 48, wantWF: 64},
		{name: "pool of one", pool: 1, wantActs: 1, wantWF: 2},
		{name: "pool of three", pool: 3, wantActs: 2, wantWF: 3},
		{name: "pool of two", pool: 2, wantActs: 1, wantWF: 2},
		{name: "explicit below pool", pool: 16, maxActs: 4, wantActs: 4, wantWF: 16},
		{name: "explicit equal to pool", pool: 16, maxActs: 16, wantActs: 16, wantWF: 16},
		{name: "explicit workflow tasks", pool: 16, maxWF: 100, wantActs: 12, wantWF: 100},
		{name: "one workflow task is two", pool: 16, maxWF: 1, wantActs: 12, wantWF: 2},
		{name: "above pool", pool: 16, maxActs: 17, wantErr: true},
		{name: "negative activities", pool: 16, maxActs: -1, wantErr: true},
		{name: "negative workflow tasks", pool: 16, maxWF: -1, wantErr: true},
		{name: "no pool", pool: 0, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			acts, wf, err := fleetworker.Slots(tc.pool, tc.maxActs, tc.maxWF)
			if tc.wantErr {
				require.Error(t, err)
				require.True(t, errors.Is(err, fleetworker.ErrSlots), err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.wantActs, acts, "activities")
			require.Equal(t, tc.wantWF, wf, "workflow tasks")
			require.LessOrEqual(t, acts, tc.pool)
		})
	}
}

// The error of a setting above the pool names both numbers and the way out.
func TestSlotsAbovePoolExplains(t *testing.T) {
	_, _, err := fleetworker.Slots(16, 40, 0)
	require.ErrorContains(t, err, "max activities 40 exceeds the registry pool of 16 connections")
	require.ErrorContains(t, err, "pool_max_conns")
}

func TestWorkerOptions(t *testing.T) {
	wo, err := fleetworker.Options{PoolSize: 16}.WorkerOptions()
	require.NoError(t, err)
	require.Equal(t, 12, wo.MaxConcurrentActivityExecutionSize)
	require.Equal(t, 16, wo.MaxConcurrentWorkflowTaskExecutionSize)
	require.Equal(t, fleetworker.DefaultStopTimeout, wo.WorkerStopTimeout)
	// A batch's heartbeat must reach the server well inside its timeout, not at 80 % of it (the SDK's default).
	require.Equal(t, fleetworker.HeartbeatThrottle, wo.MaxHeartbeatThrottleInterval)
	require.LessOrEqual(t, 4*wo.MaxHeartbeatThrottleInterval, workflows.DefaultHeartbeatTimeout)

	wo, err = fleetworker.Options{PoolSize: 16, MaxActivities: 8, StopTimeout: 2 * time.Minute}.WorkerOptions()
	require.NoError(t, err)
	require.Equal(t, 8, wo.MaxConcurrentActivityExecutionSize)
	require.Equal(t, 2*time.Minute, wo.WorkerStopTimeout)

	_, err = fleetworker.Options{PoolSize: 16, StopTimeout: -time.Second}.WorkerOptions()
	require.Error(t, err)
	_, err = fleetworker.Options{PoolSize: 8, MaxActivities: 9}.WorkerOptions()
	require.ErrorIs(t, err, fleetworker.ErrSlots)
}

// A deployment name and a build id make the worker a version of a Worker Deployment, auto-upgrade by default;
// neither leaves it unversioned, and one without the other is refused.
func TestWorkerOptionsVersioning(t *testing.T) {
	wo, err := fleetworker.Options{PoolSize: 16}.WorkerOptions()
	require.NoError(t, err)
	require.False(t, wo.DeploymentOptions.UseVersioning)

	wo, err = fleetworker.Options{PoolSize: 16, Deployment: "fleetflow", BuildID: "v2"}.WorkerOptions()
	require.NoError(t, err)
	require.True(t, wo.DeploymentOptions.UseVersioning)
	require.Equal(t, "fleetflow", wo.DeploymentOptions.Version.DeploymentName)
	require.Equal(t, "v2", wo.DeploymentOptions.Version.BuildID)
	require.Equal(t, workflow.VersioningBehaviorAutoUpgrade, wo.DeploymentOptions.DefaultVersioningBehavior)

	for _, o := range []fleetworker.Options{{PoolSize: 16, Deployment: "fleetflow"}, {PoolSize: 16, BuildID: "v2"}} {
		_, err := o.WorkerOptions()
		require.ErrorContains(t, err, "both a deployment name and a build id")
	}
}
