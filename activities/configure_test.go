package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/rollout"
	"github.com/fleetflow/fleetflow/internal/twin"
	"github.com/fleetflow/fleetflow/workflows"
)

// ---- fake ConfigureStore ----------------------------------------------------------------------------------

// fakeDevice is one device of the in-memory fleet.
type fakeDevice struct {
	status          fleet.DeviceStatus // fleet.StatusActive unless set
	tags, desired   []byte
	tagsVersion     int64
	desiredVersion  int64
	online          bool
	lastSeen        time.Time
	reportedVersion string
	health          string
	healthReason    string
	jobStatus       map[string][2]string // job id -> {status, reason}
}

// fakeRow is one rollout_devices row.
type fakeRow struct {
	rank         int64
	deviceID     string
	wave         int // -1: not in a wave yet
	phase        string
	prevVersion  string
	reason       string
	dispatchedAt time.Time
	bakeSince    time.Time
	rollbackAt   time.Time
}

type patchCall struct {
	section twin.Section
	patches []fleet.DevicePatch
}

type dispatchCall struct {
	rollout string
	wave    int
	cutoff  int64
	fw      fleet.Firmware
	limit   int
}

type finishCall struct {
	id, state string
	result    json.RawMessage
}

// fakeStore is an in-memory ConfigureStore that behaves like the registry's SQL for what the activities
// rely on, and records every call.
type fakeStore struct {
	mu sync.Mutex

	devices map[string]*fakeDevice
	targets map[string][]fleet.JobTarget // job -> targets in seq order
	rows    []*fakeRow                   // rank order
	fwURL   map[string]string            // catalogue: version -> url (rollback patches)

	// Scripted answers.
	acks      []fleet.AckProgress      // CollectAcks answers in turn, the last one repeated
	jobCounts map[fleet.JobState]int64 // when set, JobCounts returns it instead of counting targets
	fail      map[string]error         // method name -> error it returns
	onObserve func(call int)           // called (under the lock) before the call-th ObserveRollout, from 1

	// Recorded calls.
	targetRanges   [][2]int64
	recorded       [][]fleet.JobOutcome
	patchCalls     []patchCall
	ackCalls       int
	ackArgs        []string
	closed         []string // "job=state"
	dispatchCalls  []dispatchCall
	observeCalls   int
	observeJobs    []string
	observePhases  [][]rollout.Phase
	phaseUpdates   [][]fleet.PhaseUpdate
	rollbackCalls  []string // job ids
	rollbackLimits []int
	finished       []finishCall
	devicesPhases  []string
	devicesLimit   int
}

func newFakeStore() *fakeStore {
	return &fakeStore{devices: map[string]*fakeDevice{}, targets: map[string][]fleet.JobTarget{}, fwURL: map[string]string{}}
}

func (f *fakeStore) addDevice(id string, d fakeDevice) *fakeDevice {
	if d.status == "" {
		d.status = fleet.StatusActive
	}
	if d.jobStatus == nil {
		d.jobStatus = map[string][2]string{}
	}
	f.devices[id] = &d
	return &d
}

// addJob freezes targets seq 0..len(ids)-1 of job, all pending.
func (f *fakeStore) addJob(job string, ids ...string) {
	for i, id := range ids {
		f.targets[job] = append(f.targets[job], fleet.JobTarget{Seq: int64(i), DeviceID: id, State: fleet.JobPending})
	}
}

func (f *fakeStore) addRow(r fakeRow) *fakeRow {
	r.rank = int64(len(f.rows))
	f.rows = append(f.rows, &r)
	return &r
}

func (f *fakeStore) targetState(job string, seq int64) fleet.JobState {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, t := range f.targets[job] {
		if t.Seq == seq {
			return t.State
		}
	}
	return ""
}

func (f *fakeStore) err(method string) error { return f.fail[method] }

func (f *fakeStore) JobTargets(_ context.Context, job string, first, last int64) ([]fleet.JobTarget, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.targetRanges = append(f.targetRanges, [2]int64{first, last})
	if err := f.err("JobTargets"); err != nil {
		return nil, err
	}
	var out []fleet.JobTarget
	for _, t := range f.targets[job] {
		if t.Seq >= first && t.Seq <= last && t.State == fleet.JobPending {
			out = append(out, t)
		}
	}
	return out, nil
}

func (f *fakeStore) RecordJobOutcomes(_ context.Context, job string, outs []fleet.JobOutcome) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.err("RecordJobOutcomes"); err != nil {
		return err
	}
	f.recorded = append(f.recorded, slices.Clone(outs))
	for _, o := range outs {
		for i := range f.targets[job] {
			if f.targets[job][i].Seq == o.Seq {
				f.targets[job][i].State = o.State
			}
		}
	}
	return nil
}

