package workflows

import (
	"encoding/json"
	"os"
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
// a dev server by TestBoundedWaitHistoriesFromARealServerReplay with FLEETFLOW_RECORD_HISTORIES=testdata;
// config_v1 (a configuration through apply, pause, resume and delete), job_window_v1 (a job waiting for a
// maintenance window) and rollout_window_v1 (a rollout wave waiting for a device's own window, the device
// then outside it) by TestConfigAndWindowHistoriesFromARealServerReplay the same way.
func TestReplayRecordedHistories(t *testing.T) {
	files, err := filepath.Glob("testdata/*.json")
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(files), 8, "recorded histories are missing")
	for _, shape := range []string{"job_create_v2", "rollout_create_v2", "decommission_query_v2", "provision_validity_v2",
		"job_ack_bounded_v3", "job_ack_continued_v3", "provision_await_bounded_v3", "provision_await_continued_v3",
		"job_ack_continue_as_new_v3", "provision_await_continue_as_new_v3", "config_v1", "job_window_v1", "rollout_window_v1"} {
		require.Contains(t, files, filepath.Join("testdata", shape+".json"), "the creation step's shape must be replay-tested")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			r := worker.NewWorkflowReplayer()
			for _, wf := range All() { // what the worker registers
				r.RegisterWorkflow(wf)
			}
			require.NoError(t, r.ReplayWorkflowHistoryFromJSONFile(nil, f))
		})
	}
}

// TestRecordedWaitRunsStayFarBelowTheHistoryLimit measures, on histories a real server recorded, what the
// time-skipping tests (bounded_*_test.go) estimate: a run of a long wait ends continued as new after its
// share of polls with far fewer than 10,000 events, and each polling activity costs about six.
func TestRecordedWaitRunsStayFarBelowTheHistoryLimit(t *testing.T) {
	for _, name := range []string{"job_ack_continue_as_new_v3", "provision_await_continue_as_new_v3"} {
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata", name+".json"))
			require.NoError(t, err)
			var h struct {
				Events []struct {
					EventType string `json:"eventType"`
				} `json:"events"`
			}
			require.NoError(t, json.Unmarshal(b, &h))
			activities := 0
			for _, e := range h.Events {
				if e.EventType == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED" {
					activities++
				}
			}
			require.Equal(t, "EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW", h.Events[len(h.Events)-1].EventType)
			require.Less(t, len(h.Events), 10000)
			require.GreaterOrEqual(t, activities, 100, "a full share of polls")
			require.LessOrEqual(t, len(h.Events), 6*activities+50, "the estimate the time-skipping tests use holds")
			t.Logf("%s: %d events, %d activities", name, len(h.Events), activities)
		})
	}
}
