package activities

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/workflows"
)

// fakeRegistry returns canned answers; the real registry is exercised by the registry and e2e tests.
type fakeRegistry struct {
	batchErr error
	progress []fleet.ConnectProgress
	polls    int
	dropped  string
}

func (f *fakeRegistry) ProvisionBatch(context.Context, string, int64, int64) (fleet.ProvisionCounts, error) {
	return fleet.ProvisionCounts{Created: 7, Existing: 2, Invalid: 1}, f.batchErr
}

func (f *fakeRegistry) ConnectProgress(context.Context, string, int) (fleet.ConnectProgress, error) {
	p := f.progress[min(f.polls, len(f.progress)-1)]
	f.polls++
	return p, nil
}

func (f *fakeRegistry) ProvisionResults(context.Context, string, fleet.RowOutcome, int) ([]fleet.RowResult, error) {
	return []fleet.RowResult{{Line: 3, ID: "x", Outcome: "invalid", Reason: "bad"}}, nil
}

func (f *fakeRegistry) DropStaging(_ context.Context, op string) error { f.dropped = op; return nil }

func TestProvisionBatchMapsCountsAndPermanentErrors(t *testing.T) {
	a := &Activities{Provision: &fakeRegistry{}}
	c, err := a.ProvisionBatch(context.Background(), workflows.ProvisionBatchInput{Op: "op", First: 0, Last: 10})
	require.NoError(t, err)
	require.Equal(t, fleet.ProvisionCounts{Created: 7, Existing: 2, Invalid: 1}, c)

	for _, cause := range []error{fleet.ErrStagingLost, fleet.ErrOperationNotStaged} {
		a = &Activities{Provision: &fakeRegistry{batchErr: fmt.Errorf("provision op: %w", cause)}}
		_, err = a.ProvisionBatch(context.Background(), workflows.ProvisionBatchInput{Op: "op"})
		var appErr *temporal.ApplicationError
		require.True(t, errors.As(err, &appErr))
		require.True(t, appErr.NonRetryable(), "%v cannot be fixed by retrying", cause)
		require.Equal(t, workflows.ErrTypeNotStaged, appErr.Type())
	}
	a = &Activities{Provision: &fakeRegistry{batchErr: errors.New("connection reset")}}
	_, err = a.ProvisionBatch(context.Background(), workflows.ProvisionBatchInput{Op: "op"})
	var appErr *temporal.ApplicationError
	require.False(t, errors.As(err, &appErr) && appErr.NonRetryable(), "a transient error stays retryable")
}

func TestWaitConnectedReturnsWhenAllReportedOrTimeIsUp(t *testing.T) {
	run := func(f *fakeRegistry, maxWait time.Duration) fleet.ConnectProgress {
		var s testsuite.WorkflowTestSuite
		env := s.NewTestActivityEnvironment()
		a := &Activities{Provision: f, PollInterval: time.Millisecond}
		env.RegisterActivity(a)
		v, err := env.ExecuteActivity(a.WaitConnected, workflows.WaitConnectedInput{Op: "op", MaxWait: maxWait})
		require.NoError(t, err)
		var st fleet.ConnectProgress
		require.NoError(t, v.Get(&st))
		return st
	}
	f := &fakeRegistry{progress: []fleet.ConnectProgress{{Created: 10, Reported: 3}, {Created: 10, Reported: 10}}}
	st := run(f, time.Minute)
	require.Equal(t, int64(10), st.Reported)
	require.Equal(t, 2, f.polls)

	f = &fakeRegistry{progress: []fleet.ConnectProgress{{Created: 10, Reported: 3, Missing: []string{"d"}}}}
	st = run(f, 0)
	require.Equal(t, int64(3), st.Reported)
	require.Equal(t, []string{"d"}, st.Missing)
	require.Equal(t, 1, f.polls, "with no time left it reports at once")
}

func TestFinishProvisionDropsStagingAndSamplesInvalidRows(t *testing.T) {
	f := &fakeRegistry{}
	a := &Activities{Provision: f}
	res, err := a.FinishProvision(context.Background(), "op-1")
	require.NoError(t, err)
	require.Equal(t, "op-1", f.dropped)
	require.Equal(t, []fleet.RowResult{{Line: 3, ID: "x", Outcome: "invalid", Reason: "bad"}}, res.InvalidSample)
}
