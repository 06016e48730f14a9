package main

import (
	"bytes"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleetworker"
)

// The report names every workflow that does not replay and exits 1 (the release gate fails); a clean check
// exits 0 and says how many it replayed.
func TestReplayReportExitCodes(t *testing.T) {
	var out bytes.Buffer
	code := printReplayReport(&out, fleetworker.ReplayReport{Checked: 3, Open: 1, Failures: []fleetworker.ReplayFailure{
		{WorkflowID: "rollout-2.0.0-1", RunID: "r1", WorkflowType: "FirmwareRollout", Err: errors.New("nondeterministic workflow")}}}, "fleetflow")
	require.Equal(t, 1, code)
	require.Contains(t, out.String(), "FAIL FirmwareRollout rollout-2.0.0-1 (run r1): nondeterministic workflow")
	require.Contains(t, out.String(), "1 of 3 workflows on task queue fleetflow do not replay")

	out.Reset()
	require.Equal(t, 0, printReplayReport(&out, fleetworker.ReplayReport{Checked: 3, Open: 1}, ""))
	require.Contains(t, out.String(), "3 workflows on every task queue (1 open) replay on this build")
}

// Bad flags are a usage error (2), not a failed check.
func TestReplayCheckUsage(t *testing.T) {
	var out, errb bytes.Buffer
	require.Equal(t, 2, replayCheckMain([]string{"--no-such-flag"}, &out, &errb))
	require.Contains(t, errb.String(), "no-such-flag")
	t.Setenv("FLEETFLOW_WORKER_DEPLOYMENT", "")
	t.Setenv("FLEETFLOW_WORKER_BUILD_ID", "")
	require.Equal(t, 2, replayCheckMain([]string{"--promote", "--build-id", "v2"}, &out, &errb), "promote without a deployment")
	require.Contains(t, errb.String(), "--promote needs --deployment-name and --build-id")
	require.Equal(t, 0, replayCheckMain([]string{"-h"}, &out, &errb))
	require.Contains(t, errb.String(), "set-current-version")
}
