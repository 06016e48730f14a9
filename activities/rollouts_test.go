package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/rollout"
	"github.com/fleetflow/fleetflow/workflows"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/testsuite"
)

// ---- RolloutDispatch --------------------------------------------------------------------------------------

func TestRolloutDispatchLoopsChunksAndPushesEveryWrite(t *testing.T) {
	const total, cutoff = 4500, 4300
	f := newFakeStore()
	wantSkipped := 0
	for i := range total {
		d := fakeDevice{reportedVersion: "1.0", online: i%3 != 0}
		switch {
		case i%100 == 0:
			d.reportedVersion = "2.0"
		case i%250 == 1:
			d.status = fleet.StatusRetired
		}
		if i < cutoff && (i%100 == 0 || i%250 == 1) {
			wantSkipped++
		}
		id := fmt.Sprintf("dev-%04d", i)
		f.addDevice(id, d)
		f.addRow(fakeRow{deviceID: id, wave: -1, phase: string(rollout.Queued)})
	}
	ch := &fakeChannel{}
	a := &Activities{Jobs: f, Rollouts: f, Channel: ch}
	fw := workflows.FirmwareRef{Version: "2.0", URL: "https://fw.example/2.0.bin", SHA256: strings.Repeat("ab", 32)}

	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.RegisterActivity(a)
	v, err := env.ExecuteActivity(a.RolloutDispatch, workflows.RolloutDispatchInput{RolloutID: "ro-1", Wave: 2, Cutoff: cutoff, Firmware: fw})
	require.NoError(t, err)
	var res workflows.RolloutDispatchResult
	require.NoError(t, v.Get(&res))

	wantDispatched := int64(cutoff - wantSkipped)
	require.Equal(t, workflows.RolloutDispatchResult{Dispatched: wantDispatched, Skipped: int64(wantSkipped), Pushed: wantDispatched}, res)
	require.Len(t, f.dispatchCalls, 3, "2000 + 2000 + 300 devices")
	for _, c := range f.dispatchCalls {
		require.Equal(t, dispatchCall{rollout: "ro-1", wave: 2, cutoff: cutoff, limit: 2000,
			fw: fleet.Firmware{Version: fw.Version, URL: fw.URL, SHA256: fw.SHA256}}, c)
	}
	require.Equal(t, 3, ch.publishes, "one push per chunk")
	require.Len(t, ch.published, int(wantDispatched), "offline devices are pushed too")
	wantPatch := fwPatch("ro-1", fleet.Firmware{Version: fw.Version, URL: fw.URL, SHA256: fw.SHA256})
	seen := map[string]bool{}
	for _, m := range ch.published {
		require.False(t, seen[m.DeviceID], "pushed twice: %s", m.DeviceID)
		seen[m.DeviceID] = true
		require.JSONEq(t, string(wantPatch), string(m.Patch))
		require.Equal(t, f.devices[m.DeviceID].desiredVersion, m.Version)
		require.Equal(t, int64(1), m.Version)
	}
	counts := map[string]int{}
	for _, r := range f.rows {
		counts[r.phase]++
	}
	require.Equal(t, map[string]int{"dispatched": int(wantDispatched), "skipped": wantSkipped, "queued": total - cutoff}, counts)
}

func TestRolloutDispatchRetryContinuesAndPushFailuresDoNotFail(t *testing.T) {
	f := newFakeStore()
	for i := range 5 {
		id := fmt.Sprintf("d%d", i)
		f.addDevice(id, fakeDevice{reportedVersion: "1.0"})
		f.addRow(fakeRow{deviceID: id, wave: -1, phase: string(rollout.Queued)})
	}
	// A first attempt dispatched the first two devices.
	f.rows[0].phase, f.rows[1].phase = string(rollout.Dispatched), string(rollout.Dispatched)
	ch := &fakeChannel{publishErr: errors.New("broker gone")}
	a := &Activities{Jobs: f, Rollouts: f, Channel: ch}
	var res workflows.RolloutDispatchResult
	// No error: the firmware is in desired; devices catch up on reconnect.
	execute(t, a, a.RolloutDispatch, workflows.RolloutDispatchInput{RolloutID: "ro", Wave: 0, Cutoff: 5,
		Firmware: workflows.FirmwareRef{Version: "2.0"}}, &res)
	require.Equal(t, int64(3), res.Dispatched)
	require.Equal(t, int64(0), res.Skipped)
	require.Equal(t, 1, ch.publishes)
	require.Len(t, f.dispatchCalls, 1)

	f.fail = map[string]error{"DispatchWave": errors.New("serialization failure")}
	_, err := a.RolloutDispatch(context.Background(), workflows.RolloutDispatchInput{RolloutID: "ro", Cutoff: 5})
	require.EqualError(t, err, "serialization failure")
}