func (f *fakeStore) PatchTwins(_ context.Context, section twin.Section, patches []fleet.DevicePatch) ([]fleet.PatchResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.patchCalls = append(f.patchCalls, patchCall{section: section, patches: slices.Clone(patches)})
	if err := f.err("PatchTwins"); err != nil {
		return nil, err
	}
	return f.patchLocked(section, patches), nil
}

// patchLocked is the registry's patchTwinsTx: per-device results, a refused device does not fail others.
func (f *fakeStore) patchLocked(section twin.Section, patches []fleet.DevicePatch) []fleet.PatchResult {
	out := make([]fleet.PatchResult, len(patches))
	for i, p := range patches {
		out[i].DeviceID = p.DeviceID
		d, ok := f.devices[p.DeviceID]
		if !ok {
			out[i].Err = fmt.Errorf("device %s: %w", p.DeviceID, fleet.ErrNotFound)
			continue
		}
		out[i].Online = d.online
		if d.status == fleet.StatusRetired {
			out[i].Err = fmt.Errorf("device %s is retired: %w", p.DeviceID, fleet.ErrNotActive)
			continue
		}
		doc, ver := &d.tags, &d.tagsVersion
		if section == twin.Desired {
			doc, ver = &d.desired, &d.desiredVersion
		}
		merged, err := twin.Apply(section, *doc, p.Patch)
		if err != nil {
			out[i].Err = fmt.Errorf("device %s: %w", p.DeviceID, err)
			continue
		}
		*doc = merged
		*ver++
		out[i].Version = *ver
	}
	return out
}

func (f *fakeStore) CollectAcks(_ context.Context, job string, keys []string) (fleet.AckProgress, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ackCalls++
	f.ackArgs = append([]string{job}, keys...)
	if err := f.err("CollectAcks"); err != nil {
		return fleet.AckProgress{}, err
	}
	return f.acks[min(f.ackCalls-1, len(f.acks)-1)], nil
}

func (f *fakeStore) CloseJob(_ context.Context, job string, state fleet.JobEnd) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.err("CloseJob"); err != nil {
		return err
	}
	f.closed = append(f.closed, job+"="+string(state))
	for i := range f.targets[job] {
		t := &f.targets[job][i]
		switch t.State {
		case fleet.JobRunning:
			t.State = fleet.JobOffline
			if d := f.devices[t.DeviceID]; d != nil && d.online {
				t.State = fleet.JobTimedOut
			}
		case fleet.JobPending:
			t.State = fleet.JobCancelled
		}
	}
	return nil
}

func (f *fakeStore) JobTotals(_ context.Context, job string) (fleet.JobCounts, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var c fleet.JobCounts
	if err := f.err("JobTotals"); err != nil {
		return c, err
	}
	if f.jobCounts != nil {
		for s, n := range f.jobCounts {
			c.AddState(s, n)
		}
		return c, nil
	}
	for _, t := range f.targets[job] {
		c.AddState(t.State, 1)
	}
	return c, nil
}

// fwPatch is the registry's firmwarePatch.
func fwPatch(job string, fw fleet.Firmware) []byte {
	m := map[string]any{"jobId": job, "version": fw.Version}
	if fw.URL != "" {
		m["url"] = fw.URL
	}
	if fw.SHA256 != "" {
		m["sha256"] = fw.SHA256
	}
	b, _ := json.Marshal(map[string]any{"firmware": m})
	return b
}

func (f *fakeStore) DispatchWave(_ context.Context, ro string, wave int, cutoff int64, fw fleet.Firmware, limit int) ([]fleet.DesiredPush, int64, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dispatchCalls = append(f.dispatchCalls, dispatchCall{rollout: ro, wave: wave, cutoff: cutoff, fw: fw, limit: limit})
	if err := f.err("DispatchWave"); err != nil {
		return nil, 0, false, err
	}
	var cands []*fakeRow
	for _, r := range f.rows {
		if r.phase == string(rollout.Queued) && r.rank < cutoff && len(cands) <= limit {
			cands = append(cands, r)
		}
	}
	more := len(cands) > limit
	if more {
		cands = cands[:limit]
	}
	patch := fwPatch(ro, fw)
	var pushes []fleet.DesiredPush
	var skipped int64
	now := time.Now()
	for _, r := range cands {
		d := f.devices[r.deviceID]
		r.wave, r.prevVersion, r.dispatchedAt = wave, d.reportedVersion, now
		switch {
		case d.reportedVersion == fw.Version:
			r.phase, r.reason = string(rollout.Skipped), "already runs "+fw.Version
			skipped++
			continue
		case d.status != fleet.StatusActive:
			r.phase, r.reason = string(rollout.Skipped), "device is "+string(d.status)
			skipped++
			continue
		}
		res := f.patchLocked(twin.Desired, []fleet.DevicePatch{{DeviceID: r.deviceID, Patch: patch}})[0]
		if res.Err != nil {
			r.phase, r.reason = string(rollout.Failed), "desired firmware could not be written: "+res.Err.Error()
			continue
		}
		r.phase, r.reason = string(rollout.Dispatched), ""
		pushes = append(pushes, fleet.DesiredPush{DeviceID: res.DeviceID, Version: res.Version, Online: res.Online, Patch: patch})
	}
	return pushes, skipped, more, nil
}

