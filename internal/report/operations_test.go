package report_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	commonpb "go.temporal.io/api/common/v1"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetflow/fleetflow/internal/report"
	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// pages is a Lister that serves fixed pages and records the requests.
type pages struct {
	pages [][]*workflowpb.WorkflowExecutionInfo
	reqs  []*workflowservice.ListWorkflowExecutionsRequest
	err   error
}

func (p *pages) ListWorkflow(_ context.Context, r *workflowservice.ListWorkflowExecutionsRequest) (*workflowservice.ListWorkflowExecutionsResponse, error) {
	p.reqs = append(p.reqs, r)
	if p.err != nil {
		return nil, p.err
	}
	i := 0
	if len(r.NextPageToken) > 0 {
		i = int(r.NextPageToken[0])
	}
	resp := &workflowservice.ListWorkflowExecutionsResponse{Executions: p.pages[i]}
	if i+1 < len(p.pages) {
		resp.NextPageToken = []byte{byte(i + 1)}
	}
	return resp, nil
}

func execution(t *testing.T, id string, started time.Time, attrs map[string]any) *workflowpb.WorkflowExecutionInfo {
	t.Helper()
	fields := map[string]*commonpb.Payload{}
	for k, v := range attrs {
		p, err := converter.GetDefaultDataConverter().ToPayload(v)
		require.NoError(t, err)
		fields[k] = p
	}
	return &workflowpb.WorkflowExecutionInfo{
		Execution:        &commonpb.WorkflowExecution{WorkflowId: id, RunId: "run-" + id},
		Type:             &commonpb.WorkflowType{Name: "FirmwareRollout"},
		StartTime:        timestamppb.New(started),
		SearchAttributes: &commonpb.SearchAttributes{IndexedFields: fields},
	}
}

func TestListOperationsPagesSortsAndLimits(t *testing.T) {
	t0 := time.Date(2025, 6, 1, 10, 0, 0, 0, time.UTC)
	full := map[string]any{searchattr.OpName: "rollout", searchattr.StateName: "running", searchattr.StageName: "wave 2/4",
		searchattr.TotalName: int64(10_000), searchattr.DoneName: int64(3_000), searchattr.FailedName: int64(200)}
	p := &pages{pages: [][]*workflowpb.WorkflowExecutionInfo{
		{execution(t, "a", t0, full), execution(t, "b", t0.Add(2*time.Minute), map[string]any{searchattr.OpName: "job",
			searchattr.TotalName: "not a number"})},
		{execution(t, "c", t0.Add(time.Minute), map[string]any{searchattr.OpName: "provision"})},
	}}
	ops, more, err := report.ListOperations(context.Background(), p, "ns", 10)
	require.NoError(t, err)
	require.False(t, more)
	require.Len(t, p.reqs, 2, "follows the page token")
	require.Equal(t, "ns", p.reqs[0].Namespace)
	require.Equal(t, report.OperationsQuery, p.reqs[0].Query)
	require.Equal(t, []string{"b", "c", "a"}, []string{ops[0].ID, ops[1].ID, ops[2].ID}, "newest first")
	require.Equal(t, report.Operation{ID: "a", Type: "FirmwareRollout", Op: "rollout", State: "running", Stage: "wave 2/4",
		Total: 10_000, Done: 3_000, Failed: 200, StartedAt: t0}, ops[2])
	require.Equal(t, "job", ops[0].Op)
	require.Zero(t, ops[0].Total, "a value that does not decode stays zero")

	ops, more, err = report.ListOperations(context.Background(), p, "ns", 1)
	require.NoError(t, err)
	require.True(t, more)
	require.Len(t, ops, 1)

	p.err = errors.New("connection refused")
	_, _, err = report.ListOperations(context.Background(), p, "ns", 10)
	require.ErrorContains(t, err, "list operations in flight: connection refused")
}

// TestOperationsQueryOnTheDevServer checks the visibility query against the dev server's SQLite store: a
// workflow started with no worker polling its queue stays Running, which is all the test needs.
func TestOperationsQueryOnTheDevServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.DialContext(ctx, client.Options{HostPort: testenv.Temporal(t),
		Logger: tlog.NewStructuredLogger(slog.New(slog.DiscardHandler))})
	require.NoError(t, err)
	defer c.Close()
	queue := fmt.Sprintf("report-test-%d", time.Now().UnixNano())
	start := func(id string, attrs ...temporal.SearchAttributeUpdate) {
		t.Helper()
		_, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: queue,
			TypedSearchAttributes: temporal.NewSearchAttributes(attrs...)}, "FirmwareRollout")
		require.NoError(t, err)
	}
	start(queue+"-rollout", searchattr.Op.ValueSet(searchattr.OpRollout), searchattr.State.ValueSet(searchattr.StateRunning),
		searchattr.Stage.ValueSet("wave 1/4"), searchattr.Total.ValueSet(100), searchattr.Done.ValueSet(40), searchattr.Failed.ValueSet(2))
	start(queue + "-no-op") // not a fleet operation
	start(queue+"-ended", searchattr.Op.ValueSet(searchattr.OpJob))
	require.NoError(t, c.TerminateWorkflow(ctx, queue+"-ended", "", "test"))

	var ops []report.Operation
	require.Eventually(t, func() bool {
		all, _, err := report.ListOperations(ctx, c, "default", 100)
		require.NoError(t, err)
		ops = ops[:0]
		for _, o := range all {
			if strings.HasPrefix(o.ID, queue) {
				ops = append(ops, o)
			}
		}
		return len(ops) == 1
	}, 20*time.Second, 200*time.Millisecond, "visibility lists the running fleet operation only")
	o := ops[0]
	require.Equal(t, queue+"-rollout", o.ID)
	require.Equal(t, "FirmwareRollout", o.Type)
	require.Equal(t, report.Operation{ID: o.ID, Type: o.Type, Op: "rollout", State: "running", Stage: "wave 1/4",
		Total: 100, Done: 40, Failed: 2, StartedAt: o.StartedAt}, o)
	require.WithinDuration(t, time.Now(), o.StartedAt, time.Minute)
}
