package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/testsuite"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleet/fleettest"
	"github.com/fleetflow/fleetflow/internal/rollout"
	"github.com/fleetflow/fleetflow/workflows"
)

// ---- RolloutDispatch --------------------------------------------------------------------------------------

func TestRolloutDispatchLoopsChunksAndPushesEveryWrite(t *testing.T) {
	const total, cutoff = 4500, 4300
	f := fleettest.New()
	wantSkipped := 0
	for i := range total {
		d := fleettest.Device{ReportedVersion: "1.0", Online: i%3 != 0}
		switch {
		case i%100 == 0:
			d.ReportedVersion = "2.0"
		case i%250 == 1:
			d.Status = fleet.StatusRetired
		}
		if i < cutoff && (i%100 == 0 || i%250 == 1) {
			wantSkipped++
		}
		id := fmt.Sprintf("dev-%04d", i)
		f.AddDevice(id, d)
		f.AddRow(fleettest.RolloutRow{DeviceID: id, Wave: -1, Phase: rollout.Queued})
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
	require.Len(t, f.DispatchCalls, 3, "2000 + 2000 + 300 devices")
	for _, c := range f.DispatchCalls {
		require.Equal(t, fleettest.DispatchCall{Rollout: "ro-1", Wave: 2, Cutoff: cutoff, Limit: 2000,
			FW: fleet.Firmware{Version: fw.Version, URL: fw.URL, SHA256: fw.SHA256}}, c)
	}
	require.Equal(t, 3, ch.publishes, "one push per chunk")
	require.Len(t, ch.published, int(wantDispatched), "offline devices are pushed too")
	wantPatch := fleettest.FirmwarePatch("ro-1", fleet.Firmware{Version: fw.Version, URL: fw.URL, SHA256: fw.SHA256})
	seen := map[string]bool{}
	for _, m := range ch.published {
		require.False(t, seen[m.DeviceID], "pushed twice: %s", m.DeviceID)
		seen[m.DeviceID] = true
		require.JSONEq(t, string(wantPatch), string(m.Patch))
		require.Equal(t, f.Devices[m.DeviceID].DesiredVersion, m.Version)
		require.Equal(t, int64(1), m.Version)
	}
	counts := map[string]int{}
	for _, r := range f.Rows {
		counts[string(r.Phase)]++
	}
	require.Equal(t, map[string]int{"dispatched": int(wantDispatched), "skipped": wantSkipped, "queued": total - cutoff}, counts)
}

func TestRolloutDispatchRetryContinuesAndPushFailuresDoNotFail(t *testing.T) {
	f := fleettest.New()
	for i := range 5 {
		id := fmt.Sprintf("d%d", i)
		f.AddDevice(id, fleettest.Device{ReportedVersion: "1.0"})
		f.AddRow(fleettest.RolloutRow{DeviceID: id, Wave: -1, Phase: rollout.Queued})
	}
	// A first attempt dispatched the first two devices.
	f.Rows[0].Phase, f.Rows[1].Phase = rollout.Dispatched, rollout.Dispatched
	ch := &fakeChannel{publishErr: errors.New("broker gone")}
	a := &Activities{Jobs: f, Rollouts: f, Channel: ch}
	var res workflows.RolloutDispatchResult
	// No error: the firmware is in desired; devices catch up on reconnect.
	execute(t, a, a.RolloutDispatch, workflows.RolloutDispatchInput{RolloutID: "ro", Wave: 0, Cutoff: 5,
		Firmware: workflows.FirmwareRef{Version: "2.0"}}, &res)
	require.Equal(t, int64(3), res.Dispatched)
	require.Equal(t, int64(0), res.Skipped)
	require.Equal(t, 1, ch.publishes)
	require.Len(t, f.DispatchCalls, 1)

	f.Fail = map[string]error{"DispatchWave": errors.New("serialization failure")}
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
		dev    fleettest.Device
		policy rollout.Policy
		want   *want // nil: no change, no update
	}{
		{name: "on the version without bake succeeds",
			dev:  fleettest.Device{ReportedVersion: roTo, Online: true},
			want: &want{rollout.Succeeded, "running " + roTo, true}},
		{name: "job failure fails with its reason",
			dev:  fleettest.Device{ReportedVersion: roFrom, Online: true, JobStatus: map[string][2]string{roID: {"failed", "checksum mismatch"}}},
			want: &want{rollout.Failed, "device reported failure: checksum mismatch", false}},
		{name: "progress follows the job status",
			dev:  fleettest.Device{ReportedVersion: roFrom, Online: true, JobStatus: map[string][2]string{roID: {"installing", ""}}},
			want: &want{rollout.Installing, "", false}},
		{name: "status of another job is ignored",
			dev: fleettest.Device{ReportedVersion: roFrom, Online: true, JobStatus: map[string][2]string{"other": {"failed", "x"}}}},
		{name: "the bake starts on the version",
			dev:    fleettest.Device{ReportedVersion: roTo, Online: true},
			policy: rollout.Policy{Bake: time.Hour},
			want:   &want{rollout.Baking, "", true}},
		{name: "unhealthy on the version fails",
			dev:  fleettest.Device{ReportedVersion: roTo, Online: true, Health: "failing", HealthReason: "watchdog resets"},
			want: &want{rollout.Failed, "unhealthy on " + roTo + ": watchdog resets", false}},
		{name: "device timeout fails",
			dev:    fleettest.Device{ReportedVersion: roFrom},
			policy: rollout.Policy{DeviceTimeout: 30 * time.Second},
			want:   &want{rollout.Failed, "did not finish within 30s (no progress reported)", false}},
		{name: "no progress is no change",
			dev: fleettest.Device{ReportedVersion: roFrom, Online: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := fleettest.New()
			f.AddDevice("d0", tc.dev)
			f.AddRow(fleettest.RolloutRow{DeviceID: "d0", Wave: 0, Phase: rollout.Dispatched, PrevVersion: roFrom,
				DispatchedAt: time.Now().Add(-time.Minute)})
			a := &Activities{Jobs: f, Rollouts: f}
			policy := tc.policy
			policy.Version = roTo
			before := time.Now()
			obs, err := a.RolloutObserve(context.Background(), workflows.RolloutObserveInput{RolloutID: roID, JobID: roID,
				Policy: policy, MaxFailures: rollout.Threshold{Count: 10}, MaxWait: 0})
			require.NoError(t, err)
			require.Equal(t, 1, f.ObserveCalls)
			require.Equal(t, []string{roID}, f.ObserveJobs)
			require.Equal(t, []rollout.Phase{"dispatched", "downloading", "installing", "rebooting", "baking"}, f.ObservePhases[0])
			require.Len(t, f.PhaseUpdates, 1)

			phase := rollout.Dispatched
			if tc.want == nil {
				require.Empty(t, f.PhaseUpdates[0], "an unchanged device is not written")
			} else {
				phase = tc.want.phase
				require.Len(t, f.PhaseUpdates[0], 1)
				u := f.PhaseUpdates[0][0]
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
	f := fleettest.New()
	bake := time.Now().Add(-10 * time.Minute)
	dispatched := time.Now().Add(-20 * time.Minute)
	f.AddDevice("ok", fleettest.Device{ReportedVersion: roTo, Online: true})
	f.AddDevice("slow", fleettest.Device{ReportedVersion: roFrom, Online: true})
	f.AddDevice("baking", fleettest.Device{ReportedVersion: roTo, Online: true})
	f.AddDevice("done", fleettest.Device{ReportedVersion: roTo, Online: true})
	f.AddDevice("earlier", fleettest.Device{ReportedVersion: roTo, Online: true})
	f.AddDevice("later", fleettest.Device{ReportedVersion: roFrom, Online: true})
	f.AddRow(fleettest.RolloutRow{DeviceID: "ok", Wave: 1, Phase: rollout.Dispatched, DispatchedAt: dispatched})
	f.AddRow(fleettest.RolloutRow{DeviceID: "slow", Wave: 1, Phase: rollout.Dispatched, DispatchedAt: dispatched})
	f.AddRow(fleettest.RolloutRow{DeviceID: "baking", Wave: 1, Phase: rollout.Baking, DispatchedAt: dispatched, BakeSince: bake})
	f.AddRow(fleettest.RolloutRow{DeviceID: "done", Wave: 1, Phase: rollout.Succeeded, Reason: "kept", BakeSince: bake})
	f.AddRow(fleettest.RolloutRow{DeviceID: "earlier", Wave: 0, Phase: rollout.Succeeded, BakeSince: bake})
	f.AddRow(fleettest.RolloutRow{DeviceID: "later", Wave: -1, Phase: rollout.Queued})
	a := &Activities{Jobs: f, Rollouts: f}
	obs, err := a.RolloutObserve(context.Background(), workflows.RolloutObserveInput{RolloutID: roID, JobID: roID, Wave: 1,
		Policy: rollout.Policy{Version: roTo, Bake: time.Hour}, MaxWait: 0})
	require.NoError(t, err)

	require.Len(t, f.PhaseUpdates, 1)
	ups := f.PhaseUpdates[0]
	require.Len(t, ups, 1, "only the device whose phase changed: %+v", ups)
	require.Equal(t, int64(0), ups[0].Rank)
	require.Equal(t, rollout.Baking, ups[0].Phase)
	require.False(t, ups[0].BakeSince.IsZero())
	require.Equal(t, bake, f.Rows[2].BakeSince, "an unchanged bake start is not rewritten")
	require.Equal(t, "kept", f.Rows[3].Reason, "a decided device is not observed")

	require.Equal(t, rollout.Counts{Dispatched: 1, Baking: 2, Succeeded: 2, Queued: 1}, obs.Counts)
	require.Equal(t, rollout.Counts{Dispatched: 1, Baking: 2, Succeeded: 1}, obs.Wave)
}

func TestRolloutObserveReturnsWhenTheWaveIsDecided(t *testing.T) {
	f := fleettest.New()
	f.AddDevice("a", fleettest.Device{ReportedVersion: roFrom, Online: true})
	f.AddDevice("b", fleettest.Device{ReportedVersion: roFrom, Online: true})
	f.AddRow(fleettest.RolloutRow{DeviceID: "a", Wave: 0, Phase: rollout.Dispatched, DispatchedAt: time.Now()})
	f.AddRow(fleettest.RolloutRow{DeviceID: "b", Wave: 0, Phase: rollout.Dispatched, DispatchedAt: time.Now()})
	// Another wave's pending device does not hold this one up.
	f.AddDevice("c", fleettest.Device{ReportedVersion: roFrom, Online: true})
	f.AddRow(fleettest.RolloutRow{DeviceID: "c", Wave: 1, Phase: rollout.Dispatched, DispatchedAt: time.Now()})
	f.OnObserve = func(call int) {
		switch call {
		case 2:
			f.Devices["a"].ReportedVersion = roTo
		case 3:
			f.Devices["b"].JobStatus[roID] = [2]string{"failed", "flash error"}
		}
	}
	a := &Activities{Jobs: f, Rollouts: f}
	start := time.Now()
	obs, err := a.RolloutObserve(context.Background(), workflows.RolloutObserveInput{RolloutID: roID, JobID: roID, Wave: 0,
		Policy: rollout.Policy{Version: roTo}, MaxFailures: rollout.Threshold{Count: 5}, PollInterval: 10 * time.Millisecond, MaxWait: time.Minute})
	require.NoError(t, err)
	require.Less(t, time.Since(start), 10*time.Second)
	require.Equal(t, 3, f.ObserveCalls)
	require.Equal(t, rollout.Counts{Succeeded: 1, Failed: 1}, obs.Wave)
	require.Equal(t, int64(0), obs.Wave.Pending())
	require.Equal(t, rollout.Counts{Succeeded: 1, Failed: 1, Dispatched: 1}, obs.Counts)
	require.Equal(t, "device reported failure: flash error", f.Rows[1].Reason)
}

func TestRolloutObserveFailureThreshold(t *testing.T) {
	setup := func() *fleettest.Store {
		f := fleettest.New()
		f.AddDevice("bad", fleettest.Device{ReportedVersion: roFrom, Online: true, JobStatus: map[string][2]string{roID: {"failed", "bricked"}}})
		f.AddDevice("slow", fleettest.Device{ReportedVersion: roFrom, Online: true})
		f.AddRow(fleettest.RolloutRow{DeviceID: "bad", Wave: 0, Phase: rollout.Dispatched, DispatchedAt: time.Now()})
		f.AddRow(fleettest.RolloutRow{DeviceID: "slow", Wave: 0, Phase: rollout.Dispatched, DispatchedAt: time.Now()})
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
		require.Equal(t, 1, f.ObserveCalls)
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
		require.GreaterOrEqual(t, f.ObserveCalls, 3)
		require.Equal(t, rollout.Counts{Failed: 1, Dispatched: 1}, obs.Counts)
		// The failure was written once; later polls changed nothing.
		require.Len(t, f.PhaseUpdates[0], 1)
		for _, ups := range f.PhaseUpdates[1:] {
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
		require.Equal(t, 1, f.ObserveCalls)
	})
}

func TestRolloutObserveRollback(t *testing.T) {
	const rbJob = roID + ".rb"
	type row struct {
		dev        fleettest.Device
		prev       string
		RollbackAt time.Time
	}
	recent := time.Now().Add(-time.Second)
	f := fleettest.New()
	rows := []row{
		{dev: fleettest.Device{ReportedVersion: roFrom}, prev: roFrom, RollbackAt: recent}, // back -> rolled_back
		{dev: fleettest.Device{ReportedVersion: roTo, JobStatus: map[string][2]string{rbJob: {"failed", "no space"}}}, prev: roFrom, RollbackAt: recent},
		{dev: fleettest.Device{ReportedVersion: roTo}, prev: roFrom, RollbackAt: time.Now().Add(-time.Hour)}, // timed out
		// Forward job failed, rollback job silent: still rolling back.
		{dev: fleettest.Device{ReportedVersion: roTo, JobStatus: map[string][2]string{roID: {"failed", "forward"}}}, prev: roFrom, RollbackAt: recent},
		// Never reported a version: nothing to return to.
		{dev: fleettest.Device{ReportedVersion: roTo}, prev: "", RollbackAt: recent},
	}
	for i, r := range rows {
		id := fmt.Sprintf("r%d", i)
		f.AddDevice(id, r.dev)
		f.AddRow(fleettest.RolloutRow{DeviceID: id, Wave: 0, Phase: rollout.RollingBack, PrevVersion: r.prev, RollbackAt: r.RollbackAt,
			Reason: "forward reason"})
	}
	// Not rolling back: not observed.
	f.AddDevice("q", fleettest.Device{ReportedVersion: roTo})
	f.AddRow(fleettest.RolloutRow{DeviceID: "q", Wave: 0, Phase: rollout.Failed, PrevVersion: roFrom, Reason: "kept"})

	a := &Activities{Jobs: f, Rollouts: f}
	req := workflows.RolloutObserveInput{RolloutID: roID, JobID: rbJob, Rollback: true,
		Policy: rollout.Policy{Version: roTo, DeviceTimeout: 10 * time.Minute}, MaxFailures: rollout.Threshold{Count: 0},
		PollInterval: 20 * time.Millisecond, MaxWait: 200 * time.Millisecond}
	start := time.Now()
	obs, err := a.RolloutObserve(context.Background(), req)
	require.NoError(t, err)
	require.Equal(t, []rollout.Phase{rollout.RollingBack}, f.ObservePhases[0])
	require.Equal(t, rbJob, f.ObserveJobs[0])
	require.Equal(t, []fleet.PhaseUpdate{
		// Back on its previous version: no reason, so that the registry keeps why the device failed forward.
		{Rank: 0, Phase: rollout.RolledBack, Reason: ""},
		{Rank: 1, Phase: rollout.RollbackFailed, Reason: "device reported failure: no space"},
		{Rank: 2, Phase: rollout.RollbackFailed, Reason: "did not return to " + roFrom + " within 10m0s"},
		{Rank: 4, Phase: rollout.RolledBack, Reason: "no previous version known; left as is"},
	}, f.PhaseUpdates[0])
	require.Equal(t, "forward reason", f.Rows[0].Reason)
	require.Equal(t, rollout.Counts{RolledBack: 2, RollbackFailed: 2, RollingBack: 1, Failed: 1}, obs.Counts)
	// A rollback is decided by devices still rolling back, not by the failure threshold: it polls until MaxWait.
	require.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond)
	require.Greater(t, f.ObserveCalls, 1)
	require.Equal(t, "kept", f.Rows[5].Reason)

	// Once the last device is back, it returns at once.
	f.ObserveCalls = 0
	f.OnObserve = func(call int) {
		if call == 2 {
			f.Devices["r3"].ReportedVersion = roFrom
		}
	}
	req.MaxWait = time.Minute
	obs, err = a.RolloutObserve(context.Background(), req)
	require.NoError(t, err)
	require.Equal(t, 2, f.ObserveCalls)
	require.Equal(t, rollout.Counts{RolledBack: 3, RollbackFailed: 2, Failed: 1}, obs.Counts)
}

func TestRolloutObserveStoreErrorsAndCancellation(t *testing.T) {
	for _, method := range []string{"ObserveRollout", "UpdateRolloutPhases", "RolloutCounts"} {
		f := fleettest.New()
		f.AddDevice("a", fleettest.Device{ReportedVersion: roTo})
		f.AddRow(fleettest.RolloutRow{DeviceID: "a", Wave: 0, Phase: rollout.Dispatched})
		f.Fail = map[string]error{method: errors.New(method + " failed")}
		a := &Activities{Jobs: f, Rollouts: f}
		_, err := a.RolloutObserve(context.Background(), workflows.RolloutObserveInput{RolloutID: roID, JobID: roID,
			Policy: rollout.Policy{Version: roTo}, MaxWait: time.Minute})
		require.EqualError(t, err, method+" failed")
	}

	f := fleettest.New()
	f.AddDevice("a", fleettest.Device{ReportedVersion: roFrom})
	f.AddRow(fleettest.RolloutRow{DeviceID: "a", Wave: 0, Phase: rollout.Dispatched})
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
	f := fleettest.New()
	f.FirmwareURL[roFrom] = "https://fw.example/1.0.bin"
	phases := []rollout.Phase{rollout.Dispatched, rollout.Installing, rollout.Baking, rollout.Succeeded, rollout.Failed}
	unknownPrev := 0
	for i := range n {
		id := fmt.Sprintf("dev-%04d", i)
		f.AddDevice(id, fleettest.Device{ReportedVersion: roTo, DesiredVersion: 3, Online: i%2 == 0})
		prev := roFrom
		if i%1000 == 7 {
			prev = ""
			unknownPrev++
		}
		f.AddRow(fleettest.RolloutRow{DeviceID: id, Wave: 0, Phase: phases[i%len(phases)], PrevVersion: prev})
	}
	// Never touched: left alone.
	for _, p := range []rollout.Phase{rollout.Queued, rollout.Skipped, rollout.Cancelled} {
		id := "untouched-" + string(p)
		f.AddDevice(id, fleettest.Device{ReportedVersion: roFrom})
		f.AddRow(fleettest.RolloutRow{DeviceID: id, Wave: -1, Phase: p, PrevVersion: roFrom})
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
	require.Equal(t, []string{roID + ".rb", roID + ".rb", roID + ".rb"}, f.RollbackCalls, "2000 + 2000 + 100")
	require.Equal(t, []int{2000, 2000, 2000}, f.RollbackLimits)
	require.Equal(t, 3, ch.publishes)
	require.Len(t, ch.published, int(want))
	wantPatch := fleettest.FirmwarePatch(roID+".rb", fleet.Firmware{Version: roFrom, URL: f.FirmwareURL[roFrom]})
	for _, m := range ch.published {
		require.JSONEq(t, string(wantPatch), string(m.Patch))
		require.Equal(t, int64(4), m.Version)
	}
	counts := map[string]int{}
	for _, r := range f.Rows {
		counts[string(r.Phase)]++
	}
	require.Equal(t, map[string]int{"rolling_back": int(want), "rolled_back": unknownPrev, "queued": 1, "skipped": 1, "cancelled": 1}, counts)
}

func TestRolloutRollbackPushFailureAndStoreError(t *testing.T) {
	f := fleettest.New()
	f.AddDevice("a", fleettest.Device{ReportedVersion: roTo})
	f.AddRow(fleettest.RolloutRow{DeviceID: "a", Wave: 0, Phase: rollout.Failed, PrevVersion: roFrom})
	a := &Activities{Jobs: f, Rollouts: f}
	var n int64
	// No error: without a channel the rollback is still written; devices catch up on reconnect.
	execute(t, a, a.RolloutRollback, workflows.RolloutRollbackInput{RolloutID: roID, JobID: "rb"}, &n)
	require.Equal(t, int64(1), n)
	require.Equal(t, rollout.RollingBack, f.Rows[0].Phase)

	f.Fail = map[string]error{"StartRollback": errors.New("deadlock detected")}
	_, err := a.RolloutRollback(context.Background(), workflows.RolloutRollbackInput{RolloutID: roID, JobID: "rb"})
	require.EqualError(t, err, "deadlock detected")
}

// ---- RolloutFinish ----------------------------------------------------------------------------------------

func TestRolloutFinishCountsAndSamplesFailures(t *testing.T) {
	f := fleettest.New()
	add := func(n int, wave int, phase rollout.Phase, reason func(i int) string) {
		for i := range n {
			id := fmt.Sprintf("%s-%d", phase, i)
			f.AddDevice(id, fleettest.Device{})
			f.AddRow(fleettest.RolloutRow{DeviceID: id, Wave: wave, Phase: phase, Reason: reason(i)})
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

	require.Len(t, f.Finished, 1)
	require.Equal(t, roID, f.Finished[0].ID)
	require.Equal(t, fleet.RolloutRolledBack, f.Finished[0].State)
	var gotSummary workflows.RolloutSummary
	require.NoError(t, json.Unmarshal(f.Finished[0].Result, &gotSummary))
	require.Equal(t, summary, gotSummary)

	require.Equal(t, rollout.Counts{Succeeded: 50, Failed: 17, RollbackFailed: 3, RolledBack: 10, Cancelled: 4}, res.Counts,
		"counts are read after the finish (queued devices become cancelled)")
	require.ElementsMatch(t, []rollout.Phase{rollout.Failed, rollout.RollbackFailed, rollout.RolledBack, rollout.RollingBack}, f.DevicesPhases)
	require.GreaterOrEqual(t, f.DevicesLimit, 20)

	require.Len(t, res.Failures, 20, "at most 20 devices")
	for _, d := range res.Failures {
		require.NotEmpty(t, d.Reason)
		require.NotEqual(t, rollout.Succeeded, d.Phase)
	}
	require.Equal(t, workflows.DeviceIssue{DeviceID: "failed-0", Wave: 1, Phase: "failed", Reason: "flash error 0"}, res.Failures[0],
		"devices without a reason are skipped; waves are shown 1-based")
	require.Equal(t, workflows.DeviceIssue{DeviceID: "rollback_failed-0", Wave: 2, Phase: "rollback_failed",
		Reason: "device reported failure: no space"}, res.Failures[12])
	require.Equal(t, "rolled_back-4", res.Failures[19].DeviceID)
}

func TestRolloutFinishFewFailuresAndErrors(t *testing.T) {
	f := fleettest.New()
	f.AddDevice("ok", fleettest.Device{})
	f.AddRow(fleettest.RolloutRow{DeviceID: "ok", Wave: 0, Phase: rollout.Succeeded, Reason: "running 2.0"})
	f.AddDevice("bad", fleettest.Device{})
	f.AddRow(fleettest.RolloutRow{DeviceID: "bad", Wave: 0, Phase: rollout.Failed, Reason: "bricked"})
	a := &Activities{Jobs: f, Rollouts: f}
	res, err := a.RolloutFinish(context.Background(), workflows.RolloutFinishInput{RolloutID: roID, State: "completed"})
	require.NoError(t, err)
	require.Equal(t, rollout.Counts{Succeeded: 1, Failed: 1}, res.Counts)
	require.Equal(t, []workflows.DeviceIssue{{DeviceID: "bad", Wave: 1, Phase: "failed", Reason: "bricked"}}, res.Failures)

	for _, method := range []string{"FinishRollout", "RolloutCounts", "RolloutDevices"} {
		f.Fail = map[string]error{method: errors.New(method + " failed")}
		_, err := a.RolloutFinish(context.Background(), workflows.RolloutFinishInput{RolloutID: roID, State: "completed"})
		require.EqualError(t, err, method+" failed")
	}
}

// An online device with no progress long after its dispatch gets its desired state again, once per
// observation activity; devices with progress, offline ones and recent dispatches do not.
func TestRolloutObserveRepushesStuckDevices(t *testing.T) {
	f := fleettest.New()
	long, recent := time.Now().Add(-time.Minute), time.Now()
	f.AddDevice("stuck", fleettest.Device{ReportedVersion: roFrom, Online: true, DesiredVersion: 7, Desired: []byte(`{"firmware":{"version":"` + roTo + `"}}`)})
	f.AddDevice("progressing", fleettest.Device{ReportedVersion: roFrom, Online: true, JobStatus: map[string][2]string{roID: {"downloading", ""}}})
	f.AddDevice("offline", fleettest.Device{ReportedVersion: roFrom})
	f.AddDevice("recent", fleettest.Device{ReportedVersion: roFrom, Online: true})
	f.AddRow(fleettest.RolloutRow{DeviceID: "stuck", Wave: 0, Phase: rollout.Dispatched, DispatchedAt: long})
	f.AddRow(fleettest.RolloutRow{DeviceID: "progressing", Wave: 0, Phase: rollout.Dispatched, DispatchedAt: long})
	f.AddRow(fleettest.RolloutRow{DeviceID: "offline", Wave: 0, Phase: rollout.Dispatched, DispatchedAt: long})
	f.AddRow(fleettest.RolloutRow{DeviceID: "recent", Wave: 0, Phase: rollout.Dispatched, DispatchedAt: recent})
	ch := &fakeChannel{}
	a := &Activities{Jobs: f, Rollouts: f, Channel: ch}
	_, err := a.RolloutObserve(context.Background(), workflows.RolloutObserveInput{RolloutID: roID, JobID: roID,
		Policy: rollout.Policy{Version: roTo, DeviceTimeout: time.Hour}, MaxFailures: rollout.Threshold{Count: 10},
		PollInterval: 10 * time.Millisecond, MaxWait: 100 * time.Millisecond, RepushAfter: 30 * time.Second})
	require.NoError(t, err)
	require.Greater(t, f.ObserveCalls, 1, "several polls in one activity")
	require.Len(t, ch.published, 1, "one re-push, not one per poll: %+v", ch.published)
	require.Equal(t, "stuck", ch.published[0].DeviceID)
	require.Equal(t, int64(7), ch.published[0].Version, "the current desired version")
	require.JSONEq(t, `{"firmware":{"version":"`+roTo+`"}}`, string(ch.published[0].Patch))
}