// ---- RolloutObserve ---------------------------------------------------------------------------------------

const (
	roID   = "ro-1"
	roFrom = "1.0"
	roTo   = "2.0"
)

func TestRolloutObserveEvaluatesDevices(t *testing.T) {
	type want struct {
		phase   rollout.Phase
		reason  string
		bakeSet bool
	}
	cases := []struct {
		name   string
		dev    fakeDevice
		policy rollout.Policy
		want   *want // nil: no change, no update
	}{
		{name: "on the version without bake succeeds",
			dev:  fakeDevice{reportedVersion: roTo, online: true},
			want: &want{rollout.Succeeded, "running " + roTo, true}},
		{name: "job failure fails with its reason",
			dev:  fakeDevice{reportedVersion: roFrom, online: true, jobStatus: map[string][2]string{roID: {"failed", "checksum mismatch"}}},
			want: &want{rollout.Failed, "device reported failure: checksum mismatch", false}},
		{name: "progress follows the job status",
			dev:  fakeDevice{reportedVersion: roFrom, online: true, jobStatus: map[string][2]string{roID: {"installing", ""}}},
			want: &want{rollout.Installing, "", false}},
		{name: "status of another job is ignored",
			dev: fakeDevice{reportedVersion: roFrom, online: true, jobStatus: map[string][2]string{"other": {"failed", "x"}}}},
		{name: "the bake starts on the version",
			dev:    fakeDevice{reportedVersion: roTo, online: true},
			policy: rollout.Policy{Bake: time.Hour},
			want:   &want{rollout.Baking, "", true}},
		{name: "unhealthy on the version fails",
			dev:  fakeDevice{reportedVersion: roTo, online: true, health: "failing", healthReason: "watchdog resets"},
			want: &want{rollout.Failed, "unhealthy on " + roTo + ": watchdog resets", false}},
		{name: "device timeout fails",
			dev:    fakeDevice{reportedVersion: roFrom},
			policy: rollout.Policy{DeviceTimeout: 30 * time.Second},
			want:   &want{rollout.Failed, "did not finish within 30s (no progress reported)", false}},
		{name: "no progress is no change",
			dev: fakeDevice{reportedVersion: roFrom, online: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeStore()
			f.addDevice("d0", tc.dev)
			f.addRow(fakeRow{deviceID: "d0", wave: 0, phase: string(rollout.Dispatched), prevVersion: roFrom,
				dispatchedAt: time.Now().Add(-time.Minute)})
			a := &Activities{Jobs: f, Rollouts: f}
			policy := tc.policy
			policy.Version = roTo
			before := time.Now()
			obs, err := a.RolloutObserve(context.Background(), workflows.RolloutObserveInput{RolloutID: roID, JobID: roID,
				Policy: policy, MaxFailures: rollout.Threshold{Count: 10}, MaxWait: 0})
			require.NoError(t, err)
			require.Equal(t, 1, f.observeCalls)
			require.Equal(t, []string{roID}, f.observeJobs)
			require.Equal(t, []rollout.Phase{"dispatched", "downloading", "installing", "rebooting", "baking"}, f.observePhases[0])
			require.Len(t, f.phaseUpdates, 1)

			phase := rollout.Dispatched
			if tc.want == nil {
				require.Empty(t, f.phaseUpdates[0], "an unchanged device is not written")
			} else {
				phase = tc.want.phase
				require.Len(t, f.phaseUpdates[0], 1)
				u := f.phaseUpdates[0][0]
				require.Equal(t, int64(0), u.Rank)
				require.Equal(t, tc.want.phase, u.Phase)
				require.Equal(t, tc.want.reason, u.Reason)
				if tc.want.bakeSet {
					require.False(t, u.BakeSince.Before(before), "the bake starts now")
				} else {
					require.True(t, u.BakeSince.IsZero())
				}
			}
			var wantCounts rollout.Counts
			wantCounts.Add(phase, 1)
			require.Equal(t, wantCounts, obs.Counts)
			require.Equal(t, wantCounts, obs.Wave)
		})
	}
}

