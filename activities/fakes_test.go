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

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/rollout"
	"github.com/fleetflow/fleetflow/internal/twin"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
)

// ---- fake stores ----------------------------------------------------------------------------------------

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

var _ fleet.JobStore = (*fakeStore)(nil)
var _ fleet.RolloutStore = (*fakeStore)(nil)
var _ fleet.Channel = (*fakeChannel)(nil)
