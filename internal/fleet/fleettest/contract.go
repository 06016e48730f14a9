package fleettest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/health"
	"github.com/fleetflow/fleetflow/internal/rollout"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// ContractStore is every store role the contract covers.
type ContractStore interface {
	// ApplyReported is the gateway's ingest of reported patches.
	ApplyReported(ctx context.Context, patches []fleet.ReportedPatch) ([]fleet.ReportedResult, error)
	fleet.ProvisionStore
	fleet.JobStore
	fleet.RolloutStore
	fleet.RetireStore
	fleet.MonitorStore
}

// Seeder sets up what the contract's cases need, each implementation in its store's own way (the CLI's
// writes, for the registry).
type Seeder interface {
	// Stage stages manifest rows under op (row i has seq i).
	Stage(t *testing.T, op string, rows []StagedRow)
	// CreateJob freezes a job over ids (seq in order; unknown ids kept as targets).
	CreateJob(t *testing.T, job string, kind fleet.JobKind, ids ...string)
	// CreateRollout adds fw to the catalogue and claims the active devices among ids not on fw.Version; it
	// returns how many it claimed.
	CreateRollout(t *testing.T, id string, fw fleet.Firmware, ids ...string) int64
	// Connect records that the device connected.
	Connect(t *testing.T, id string)
	// Report merges a reported patch from the device.
	Report(t *testing.T, id string, patch string)
	// AddFirmware adds fw to the catalogue.
	AddFirmware(t *testing.T, fw fleet.Firmware)
	// Selects makes sure the twin query q selects exactly ids among the devices (the registry compiles q;
	// the fake is taught it).
	Selects(t *testing.T, q string, ids ...string)
	// AgeStaging makes op's staging look as if it happened by ago.
	AgeStaging(t *testing.T, op string, by time.Duration)
	// CredentialExpiry returns when the device's credentials expire (zero: never).
	CredentialExpiry(t *testing.T, id string) time.Time
}

// Subject is one store under test, empty, with its seeder.
type Subject struct {
	Store ContractStore
	Seed  Seeder
}

// Contract runs the behaviours activities rely on against the stores newSubject returns (a fresh, empty
// one per case): the fake in this package and the Postgres registry must both pass it.
func Contract(t *testing.T, newSubject func(t *testing.T) Subject) {
	cases := []struct {
		name string
		run  func(t *testing.T, s Subject)
	}{
		{"provisioning counts and results", contractProvision},
		{"job targets and outcomes", contractJobTargets},
		{"job batches: claims, patch and retire with outcomes in one transaction", contractJobBatches},
		{"patch twins", contractPatchTwins},
		{"acknowledgements and close", contractAcks},
		{"rollout dispatch, observe, rollback, finish", contractRollout},
		{"rollout dispatch under maintenance windows", contractRolloutWindows},
		{"retire, replace, purge", contractRetire},
		{"reported ingest", contractReported},
		{"create jobs: idempotent, by query or ids, empty", contractCreateJob},
		{"create rollouts: claims, idempotent, conflict, empty", contractCreateRollout},
		{"credential validity and stale staging", contractStaging},
		{"health check: open, retry, resolve, summary", contractHealthCheck},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.run(t, newSubject(t)) })
	}
}

var ctx = context.Background()

// provision creates active devices through the store's own provisioning.
func provision(t *testing.T, s Subject, op string, ids ...string) {
	t.Helper()
	rows := make([]StagedRow, len(ids))
	for i, id := range ids {
		rows[i] = StagedRow{Line: int64(i + 2), ID: id}
	}
	s.Seed.Stage(t, op, rows)
	c, err := s.Store.ProvisionBatch(ctx, op, 0, int64(len(ids)), 0)
	require.NoError(t, err)
	require.Equal(t, int64(len(ids)), c.Created, "provision %v", ids)
}

func contractProvision(t *testing.T, s Subject) {
	s.Seed.Stage(t, "op-1", []StagedRow{{Line: 2, ID: "c-1"}, {Line: 3, ID: "bad id!"}, {Line: 4, ID: "c-2", Tags: `{"site":"x"}`}})
	c, err := s.Store.ProvisionBatch(ctx, "op-1", 0, 3, 0)
	require.NoError(t, err)
	require.Equal(t, fleet.ProvisionCounts{Created: 2, Invalid: 1}, c)
	again, err := s.Store.ProvisionBatch(ctx, "op-1", 0, 3, 0)
	require.NoError(t, err)
	require.Equal(t, c, again, "a retried batch returns its counts and creates nothing twice")

	s.Seed.Stage(t, "op-2", []StagedRow{{Line: 2, ID: "c-1"}, {Line: 3, ID: "c-3"}})
	c, err = s.Store.ProvisionBatch(ctx, "op-2", 0, 2, 0)
	require.NoError(t, err)
	require.Equal(t, fleet.ProvisionCounts{Created: 1, Existing: 1}, c)
	require.Equal(t, int64(2), c.Total())

	res, err := s.Store.ProvisionResults(ctx, "op-2", fleet.RowExists, 10)
	require.NoError(t, err)
	require.Len(t, res, 1)
	require.Equal(t, "c-1", res[0].ID)
	require.Equal(t, int64(2), res[0].Line)
	res, err = s.Store.ProvisionResults(ctx, "op-1", "", 10)
	require.NoError(t, err)
	require.Len(t, res, 1)
	require.Equal(t, fleet.RowInvalid, res[0].Outcome)
	require.Equal(t, "bad id!", res[0].ID)
	require.NotEmpty(t, res[0].Reason)

	_, err = s.Store.ProvisionBatch(ctx, "op-never-staged", 0, 1, 0)
	require.ErrorIs(t, err, fleet.ErrOperationNotStaged)

	p, err := s.Store.ConnectProgress(ctx, "op-1", 10)
	require.NoError(t, err)
	require.Equal(t, fleet.ConnectProgress{Created: 2, Missing: []string{"c-1", "c-2"}}, p)
	s.Seed.Report(t, "c-1", `{"firmware":{"version":"1.0.0"}}`)
	p, err = s.Store.ConnectProgress(ctx, "op-1", 10)
	require.NoError(t, err)
	require.Equal(t, fleet.ConnectProgress{Created: 2, Connected: 1, Reported: 1, Missing: []string{"c-2"}}, p)

	require.NoError(t, s.Store.DropStaging(ctx, "op-1"))
	res, err = s.Store.ProvisionResults(ctx, "op-1", fleet.RowInvalid, 10)
	require.NoError(t, err)
	require.Len(t, res, 1, "results outlive the staged rows")
}