func TestRolloutObserveWritesOnlyChangedRowsAndCountsTheWave(t *testing.T) {
	f := newFakeStore()
	bake := time.Now().Add(-10 * time.Minute)
	dispatched := time.Now().Add(-20 * time.Minute)
	f.addDevice("ok", fakeDevice{reportedVersion: roTo, online: true})
	f.addDevice("slow", fakeDevice{reportedVersion: roFrom, online: true})
	f.addDevice("baking", fakeDevice{reportedVersion: roTo, online: true})
	f.addDevice("done", fakeDevice{reportedVersion: roTo, online: true})
	f.addDevice("earlier", fakeDevice{reportedVersion: roTo, online: true})
	f.addDevice("later", fakeDevice{reportedVersion: roFrom, online: true})
	f.addRow(fakeRow{deviceID: "ok", wave: 1, phase: string(rollout.Dispatched), dispatchedAt: dispatched})
	f.addRow(fakeRow{deviceID: "slow", wave: 1, phase: string(rollout.Dispatched), dispatchedAt: dispatched})
	f.addRow(fakeRow{deviceID: "baking", wave: 1, phase: string(rollout.Baking), dispatchedAt: dispatched, bakeSince: bake})
	f.addRow(fakeRow{deviceID: "done", wave: 1, phase: string(rollout.Succeeded), reason: "kept", bakeSince: bake})
	f.addRow(fakeRow{deviceID: "earlier", wave: 0, phase: string(rollout.Succeeded), bakeSince: bake})
	f.addRow(fakeRow{deviceID: "later", wave: -1, phase: string(rollout.Queued)})
	a := &Activities{Jobs: f, Rollouts: f}
	obs, err := a.RolloutObserve(context.Background(), workflows.RolloutObserveInput{RolloutID: roID, JobID: roID, Wave: 1,
		Policy: rollout.Policy{Version: roTo, Bake: time.Hour}, MaxWait: 0})
	require.NoError(t, err)

	require.Len(t, f.phaseUpdates, 1)
	ups := f.phaseUpdates[0]
	require.Len(t, ups, 1, "only the device whose phase changed: %+v", ups)
	require.Equal(t, int64(0), ups[0].Rank)
	require.Equal(t, rollout.Baking, ups[0].Phase)
	require.False(t, ups[0].BakeSince.IsZero())
	require.Equal(t, bake, f.rows[2].bakeSince, "an unchanged bake start is not rewritten")
	require.Equal(t, "kept", f.rows[3].reason, "a decided device is not observed")

	require.Equal(t, rollout.Counts{Dispatched: 1, Baking: 2, Succeeded: 2, Queued: 1}, obs.Counts)
	require.Equal(t, rollout.Counts{Dispatched: 1, Baking: 2, Succeeded: 1}, obs.Wave)
}