func (f *fakeStore) ObserveRollout(_ context.Context, _ string, job string, phases []rollout.Phase) ([]fleet.RolloutObservation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.observeCalls++
	f.observeJobs = append(f.observeJobs, job)
	f.observePhases = append(f.observePhases, slices.Clone(phases))
	if f.onObserve != nil {
		f.onObserve(f.observeCalls)
	}
	if err := f.err("ObserveRollout"); err != nil {
		return nil, err
	}
	var out []fleet.RolloutObservation
	for _, r := range f.rows {
		if !slices.Contains(phases, rollout.Phase(r.phase)) {
			continue
		}
		d := f.devices[r.deviceID]
		js := d.jobStatus[job]
		out = append(out, fleet.RolloutObservation{Rank: r.rank, DeviceID: r.deviceID, Wave: r.wave, Phase: rollout.Phase(r.phase),
			PrevVersion: r.prevVersion, DispatchedAt: r.dispatchedAt, BakeSince: r.bakeSince, RollbackAt: r.rollbackAt,
			JobStatus: js[0], JobReason: js[1], ReportedVersion: d.reportedVersion, Health: d.health,
			HealthReason: d.healthReason, Online: d.online, LastSeen: d.lastSeen})
	}
	return out, nil
}

func (f *fakeStore) UpdateRolloutPhases(_ context.Context, _ string, ups []fleet.PhaseUpdate) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.phaseUpdates = append(f.phaseUpdates, slices.Clone(ups))
	if err := f.err("UpdateRolloutPhases"); err != nil {
		return err
	}
	for _, u := range ups {
		r := f.rows[u.Rank]
		switch {
		case u.Reason != "":
			r.reason = u.Reason
		case !strings.HasPrefix(string(u.Phase), "roll"):
			r.reason = ""
		}
		r.phase = string(u.Phase)
		if !u.BakeSince.IsZero() {
			r.bakeSince = u.BakeSince
		}
	}
	return nil
}

func (f *fakeStore) RolloutCounts(context.Context, string) ([]fleet.PhaseCount, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.err("RolloutCounts"); err != nil {
		return nil, err
	}
	type key struct {
		wave  int
		phase string
	}
	m := map[key]int64{}
	for _, r := range f.rows {
		m[key{r.wave, r.phase}]++
	}
	var out []fleet.PhaseCount
	for k, n := range m {
		out = append(out, fleet.PhaseCount{Wave: k.wave, Phase: rollout.Phase(k.phase), N: n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Wave != out[j].Wave {
			return out[i].Wave < out[j].Wave
		}
		return out[i].Phase < out[j].Phase
	})
	return out, nil
}

// touched are the registry's touchedPhases: what StartRollback sends back.
var touched = []string{"dispatched", "downloading", "installing", "rebooting", "baking", "succeeded", "failed"}

func (f *fakeStore) StartRollback(_ context.Context, _ string, job string, limit int) ([]fleet.DesiredPush, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rollbackCalls = append(f.rollbackCalls, job)
	f.rollbackLimits = append(f.rollbackLimits, limit)
	if err := f.err("StartRollback"); err != nil {
		return nil, false, err
	}
	var cands []*fakeRow
	for _, r := range f.rows {
		if slices.Contains(touched, r.phase) && len(cands) <= limit {
			cands = append(cands, r)
		}
	}
	more := len(cands) > limit
	if more {
		cands = cands[:limit]
	}
	var pushes []fleet.DesiredPush
	now := time.Now()
	for _, r := range cands {
		r.rollbackAt = now
		if r.prevVersion == "" {
			r.phase, r.reason = string(rollout.RolledBack), "no previous version known; left as is"
			continue
		}
		patch := fwPatch(job, fleet.Firmware{Version: r.prevVersion, URL: f.fwURL[r.prevVersion]})
		res := f.patchLocked(twin.Desired, []fleet.DevicePatch{{DeviceID: r.deviceID, Patch: patch}})[0]
		if res.Err != nil {
			r.phase, r.reason = string(rollout.RollbackFailed), "desired firmware could not be written: "+res.Err.Error()
			continue
		}
		r.phase = string(rollout.RollingBack)
		pushes = append(pushes, fleet.DesiredPush{DeviceID: res.DeviceID, Version: res.Version, Online: res.Online, Patch: patch})
	}
	return pushes, more, nil
}

func (f *fakeStore) DesiredDocs(_ context.Context, ids []string) ([]fleet.DesiredPush, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.err("DesiredDocs"); err != nil {
		return nil, err
	}
	var out []fleet.DesiredPush
	for _, id := range ids {
		if d, ok := f.devices[id]; ok {
			out = append(out, fleet.DesiredPush{DeviceID: id, Version: d.desiredVersion, Online: d.online, Patch: d.desired})
		}
	}
	return out, nil
}

func (f *fakeStore) FinishRollout(_ context.Context, id string, state fleet.RolloutEnd, result json.RawMessage) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.err("FinishRollout"); err != nil {
		return err
	}
	f.finished = append(f.finished, finishCall{id: id, state: string(state), result: result})
	for _, r := range f.rows {
		if r.phase == string(rollout.Queued) {
			r.phase, r.reason = string(rollout.Cancelled), "the rollout ended before this wave"
		}
	}
	return nil
}

