package workflows_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/workflows"
)

// registerFake is RegisterEnrolledDevices failing its first failures attempts, then answering out for each
// registration.
type registerFake struct {
	mu       sync.Mutex
	calls    []workflows.RegisterDeviceInput
	failures int
	out      fleet.RegistrationOutcome
}

func (f *registerFake) run(_ context.Context, in workflows.RegisterDeviceInput) (workflows.RegisterDeviceResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, in)
	if len(f.calls) <= f.failures {
		return workflows.RegisterDeviceResult{}, errors.New("database restarting")
	}
	var res workflows.RegisterDeviceResult
	for range in.Registrations {
		res.Outcomes = append(res.Outcomes, f.out)
	}
	return res, nil
}

func runRegister(t *testing.T, f *registerFake, in workflows.RegisterDeviceInput) (workflows.RegisterDeviceResult, error) {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.SetTestTimeout(10 * time.Second)
	env.RegisterWorkflow(workflows.RegisterDevice)
	env.RegisterActivityWithOptions(f.run, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.RegisterEnrolledDevices)})
	env.ExecuteWorkflow(workflows.RegisterDevice, in)
	require.True(t, env.IsWorkflowCompleted())
	var out workflows.RegisterDeviceResult
	if err := env.GetWorkflowError(); err != nil {
		return out, err
	}
	require.NoError(t, env.GetWorkflowResult(&out))
	return out, nil
}

func TestRegisterDevice(t *testing.T) {
	in := workflows.RegisterDeviceInput{Registrations: []fleet.Registration{
		{DeviceID: "lab-1", Group: "lab", SecretDigest: []byte("digest")},
		{DeviceID: "lab-2", Group: "lab", SecretDigest: []byte("digest 2")},
	}}
	t.Run("retries until the registry answers", func(t *testing.T) {
		f := &registerFake{failures: 2, out: fleet.RegistrationOutcome{Registered: true, Created: true}}
		out, err := runRegister(t, f, in)
		require.NoError(t, err)
		require.Equal(t, []fleet.RegistrationOutcome{{Registered: true, Created: true}, {Registered: true, Created: true}}, out.Outcomes)
		require.Len(t, f.calls, 3)
		require.Equal(t, in, f.calls[2], "the activity gets the registrations as given")
	})
	t.Run("a refusal is an outcome, not a failure", func(t *testing.T) {
		f := &registerFake{out: fleet.RegistrationOutcome{Reason: "enrollment group is disabled"}}
		out, err := runRegister(t, f, in)
		require.NoError(t, err)
		require.Len(t, out.Outcomes, 2)
		require.False(t, out.Outcomes[0].Registered)
		require.Equal(t, "enrollment group is disabled", out.Outcomes[0].Reason)
		require.Len(t, f.calls, 1)
	})
	for name, bad := range map[string]workflows.RegisterDeviceInput{
		"no digest":        {Registrations: []fleet.Registration{{DeviceID: "lab-1", Group: "lab"}}},
		"no registrations": {},
		"too many at once": {Registrations: make([]fleet.Registration, workflows.MaxRegistrations+1)},
	} {
		t.Run(name+" is refused without an activity", func(t *testing.T) {
			f := &registerFake{}
			_, err := runRegister(t, f, bad)
			var appErr *temporal.ApplicationError
			require.ErrorAs(t, err, &appErr)
			require.Equal(t, workflows.ErrTypeInvalidInput, appErr.Type())
			require.Empty(t, f.calls)
		})
	}
}