func TestRolloutObserveReturnsWhenTheWaveIsDecided(t *testing.T) {
	f := newFakeStore()
	f.addDevice("a", fakeDevice{reportedVersion: roFrom, online: true})
	f.addDevice("b", fakeDevice{reportedVersion: roFrom, online: true})
	f.addRow(fakeRow{deviceID: "a", wave: 0, phase: string(rollout.Dispatched), dispatchedAt: time.Now()})
	f.addRow(fakeRow{deviceID: "b", wave: 0, phase: string(rollout.Dispatched), dispatchedAt: time.Now()})
	// Another wave's pending device does not hold this one up.
	f.addDevice("c", fakeDevice{reportedVersion: roFrom, online: true})
	f.addRow(fakeRow{deviceID: "c", wave: 1, phase: string(rollout.Dispatched), dispatchedAt: time.Now()})
	f.onObserve = func(call int) {
		switch call {
		case 2:
			f.devices["a"].reportedVersion = roTo
		case 3:
			f.devices["b"].jobStatus[roID] = [2]string{"failed", "flash error"}
		}
	}
	a := &Activities{Jobs: f, Rollouts: f}
	start := time.Now()
	obs, err := a.RolloutObserve(context.Background(), workflows.RolloutObserveInput{RolloutID: roID, JobID: roID, Wave: 0,
		Policy: rollout.Policy{Version: roTo}, MaxFailures: rollout.Threshold{Count: 5}, PollInterval: 10 * time.Millisecond, MaxWait: time.Minute})
	require.NoError(t, err)
	require.Less(t, time.Since(start), 10*time.Second)
	require.Equal(t, 3, f.observeCalls)
	require.Equal(t, rollout.Counts{Succeeded: 1, Failed: 1}, obs.Wave)
	require.Equal(t, int64(0), obs.Wave.Pending())
	require.Equal(t, rollout.Counts{Succeeded: 1, Failed: 1, Dispatched: 1}, obs.Counts)
	require.Equal(t, "device reported failure: flash error", f.rows[1].reason)
}

func TestRolloutObserveFailureThreshold(t *testing.T) {
	setup := func() *fakeStore {
		f := newFakeStore()
		f.addDevice("bad", fakeDevice{reportedVersion: roFrom, online: true, jobStatus: map[string][2]string{roID: {"failed", "bricked"}}})
		f.addDevice("slow", fakeDevice{reportedVersion: roFrom, online: true})
		f.addRow(fakeRow{deviceID: "bad", wave: 0, phase: string(rollout.Dispatched), dispatchedAt: time.Now()})
		f.addRow(fakeRow{deviceID: "slow", wave: 0, phase: string(rollout.Dispatched), dispatchedAt: time.Now()})
		return f
	}

	t.Run("exceeded returns at once", func(t *testing.T) {
		f := setup()
		a := &Activities{Jobs: f, Rollouts: f}
		start := time.Now()
		obs, err := a.RolloutObserve(context.Background(), workflows.RolloutObserveInput{RolloutID: roID, JobID: roID,
			Policy: rollout.Policy{Version: roTo}, MaxFailures: rollout.Threshold{Count: 0}, PollInterval: time.Minute, MaxWait: time.Minute})
		require.NoError(t, err)
		require.Less(t, time.Since(start), 5*time.Second)
		require.Equal(t, 1, f.observeCalls)
		require.Equal(t, rollout.Counts{Failed: 1, Dispatched: 1}, obs.Counts)
		require.Equal(t, int64(1), obs.Wave.Pending())
	})

	t.Run("within the threshold polls until MaxWait", func(t *testing.T) {
		f := setup()
		a := &Activities{Jobs: f, Rollouts: f}
		var s testsuite.WorkflowTestSuite
		env := s.NewTestActivityEnvironment()
		env.RegisterActivity(a)
		start := time.Now()
		v, err := env.ExecuteActivity(a.RolloutObserve, workflows.RolloutObserveInput{RolloutID: roID, JobID: roID,
			Policy: rollout.Policy{Version: roTo}, MaxFailures: rollout.Threshold{Count: 1}, PollInterval: 50 * time.Millisecond,
			MaxWait: 300 * time.Millisecond})
		require.NoError(t, err)
		elapsed := time.Since(start)
		var obs workflows.RolloutObserveResult
		require.NoError(t, v.Get(&obs))
		require.GreaterOrEqual(t, elapsed, 300*time.Millisecond)
		require.Less(t, elapsed, 5*time.Second)
		require.GreaterOrEqual(t, f.observeCalls, 3)
		require.Equal(t, rollout.Counts{Failed: 1, Dispatched: 1}, obs.Counts)
		// The failure was written once; later polls changed nothing.
		require.Len(t, f.phaseUpdates[0], 1)
		for _, ups := range f.phaseUpdates[1:] {
			require.Empty(t, ups)
		}
	})

	t.Run("percent of touched devices", func(t *testing.T) {
		f := setup()
		a := &Activities{Jobs: f, Rollouts: f}
		// 1 failed of 2 touched = 50%: above 40%, stops.
		_, err := a.RolloutObserve(context.Background(), workflows.RolloutObserveInput{RolloutID: roID, JobID: roID,
			Policy: rollout.Policy{Version: roTo}, MaxFailures: rollout.Threshold{Percent: 40, IsPercent: true},
			PollInterval: time.Minute, MaxWait: time.Minute})
		require.NoError(t, err)
		require.Equal(t, 1, f.observeCalls)
	})
}