func (f *fakeStore) RolloutDevices(_ context.Context, _ string, phases []string, limit int) ([]fleet.RolloutDevice, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.devicesPhases, f.devicesLimit = slices.Clone(phases), limit
	if err := f.err("RolloutDevices"); err != nil {
		return nil, err
	}
	var out []fleet.RolloutDevice
	for _, r := range f.rows {
		if len(out) >= limit {
			break
		}
		if len(phases) == 0 || slices.Contains(phases, r.phase) {
			out = append(out, fleet.RolloutDevice{DeviceID: r.deviceID, Wave: r.wave, Phase: rollout.Phase(r.phase),
				PrevVersion: r.prevVersion, Reason: r.reason})
		}
	}
	return out, nil
}

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

// ---- JobBatch: set_tags / set_desired ---------------------------------------------------------------------

func TestJobBatchPatchesPendingTargetsAndRecordsOutcomes(t *testing.T) {
	patch := json.RawMessage(`{"site":"berlin","fan":{"speed":3}}`)
	cases := []struct {
		kind        fleet.JobKind
		section     twin.Section
		written     fleet.JobState // outcome of a written device
		wantCounts  fleet.JobCounts
		wantPushed  bool
		patchedDocs func(d *fakeDevice) ([]byte, int64)
	}{
		{kind: fleet.JobSetTags, section: twin.Tags, written: fleet.JobSucceeded,
			wantCounts:  fleet.JobCounts{Succeeded: 3, Failed: 2},
			patchedDocs: func(d *fakeDevice) ([]byte, int64) { return d.tags, d.tagsVersion }},
		{kind: fleet.JobSetDesired, section: twin.Desired, written: fleet.JobRunning, wantPushed: true,
			wantCounts:  fleet.JobCounts{Running: 3, Failed: 2},
			patchedDocs: func(d *fakeDevice) ([]byte, int64) { return d.desired, d.desiredVersion }},
	}
	for _, tc := range cases {
		t.Run(string(tc.kind), func(t *testing.T) {
			f := newFakeStore()
			// d0 online, d1 done already, d2 offline with an older desired version, d3 retired, d4 unknown to the
			// registry, d5 online, d6 outside the batch.
			f.addDevice("d0", fakeDevice{online: true})
			f.addDevice("d1", fakeDevice{online: true})
			f.addDevice("d2", fakeDevice{desired: []byte(`{"fan":{"mode":"auto"}}`), desiredVersion: 4, tags: []byte(`{"fan":{"mode":"auto"}}`), tagsVersion: 4})
			f.addDevice("d3", fakeDevice{status: fleet.StatusRetired, online: true})
			f.addDevice("d5", fakeDevice{online: true})
			f.addDevice("d6", fakeDevice{online: true})
			f.addJob("job-1", "d0", "d1", "d2", "d3", "d4", "d5", "d6")
			f.targets["job-1"][1].State = fleet.JobSucceeded
			ch := &fakeChannel{}
			a := &Activities{Jobs: f, Rollouts: f, Channel: ch}

			var s testsuite.WorkflowTestSuite
			env := s.NewTestActivityEnvironment()
			env.RegisterActivity(a)
			v, err := env.ExecuteActivity(a.JobBatch, workflows.JobBatchInput{JobID: "job-1", Kind: tc.kind, First: 0, Last: 6, Patch: patch})
			require.NoError(t, err)
			var c fleet.JobCounts
			require.NoError(t, v.Get(&c))
			require.Equal(t, tc.wantCounts, c)

			require.Equal(t, [][2]int64{{0, 5}}, f.targetRanges, "targets First..Last-1 inclusive")
			require.Len(t, f.patchCalls, 1)
			require.Equal(t, tc.section, f.patchCalls[0].section)
			var patched []string
			for _, p := range f.patchCalls[0].patches {
				patched = append(patched, p.DeviceID)
				require.JSONEq(t, string(patch), string(p.Patch))
			}
			require.Equal(t, []string{"d0", "d2", "d3", "d4", "d5"}, patched, "only pending targets in range")

			require.Len(t, f.recorded, 1)
			outs := f.recorded[0]
			require.Len(t, outs, 5)
			byseq := map[int64]fleet.JobOutcome{}
			for _, o := range outs {
				byseq[o.Seq] = o
			}
			for _, seq := range []int64{0, 2, 5} {
				require.Equal(t, fleet.JobOutcome{Seq: seq, State: tc.written}, byseq[seq])
			}
			require.Equal(t, fleet.JobFailed, byseq[3].State)
			require.Contains(t, byseq[3].Error, fleet.ErrNotActive.Error())
			require.Contains(t, byseq[3].Error, "d3")
			require.Equal(t, fleet.JobFailed, byseq[4].State)
			require.Contains(t, byseq[4].Error, fleet.ErrNotFound.Error())
			require.Equal(t, fleet.JobSucceeded, f.targetState("job-1", 1), "a done target is left alone")
			require.Equal(t, fleet.JobPending, f.targetState("job-1", 6), "a target past Last is left alone")

			doc, ver := tc.patchedDocs(f.devices["d2"])
			require.JSONEq(t, `{"site":"berlin","fan":{"mode":"auto","speed":3}}`, string(doc))
			require.Equal(t, int64(5), ver)

			if !tc.wantPushed {
				require.Zero(t, ch.publishes, "tags are not pushed to devices")
				return
			}
			// Every written device is pushed, the offline one too (see fleet.DesiredPush), at its new version.
			require.Equal(t, 1, ch.publishes)
			want := []fleet.DesiredPush{
				{DeviceID: "d0", Version: 1, Patch: patch},
				{DeviceID: "d2", Version: 5, Patch: patch},
				{DeviceID: "d5", Version: 1, Patch: patch},
			}
			require.Equal(t, want, ch.published)
		})
	}
}

