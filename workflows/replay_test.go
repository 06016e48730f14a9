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
// the old ones: workflows started by the old code may still be running.
func TestReplayRecordedHistories(t *testing.T) {
	files, err := filepath.Glob("testdata/*.json")
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(files), 8, "recorded histories are missing")
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