func TestRolloutObserveRollback(t *testing.T) {
	const rbJob = roID + ".rb"
	type row struct {
		dev        fakeDevice
		prev       string
		rollbackAt time.Time
	}
	recent := time.Now().Add(-time.Second)
	f := newFakeStore()
	rows := []row{
		{dev: fakeDevice{reportedVersion: roFrom}, prev: roFrom, rollbackAt: recent}, // back -> rolled_back
		{dev: fakeDevice{reportedVersion: roTo, jobStatus: map[string][2]string{rbJob: {"failed", "no space"}}}, prev: roFrom, rollbackAt: recent},
		{dev: fakeDevice{reportedVersion: roTo}, prev: roFrom, rollbackAt: time.Now().Add(-time.Hour)}, // timed out
		// Forward job failed, rollback job silent: still rolling back.
		{dev: fakeDevice{reportedVersion: roTo, jobStatus: map[string][2]string{roID: {"failed", "forward"}}}, prev: roFrom, rollbackAt: recent},
		// Never reported a version: nothing to return to.
		{dev: fakeDevice{reportedVersion: roTo}, prev: "", rollbackAt: recent},
	}
	for i, r := range rows {
		id := fmt.Sprintf("r%d", i)
		f.addDevice(id, r.dev)
		f.addRow(fakeRow{deviceID: id, wave: 0, phase: string(rollout.RollingBack), prevVersion: r.prev, rollbackAt: r.rollbackAt,
			reason: "forward reason"})
	}
	// Not rolling back: not observed.
	f.addDevice("q", fakeDevice{reportedVersion: roTo})
	f.addRow(fakeRow{deviceID: "q", wave: 0, phase: string(rollout.Failed), prevVersion: roFrom, reason: "kept"})

	a := &Activities{Jobs: f, Rollouts: f}
	req := workflows.RolloutObserveInput{RolloutID: roID, JobID: rbJob, Rollback: true,
		Policy: rollout.Policy{Version: roTo, DeviceTimeout: 10 * time.Minute}, MaxFailures: rollout.Threshold{Count: 0},
		PollInterval: 20 * time.Millisecond, MaxWait: 200 * time.Millisecond}
	start := time.Now()
	obs, err := a.RolloutObserve(context.Background(), req)
	require.NoError(t, err)
	require.Equal(t, []rollout.Phase{rollout.RollingBack}, f.observePhases[0])
	require.Equal(t, rbJob, f.observeJobs[0])
	require.Equal(t, []fleet.PhaseUpdate{
		// Back on its previous version: no reason, so that the registry keeps why the device failed forward.
		{Rank: 0, Phase: rollout.RolledBack, Reason: ""},
		{Rank: 1, Phase: rollout.RollbackFailed, Reason: "device reported failure: no space"},
		{Rank: 2, Phase: rollout.RollbackFailed, Reason: "did not return to " + roFrom + " within 10m0s"},
		{Rank: 4, Phase: rollout.RolledBack, Reason: "no previous version known; left as is"},
	}, f.phaseUpdates[0])
	require.Equal(t, "forward reason", f.rows[0].reason)
	require.Equal(t, rollout.Counts{RolledBack: 2, RollbackFailed: 2, RollingBack: 1, Failed: 1}, obs.Counts)
	// A rollback is decided by devices still rolling back, not by the failure threshold: it polls until MaxWait.
	require.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond)
	require.Greater(t, f.observeCalls, 1)
	require.Equal(t, "kept", f.rows[5].reason)

	// Once the last device is back, it returns at once.
	f.observeCalls = 0
	f.onObserve = func(call int) {
		if call == 2 {
			f.devices["r3"].reportedVersion = roFrom
		}
	}
	req.MaxWait = time.Minute
	obs, err = a.RolloutObserve(context.Background(), req)
	require.NoError(t, err)
	require.Equal(t, 2, f.observeCalls)
	require.Equal(t, rollout.Counts{RolledBack: 3, RollbackFailed: 2, Failed: 1}, obs.Counts)
}