func TestJobBatchSetDesiredPushFailureDoesNotFailTheBatch(t *testing.T) {
	for name, ch := range map[string]fleet.Channel{
		"push error": &fakeChannel{publishErr: errors.New("broker gone")},
		"no channel": nil,
	} {
		t.Run(name, func(t *testing.T) {
			f := newFakeStore()
			f.addDevice("d0", fakeDevice{online: true})
			f.addDevice("d1", fakeDevice{})
			f.addJob("j", "d0", "d1")
			a := &Activities{Jobs: f, Rollouts: f, Channel: ch}
			var c fleet.JobCounts
			// No error: the desired state is committed; devices catch up on reconnect.
			execute(t, a, a.JobBatch, workflows.JobBatchInput{JobID: "j", Kind: fleet.JobSetDesired,
				First: 0, Last: 2, Patch: json.RawMessage(`{"led":"on"}`)}, &c)
			require.Equal(t, fleet.JobCounts{Running: 2}, c)
			require.Equal(t, fleet.JobRunning, f.targetState("j", 0))
			require.Equal(t, fleet.JobRunning, f.targetState("j", 1))
		})
	}
}

func TestJobBatchStoreErrorsAreRetryable(t *testing.T) {
	for _, method := range []string{"JobTargets", "PatchTwins", "RecordJobOutcomes"} {
		t.Run(method, func(t *testing.T) {
			f := newFakeStore()
			f.addDevice("d0", fakeDevice{})
			f.addJob("j", "d0")
			f.fail = map[string]error{method: errors.New("connection reset")}
			a := &Activities{Jobs: f, Rollouts: f, Channel: &fakeChannel{}}
			_, err := a.JobBatch(context.Background(), workflows.JobBatchInput{JobID: "j", Kind: fleet.JobSetTags,
				First: 0, Last: 1, Patch: json.RawMessage(`{"a":1}`)})
			requireRetryable(t, err)
			require.Equal(t, fleet.JobPending, f.targetState("j", 0))
		})
	}
}

// ---- JobBatch: method -------------------------------------------------------------------------------------

