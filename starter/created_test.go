package main

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/workflows"
)

// TestCreationErrorsKeepTheMessagesAndExitCodes: a workflow whose creation step failed is reported as the CLI
// reported the same problem when it created operations itself.
func TestCreationErrorsKeepTheMessagesAndExitCodes(t *testing.T) {
	failed := func(typ string, details ...any) error {
		app := temporal.NewNonRetryableApplicationError("the step's message", typ, nil, details...)
		return fmt.Errorf("workflow execution error: %w", fmt.Errorf("activity error: %w", app))
	}
	conflict := fleet.RolloutConflictError{Rollout: "rollout-2.0.0-1", Devices: 3}
	for _, tc := range []struct {
		name, noun string
		err        error
		code       int
		want       string
	}{
		{"empty job", "job", failed(workflows.ErrTypeEmptyTarget), exitFailed, errEmptyJob.Error()},
		{"empty retire", "decommission", failed(workflows.ErrTypeEmptyTarget), exitFailed, errEmptyRetire.Error()},
		{"empty rollout", "rollout", failed(workflows.ErrTypeEmptyTarget), exitFailed, "nothing to do"},
		{"conflict", "rollout", failed(workflows.ErrTypeRolloutConflict, conflict), exitFailed, conflict.Error()},
		{"invalid query", "job", failed(workflows.ErrTypeInvalidQuery), exitUsage, "--query: the step's message"},
		{"unknown firmware", "rollout", failed(workflows.ErrTypeUnknownFirmware), exitFailed, "the step's message"},
		{"anything else", "job", errors.New("boom"), exitFailed, "job job-1: boom"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := creationError(tc.err, "job-1", tc.noun)
			require.Equal(t, tc.code, exitCode(err))
			require.Contains(t, err.Error(), tc.want)
		})
	}
	var got *fleet.RolloutConflictError
	require.True(t, errors.As(creationError(failed(workflows.ErrTypeRolloutConflict, conflict), "r", "rollout"), &got))
	require.Equal(t, conflict, *got, "the conflict names the other rollout, as the CLI's own check does")
}
