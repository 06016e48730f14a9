package fleetworker_test

import (
	"testing"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/fleet/fleettest"
	"github.com/fleetflow/fleetflow/internal/fleetworker"
	"github.com/fleetflow/fleetflow/workflows"
)

// The renamed activities answer under their former names too, for workflows started before the rename.
func TestRenamedActivitiesKeepTheirFormerNames(t *testing.T) {
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	store := fleettest.New()
	store.AddDevice("old", fleettest.Device{Desired: []byte(`{"mode":"eco"}`)})
	store.AddDevice("new", fleettest.Device{})
	fleetworker.Register(activityRegistry{env: env}, &activities.Activities{Retire: store})

	for _, name := range []string{workflows.LegacyActReplaceDevice, workflows.ActivityName(workflows.Activities.ReplaceDeviceRecord)} {
		v, err := env.ExecuteActivity(name, workflows.ReplaceDeviceRecordInput{Op: "rep-1", Old: "old", New: "new"})
		require.NoError(t, err, name)
		var res workflows.ReplaceResult
		require.NoError(t, v.Get(&res))
		require.Equal(t, "new", res.New)
	}
	for _, name := range []string{workflows.LegacyActPurgeArchive, workflows.ActivityName(workflows.Activities.PurgeArchivedDevices)} {
		_, err := env.ExecuteActivity(name, workflows.PurgeInput{OlderThan: 1})
		require.NoError(t, err, name)
	}
}

// activityRegistry registers activities in a test activity environment and ignores workflows; the other
// methods of worker.Registry are not called by Register.
type activityRegistry struct {
	worker.Registry
	env *testsuite.TestActivityEnvironment
}

func (r activityRegistry) RegisterWorkflow(any) {}

func (r activityRegistry) RegisterActivity(a any) { r.env.RegisterActivity(a) }

func (r activityRegistry) RegisterActivityWithOptions(a any, o activity.RegisterOptions) {
	r.env.RegisterActivityWithOptions(a, o)
}
