package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// ---- fake Channel -----------------------------------------------------------------------------------------

// fakeChannel records desired pushes and answers method calls from a script per device id (a device not in
// the script answers 200 {}).
type fakeChannel struct {
	mu         sync.Mutex
	published  []fleet.DesiredPush
	publishes  int
	publishErr error
	results    map[string]fleet.MethodResult
	calls      []fleet.MethodCall
	timeouts   []time.Duration
}

func (c *fakeChannel) PublishDesired(_ context.Context, msgs []fleet.DesiredPush) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.publishes++
	if c.publishErr != nil {
		return 0, c.publishErr
	}
	c.published = append(c.published, msgs...)
	return len(msgs), nil
}

func (c *fakeChannel) InvokeMany(_ context.Context, calls []fleet.MethodCall, timeout time.Duration, _ float64) []fleet.MethodResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, calls...)
	c.timeouts = append(c.timeouts, timeout)
	out := make([]fleet.MethodResult, len(calls))
	for i, call := range calls {
		r, ok := c.results[call.DeviceID]
		if !ok {
			r = fleet.MethodResult{Outcome: fleet.MethodSucceeded, Status: 200, Payload: json.RawMessage(`{}`)}
		}
		r.DeviceID = call.DeviceID
		out[i] = r
	}
	return out
}

func (c *fakeChannel) calledDevices() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []string
	for _, call := range c.calls {
		ids = append(ids, call.DeviceID)
	}
	return ids
}

func devIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return ids
}

// execute runs an activity in Temporal's test activity environment (needed where the activity logs, as
// activity.GetLogger requires an activity context) and decodes its result into out.
func execute(t *testing.T, a *Activities, fn, req, out any) {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.RegisterActivity(a)
	v, err := env.ExecuteActivity(fn, req)
	require.NoError(t, err)
	if out != nil {
		require.NoError(t, v.Get(out))
	}
}

func requireRetryable(t *testing.T, err error) {
	t.Helper()
	require.Error(t, err)
	var appErr *temporal.ApplicationError
	require.False(t, errors.As(err, &appErr) && appErr.NonRetryable(), "a retry must be allowed: %v", err)
}

func requireNonRetryable(t *testing.T, err error, typ string) {
	t.Helper()
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr), "want an application error, got %v", err)
	require.True(t, appErr.NonRetryable())
	require.Equal(t, typ, appErr.Type())
}

var _ fleet.Channel = (*fakeChannel)(nil)