func contractJobTargets(t *testing.T, s Subject) {
	provision(t, s, "op", "j-0", "j-1", "j-2", "j-3")
	s.Seed.CreateJob(t, "job-1", fleet.JobSetTags, "j-0", "j-1", "j-2", "ghost", "j-3")
	ts, err := s.Store.JobTargets(ctx, "job-1", 0, 4)
	require.NoError(t, err)
	require.Equal(t, []fleet.JobTarget{{Seq: 0, DeviceID: "j-0", State: fleet.JobPending}, {Seq: 1, DeviceID: "j-1", State: fleet.JobPending},
		{Seq: 2, DeviceID: "j-2", State: fleet.JobPending}, {Seq: 3, DeviceID: "ghost", State: fleet.JobPending},
		{Seq: 4, DeviceID: "j-3", State: fleet.JobPending}}, ts, "unknown ids stay targets, in order")
	ts, err = s.Store.JobTargets(ctx, "job-1", 1, 2)
	require.NoError(t, err)
	require.Len(t, ts, 2, "first..last inclusive")

	outs := []fleet.JobOutcome{{Seq: 0, State: fleet.JobSucceeded}, {Seq: 3, State: fleet.JobFailed, Error: "no such device"},
		{Seq: 4, State: fleet.JobFailed, Status: 500, Payload: json.RawMessage(`{"err":"busy"}`), Error: "device answered 500"}}
	require.NoError(t, s.Store.RecordJobOutcomes(ctx, "job-1", outs))
	require.NoError(t, s.Store.RecordJobOutcomes(ctx, "job-1", outs), "recording again is harmless")
	ts, err = s.Store.JobTargets(ctx, "job-1", 0, 4)
	require.NoError(t, err)
	require.Equal(t, []fleet.JobTarget{{Seq: 1, DeviceID: "j-1", State: fleet.JobPending}, {Seq: 2, DeviceID: "j-2", State: fleet.JobPending}},
		ts, "only pending targets come back, so a retried batch skips what it did")
	c, err := s.Store.JobTotals(ctx, "job-1")
	require.NoError(t, err)
	require.Equal(t, fleet.JobCounts{Succeeded: 1, Failed: 2}, c, "pending targets are not counted")

	require.NoError(t, s.Store.CloseJob(ctx, "job-1", fleet.JobEndCancelled))
	c, err = s.Store.JobTotals(ctx, "job-1")
	require.NoError(t, err)
	require.Equal(t, fleet.JobCounts{Succeeded: 1, Failed: 2, Cancelled: 2}, c, "closing cancels what was never reached")
}

func contractPatchTwins(t *testing.T, s Subject) {
	provision(t, s, "op", "p-0", "p-1", "p-gone")
	_, err := s.Store.RetireDevices(ctx, "retire-1", []string{"p-gone"}, "test")
	require.NoError(t, err)
	s.Seed.Connect(t, "p-1")

	res, err := s.Store.PatchTwins(ctx, twin.Desired, []fleet.DevicePatch{{DeviceID: "p-0", Patch: []byte(`{"mode":"eco"}`)},
		{DeviceID: "p-1", Patch: []byte(`{"mode":"eco"}`)}, {DeviceID: "nope", Patch: []byte(`{"mode":"eco"}`)},
		{DeviceID: "p-gone", Patch: []byte(`{"mode":"eco"}`)}})
	require.NoError(t, err)
	require.Len(t, res, 4)
	require.NoError(t, res[0].Err)
	require.NoError(t, res[1].Err)
	require.Equal(t, []string{"p-0", "p-1", "nope", "p-gone"}, []string{res[0].DeviceID, res[1].DeviceID, res[2].DeviceID, res[3].DeviceID})
	require.False(t, res[0].Online)
	require.True(t, res[1].Online)
	require.ErrorIs(t, res[2].Err, fleet.ErrNotFound, "an unknown device is refused alone")
	require.ErrorIs(t, res[3].Err, fleet.ErrNotActive, "a retired device is refused alone")
	v1 := res[0].Version
	require.Positive(t, v1)

	res, err = s.Store.PatchTwins(ctx, twin.Desired, []fleet.DevicePatch{{DeviceID: "p-0", Patch: []byte(`{"fan":2}`)}})
	require.NoError(t, err)
	require.NoError(t, res[0].Err)
	require.Equal(t, v1+1, res[0].Version, "every write bumps the version by one")
	docs, err := s.Store.DesiredDocs(ctx, []string{"p-0", "nope"})
	require.NoError(t, err)
	require.Len(t, docs, 1, "unknown devices are left out")
	require.Equal(t, v1+1, docs[0].Version)
	require.JSONEq(t, `{"mode":"eco","fan":2}`, string(docs[0].Patch), "patches merge")

	huge := fmt.Sprintf(`{"blob":%q}`, strings.Repeat("x", twin.MaxTagsBytes+1))
	res, err = s.Store.PatchTwins(ctx, twin.Tags, []fleet.DevicePatch{{DeviceID: "p-0", Patch: []byte(huge)}, {DeviceID: "p-1", Patch: []byte(`{"site":"b"}`)}})
	require.NoError(t, err)
	var le *twin.LimitError
	require.ErrorAs(t, res[0].Err, &le, "the size limit holds")
	require.NoError(t, res[1].Err, "and fails only its device")
}

