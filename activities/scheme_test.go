package activities

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/testsuite"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/registry/registrytest"
	"github.com/fleetflow/fleetflow/workflows"
)

// TestSchemeCheckWorkflowOverTheRegistry runs SchemeCheck with these activities over Postgres: a scheme the
// fleet violates is refused with the violating devices recorded, the same scheme with violations allowed is
// set, and a plain check of it lists the same debt.
func TestSchemeCheckWorkflowOverTheRegistry(t *testing.T) {
	reg := registrytest.Open(t)
	ctx := context.Background()
	rows := []registry.StagedRow{}
	for i, tags := range []string{`{"floor":1}`, `{"floor":"2"}`, `{"floor":3}`, `{}`, `{"floor":"x"}`} {
		rows = append(rows, registry.StagedRow{Seq: int64(i), Line: int64(i + 1), ID: "dev-" + string(rune('a'+i)), Tags: tags,
			SecretHash: make([]byte, 32)})
	}
	next := 0
	_, err := reg.StageRows(ctx, "op-1", "provision", func() (registry.StagedRow, bool, error) {
		if next == len(rows) {
			return registry.StagedRow{}, false, nil
		}
		next++
		return rows[next-1], true, nil
	})
	require.NoError(t, err)
	_, err = reg.ProvisionBatch(ctx, "op-1", 0, int64(len(rows)), 0)
	require.NoError(t, err)

	run := func(in workflows.SchemeCheckInput) workflows.SchemeCheckResult {
		var suite testsuite.WorkflowTestSuite
		env := suite.NewTestWorkflowEnvironment()
		env.SetTestTimeout(time.Minute)
		env.RegisterWorkflow(workflows.SchemeCheck)
		env.RegisterActivity(&Activities{Scheme: reg})
		env.OnUpsertTypedSearchAttributes(mock.Anything).Return(nil)
		in.BatchSize = 2
		env.ExecuteWorkflow(workflows.SchemeCheck, in)
		require.True(t, env.IsWorkflowCompleted())
		require.NoError(t, env.GetWorkflowError())
		var res workflows.SchemeCheckResult
		require.NoError(t, env.GetWorkflowResult(&res))
		return res
	}
	tags := json.RawMessage(`{"type":"object","properties":{"floor":{"type":"integer"}},"required":["floor"]}`)
	res := run(workflows.SchemeCheckInput{CheckID: "scheme-set-a", Set: true, Tags: tags})
	require.Equal(t, fleet.SchemeCheckEnd{Version: 1, State: fleet.SchemeRefused, Checked: 5, Violating: 3}, res.SchemeCheckEnd)
	viol, err := reg.SchemeCheckViolations(ctx, "scheme-set-a", 10)
	require.NoError(t, err)
	require.Equal(t, []fleet.DeviceViolations{
		{DeviceID: "dev-b", Violations: []fleet.SchemeViolation{{Path: "tags.floor", Rule: "got string, want integer"}}},
		{DeviceID: "dev-d", Violations: []fleet.SchemeViolation{{Path: "tags", Rule: "missing property 'floor'"}}},
		{DeviceID: "dev-e", Violations: []fleet.SchemeViolation{{Path: "tags.floor", Rule: "got string, want integer"}}},
	}, viol)

	res = run(workflows.SchemeCheckInput{CheckID: "scheme-set-b", Set: true, Tags: tags, AllowViolations: true})
	require.Equal(t, fleet.SchemeCheckEnd{Version: 2, State: fleet.SchemeActive, Checked: 5, Violating: 3}, res.SchemeCheckEnd)

	res = run(workflows.SchemeCheckInput{CheckID: "scheme-check-c"})
	require.Equal(t, fleet.SchemeCheckEnd{Version: 2, State: fleet.SchemeActive, Checked: 5, Violating: 3}, res.SchemeCheckEnd)
	chk, err := reg.GetSchemeCheck(ctx, "")
	require.NoError(t, err)
	require.Equal(t, "scheme-check-c", chk.ID)
	require.NotNil(t, chk.FinishedAt)
}

// A tag job validates each device's merged tags inside its batch: a device whose merge would break the
// scheme fails alone, naming the path and the rule, and the others are patched.
func TestTagJobFailsTheDevicesWhoseTagsWouldBreakTheScheme(t *testing.T) {
	reg := registrytest.Open(t)
	ctx := context.Background()
	registrytest.Provision(t, reg, "t", 3)
	for id, tags := range map[string]string{"t-00": `{"floor":1}`, "t-01": `{"floor":"x"}`, "t-02": `{"floor":2}`} {
		_, err := reg.UpdateTwin(ctx, id, "tags", []byte(tags), "")
		require.NoError(t, err)
	}
	// Every device may have any tags until the scheme is set with its violations allowed.
	registrytest.SetScheme(t, reg, "scheme-set-1", []byte(`{"type":"object","properties":{"floor":{"type":"integer"}}}`), nil, true, 100)
	total, err := reg.CreateJob(ctx, fleet.NewJob{ID: "job-t", Kind: fleet.JobSetTags, Query: "SELECT * FROM devices", Spec: []byte(`{}`)})
	require.NoError(t, err)
	a := &Activities{Jobs: reg}
	c, err := a.JobBatch(ctx, workflows.JobBatchInput{JobID: "job-t", Kind: fleet.JobSetTags, First: 0, Last: total, Patch: []byte(`{"ring":"beta"}`)})
	require.NoError(t, err)
	require.Equal(t, fleet.JobCounts{Succeeded: 2, Failed: 1}, c)
	failed, err := reg.JobDevices(ctx, "job-t", []fleet.JobState{fleet.JobFailed}, 10)
	require.NoError(t, err)
	require.Len(t, failed, 1)
	require.Equal(t, "t-01", failed[0].DeviceID)
	require.Equal(t, "device t-01: tags violates the metadata scheme: tags.floor: got string, want integer", failed[0].Error)
}