func TestJobBatchMethodMapsChannelOutcomes(t *testing.T) {
	payload := json.RawMessage(`{"delay":5}`)
	cases := []struct {
		name   string
		result fleet.MethodResult
		want   fleet.JobOutcome // Seq is filled in
	}{
		{"succeeded keeps the payload",
			fleet.MethodResult{Outcome: fleet.MethodSucceeded, Status: 200, Payload: json.RawMessage(`{"ok":true}`)},
			fleet.JobOutcome{State: fleet.JobSucceeded, Status: 200, Payload: json.RawMessage(`{"ok":true}`)}},
		{"device error status fails",
			fleet.MethodResult{Outcome: fleet.MethodFailed, Status: 500, Payload: json.RawMessage(`{"error":"disk full"}`)},
			fleet.JobOutcome{State: fleet.JobFailed, Status: 500, Payload: json.RawMessage(`{"error":"disk full"}`), Error: "device answered 500"}},
		{"no answer times out",
			fleet.MethodResult{Outcome: fleet.MethodTimedOut},
			fleet.JobOutcome{State: fleet.JobTimedOut, Error: "no response within 5s"}},
		{"offline device",
			fleet.MethodResult{Outcome: fleet.MethodOffline, Status: 404, Payload: json.RawMessage(`{"code":"DeviceNotOnline"}`)},
			fleet.JobOutcome{State: fleet.JobOffline, Status: 404, Payload: json.RawMessage(`{"code":"DeviceNotOnline"}`), Error: "device offline"}},
	}
	f := newFakeStore()
	ch := &fakeChannel{results: map[string]fleet.MethodResult{}}
	var ids []string
	for i, tc := range cases {
		id := fmt.Sprintf("m%d", i)
		ids = append(ids, id)
		ch.results[id] = tc.result
	}
	f.addJob("j", ids...)
	a := &Activities{Jobs: f, Rollouts: f, Channel: ch}
	c, err := a.JobBatch(context.Background(), workflows.JobBatchInput{JobID: "j", Kind: fleet.JobMethod, First: 0,
		Last: int64(len(ids)), Method: "reboot", Payload: payload, Timeout: 5 * time.Second})
	require.NoError(t, err)
	require.Equal(t, fleet.JobCounts{Succeeded: 1, Failed: 1, TimedOut: 1, Offline: 1}, c)

	require.Equal(t, []time.Duration{5 * time.Second}, ch.timeouts)
	require.Len(t, ch.calls, len(ids))
	for i, call := range ch.calls {
		require.Equal(t, fleet.MethodCall{DeviceID: ids[i], Method: "reboot", Payload: payload}, call)
	}
	require.Len(t, f.recorded, 1)
	require.Len(t, f.recorded[0], len(cases))
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.want
			want.Seq = int64(i)
			require.Equal(t, want, f.recorded[0][i])
			require.Equal(t, want.State, f.targetState("j", int64(i)))
		})
	}
	require.Zero(t, ch.publishes)
}

func TestJobBatchMethodNotSentIsRetriedAndLeavesTargetsPending(t *testing.T) {
	notSent := fleet.MethodResult{Outcome: fleet.MethodFailed, Status: fleet.StatusNotSent, Payload: json.RawMessage(`"channel closed"`)}

	t.Run("nothing sent", func(t *testing.T) {
		f := newFakeStore()
		f.addJob("j", "a", "b", "c")
		ch := &fakeChannel{results: map[string]fleet.MethodResult{"a": notSent, "b": notSent, "c": notSent}}
		a := &Activities{Jobs: f, Rollouts: f, Channel: ch}
		req := workflows.JobBatchInput{JobID: "j", Kind: fleet.JobMethod, First: 0, Last: 3, Method: "ping", Timeout: time.Second}
		_, err := a.JobBatch(context.Background(), req)
		requireRetryable(t, err)
		require.Contains(t, err.Error(), "not sent")
		require.Contains(t, err.Error(), "channel closed")
		require.Empty(t, f.recorded, "nothing is recorded")
		for seq := range int64(3) {
			require.Equal(t, fleet.JobPending, f.targetState("j", seq))
		}

		// The retry sends every call again.
		ch.results = nil
		c, err := a.JobBatch(context.Background(), req)
		require.NoError(t, err)
		require.Equal(t, fleet.JobCounts{Succeeded: 3}, c)
		require.Equal(t, []string{"a", "b", "c", "a", "b", "c"}, ch.calledDevices())
	})

	t.Run("some not sent", func(t *testing.T) {
		f := newFakeStore()
		f.addJob("j", "a", "b")
		ch := &fakeChannel{results: map[string]fleet.MethodResult{"b": notSent}}
		a := &Activities{Jobs: f, Rollouts: f, Channel: ch}
		_, err := a.JobBatch(context.Background(), workflows.JobBatchInput{JobID: "j", Kind: fleet.JobMethod, First: 0, Last: 2,
			Method: "ping", Timeout: time.Second})
		requireRetryable(t, err)
		require.Contains(t, err.Error(), "b")
		require.Equal(t, fleet.JobPending, f.targetState("j", 1), "the call that was not sent stays pending for the retry")
	})
}

