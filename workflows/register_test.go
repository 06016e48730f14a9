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

// registerFake is RegisterEnrolledDevice failing its first failures attempts, then answering out.
type registerFake struct {
	mu       sync.Mutex
	calls    []fleet.Registration
	failures int
	out      fleet.RegistrationOutcome
}

func (f *registerFake) run(_ context.Context, in fleet.Registration) (fleet.RegistrationOutcome, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, in)
	if len(f.calls) <= f.failures {
		return fleet.RegistrationOutcome{}, errors.New("database restarting")
	}
	return f.out, nil
}

func runRegister(t *testing.T, f *registerFake, in fleet.Registration) (fleet.RegistrationOutcome, error) {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.SetTestTimeout(10 * time.Second)
	env.RegisterWorkflow(workflows.RegisterDevice)
	env.RegisterActivityWithOptions(f.run, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.RegisterEnrolledDevice)})
	env.ExecuteWorkflow(workflows.RegisterDevice, in)
	require.True(t, env.IsWorkflowCompleted())
	var out fleet.RegistrationOutcome
	if err := env.GetWorkflowError(); err != nil {
		return out, err
	}
	require.NoError(t, env.GetWorkflowResult(&out))
	return out, nil
}

func TestRegisterDevice(t *testing.T) {
	in := fleet.Registration{DeviceID: "lab-1", Group: "lab", SecretDigest: []byte("digest")}
	t.Run("retries until the registry answers", func(t *testing.T) {
		f := &registerFake{failures: 2, out: fleet.RegistrationOutcome{Registered: true, Created: true}}
		out, err := runRegister(t, f, in)
		require.NoError(t, err)
		require.Equal(t, fleet.RegistrationOutcome{Registered: true, Created: true}, out)
		require.Len(t, f.calls, 3)
		require.Equal(t, in, f.calls[2], "the activity gets the registration as given")
	})
	t.Run("a refusal is an outcome, not a failure", func(t *testing.T) {
		f := &registerFake{out: fleet.RegistrationOutcome{Reason: "enrollment group is disabled"}}
		out, err := runRegister(t, f, in)
		require.NoError(t, err)
		require.False(t, out.Registered)
		require.Equal(t, "enrollment group is disabled", out.Reason)
		require.Len(t, f.calls, 1)
	})
	t.Run("incomplete input is refused without an activity", func(t *testing.T) {
		f := &registerFake{}
		_, err := runRegister(t, f, fleet.Registration{DeviceID: "lab-1", Group: "lab"})
		var appErr *temporal.ApplicationError
		require.ErrorAs(t, err, &appErr)
		require.Equal(t, workflows.ErrTypeInvalidInput, appErr.Type())
		require.Empty(t, f.calls)
	})
}