func TestRolloutObserveStoreErrorsAndCancellation(t *testing.T) {
	for _, method := range []string{"ObserveRollout", "UpdateRolloutPhases", "RolloutCounts"} {
		f := newFakeStore()
		f.addDevice("a", fakeDevice{reportedVersion: roTo})
		f.addRow(fakeRow{deviceID: "a", wave: 0, phase: string(rollout.Dispatched)})
		f.fail = map[string]error{method: errors.New(method + " failed")}
		a := &Activities{Jobs: f, Rollouts: f}
		_, err := a.RolloutObserve(context.Background(), workflows.RolloutObserveInput{RolloutID: roID, JobID: roID,
			Policy: rollout.Policy{Version: roTo}, MaxWait: time.Minute})
		require.EqualError(t, err, method+" failed")
	}

	f := newFakeStore()
	f.addDevice("a", fakeDevice{reportedVersion: roFrom})
	f.addRow(fakeRow{deviceID: "a", wave: 0, phase: string(rollout.Dispatched)})
	a := &Activities{Jobs: f, Rollouts: f}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := a.RolloutObserve(ctx, workflows.RolloutObserveInput{RolloutID: roID, JobID: roID,
		Policy: rollout.Policy{Version: roTo}, PollInterval: time.Minute, MaxWait: time.Hour})
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

// ---- RolloutRollback --------------------------------------------------------------------------------------

func TestRolloutRollbackLoopsAndPushes(t *testing.T) {
	const n = 4100
	f := newFakeStore()
	f.fwURL[roFrom] = "https://fw.example/1.0.bin"
	phases := []rollout.Phase{rollout.Dispatched, rollout.Installing, rollout.Baking, rollout.Succeeded, rollout.Failed}
	unknownPrev := 0
	for i := range n {
		id := fmt.Sprintf("dev-%04d", i)
		f.addDevice(id, fakeDevice{reportedVersion: roTo, desiredVersion: 3, online: i%2 == 0})
		prev := roFrom
		if i%1000 == 7 {
			prev = ""
			unknownPrev++
		}
		f.addRow(fakeRow{deviceID: id, wave: 0, phase: string(phases[i%len(phases)]), prevVersion: prev})
	}
	// Never touched: left alone.
	for _, p := range []rollout.Phase{rollout.Queued, rollout.Skipped, rollout.Cancelled} {
		id := "untouched-" + string(p)
		f.addDevice(id, fakeDevice{reportedVersion: roFrom})
		f.addRow(fakeRow{deviceID: id, wave: -1, phase: string(p), prevVersion: roFrom})
	}
	ch := &fakeChannel{}
	a := &Activities{Jobs: f, Rollouts: f, Channel: ch}
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.RegisterActivity(a)
	v, err := env.ExecuteActivity(a.RolloutRollback, workflows.RolloutRollbackInput{RolloutID: roID, JobID: roID + ".rb"})
	require.NoError(t, err)
	var got int64
	require.NoError(t, v.Get(&got))

	want := int64(n - unknownPrev)
	require.Equal(t, want, got)
	require.Equal(t, []string{roID + ".rb", roID + ".rb", roID + ".rb"}, f.rollbackCalls, "2000 + 2000 + 100")
	require.Equal(t, []int{2000, 2000, 2000}, f.rollbackLimits)
	require.Equal(t, 3, ch.publishes)
	require.Len(t, ch.published, int(want))
	wantPatch := fwPatch(roID+".rb", fleet.Firmware{Version: roFrom, URL: f.fwURL[roFrom]})
	for _, m := range ch.published {
		require.JSONEq(t, string(wantPatch), string(m.Patch))
		require.Equal(t, int64(4), m.Version)
	}
	counts := map[string]int{}
	for _, r := range f.rows {
		counts[r.phase]++
	}
	require.Equal(t, map[string]int{"rolling_back": int(want), "rolled_back": unknownPrev, "queued": 1, "skipped": 1, "cancelled": 1}, counts)
}

func TestRolloutRollbackPushFailureAndStoreError(t *testing.T) {
	f := newFakeStore()
	f.addDevice("a", fakeDevice{reportedVersion: roTo})
	f.addRow(fakeRow{deviceID: "a", wave: 0, phase: string(rollout.Failed), prevVersion: roFrom})
	a := &Activities{Jobs: f, Rollouts: f}
	var n int64
	// No error: without a channel the rollback is still written; devices catch up on reconnect.
	execute(t, a, a.RolloutRollback, workflows.RolloutRollbackInput{RolloutID: roID, JobID: "rb"}, &n)
	require.Equal(t, int64(1), n)
	require.Equal(t, string(rollout.RollingBack), f.rows[0].phase)

	f.fail = map[string]error{"StartRollback": errors.New("deadlock detected")}
	_, err := a.RolloutRollback(context.Background(), workflows.RolloutRollbackInput{RolloutID: roID, JobID: "rb"})
	require.EqualError(t, err, "deadlock detected")
}

// ---- RolloutFinish ----------------------------------------------------------------------------------------

func TestRolloutFinishCountsAndSamplesFailures(t *testing.T) {
	f := newFakeStore()
	add := func(n int, wave int, phase rollout.Phase, reason func(i int) string) {
		for i := range n {
			id := fmt.Sprintf("%s-%d", phase, i)
			f.addDevice(id, fakeDevice{})
			f.addRow(fakeRow{deviceID: id, wave: wave, phase: string(phase), reason: reason(i)})
		}
	}
	noReason := func(int) string { return "" }
	add(50, 0, rollout.Succeeded, func(int) string { return "running 2.0" })
	add(5, 0, rollout.Failed, noReason) // no reason: not sampled
	add(12, 0, rollout.Failed, func(i int) string { return fmt.Sprintf("flash error %d", i) })
	add(3, 1, rollout.RollbackFailed, func(int) string { return "device reported failure: no space" })
	add(10, 1, rollout.RolledBack, func(int) string { return "back on 1.0" })
	add(4, -1, rollout.Queued, noReason)

	a := &Activities{Jobs: f, Rollouts: f}
	summary := workflows.RolloutSummary{State: "rolled_back", WavesDone: 2, Decision: "stopped", Reasons: []string{"too many failures"}}
	res, err := a.RolloutFinish(context.Background(), workflows.RolloutFinishInput{RolloutID: roID, State: "rolled_back", Summary: summary})
	require.NoError(t, err)

	require.Len(t, f.finished, 1)
	require.Equal(t, roID, f.finished[0].id)
	require.Equal(t, "rolled_back", f.finished[0].state)
	var gotSummary workflows.RolloutSummary
	require.NoError(t, json.Unmarshal(f.finished[0].result, &gotSummary))
	require.Equal(t, summary, gotSummary)

	require.Equal(t, rollout.Counts{Succeeded: 50, Failed: 17, RollbackFailed: 3, RolledBack: 10, Cancelled: 4}, res.Counts,
		"counts are read after the finish (queued devices become cancelled)")
	require.ElementsMatch(t, []string{"failed", "rollback_failed", "rolled_back", "rolling_back"}, f.devicesPhases)
	require.GreaterOrEqual(t, f.devicesLimit, 20)

	require.Len(t, res.Failures, 20, "at most 20 devices")
	for _, d := range res.Failures {
		require.NotEmpty(t, d.Reason)
		require.NotEqual(t, string(rollout.Succeeded), d.Phase)
	}
	require.Equal(t, workflows.DeviceIssue{DeviceID: "failed-0", Wave: 1, Phase: "failed", Reason: "flash error 0"}, res.Failures[0],
		"devices without a reason are skipped; waves are shown 1-based")
	require.Equal(t, workflows.DeviceIssue{DeviceID: "rollback_failed-0", Wave: 2, Phase: "rollback_failed",
		Reason: "device reported failure: no space"}, res.Failures[12])
	require.Equal(t, "rolled_back-4", res.Failures[19].DeviceID)
}

func TestRolloutFinishFewFailuresAndErrors(t *testing.T) {
	f := newFakeStore()
	f.addDevice("ok", fakeDevice{})
	f.addRow(fakeRow{deviceID: "ok", wave: 0, phase: string(rollout.Succeeded), reason: "running 2.0"})
	f.addDevice("bad", fakeDevice{})
	f.addRow(fakeRow{deviceID: "bad", wave: 0, phase: string(rollout.Failed), reason: "bricked"})
	a := &Activities{Jobs: f, Rollouts: f}
	res, err := a.RolloutFinish(context.Background(), workflows.RolloutFinishInput{RolloutID: roID, State: "completed"})
	require.NoError(t, err)
	require.Equal(t, rollout.Counts{Succeeded: 1, Failed: 1}, res.Counts)
	require.Equal(t, []workflows.DeviceIssue{{DeviceID: "bad", Wave: 1, Phase: "failed", Reason: "bricked"}}, res.Failures)

	for _, method := range []string{"FinishRollout", "RolloutCounts", "RolloutDevices"} {
		f.fail = map[string]error{method: errors.New(method + " failed")}
		_, err := a.RolloutFinish(context.Background(), workflows.RolloutFinishInput{RolloutID: roID, State: "completed"})
		require.EqualError(t, err, method+" failed")
	}
}

// An online device with no progress long after its dispatch gets its desired state again, once per
// observation activity; devices with progress, offline ones and recent dispatches do not.
func TestRolloutObserveRepushesStuckDevices(t *testing.T) {
	f := newFakeStore()
	long, recent := time.Now().Add(-time.Minute), time.Now()
	f.addDevice("stuck", fakeDevice{reportedVersion: roFrom, online: true, desiredVersion: 7, desired: []byte(`{"firmware":{"version":"` + roTo + `"}}`)})
	f.addDevice("progressing", fakeDevice{reportedVersion: roFrom, online: true, jobStatus: map[string][2]string{roID: {"downloading", ""}}})
	f.addDevice("offline", fakeDevice{reportedVersion: roFrom})
	f.addDevice("recent", fakeDevice{reportedVersion: roFrom, online: true})
	f.addRow(fakeRow{deviceID: "stuck", wave: 0, phase: string(rollout.Dispatched), dispatchedAt: long})
	f.addRow(fakeRow{deviceID: "progressing", wave: 0, phase: string(rollout.Dispatched), dispatchedAt: long})
	f.addRow(fakeRow{deviceID: "offline", wave: 0, phase: string(rollout.Dispatched), dispatchedAt: long})
	f.addRow(fakeRow{deviceID: "recent", wave: 0, phase: string(rollout.Dispatched), dispatchedAt: recent})
	ch := &fakeChannel{}
	a := &Activities{Jobs: f, Rollouts: f, Channel: ch}
	_, err := a.RolloutObserve(context.Background(), workflows.RolloutObserveInput{RolloutID: roID, JobID: roID,
		Policy: rollout.Policy{Version: roTo, DeviceTimeout: time.Hour}, MaxFailures: rollout.Threshold{Count: 10},
		PollInterval: 10 * time.Millisecond, MaxWait: 100 * time.Millisecond, RepushAfter: 30 * time.Second})
	require.NoError(t, err)
	require.Greater(t, f.observeCalls, 1, "several polls in one activity")
	require.Len(t, ch.published, 1, "one re-push, not one per poll: %+v", ch.published)
	require.Equal(t, "stuck", ch.published[0].DeviceID)
	require.Equal(t, int64(7), ch.published[0].Version, "the current desired version")
	require.JSONEq(t, `{"firmware":{"version":"`+roTo+`"}}`, string(ch.published[0].Patch))
}