func TestJobBatchMethodWithoutChannelIsPermanent(t *testing.T) {
	f := newFakeStore()
	f.addJob("j", "a")
	a := &Activities{Jobs: f, Rollouts: f}
	_, err := a.JobBatch(context.Background(), workflows.JobBatchInput{JobID: "j", Kind: fleet.JobMethod, First: 0, Last: 1, Method: "ping"})
	requireNonRetryable(t, err, "NoChannel")
	require.Contains(t, err.Error(), "no MQTT channel")
	require.Empty(t, f.recorded)
	require.Equal(t, fleet.JobPending, f.targetState("j", 0))
}

func TestJobBatchUnknownKindIsPermanent(t *testing.T) {
	f := newFakeStore()
	f.addJob("j", "a")
	a := &Activities{Jobs: f, Rollouts: f, Channel: &fakeChannel{}}
	_, err := a.JobBatch(context.Background(), workflows.JobBatchInput{JobID: "j", Kind: "explode", First: 0, Last: 1})
	requireNonRetryable(t, err, workflows.ErrTypeInvalidInput)
	require.Contains(t, err.Error(), "explode")
	require.Empty(t, f.recorded)
}

// ---- JobBatch: retries ------------------------------------------------------------------------------------

func TestJobBatchRetryProcessesOnlyPendingTargets(t *testing.T) {
	kinds := []fleet.JobKind{fleet.JobSetTags, fleet.JobSetDesired, fleet.JobMethod}
	for _, kind := range kinds {
		t.Run(string(kind), func(t *testing.T) {
			f := newFakeStore()
			ids := devIDs("d", 20)
			for _, id := range ids {
				f.addDevice(id, fakeDevice{online: true})
			}
			f.addJob("j", ids...)
			// A first attempt got through seq 10..12 before the worker died.
			for seq := 10; seq <= 12; seq++ {
				f.targets["j"][seq].State = fleet.JobSucceeded
			}
			ch := &fakeChannel{}
			a := &Activities{Jobs: f, Rollouts: f, Channel: ch}
			req := workflows.JobBatchInput{JobID: "j", Kind: kind, First: 10, Last: 15, Patch: json.RawMessage(`{"k":1}`),
				Method: "ping", Timeout: time.Second}
			c, err := a.JobBatch(context.Background(), req)
			require.NoError(t, err)
			require.Equal(t, [][2]int64{{10, 14}}, f.targetRanges)
			require.Len(t, f.recorded, 1)
			var seqs []int64
			for _, o := range f.recorded[0] {
				seqs = append(seqs, o.Seq)
			}
			require.Equal(t, []int64{13, 14}, seqs)
			switch kind {
			case fleet.JobMethod:
				require.Equal(t, []string{"d13", "d14"}, ch.calledDevices())
				require.Equal(t, fleet.JobCounts{Succeeded: 2}, c)
			case fleet.JobSetDesired:
				require.Len(t, ch.published, 2)
				require.Equal(t, fleet.JobCounts{Running: 2}, c)
			default:
				require.Equal(t, fleet.JobCounts{Succeeded: 2}, c)
			}

			// A further retry finds nothing pending and does nothing.
			c, err = a.JobBatch(context.Background(), req)
			require.NoError(t, err)
			require.Equal(t, fleet.JobCounts{}, c)
			require.Len(t, f.recorded, 1)
			require.LessOrEqual(t, len(f.patchCalls), 1)
			require.LessOrEqual(t, len(ch.calls), 2)
			require.LessOrEqual(t, ch.publishes, 1)
		})
	}
}

// ---- JobCollectAcks ---------------------------------------------------------------------------------------