func contractAcks(t *testing.T, s Subject) {
	provision(t, s, "op", "a-0", "a-1", "a-2")
	s.Seed.Connect(t, "a-1")
	s.Seed.CreateJob(t, "job-d", fleet.JobSetDesired, "a-0", "a-1", "a-2")
	res, err := s.Store.PatchTwins(ctx, twin.Desired, []fleet.DevicePatch{{DeviceID: "a-0", Patch: []byte(`{"mode":"eco"}`)},
		{DeviceID: "a-1", Patch: []byte(`{"mode":"eco"}`)}, {DeviceID: "a-2", Patch: []byte(`{"mode":"eco"}`)}})
	require.NoError(t, err)
	for _, r := range res {
		require.NoError(t, r.Err)
	}
	require.NoError(t, s.Store.RecordJobOutcomes(ctx, "job-d", []fleet.JobOutcome{{Seq: 0, State: fleet.JobRunning},
		{Seq: 1, State: fleet.JobRunning}, {Seq: 2, State: fleet.JobRunning}}))

	s.Seed.Report(t, "a-0", `{"mode":"eco"}`)
	s.Seed.Report(t, "a-2", `{"mode":"turbo"}`)
	p, err := s.Store.CollectAcks(ctx, "job-d", []string{"mode"})
	require.NoError(t, err)
	require.Equal(t, fleet.AckProgress{Acked: 1, Waiting: 2, WaitingOnline: 1}, p, "only a matching report acknowledges")
	p, err = s.Store.CollectAcks(ctx, "job-d", []string{"mode"})
	require.NoError(t, err)
	require.Equal(t, fleet.AckProgress{Waiting: 2, WaitingOnline: 1}, p, "an acknowledgement counts once")

	require.NoError(t, s.Store.CloseJob(ctx, "job-d", fleet.JobCompletedWithFailures))
	c, err := s.Store.JobTotals(ctx, "job-d")
	require.NoError(t, err)
	require.Equal(t, fleet.JobCounts{Succeeded: 1, TimedOut: 1, Offline: 1}, c, "still waiting: timed out when online, else offline")
}

func contractRollout(t *testing.T, s Subject) {
	provision(t, s, "op", "r-0", "r-1", "r-2", "r-new")
	for _, id := range []string{"r-0", "r-1", "r-2"} {
		s.Seed.Report(t, id, `{"firmware":{"version":"1.0.0"}}`)
	}
	s.Seed.Report(t, "r-new", `{"firmware":{"version":"2.0.0"}}`)
	fw := fleet.Firmware{Version: "2.0.0", URL: "https://fw.example/2.0.0.bin", SHA256: strings.Repeat("ab", 32)}
	require.Equal(t, int64(3), s.Seed.CreateRollout(t, "ro-1", fw, "r-0", "r-1", "r-2", "r-new"), "devices already on the version are not claimed")

	p1, skipped, more, err := s.Store.DispatchWave(ctx, "ro-1", 0, 2, fw, 1)
	require.NoError(t, err)
	require.Zero(t, skipped)
	require.True(t, more)
	require.Len(t, p1, 1)
	p2, _, more, err := s.Store.DispatchWave(ctx, "ro-1", 0, 2, fw, 1)
	require.NoError(t, err)
	require.False(t, more, "the wave ends at its cutoff")
	require.Len(t, p2, 1)
	p3, _, _, err := s.Store.DispatchWave(ctx, "ro-1", 0, 2, fw, 1)
	require.NoError(t, err)
	require.Empty(t, p3, "a repeated dispatch finds nothing queued")
	dispatched := []string{p1[0].DeviceID, p2[0].DeviceID}
	for _, p := range append(p1, p2...) {
		require.Positive(t, p.Version)
		var doc struct {
			Firmware struct{ JobID, Version, URL, SHA256 string }
		}
		require.NoError(t, json.Unmarshal(p.Patch, &doc))
		require.Equal(t, "2.0.0", doc.Firmware.Version)
		require.Equal(t, "ro-1", doc.Firmware.JobID)
		require.Equal(t, fw.URL, doc.Firmware.URL)
	}

	counts := phaseCounts(t, s, "ro-1")
	require.Equal(t, map[string]int64{"0/dispatched": 2, "-1/queued": 1}, counts)

	obs, err := s.Store.ObserveRollout(ctx, "ro-1", "ro-1", []rollout.Phase{rollout.Dispatched})
	require.NoError(t, err)
	require.Len(t, obs, 2)
	var ids []string
	for _, o := range obs {
		ids = append(ids, o.DeviceID)
		require.Equal(t, "1.0.0", o.PrevVersion)
		require.Equal(t, "1.0.0", o.ReportedVersion)
		require.Equal(t, 0, o.Wave)
		require.False(t, o.DispatchedAt.IsZero())
	}
	require.ElementsMatch(t, dispatched, ids)

	require.NoError(t, s.Store.UpdateRolloutPhases(ctx, "ro-1", []fleet.PhaseUpdate{{Rank: obs[0].Rank, Phase: rollout.Failed, Reason: "no space"}}))
	devs, err := s.Store.RolloutDevices(ctx, "ro-1", []rollout.Phase{rollout.Failed}, 10)
	require.NoError(t, err)
	require.Len(t, devs, 1)
	require.Equal(t, obs[0].DeviceID, devs[0].DeviceID)
	require.Equal(t, "no space", devs[0].Reason)

	pushes, more, err := s.Store.StartRollback(ctx, "ro-1", "ro-1-rollback", 10)
	require.NoError(t, err)
	require.False(t, more)
	require.Len(t, pushes, 2, "every touched device goes back, failed ones too")
	for _, p := range pushes {
		require.Contains(t, string(p.Patch), `"1.0.0"`)
		require.Contains(t, string(p.Patch), "ro-1-rollback")
	}
	require.NoError(t, s.Store.UpdateRolloutPhases(ctx, "ro-1", []fleet.PhaseUpdate{{Rank: obs[0].Rank, Phase: rollout.RolledBack}}))
	devs, err = s.Store.RolloutDevices(ctx, "ro-1", []rollout.Phase{rollout.RolledBack}, 10)
	require.NoError(t, err)
	require.Len(t, devs, 1)
	require.Equal(t, "no space", devs[0].Reason, "a rollback phase without a reason keeps the forward one")

	require.NoError(t, s.Store.FinishRollout(ctx, "ro-1", fleet.RolloutRolledBack, json.RawMessage(`{"state":"rolled_back"}`)))
	require.NoError(t, s.Store.FinishRollout(ctx, "ro-1", fleet.RolloutRolledBack, json.RawMessage(`{"state":"rolled_back"}`)), "finishing twice is harmless")
	counts = phaseCounts(t, s, "ro-1")
	require.Equal(t, map[string]int64{"0/rolled_back": 1, "0/rolling_back": 1, "-1/cancelled": 1}, counts,
		"devices never dispatched are cancelled")
	all, err := s.Store.RolloutDevices(ctx, "ro-1", nil, 10)
	require.NoError(t, err)
	require.Len(t, all, 3, "no phases: every device")
}

