package workflows_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/testenv"
	"github.com/fleetflow/fleetflow/workflows"
)

// TestBoundedWaitHistoriesFromARealServerReplay runs the bounded waits (workflow.GetVersion "bounded-waits"
// 1) on a real Temporal dev server — a desired job through its acknowledgement wait, a job run continued in
// that wait, a provision through --await-connect and a provision run continued in it — and replays each
// history against the workflow code. With FLEETFLOW_RECORD_HISTORIES=testdata it also writes them as the
// *_v3 histories that TestReplayRecordedHistories replays from then on, as the *_v2 ones were recorded; the
// runs that continue as new after a full share of polls (the shape a change of the bound would break) are
// recorded only then.
// The activities are stand-ins (the registry's behaviour is not the point; the history's shape is).
func TestBoundedWaitHistoriesFromARealServerReplay(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := client.DialContext(ctx, client.Options{HostPort: testenv.Temporal(t), Logger: tlog.NewStructuredLogger(slog.New(slog.DiscardHandler))})
	require.NoError(t, err)
	defer c.Close()
	queue := "record-" + time.Now().Format("150405.000000")
	w := worker.New(c, queue, worker.Options{})
	w.RegisterWorkflow(workflows.FleetJob)
	w.RegisterWorkflow(workflows.ProvisionFleet)
	var mu sync.Mutex
	polls := map[string]int{} // workflow id -> polls so far
	poll := func(ctx context.Context) int {
		mu.Lock()
		defer mu.Unlock()
		id := activity.GetInfo(ctx).WorkflowExecution.ID
		polls[id]++
		return polls[id]
	}
	register := func(fn any, name func() string) {
		w.RegisterActivityWithOptions(fn, activity.RegisterOptions{Name: name()})
	}
	register(func(_ context.Context, r workflows.JobBatchInput) (fleet.JobCounts, error) {
		return fleet.JobCounts{Running: r.Last - r.First}, nil
	}, func() string { return workflows.ActivityName(workflows.Activities.JobBatch) })
	// The first poll finds one device still waiting, the second none.
	register(func(ctx context.Context, r workflows.JobCollectAcksInput) (workflows.JobCollectAcksResult, error) {
		if n := poll(ctx); n == 1 || strings.HasPrefix(r.JobID, "job-record-forever-") {
			return workflows.JobCollectAcksResult{Acked: 2, Waiting: 1, WaitingOnline: 1}, nil
		}
		return workflows.JobCollectAcksResult{Acked: 1}, nil
	}, func() string { return workflows.ActivityName(workflows.Activities.JobCollectAcks) })
	register(func(context.Context, workflows.JobCloseInput) (fleet.JobCounts, error) {
		return fleet.JobCounts{Succeeded: 3}, nil
	}, func() string { return workflows.ActivityName(workflows.Activities.JobClose) })
	register(func(_ context.Context, r workflows.ProvisionBatchInput) (fleet.ProvisionCounts, error) {
		return fleet.ProvisionCounts{Created: r.Last - r.First}, nil
	}, func() string { return workflows.ActivityName(workflows.Activities.ProvisionBatch) })
	register(func(ctx context.Context, r workflows.WaitConnectedInput) (fleet.ConnectProgress, error) {
		if n := poll(ctx); n == 1 || strings.HasPrefix(r.Op, "provision-record-forever-") {
			return fleet.ConnectProgress{Created: 3, Connected: 2, Reported: 2, Missing: []string{"d2"}}, nil
		}
		return fleet.ConnectProgress{Created: 3, Connected: 3, Reported: 3}, nil
	}, func() string { return workflows.ActivityName(workflows.Activities.WaitConnected) })
	register(func(context.Context, string) (workflows.FinishProvisionResult, error) {
		return workflows.FinishProvisionResult{}, nil
	}, func() string { return workflows.ActivityName(workflows.Activities.FinishProvision) })
	require.NoError(t, w.Start())
	defer w.Stop()

	stamp := time.Now().Format("150405.000000")
	desired := workflows.JobInput{JobID: "job-record-acks-" + stamp, Kind: fleet.JobSetDesired, Total: 3,
		Patch: json.RawMessage(`{"mode":"eco"}`), AckKeys: []string{"mode"}, Timeout: 48 * time.Hour}
	continued := desired
	continued.JobID, continued.Next, continued.Counts, continued.Runs = "job-record-continued-"+stamp, 3, fleet.JobCounts{Running: 3}, 1
	continued.AckStart = time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	provision := workflows.ProvisionInput{Op: "provision-record-" + stamp, Rows: 3, BatchSize: 2, AwaitConnect: 48 * time.Hour}
	provisionContinued := provision
	provisionContinued.Op, provisionContinued.Next, provisionContinued.Runs = "provision-record-continued-"+stamp, 3, 1
	provisionContinued.Counts = fleet.ProvisionCounts{Created: 3}
	provisionContinued.AwaitStart = continued.AckStart
	forever := desired
	forever.JobID = "job-record-forever-" + stamp
	provisionForever := provision
	provisionForever.Op = "provision-record-forever-" + stamp
	for _, tc := range []struct {
		name, id string
		wf       any
		in       any
		// continues: the devices never answer, so the run continues as new after its share of polls.
		continues bool
	}{
		{"job_ack_continue_as_new_v3", forever.JobID, workflows.FleetJob, forever, true},
		{"provision_await_continue_as_new_v3", provisionForever.Op, workflows.ProvisionFleet, provisionForever, true},
		{"job_ack_bounded_v3", desired.JobID, workflows.FleetJob, desired, false},
		{"job_ack_continued_v3", continued.JobID, workflows.FleetJob, continued, false},
		{"provision_await_bounded_v3", provision.Op, workflows.ProvisionFleet, provision, false},
		{"provision_await_continued_v3", provisionContinued.Op, workflows.ProvisionFleet, provisionContinued, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.continues && os.Getenv("FLEETFLOW_RECORD_HISTORIES") == "" {
				// A run's full share of polls takes a while on a dev server; the recorded history is
				// replayed by TestReplayRecordedHistories on every run, which is the check that matters.
				return
			}
			run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: tc.id, TaskQueue: queue}, tc.wf, tc.in)
			require.NoError(t, err)
			if tc.continues {
				// The first run ends continued as new; the next one is stopped here.
				require.Eventually(t, func() bool {
					d, err := c.DescribeWorkflow(ctx, tc.id, run.GetRunID())
					return err == nil && d.Status == enumspb.WORKFLOW_EXECUTION_STATUS_CONTINUED_AS_NEW
				}, 2*time.Minute, 100*time.Millisecond, "the wait continues as new after its share of polls")
				require.NoError(t, c.TerminateWorkflow(ctx, tc.id, "", "recorded"))
				mu.Lock()
				require.GreaterOrEqual(t, polls[tc.id], 100, "one run's share of polls")
				mu.Unlock()
			} else {
				require.NoError(t, run.Get(ctx, nil))
				mu.Lock()
				require.Equal(t, 2, polls[tc.id], "the wait polled until it was over")
				mu.Unlock()
			}

			hist := &historypb.History{}
			it := c.GetWorkflowHistory(ctx, tc.id, run.GetRunID(), false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
			for it.HasNext() {
				ev, err := it.Next()
				require.NoError(t, err)
				hist.Events = append(hist.Events, ev)
			}
			marked := false
			for _, ev := range hist.Events {
				if m := ev.GetMarkerRecordedEventAttributes(); m != nil && m.GetMarkerName() == "Version" {
					var changeID string
					if p := m.GetDetails()["change-id"]; p != nil {
						require.NoError(t, converter.GetDefaultDataConverter().FromPayloads(p, &changeID))
					}
					marked = marked || changeID == "bounded-waits"
				}
			}
			require.True(t, marked, "the history records the bounded-waits version")

			r := worker.NewWorkflowReplayer()
			r.RegisterWorkflow(workflows.FleetJob)
			r.RegisterWorkflow(workflows.ProvisionFleet)
			require.NoError(t, r.ReplayWorkflowHistory(nil, hist))

			if dir := os.Getenv("FLEETFLOW_RECORD_HISTORIES"); dir != "" {
				b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(hist)
				require.NoError(t, err)
				require.NoError(t, os.WriteFile(filepath.Join(dir, tc.name+".json"), append(b, '\n'), 0o644))
			}
		})
	}
}
