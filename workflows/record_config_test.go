package workflows_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/rollout"
	"github.com/fleetflow/fleetflow/internal/testenv"
	"github.com/fleetflow/fleetflow/internal/twin"
	"github.com/fleetflow/fleetflow/workflows"
)

// TestConfigAndWindowHistoriesFromARealServerReplay runs a FleetConfiguration through its updates (apply,
// pause, resume, delete), a FleetJob that waits for a maintenance window and a FirmwareRollout whose wave
// waits for a device's own window on a real Temporal dev server, and replays each history against the
// workflow code. With FLEETFLOW_RECORD_HISTORIES=testdata it writes them as config_v1, job_window_v1 and
// rollout_window_v1, which TestReplayRecordedHistories replays from then on. The activities are
// stand-ins: the history's shape is the point.
func TestConfigAndWindowHistoriesFromARealServerReplay(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := client.DialContext(ctx, client.Options{HostPort: testenv.Temporal(t), Logger: tlog.NewStructuredLogger(slog.New(slog.DiscardHandler))})
	require.NoError(t, err)
	defer c.Close()
	queue := "record-config-" + time.Now().Format("150405.000000")
	w := worker.New(c, queue, worker.Options{})
	w.RegisterWorkflow(workflows.FleetConfiguration)
	w.RegisterWorkflow(workflows.FleetJob)
	w.RegisterWorkflow(workflows.FirmwareRollout)
	register := func(fn any, name string) { w.RegisterActivityWithOptions(fn, activity.RegisterOptions{Name: name}) }
	register(func(_ context.Context, in workflows.ConfigSaveInput) (int64, error) { return in.Version, nil },
		workflows.ActivityName(workflows.Activities.ConfigSave))
	register(func(ctx context.Context, _ workflows.ConfigReconcileInput) (workflows.ConfigReconcileResult, error) {
		select { // a pass that watches until it is cancelled or its (short) time is up
		case <-ctx.Done():
			return workflows.ConfigReconcileResult{}, ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
		return workflows.ConfigReconcileResult{Written: 1, Counts: fleet.ConfigCounts{Targeted: 2, Applied: 2, Acked: 1}}, nil
	}, workflows.ActivityName(workflows.Activities.ConfigReconcile))
	register(func(_ context.Context, name string) (string, error) { return name, nil }, workflows.ActivityName(workflows.Activities.ConfigDelete))
	windowCalls := 0
	register(func(_ context.Context, in workflows.JobWindowBatchInput) (workflows.JobWindowBatchResult, error) {
		windowCalls++
		if windowCalls == 1 {
			return workflows.JobWindowBatchResult{Counts: fleet.JobCounts{Succeeded: 1}, Waiting: 1, NextOpen: in.At.Add(2 * time.Second)}, nil
		}
		return workflows.JobWindowBatchResult{Counts: fleet.JobCounts{Succeeded: 1, OutsideWindow: 1}}, nil
	}, workflows.ActivityName(workflows.Activities.JobWindowBatch))
	register(func(context.Context, workflows.JobCloseInput) (fleet.JobCounts, error) {
		return fleet.JobCounts{Succeeded: 1, OutsideWindow: 1}, nil
	}, workflows.ActivityName(workflows.Activities.JobClose))
	// The rollout: of its two devices one is in its window at once, the other waits two seconds for a pass
	// that finds its window will not open before the deadline after all.
	var dispatchCalls atomic.Int32
	register(func(_ context.Context, in workflows.RolloutDispatchInput) (workflows.RolloutDispatchResult, error) {
		if dispatchCalls.Add(1) == 1 {
			return workflows.RolloutDispatchResult{Dispatched: 1, Waiting: 1, NextOpen: in.At.Add(2 * time.Second)}, nil
		}
		return workflows.RolloutDispatchResult{OutsideWindow: 1}, nil
	}, workflows.ActivityName(workflows.Activities.RolloutDispatch))
	register(func(_ context.Context, in workflows.RolloutObserveInput) (workflows.RolloutObserveResult, error) {
		c := rollout.Counts{Succeeded: 1, Queued: 1}
		if dispatchCalls.Load() > 1 {
			c = rollout.Counts{Succeeded: 1, OutsideWindow: 1}
		}
		wave := c
		wave.Queued = 0
		return workflows.RolloutObserveResult{Counts: c, Wave: wave}, nil
	}, workflows.ActivityName(workflows.Activities.RolloutObserve))
	register(func(context.Context, workflows.RolloutFinishInput) (workflows.RolloutFinishResult, error) {
		return workflows.RolloutFinishResult{Counts: rollout.Counts{Succeeded: 1, OutsideWindow: 1}}, nil
	}, workflows.ActivityName(workflows.Activities.RolloutFinish))
	require.NoError(t, w.Start())
	defer w.Stop()

	stamp := time.Now().Format("150405.000000")
	spec := fleet.ConfigSpec{Name: "record-" + stamp[:6], Priority: 3, Section: twin.Desired, Target: fleet.Target{Query: "SELECT * FROM devices"},
		Patch: json.RawMessage(`{"interval":30}`), Metrics: []fleet.ConfigMetric{{Name: "all", Query: "SELECT * FROM devices"}}}
	cfgID := workflows.ConfigWorkflowID(spec.Name) + "-" + stamp
	update := func(name string, args ...any) {
		h, err := c.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{WorkflowID: cfgID, UpdateName: name, Args: args,
			WaitForStage: client.WorkflowUpdateStageCompleted})
		require.NoError(t, err)
		var msg string
		require.NoError(t, h.Get(ctx, &msg), name)
		time.Sleep(700 * time.Millisecond) // a pass or two between actions
	}
	v2 := spec
	v2.Patch = json.RawMessage(`{"interval":60}`)
	job := workflows.JobInput{JobID: "job-record-window-" + stamp, Kind: fleet.JobSetTags, Total: 2, Patch: json.RawMessage(`{"ring":"beta"}`),
		Maintenance: &fleet.MaintenancePolicy{Window: "daily 00:00-24:00", WindowTag: "maintenance", TimezoneTag: "timezone",
			Deadline: time.Now().Add(time.Hour).UTC().Truncate(time.Second)}}
	waves, err := rollout.ParseWaves("100%")
	require.NoError(t, err)
	ro := workflows.RolloutInput{RolloutID: "rollout-record-window-" + stamp, Total: 2, Waves: waves,
		Firmware:     workflows.FirmwareRef{Version: "2.4.0", URL: "https://fw.example/2.4.0.bin", SHA256: "ab12"},
		PollInterval: 100 * time.Millisecond, ObserveFor: time.Second,
		Maintenance: &fleet.MaintenancePolicy{WindowTag: "maintenance", TimezoneTag: "timezone",
			Deadline: time.Now().Add(time.Hour).UTC().Truncate(time.Second)}}
	for _, tc := range []struct {
		name, id string
		wf, in   any
		drive    func()
	}{
		{"config_v1", cfgID, workflows.FleetConfiguration, workflows.ConfigInput{Spec: spec, Version: 1}, func() {
			time.Sleep(time.Second)
			update(workflows.UpdateApply, v2)
			update(workflows.UpdatePause)
			update(workflows.UpdateResume)
			update(workflows.UpdateDelete)
		}},
		{"job_window_v1", job.JobID, workflows.FleetJob, job, func() {}},
		{"rollout_window_v1", ro.RolloutID, workflows.FirmwareRollout, ro, func() {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: tc.id, TaskQueue: queue}, tc.wf, tc.in)
			require.NoError(t, err)
			tc.drive()
			require.NoError(t, run.Get(ctx, nil))
			hist := &historypb.History{}
			it := c.GetWorkflowHistory(ctx, tc.id, run.GetRunID(), false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
			for it.HasNext() {
				ev, err := it.Next()
				require.NoError(t, err)
				hist.Events = append(hist.Events, ev)
			}
			r := worker.NewWorkflowReplayer()
			r.RegisterWorkflow(workflows.FleetConfiguration)
			r.RegisterWorkflow(workflows.FleetJob)
			r.RegisterWorkflow(workflows.FirmwareRollout)
			require.NoError(t, r.ReplayWorkflowHistory(nil, hist))
			if dir := os.Getenv("FLEETFLOW_RECORD_HISTORIES"); dir != "" {
				b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(hist)
				require.NoError(t, err)
				require.NoError(t, os.WriteFile(filepath.Join(dir, tc.name+".json"), append(b, '\n'), 0o644))
			}
		})
	}
}