// contractRolloutWindows: DispatchWaveWindowed walks a wave's queued devices in chunks after a rank cursor,
// hands decide the text of the named tags, dispatches what it says, records what it gives a phase in the
// wave, and leaves the rest queued for a later pass.
func contractRolloutWindows(t *testing.T, s Subject) {
	rows := []StagedRow{
		{Line: 2, ID: "w-open", Tags: `{"maintenance":"open","zone":3}`},
		{Line: 3, ID: "w-wait", Tags: `{"maintenance":"wait"}`},
		{Line: 4, ID: "w-out", Tags: `{"maintenance":"out"}`},
		{Line: 5, ID: "w-none"},
		{Line: 6, ID: "w-later", Tags: `{"maintenance":"wait"}`},
	}
	s.Seed.Stage(t, "op", rows)
	c, err := s.Store.ProvisionBatch(ctx, "op", 0, int64(len(rows)), 0)
	require.NoError(t, err)
	require.Equal(t, int64(len(rows)), c.Created)
	ids := []string{"w-open", "w-wait", "w-out", "w-none", "w-later"}
	for _, id := range ids {
		s.Seed.Report(t, id, `{"firmware":{"version":"1.0.0"}}`)
	}
	fw := fleet.Firmware{Version: "2.0.0", URL: "https://fw.example/2.0.0.bin", SHA256: strings.Repeat("ab", 32)}
	require.Equal(t, int64(5), s.Seed.CreateRollout(t, "ro-w", fw, ids...))

	seen := map[string]map[string]string{}
	opened := map[string]bool{}
	decide := func(id string, tags map[string]string) (bool, rollout.Phase, string) {
		seen[id] = tags
		switch tags["maintenance"] {
		case "out":
			return false, rollout.OutsideWindow, "window closed until after the deadline"
		case "wait":
			return opened[id], "", ""
		}
		return true, "", ""
	}
	pass := func() (pushed []string) {
		after, chunks := int64(-1), 0
		for {
			chunk, err := s.Store.DispatchWaveWindowed(ctx, "ro-w", 0, after, 5, fw, 2, []string{"maintenance", "zone"}, decide)
			require.NoError(t, err)
			chunks++
			require.LessOrEqual(t, chunks, 5, "the cursor moves on")
			for _, p := range chunk.Pushes {
				pushed = append(pushed, p.DeviceID)
			}
			if !chunk.More {
				return pushed
			}
			require.Greater(t, chunk.Last, after)
			after = chunk.Last
		}
	}
	require.ElementsMatch(t, []string{"w-open", "w-none"}, pass())
	require.Equal(t, map[string]string{"maintenance": "open", "zone": "3"}, seen["w-open"], "tags as text, JSON for non-strings")
	require.Empty(t, seen["w-none"])
	require.Equal(t, map[string]int64{"0/dispatched": 2, "0/outside_window": 1, "-1/queued": 2}, phaseCounts(t, s, "ro-w"))
	devs, err := s.Store.RolloutDevices(ctx, "ro-w", []rollout.Phase{rollout.OutsideWindow}, 10)
	require.NoError(t, err)
	require.Len(t, devs, 1)
	require.Equal(t, "w-out", devs[0].DeviceID)
	require.Equal(t, "window closed until after the deadline", devs[0].Reason)

	opened["w-wait"] = true
	clear(seen)
	require.Equal(t, []string{"w-wait"}, pass(), "a later pass judges only the devices still queued")
	require.ElementsMatch(t, []string{"w-wait", "w-later"}, keys(seen))
	require.Equal(t, map[string]int64{"0/dispatched": 3, "0/outside_window": 1, "-1/queued": 1}, phaseCounts(t, s, "ro-w"))
}

