package workflows

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/worker"
)

// TestReplayRecordedHistories replays histories recorded from real runs against the current workflow code,
// so a change that would break running workflows (non-determinism) fails here instead of in production.
// Record new ones with `temporal workflow show -w ID -r RUN -o json` when a workflow changes shape, and keep
// the old ones: workflows started by the old code may still be running. The *_v1 histories have the shape
// from before the creation step moved into the workflows (inputs with Total set, no JobCreate or
// RolloutCreate); the *_v2 ones have the creation step and were recorded from the CLI-kill e2e test with
// FLEETFLOW_RECORD_HISTORIES=workflows/testdata. The *_v3 ones have the bounded waits (the "bounded-waits"
// version marker, and runs continued in a wait, with AckStart/AwaitStart in their input) and were recorded on
// a dev server by TestBoundedWaitHistoriesFromARealServerReplay with FLEETFLOW_RECORD_HISTORIES=testdata.
func TestReplayRecordedHistories(t *testing.T) {
	files, err := filepath.Glob("testdata/*.json")
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(files), 8, "recorded histories are missing")
	for _, shape := range []string{"job_create_v2", "rollout_create_v2", "decommission_query_v2", "provision_validity_v2",
		"job_ack_bounded_v3", "job_ack_continued_v3", "provision_await_bounded_v3", "provision_await_continued_v3",
		"job_ack_continue_as_new_v3", "provision_await_continue_as_new_v3"} {
		require.Contains(t, files, filepath.Join("testdata", shape+".json"), "the creation step's shape must be replay-tested")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			r := worker.NewWorkflowReplayer()
			r.RegisterWorkflow(ProvisionFleet)
			r.RegisterWorkflow(FleetJob)
			r.RegisterWorkflow(FirmwareRollout)
			r.RegisterWorkflow(FleetHealthCheck)
			r.RegisterWorkflow(Decommission)
			r.RegisterWorkflow(ReplaceDevice)
			r.RegisterWorkflow(PurgeArchive)
			require.NoError(t, r.ReplayWorkflowHistoryFromJSONFile(nil, f))
		})
	}
}