func TestJobCollectAcks(t *testing.T) {
	cases := []struct {
		name      string
		acks      []fleet.AckProgress
		maxWait   time.Duration
		want      workflows.JobCollectAcksResult
		polls     func(t *testing.T, n int)
		minElapse time.Duration
		maxElapse time.Duration
	}{
		{name: "nothing waiting returns at once",
			acks: []fleet.AckProgress{{Acked: 4}}, maxWait: time.Minute,
			want:  workflows.JobCollectAcksResult{Acked: 4},
			polls: func(t *testing.T, n int) { require.Equal(t, 1, n) }, maxElapse: 200 * time.Millisecond},
		{name: "acks are summed until nothing waits",
			acks:    []fleet.AckProgress{{Acked: 3, Waiting: 2, WaitingOnline: 1}, {Acked: 0, Waiting: 2, WaitingOnline: 1}, {Acked: 2}},
			maxWait: time.Minute,
			want:    workflows.JobCollectAcksResult{Acked: 5},
			polls:   func(t *testing.T, n int) { require.Equal(t, 3, n) }, maxElapse: 5 * time.Second},
		{name: "devices that keep waiting end at MaxWait",
			acks:      []fleet.AckProgress{{Acked: 1, Waiting: 3, WaitingOnline: 2}, {Waiting: 3, WaitingOnline: 2}},
			maxWait:   300 * time.Millisecond,
			want:      workflows.JobCollectAcksResult{Acked: 1, Waiting: 3, WaitingOnline: 2},
			polls:     func(t *testing.T, n int) { require.GreaterOrEqual(t, n, 2) },
			minElapse: 300 * time.Millisecond, maxElapse: 5 * time.Second},
		{name: "no time left reports at once",
			acks: []fleet.AckProgress{{Acked: 1, Waiting: 3, WaitingOnline: 2}}, maxWait: 0,
			want:  workflows.JobCollectAcksResult{Acked: 1, Waiting: 3, WaitingOnline: 2},
			polls: func(t *testing.T, n int) { require.Equal(t, 1, n) }, maxElapse: 200 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeStore()
			f.acks = tc.acks
			a := &Activities{Jobs: f, Rollouts: f}
			var s testsuite.WorkflowTestSuite
			env := s.NewTestActivityEnvironment()
			env.RegisterActivity(a)
			start := time.Now()
			v, err := env.ExecuteActivity(a.JobCollectAcks, workflows.JobCollectAcksInput{JobID: "j", Keys: []string{"led", "fan"}, MaxWait: tc.maxWait})
			elapsed := time.Since(start)
			require.NoError(t, err)
			var st workflows.JobCollectAcksResult
			require.NoError(t, v.Get(&st))
			require.Equal(t, tc.want, st)
			require.Equal(t, []string{"j", "led", "fan"}, f.ackArgs)
			tc.polls(t, f.ackCalls)
			require.GreaterOrEqual(t, elapsed, tc.minElapse)
			require.Less(t, elapsed, tc.maxElapse)
		})
	}
}

func TestJobCollectAcksStopsWithContextAndErrors(t *testing.T) {
	f := newFakeStore()
	f.acks = []fleet.AckProgress{{Waiting: 1}}
	a := &Activities{Jobs: f, Rollouts: f}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := a.JobCollectAcks(ctx, workflows.JobCollectAcksInput{JobID: "j", MaxWait: time.Minute})
	require.ErrorIs(t, err, context.DeadlineExceeded)

	f.fail = map[string]error{"CollectAcks": errors.New("db down")}
	_, err = a.JobCollectAcks(context.Background(), workflows.JobCollectAcksInput{JobID: "j", MaxWait: time.Minute})
	require.EqualError(t, err, "db down")
}

// ---- JobClose ---------------------------------------------------------------------------------------------

func TestJobCloseMapsRegistryCounts(t *testing.T) {
	f := newFakeStore()
	f.addDevice("on", fakeDevice{online: true})
	f.addDevice("off", fakeDevice{})
	ids := []string{"on", "on", "on", "off", "on", "off", "off", "on", "off", "on"}
	f.addJob("j", ids...)
	states := []fleet.JobState{fleet.JobSucceeded, fleet.JobSucceeded, fleet.JobFailed, fleet.JobOffline, fleet.JobTimedOut,
		fleet.JobRunning /* off: -> offline */, fleet.JobPending /* -> cancelled */, fleet.JobRunning, /* on: -> timed_out */
		fleet.JobCancelled, fleet.JobPending /* -> cancelled */}
	for i, s := range states {
		f.targets["j"][i].State = s
	}
	a := &Activities{Jobs: f, Rollouts: f}
	c, err := a.JobClose(context.Background(), workflows.JobCloseInput{JobID: "j", State: "cancelled"})
	require.NoError(t, err)
	require.Equal(t, []string{"j=cancelled"}, f.closed)
	require.Equal(t, fleet.JobCounts{Succeeded: 2, Failed: 1, TimedOut: 2, Offline: 2, Cancelled: 3}, c)

	// Each registry state goes to its own field; unknown states are not counted.
	f.jobCounts = map[fleet.JobState]int64{fleet.JobSucceeded: 7, fleet.JobFailed: 6, fleet.JobTimedOut: 5,
		fleet.JobOffline: 4, fleet.JobRunning: 3, fleet.JobCancelled: 2, fleet.JobPending: 100, "mystery": 9}
	c, err = a.JobClose(context.Background(), workflows.JobCloseInput{JobID: "j", State: "completed"})
	require.NoError(t, err)
	require.Equal(t, fleet.JobCounts{Succeeded: 7, Failed: 6, TimedOut: 5, Offline: 4, Running: 3, Cancelled: 2}, c)

	for _, method := range []string{"CloseJob", "JobTotals"} {
		f.fail = map[string]error{method: errors.New(method + " failed")}
		_, err = a.JobClose(context.Background(), workflows.JobCloseInput{JobID: "j", State: "completed"})
		require.EqualError(t, err, method+" failed")
	}
}

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

var _ fleet.JobStore = (*fakeStore)(nil)
var _ fleet.RolloutStore = (*fakeStore)(nil)
var _ fleet.Channel = (*fakeChannel)(nil)

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