func keys(m map[string]map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func phaseCounts(t *testing.T, s Subject, ro string) map[string]int64 {
	t.Helper()
	pcs, err := s.Store.RolloutCounts(ctx, ro)
	require.NoError(t, err)
	m := map[string]int64{}
	for _, pc := range pcs {
		m[fmt.Sprintf("%d/%s", pc.Wave, pc.Phase)] += pc.N
	}
	return m
}

func contractRetire(t *testing.T, s Subject) {
	provision(t, s, "op", "x-0", "old", "new", "spare")
	s.Seed.CreateJob(t, "job-other", fleet.JobSetTags, "x-0", "spare")

	res, err := s.Store.RetireDevices(ctx, "retire-1", []string{"x-0", "nope"}, "end of life")
	require.NoError(t, err)
	require.Equal(t, []fleet.RetireResult{{DeviceID: "x-0", Outcome: fleet.RetireDone}, {DeviceID: "nope", Outcome: fleet.RetireUnknown}}, res)
	res, err = s.Store.RetireDevices(ctx, "retire-1", []string{"x-0"}, "end of life")
	require.NoError(t, err)
	require.Equal(t, []fleet.RetireResult{{DeviceID: "x-0", Outcome: fleet.RetireAlreadyRetired}}, res, "retiring twice is harmless")
	ts, err := s.Store.JobTargets(ctx, "job-other", 0, 1)
	require.NoError(t, err)
	require.Equal(t, []fleet.JobTarget{{Seq: 1, DeviceID: "spare", State: fleet.JobPending}}, ts, "a retired device leaves pending jobs")

	_, err = s.Store.ReplaceDevice(ctx, "rep-0", "ghost", "new")
	require.ErrorIs(t, err, fleet.ErrNotFound)
	_, err = s.Store.ReplaceDevice(ctx, "rep-0", "spare", "x-0")
	require.ErrorIs(t, err, fleet.ErrRetired, "a retired device cannot take over")

	_, err = s.Store.PatchTwins(ctx, twin.Tags, []fleet.DevicePatch{{DeviceID: "old", Patch: []byte(`{"site":"a","rack":7}`)},
		{DeviceID: "new", Patch: []byte(`{"site":"b"}`)}})
	require.NoError(t, err)
	_, err = s.Store.PatchTwins(ctx, twin.Desired, []fleet.DevicePatch{{DeviceID: "old", Patch: []byte(`{"mode":"eco"}`)}})
	require.NoError(t, err)
	r1, err := s.Store.ReplaceDevice(ctx, "rep-1", "old", "new")
	require.NoError(t, err)
	require.Positive(t, r1.DesiredVersion)
	require.JSONEq(t, `{"mode":"eco"}`, string(r1.Desired))
	r2, err := s.Store.ReplaceDevice(ctx, "rep-1", "old", "new")
	require.NoError(t, err, "repeating a replacement is harmless")
	require.Equal(t, r1.DesiredVersion, r2.DesiredVersion, "and writes nothing twice")
	res, err = s.Store.RetireDevices(ctx, "retire-2", []string{"old"}, "")
	require.NoError(t, err)
	require.Equal(t, fleet.RetireAlreadyRetired, res[0].Outcome, "the replaced device is retired")

	n, err := s.Store.PurgeArchive(ctx, time.Hour)
	require.NoError(t, err)
	require.Zero(t, n, "nothing retired an hour ago")
	_, err = s.Store.PurgeArchive(ctx, 0)
	require.Error(t, err, "a retention is required")
	time.Sleep(1100 * time.Millisecond)
	n, err = s.Store.PurgeArchive(ctx, time.Second)
	require.NoError(t, err)
	require.Equal(t, int64(2), n)
	res, err = s.Store.RetireDevices(ctx, "retire-3", []string{"x-0"}, "")
	require.NoError(t, err)
	require.Equal(t, fleet.RetireUnknown, res[0].Outcome, "purged devices are gone")
}

func contractReported(t *testing.T, s Subject) {
	provision(t, s, "op", "i-0", "i-gone")
	_, err := s.Store.RetireDevices(ctx, "retire-1", []string{"i-gone"}, "")
	require.NoError(t, err)
	huge := fmt.Sprintf(`{"blob":%q}`, strings.Repeat("x", twin.MaxReportedBytes+1))
	res, err := s.Store.ApplyReported(ctx, []fleet.ReportedPatch{{DeviceID: "i-0", RequestID: "a", Patch: []byte(`{"fan":1}`)},
		{DeviceID: "nope", RequestID: "b", Patch: []byte(`{"fan":1}`)}, {DeviceID: "i-gone", RequestID: "c", Patch: []byte(`{"fan":1}`)},
		{DeviceID: "i-0", RequestID: "d", Patch: []byte(huge)}})
	require.NoError(t, err)
	require.Len(t, res, 4)
	require.Equal(t, []string{"a", "b", "c", "d"}, []string{res[0].RequestID, res[1].RequestID, res[2].RequestID, res[3].RequestID})
	require.NoError(t, res[0].Err)
	require.Positive(t, res[0].Version)
	require.ErrorIs(t, res[1].Err, fleet.ErrNotFound)
	require.ErrorIs(t, res[2].Err, fleet.ErrNotActive)
	var le *twin.LimitError
	require.ErrorAs(t, res[3].Err, &le)
	again, err := s.Store.ApplyReported(ctx, []fleet.ReportedPatch{{DeviceID: "i-0", RequestID: "e", Patch: []byte(`{"fan":2}`)}})
	require.NoError(t, err)
	require.Equal(t, res[0].Version+1, again[0].Version, "every applied patch bumps the reported version by one")
}

// inQuery is a twin query selecting ids.
func inQuery(ids ...string) string {
	quoted := make([]string, len(ids))
	for i, id := range ids {
		quoted[i] = "'" + id + "'"
	}
	return "SELECT * FROM devices WHERE deviceId IN (" + strings.Join(quoted, ", ") + ")"
}

func contractCreateJob(t *testing.T, s Subject) {
	provision(t, s, "op", "k-2", "k-0", "k-1")
	q := inQuery("k-0", "k-1", "k-2")
	s.Seed.Selects(t, q, "k-0", "k-1", "k-2")
	job := fleet.NewJob{ID: "job-q", Kind: fleet.JobSetTags, Query: q, Spec: json.RawMessage(`{}`)}
	n, err := s.Store.CreateJob(ctx, job)
	require.NoError(t, err)
	require.Equal(t, int64(3), n)
	again, err := s.Store.CreateJob(ctx, job)
	require.NoError(t, err)
	require.Equal(t, n, again, "creating the same job again returns what the first attempt made")
	targets, err := s.Store.JobTargets(ctx, "job-q", 0, 10)
	require.NoError(t, err)
	require.Equal(t, []fleet.JobTarget{{Seq: 0, DeviceID: "k-0", State: fleet.JobPending}, {Seq: 1, DeviceID: "k-1", State: fleet.JobPending},
		{Seq: 2, DeviceID: "k-2", State: fleet.JobPending}}, targets, "a query's targets are numbered in id order, once")

	n, err = s.Store.CreateJob(ctx, fleet.NewJob{ID: "job-ids", Kind: fleet.JobRetire, Query: "ids: k-1 nope k-1", IDs: []string{"k-1", "nope", "k-1"},
		Spec: json.RawMessage(`{}`)})
	require.NoError(t, err)
	require.Equal(t, int64(2), n, "duplicates dropped, unknown ids kept")
	targets, err = s.Store.JobTargets(ctx, "job-ids", 0, 10)
	require.NoError(t, err)
	require.Len(t, targets, 2)
	require.Equal(t, "k-1", targets[0].DeviceID)
	require.Equal(t, "nope", targets[1].DeviceID)

	none := inQuery("nobody")
	s.Seed.Selects(t, none)
	_, err = s.Store.CreateJob(ctx, fleet.NewJob{ID: "job-empty", Kind: fleet.JobSetTags, Query: none, Spec: json.RawMessage(`{}`)})
	require.ErrorIs(t, err, fleet.ErrEmptyTarget)
	targets, err = s.Store.JobTargets(ctx, "job-empty", 0, 10)
	require.NoError(t, err)
	require.Empty(t, targets, "an empty job leaves nothing behind")
	_, err = s.Store.CreateJob(ctx, fleet.NewJob{ID: "job-empty-ids", Kind: fleet.JobRetire, IDs: []string{}, Spec: json.RawMessage(`{}`)})
	require.ErrorIs(t, err, fleet.ErrEmptyTarget)
}

func contractCreateRollout(t *testing.T, s Subject) {
	provision(t, s, "op", "v-0", "v-1", "v-2", "v-3")
	for _, id := range []string{"v-0", "v-1", "v-2"} {
		s.Seed.Report(t, id, `{"firmware":{"version":"1.0.0"}}`)
	}
	s.Seed.Report(t, "v-3", `{"firmware":{"version":"3.0.0"}}`)
	fw := fleet.Firmware{Version: "3.0.0", URL: "https://fw.example/3.0.0.bin", SHA256: strings.Repeat("cd", 32)}
	_, err := s.Store.CreateRollout(ctx, fleet.NewRollout{ID: "ro-a", Version: fw.Version, Query: inQuery("v-0"), Spec: json.RawMessage(`{}`)})
	require.Error(t, err)
	require.ErrorIs(t, err, fleet.ErrUnknownFirmware)
	s.Seed.AddFirmware(t, fw)

	qa := inQuery("v-0", "v-1", "v-3")
	s.Seed.Selects(t, qa, "v-0", "v-1", "v-3")
	ro := fleet.NewRollout{ID: "ro-a", Version: fw.Version, Query: qa, Spec: json.RawMessage(`{}`)}
	n, err := s.Store.CreateRollout(ctx, ro)
	require.NoError(t, err)
	require.Equal(t, int64(2), n, "a device already on the version is not claimed")
	again, err := s.Store.CreateRollout(ctx, ro)
	require.NoError(t, err)
	require.Equal(t, n, again, "creating the same rollout again finds its own claims, not a conflict")
	devs, err := s.Store.RolloutDevices(ctx, "ro-a", nil, 10)
	require.NoError(t, err)
	var claimed []string
	for _, d := range devs {
		claimed = append(claimed, d.DeviceID)
		require.Equal(t, rollout.Queued, d.Phase)
	}
	require.ElementsMatch(t, []string{"v-0", "v-1"}, claimed)

	qb := inQuery("v-1", "v-2")
	s.Seed.Selects(t, qb, "v-1", "v-2")
	_, err = s.Store.CreateRollout(ctx, fleet.NewRollout{ID: "ro-b", Version: fw.Version, Query: qb, Spec: json.RawMessage(`{}`)})
	var conflict *fleet.RolloutConflictError
	require.ErrorAs(t, err, &conflict)
	require.Equal(t, fleet.RolloutConflictError{Rollout: "ro-a", Devices: 1}, *conflict)
	require.Contains(t, err.Error(), "ro-a", "the refusal names the other rollout")
	devs, err = s.Store.RolloutDevices(ctx, "ro-b", nil, 10)
	require.NoError(t, err)
	require.Empty(t, devs, "a refused rollout claims nothing")

	require.NoError(t, s.Store.FinishRollout(ctx, "ro-a", fleet.RolloutCompleted, nil))
	n, err = s.Store.CreateRollout(ctx, fleet.NewRollout{ID: "ro-b", Version: fw.Version, Query: qb, Spec: json.RawMessage(`{}`)})
	require.NoError(t, err, "claims are released when a rollout finishes")
	require.Equal(t, int64(2), n)

	qc := inQuery("v-3")
	s.Seed.Selects(t, qc, "v-3")
	_, err = s.Store.CreateRollout(ctx, fleet.NewRollout{ID: "ro-c", Version: fw.Version, Query: qc, Spec: json.RawMessage(`{}`)})
	require.ErrorIs(t, err, fleet.ErrEmptyTarget)
}

func contractStaging(t *testing.T, s Subject) {
	s.Seed.Stage(t, "op-v", []StagedRow{{Line: 2, ID: "e-0"}, {Line: 3, ID: "e-1"}})
	provision(t, s, "op-pre", "e-1")
	before := time.Now()
	c, err := s.Store.ProvisionBatch(ctx, "op-v", 0, 2, 48*time.Hour)
	require.NoError(t, err)
	require.Equal(t, fleet.ProvisionCounts{Created: 1, Existing: 1}, c)
	exp := s.Seed.CredentialExpiry(t, "e-0")
	require.WithinDuration(t, before.Add(48*time.Hour), exp, time.Minute, "the batch sets the expiry of the devices it creates")
	require.True(t, s.Seed.CredentialExpiry(t, "e-1").IsZero(), "a device that existed before keeps its credentials and expiry")

	s.Seed.Stage(t, "op-fresh", []StagedRow{{Line: 2, ID: "f-0"}})
	s.Seed.Stage(t, "op-stale", []StagedRow{{Line: 2, ID: "s-0"}, {Line: 3, ID: "s-1"}})
	s.Seed.AgeStaging(t, "op-stale", 25*time.Hour)
	n, err := s.Store.DropStaleStaging(ctx, 24*time.Hour)
	require.NoError(t, err)
	require.Equal(t, int64(2), n, "only the rows staged more than a day ago")
	n, err = s.Store.DropStaleStaging(ctx, 24*time.Hour)
	require.NoError(t, err)
	require.Zero(t, n, "dropping again is harmless")
	_, err = s.Store.ProvisionBatch(ctx, "op-stale", 0, 2, 0)
	require.ErrorIs(t, err, fleet.ErrStagingLost, "a workflow that would still read them says so")
	c, err = s.Store.ProvisionBatch(ctx, "op-fresh", 0, 1, 0)
	require.NoError(t, err)
	require.Equal(t, int64(1), c.Created, "fresh staging is kept")
}

func contractHealthCheck(t *testing.T, s Subject) {
	provision(t, s, "op", "h-0", "h-1", "h-2")
	s.Seed.Connect(t, "h-1")
	// Every device was created (and h-1 seen) well before now - OfflineAfter by the time the check runs; the
	// other rules keep their defaults, under which these fresh devices have no problem.
	rules := health.Rules{OfflineAfter: 50 * time.Millisecond}
	time.Sleep(150 * time.Millisecond)

	_, err := s.Store.RunHealthCheck(ctx, "", rules)
	require.Error(t, err, "a run id is required")
	_, err = s.Store.RunHealthCheck(ctx, "hc-0", health.Rules{AckWithin: -time.Minute})
	require.Error(t, err, "invalid rules are refused")

	sum, err := s.Store.RunHealthCheck(ctx, "hc-1", rules)
	require.NoError(t, err)
	require.False(t, sum.At.IsZero())
	require.Equal(t, rules.WithDefaults(), sum.Rules)
	require.Equal(t, map[string]int64{health.KindOffline: 2, health.KindUnhealthy: 0, health.KindDesiredPending: 0,
		health.KindFirmwareNoncompliant: 0, health.KindCredentialExpiring: 0}, sum.Problems)
	require.Equal(t, [6]int64{3, 3, 0, 0, 1, 2}, [6]int64{sum.Devices, sum.Active, sum.Disabled, sum.Retired, sum.Online, sum.Offline},
		"devices, active, disabled, retired, online, offline")
	require.Equal(t, [3]int64{2, 0, 2}, [3]int64{sum.Opened, sum.Resolved, sum.Open}, "the two never-connected devices open alerts")

	again, err := s.Store.RunHealthCheck(ctx, "hc-1", rules)
	require.NoError(t, err)
	require.Equal(t, [3]int64{0, 0, 2}, [3]int64{again.Opened, again.Resolved, again.Open}, "a retry of the run opens nothing twice")
	require.Equal(t, int64(2), again.Problems[health.KindOffline])

	s.Seed.Connect(t, "h-0")
	back, err := s.Store.RunHealthCheck(ctx, "hc-2", rules)
	require.NoError(t, err)
	require.Equal(t, [3]int64{0, 1, 1}, [3]int64{back.Opened, back.Resolved, back.Open}, "a device back online resolves its alert")
	require.Equal(t, [2]int64{2, 1}, [2]int64{back.Online, back.Offline})
	require.Equal(t, int64(1), back.Problems[health.KindOffline])

	_, err = s.Store.RetireDevices(ctx, "retire-h", []string{"h-2"}, "")
	require.NoError(t, err)
	gone, err := s.Store.RunHealthCheck(ctx, "hc-3", rules)
	require.NoError(t, err)
	require.Equal(t, [3]int64{0, 1, 0}, [3]int64{gone.Opened, gone.Resolved, gone.Open}, "a retired device's alert resolves")
	require.Equal(t, [6]int64{2, 2, 0, 1, 2, 0}, [6]int64{gone.Devices, gone.Active, gone.Disabled, gone.Retired, gone.Online, gone.Offline})
	require.Zero(t, gone.Problems[health.KindOffline])
}

// contractJobBatches covers what makes a retried job batch do nothing twice: a final outcome is never
// overwritten; a claim (dispatched) is won once; a patch or a retirement commits with its outcomes or not at
// all; targets another attempt finished roll a batch back; the counts of a range.
func contractJobBatches(t *testing.T, s Subject) {
	provision(t, s, "op", "b-0", "b-1", "b-2", "b-3")
	s.Seed.CreateJob(t, "job-m", fleet.JobMethod, "b-0", "b-1", "b-2", "b-3")

	// Claims: pending -> dispatched, once; a dispatched target stays a target until its outcome.
	got, err := s.Store.ClaimJobTargets(ctx, "job-m", []int64{2, 0, 1})
	require.NoError(t, err)
	require.Equal(t, []int64{0, 1, 2}, got)
	got, err = s.Store.ClaimJobTargets(ctx, "job-m", []int64{1, 2, 3})
	require.NoError(t, err)
	require.Equal(t, []int64{3}, got, "a target is claimed once")
	ts, err := s.Store.JobTargets(ctx, "job-m", 0, 3)
	require.NoError(t, err)
	require.Len(t, ts, 4)
	require.Equal(t, fleet.JobDispatched, ts[0].State, "dispatched targets come back with their state")
	require.NoError(t, s.Store.RecordJobOutcomes(ctx, "job-m", []fleet.JobOutcome{{Seq: 0, State: fleet.JobSucceeded, Status: 200},
		{Seq: 1, State: fleet.JobPending}}))
	require.NoError(t, s.Store.RecordJobOutcomes(ctx, "job-m", []fleet.JobOutcome{{Seq: 0, State: fleet.JobTimedOut}}))
	c, err := s.Store.JobRangeTotals(ctx, "job-m", 0, 1)
	require.NoError(t, err)
	require.Equal(t, fleet.JobCounts{Succeeded: 1}, c, "a final outcome is never overwritten; a call not sent goes back to pending")
	c, err = s.Store.JobRangeTotals(ctx, "job-m", 0, 3)
	require.NoError(t, err)
	require.Equal(t, fleet.JobCounts{Succeeded: 1, Running: 2}, c, "dispatched targets count as running")
	require.NoError(t, s.Store.CloseJob(ctx, "job-m", fleet.JobCompletedWithFailures))
	c, err = s.Store.JobTotals(ctx, "job-m")
	require.NoError(t, err)
	require.Equal(t, fleet.JobCounts{Succeeded: 1, TimedOut: 2, Cancelled: 1}, c, "a lost answer closes as timed out, never resent")

	// A patch commits with its outcomes, or not at all.
	s.Seed.CreateJob(t, "job-p", fleet.JobSetDesired, "b-0", "b-1")
	ts, err = s.Store.JobTargets(ctx, "job-p", 0, 1)
	require.NoError(t, err)
	docs, err := s.Store.DesiredDocs(ctx, []string{"b-0", "b-1"})
	require.NoError(t, err)
	v0 := docs[0].Version
	running := func(ts []fleet.JobTarget, rs []fleet.PatchResult) ([]fleet.JobOutcome, error) {
		outs := make([]fleet.JobOutcome, len(ts))
		for i := range ts {
			require.NoError(t, rs[i].Err)
			require.Equal(t, ts[i].DeviceID, rs[i].DeviceID, "results in the targets' order")
			outs[i] = fleet.JobOutcome{Seq: ts[i].Seq, State: fleet.JobRunning}
		}
		return outs, nil
	}
	boom := fmt.Errorf("crash inside the transaction")
	err = s.Store.PatchJobTargets(ctx, "job-p", twin.Desired, ts, []byte(`{"mode":"eco"}`), func([]fleet.JobTarget, []fleet.PatchResult) ([]fleet.JobOutcome, error) {
		return nil, boom
	})
	require.ErrorIs(t, err, boom)
	docs, err = s.Store.DesiredDocs(ctx, []string{"b-0"})
	require.NoError(t, err)
	require.Equal(t, v0, docs[0].Version, "an error from outcomes rolls the patch back")
	require.NoError(t, s.Store.PatchJobTargets(ctx, "job-p", twin.Desired, ts, []byte(`{"mode":"eco"}`), running))
	docs, err = s.Store.DesiredDocs(ctx, []string{"b-0"})
	require.NoError(t, err)
	require.Equal(t, v0+1, docs[0].Version)
	require.Error(t, s.Store.PatchJobTargets(ctx, "job-p", twin.Desired, ts, []byte(`{"mode":"eco"}`), running),
		"targets another attempt finished roll the batch back")
	docs, err = s.Store.DesiredDocs(ctx, []string{"b-0"})
	require.NoError(t, err)
	require.Equal(t, v0+1, docs[0].Version, "and write nothing: version +1 exactly")
	c, err = s.Store.JobRangeTotals(ctx, "job-p", 0, 1)
	require.NoError(t, err)
	require.Equal(t, fleet.JobCounts{Running: 2}, c)

	// A decommission batch: retired with its outcomes, its own targets never cancelled by the retirement,
	// other jobs' pending targets cancelled.
	s.Seed.CreateJob(t, "job-other", fleet.JobSetTags, "b-2", "b-3")
	s.Seed.CreateJob(t, "job-r", fleet.JobRetire, "b-2", "ghost")
	ts, err = s.Store.JobTargets(ctx, "job-r", 0, 1)
	require.NoError(t, err)
	err = s.Store.RetireJobTargets(ctx, "job-r", ts, "test", func([]fleet.JobTarget, []fleet.RetireResult) ([]fleet.JobOutcome, error) {
		return nil, boom
	})
	require.ErrorIs(t, err, boom)
	ots, err := s.Store.JobTargets(ctx, "job-other", 0, 1)
	require.NoError(t, err)
	require.Len(t, ots, 2, "a rolled-back retirement cancels nothing")
	var seen []fleet.RetireResult
	require.NoError(t, s.Store.RetireJobTargets(ctx, "job-r", ts, "test", func(ts []fleet.JobTarget, rs []fleet.RetireResult) ([]fleet.JobOutcome, error) {
		seen = rs
		outs := make([]fleet.JobOutcome, len(ts))
		for i := range ts {
			outs[i] = fleet.JobOutcome{Seq: ts[i].Seq, State: fleet.JobSucceeded}
		}
		return outs, nil
	}))
	require.Equal(t, []fleet.RetireResult{{DeviceID: "b-2", Outcome: fleet.RetireDone}, {DeviceID: "ghost", Outcome: fleet.RetireUnknown}}, seen)
	c, err = s.Store.JobTotals(ctx, "job-r")
	require.NoError(t, err)
	require.Equal(t, fleet.JobCounts{Succeeded: 2}, c, "the decommission's own targets carry its outcomes")
	ots, err = s.Store.JobTargets(ctx, "job-other", 0, 1)
	require.NoError(t, err)
	require.Equal(t, []fleet.JobTarget{{Seq: 1, DeviceID: "b-3", State: fleet.JobPending}}, ots, "other jobs' targets of a retired device are cancelled")
	res, err := s.Store.RetireDevices(ctx, "probe", []string{"b-2"}, "")
	require.NoError(t, err)
	require.Equal(t, fleet.RetireAlreadyRetired, res[0].Outcome)
	require.Error(t, s.Store.RetireJobTargets(ctx, "job-r", ts, "test", func(ts []fleet.JobTarget, _ []fleet.RetireResult) ([]fleet.JobOutcome, error) {
		return []fleet.JobOutcome{{Seq: ts[0].Seq, State: fleet.JobSucceeded}}, nil
	}), "a retried retirement of finished targets rolls back")
}
