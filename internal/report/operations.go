package report

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/converter"

	"github.com/fleetflow/fleetflow/internal/searchattr"
)

// Operation is a fleet operation in flight, as the search attributes its workflow upserts describe it.
type Operation struct {
	ID        string    `json:"id"`   // workflow id, which names the operation (rollout-2.1.0-3, ...)
	Type      string    `json:"type"` // workflow type
	Op        string    `json:"op"`   // FleetOp: provision, rollout, job, ...
	State     string    `json:"state,omitempty"`
	Stage     string    `json:"stage,omitempty"`
	Total     int64     `json:"total"`
	Done      int64     `json:"done"`
	Failed    int64     `json:"failed"`
	StartedAt time.Time `json:"startedAt"`
}

// OperationsQuery is the visibility query for operations in flight: every fleet operation's workflow sets
// FleetOp when it starts, and workflows without it (schedules' bookkeeping, tests) are no operation. The
// dev server's SQLite visibility accepts this form.
const OperationsQuery = searchattr.OpName + " != '' AND ExecutionStatus = 'Running'"

// Lister is the part of client.Client that ListOperations needs.
type Lister interface {
	ListWorkflow(ctx context.Context, request *workflowservice.ListWorkflowExecutionsRequest) (*workflowservice.ListWorkflowExecutionsResponse, error)
}

// ListOperations lists at most limit operations in flight, newest first; more is true when there are
// others. Visibility is the right source here: one call lists every operation with its counters, without
// waking a single workflow (a progress query per operation would need a worker for each).
func ListOperations(ctx context.Context, c Lister, namespace string, limit int) (ops []Operation, more bool, err error) {
	ops = []Operation{} // none running is [] in JSON; nil (null) is left for "could not list"
	var token []byte
	for {
		resp, err := c.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
			Namespace:     namespace,
			PageSize:      int32(min(limit+1, 1000)),
			NextPageToken: token,
			Query:         OperationsQuery,
		})
		if err != nil {
			return nil, false, fmt.Errorf("list operations in flight: %w", err)
		}
		for _, ex := range resp.GetExecutions() {
			ops = append(ops, operationOf(ex))
		}
		token = resp.GetNextPageToken()
		if len(token) == 0 || len(ops) > limit {
			break
		}
	}
	slices.SortStableFunc(ops, func(a, b Operation) int {
		return cmp.Or(b.StartedAt.Compare(a.StartedAt), cmp.Compare(a.ID, b.ID))
	})
	if len(ops) > limit {
		return ops[:limit], true, nil
	}
	return ops, false, nil
}

// operationOf reads an execution's fleet search attributes. A value that does not decode stays zero: a
// report is better with one blank cell than not at all.
func operationOf(ex *workflowpb.WorkflowExecutionInfo) Operation {
	op := Operation{
		ID:   ex.GetExecution().GetWorkflowId(),
		Type: ex.GetType().GetName(),
	}
	if st := ex.GetStartTime(); st != nil {
		op.StartedAt = st.AsTime()
	}
	fields := ex.GetSearchAttributes().GetIndexedFields()
	get := func(name string, v any) {
		if p, ok := fields[name]; ok {
			_ = decode(p, v)
		}
	}
	get(searchattr.OpName, &op.Op)
	get(searchattr.StateName, &op.State)
	get(searchattr.StageName, &op.Stage)
	get(searchattr.TotalName, &op.Total)
	get(searchattr.DoneName, &op.Done)
	get(searchattr.FailedName, &op.Failed)
	return op
}

func decode(p *commonpb.Payload, v any) error {
	return converter.GetDefaultDataConverter().FromPayload(p, v)
}
