package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/testsuite"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleet/fleettest"
	"github.com/fleetflow/fleetflow/internal/twin"
	"github.com/fleetflow/fleetflow/workflows"
)

// ---- JobBatch: set_tags / set_desired ---------------------------------------------------------------------

func TestJobBatchPatchesPendingTargetsAndRecordsOutcomes(t *testing.T) {
	patch := json.RawMessage(`{"site":"berlin","fan":{"speed":3}}`)
	cases := []struct {
		kind        fleet.JobKind
		section     twin.Section
		written     fleet.JobState // outcome of a written device
		wantCounts  fleet.JobCounts
		wantPushed  bool
		patchedDocs func(d *fleettest.Device) ([]byte, int64)
	}{
		{kind: fleet.JobSetTags, section: twin.Tags, written: fleet.JobSucceeded,
			wantCounts:  fleet.JobCounts{Succeeded: 4, Failed: 2}, // d1 was done already: the range's counts
			patchedDocs: func(d *fleettest.Device) ([]byte, int64) { return d.Tags, d.TagsVersion }},
		{kind: fleet.JobSetDesired, section: twin.Desired, written: fleet.JobRunning, wantPushed: true,
			wantCounts:  fleet.JobCounts{Running: 3, Failed: 2, Succeeded: 1},
			patchedDocs: func(d *fleettest.Device) ([]byte, int64) { return d.Desired, d.DesiredVersion }},
	}
	for _, tc := range cases {
		t.Run(string(tc.kind), func(t *testing.T) {
			f := fleettest.New()
			// d0 online, d1 done already, d2 offline with an older desired version, d3 retired, d4 unknown to the
			// registry, d5 online, d6 outside the batch.
			f.AddDevice("d0", fleettest.Device{Online: true})
			f.AddDevice("d1", fleettest.Device{Online: true})
			f.AddDevice("d2", fleettest.Device{Desired: []byte(`{"fan":{"mode":"auto"}}`), DesiredVersion: 4, Tags: []byte(`{"fan":{"mode":"auto"}}`), TagsVersion: 4})
			f.AddDevice("d3", fleettest.Device{Status: fleet.StatusRetired, Online: true})
			f.AddDevice("d5", fleettest.Device{Online: true})
			f.AddDevice("d6", fleettest.Device{Online: true})
			f.AddJob("job-1", "d0", "d1", "d2", "d3", "d4", "d5", "d6")
			f.Targets["job-1"][1].State = fleet.JobSucceeded
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

			require.Equal(t, [][2]int64{{0, 5}}, f.TargetRanges, "targets First..Last-1 inclusive")
			require.Len(t, f.PatchCalls, 1)
			require.Equal(t, tc.section, f.PatchCalls[0].Section)
			var patched []string
			for _, p := range f.PatchCalls[0].Patches {
				patched = append(patched, p.DeviceID)
				require.JSONEq(t, string(patch), string(p.Patch))
			}
			require.Equal(t, []string{"d0", "d2", "d3", "d4", "d5"}, patched, "only pending targets in range")

			require.Len(t, f.Recorded, 1)
			outs := f.Recorded[0]
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
			require.Equal(t, fleet.JobSucceeded, f.TargetState("job-1", 1), "a done target is left alone")
			require.Equal(t, fleet.JobPending, f.TargetState("job-1", 6), "a target past Last is left alone")

			doc, ver := tc.patchedDocs(f.Devices["d2"])
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
			f := fleettest.New()
			f.AddDevice("d0", fleettest.Device{Online: true})
			f.AddDevice("d1", fleettest.Device{})
			f.AddJob("j", "d0", "d1")
			a := &Activities{Jobs: f, Rollouts: f, Channel: ch}
			var c fleet.JobCounts
			// No error: the desired state is committed; devices catch up on reconnect.
			execute(t, a, a.JobBatch, workflows.JobBatchInput{JobID: "j", Kind: fleet.JobSetDesired,
				First: 0, Last: 2, Patch: json.RawMessage(`{"led":"on"}`)}, &c)
			require.Equal(t, fleet.JobCounts{Running: 2}, c)
			require.Equal(t, fleet.JobRunning, f.TargetState("j", 0))
			require.Equal(t, fleet.JobRunning, f.TargetState("j", 1))
		})
	}
}

func TestJobBatchStoreErrorsAreRetryable(t *testing.T) {
	for _, method := range []string{"JobTargets", "PatchJobTargets"} {
		t.Run(method, func(t *testing.T) {
			f := fleettest.New()
			f.AddDevice("d0", fleettest.Device{})
			f.AddJob("j", "d0")
			f.Fail = map[string]error{method: errors.New("connection reset")}
			a := &Activities{Jobs: f, Rollouts: f, Channel: &fakeChannel{}}
			_, err := a.JobBatch(context.Background(), workflows.JobBatchInput{JobID: "j", Kind: fleet.JobSetTags,
				First: 0, Last: 1, Patch: json.RawMessage(`{"a":1}`)})
			requireRetryable(t, err)
			require.Equal(t, fleet.JobPending, f.TargetState("j", 0))
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
	f := fleettest.New()
	ch := &fakeChannel{results: map[string]fleet.MethodResult{}}
	var ids []string
	for i, tc := range cases {
		id := fmt.Sprintf("m%d", i)
		ids = append(ids, id)
		ch.results[id] = tc.result
	}
	f.AddJob("j", ids...)
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
	require.Len(t, f.Recorded, 1)
	require.Len(t, f.Recorded[0], len(cases))
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.want
			want.Seq = int64(i)
			require.Equal(t, want, f.Recorded[0][i])
			require.Equal(t, want.State, f.TargetState("j", int64(i)))
		})
	}
	require.Zero(t, ch.publishes)
}

func TestJobBatchMethodNotSentIsRetriedAndLeavesTargetsPending(t *testing.T) {
	notSent := fleet.MethodResult{Outcome: fleet.MethodFailed, Status: fleet.StatusNotSent, Payload: json.RawMessage(`"channel closed"`)}

	t.Run("nothing sent", func(t *testing.T) {
		f := fleettest.New()
		f.AddJob("j", "a", "b", "c")
		ch := &fakeChannel{results: map[string]fleet.MethodResult{"a": notSent, "b": notSent, "c": notSent}}
		a := &Activities{Jobs: f, Rollouts: f, Channel: ch}
		req := workflows.JobBatchInput{JobID: "j", Kind: fleet.JobMethod, First: 0, Last: 3, Method: "ping", Timeout: time.Second}
		_, err := a.JobBatch(context.Background(), req)
		requireRetryable(t, err)
		require.Contains(t, err.Error(), "not sent")
		require.Contains(t, err.Error(), "channel closed")
		for seq := range int64(3) {
			require.Equal(t, fleet.JobPending, f.TargetState("j", seq))
		}

		// The retry sends every call again.
		ch.results = nil
		c, err := a.JobBatch(context.Background(), req)
		require.NoError(t, err)
		require.Equal(t, fleet.JobCounts{Succeeded: 3}, c)
		require.Equal(t, []string{"a", "b", "c", "a", "b", "c"}, ch.calledDevices(), "what was not sent is sent by the retry")
	})

	t.Run("some not sent", func(t *testing.T) {
		f := fleettest.New()
		f.AddJob("j", "a", "b")
		ch := &fakeChannel{results: map[string]fleet.MethodResult{"b": notSent}}
		a := &Activities{Jobs: f, Rollouts: f, Channel: ch}
		_, err := a.JobBatch(context.Background(), workflows.JobBatchInput{JobID: "j", Kind: fleet.JobMethod, First: 0, Last: 2,
			Method: "ping", Timeout: time.Second})
		requireRetryable(t, err)
		require.Contains(t, err.Error(), "b")
		require.Equal(t, fleet.JobPending, f.TargetState("j", 1), "the call that was not sent stays pending for the retry")
	})
}

func TestJobBatchMethodWithoutChannelIsPermanent(t *testing.T) {
	f := fleettest.New()
	f.AddJob("j", "a")
	a := &Activities{Jobs: f, Rollouts: f}
	_, err := a.JobBatch(context.Background(), workflows.JobBatchInput{JobID: "j", Kind: fleet.JobMethod, First: 0, Last: 1, Method: "ping"})
	requireNonRetryable(t, err, "NoChannel")
	require.Contains(t, err.Error(), "no device channel")
	require.Empty(t, f.Recorded)
	require.Equal(t, fleet.JobPending, f.TargetState("j", 0))
}

func TestJobBatchUnknownKindIsPermanent(t *testing.T) {
	f := fleettest.New()
	f.AddJob("j", "a")
	a := &Activities{Jobs: f, Rollouts: f, Channel: &fakeChannel{}}
	_, err := a.JobBatch(context.Background(), workflows.JobBatchInput{JobID: "j", Kind: "explode", First: 0, Last: 1})
	requireNonRetryable(t, err, workflows.ErrTypeInvalidInput)
	require.Contains(t, err.Error(), "explode")
	require.Empty(t, f.Recorded)
}

// ---- JobBatch: retries ------------------------------------------------------------------------------------

func TestJobBatchRetryProcessesOnlyPendingTargets(t *testing.T) {
	kinds := []fleet.JobKind{fleet.JobSetTags, fleet.JobSetDesired, fleet.JobMethod}
	for _, kind := range kinds {
		t.Run(string(kind), func(t *testing.T) {
			f := fleettest.New()
			ids := devIDs("d", 20)
			for _, id := range ids {
				f.AddDevice(id, fleettest.Device{Online: true})
			}
			f.AddJob("j", ids...)
			// A first attempt got through seq 10..12 before the worker died.
			for seq := 10; seq <= 12; seq++ {
				f.Targets["j"][seq].State = fleet.JobSucceeded
			}
			ch := &fakeChannel{}
			a := &Activities{Jobs: f, Rollouts: f, Channel: ch}
			req := workflows.JobBatchInput{JobID: "j", Kind: kind, First: 10, Last: 15, Patch: json.RawMessage(`{"k":1}`),
				Method: "ping", Timeout: time.Second}
			c, err := a.JobBatch(context.Background(), req)
			require.NoError(t, err)
			require.Equal(t, [][2]int64{{10, 14}}, f.TargetRanges)
			require.Len(t, f.Recorded, 1)
			var seqs []int64
			for _, o := range f.Recorded[0] {
				seqs = append(seqs, o.Seq)
			}
			require.Equal(t, []int64{13, 14}, seqs)
			// The counts are the range's, whichever attempt did the work.
			want := fleet.JobCounts{Succeeded: 5}
			switch kind {
			case fleet.JobMethod:
				require.Equal(t, []string{"d13", "d14"}, ch.calledDevices())
			case fleet.JobSetDesired:
				require.Len(t, ch.published, 2)
				want = fleet.JobCounts{Succeeded: 3, Running: 2}
			}
			require.Equal(t, want, c)

			// A further retry finds nothing pending, does nothing and reports the same counts.
			c, err = a.JobBatch(context.Background(), req)
			require.NoError(t, err)
			require.Equal(t, want, c)
			require.Len(t, f.Recorded, 1)
			require.LessOrEqual(t, len(f.PatchCalls), 1)
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
			f := fleettest.New()
			f.Acks = tc.acks
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
			require.Equal(t, []string{"j", "led", "fan"}, f.AckArgs)
			tc.polls(t, f.AckCalls)
			require.GreaterOrEqual(t, elapsed, tc.minElapse)
			require.Less(t, elapsed, tc.maxElapse)
		})
	}
}

func TestJobCollectAcksStopsWithContextAndErrors(t *testing.T) {
	f := fleettest.New()
	f.Acks = []fleet.AckProgress{{Waiting: 1}}
	a := &Activities{Jobs: f, Rollouts: f}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := a.JobCollectAcks(ctx, workflows.JobCollectAcksInput{JobID: "j", MaxWait: time.Minute})
	require.ErrorIs(t, err, context.DeadlineExceeded)

	f.Fail = map[string]error{"CollectAcks": errors.New("db down")}
	_, err = a.JobCollectAcks(context.Background(), workflows.JobCollectAcksInput{JobID: "j", MaxWait: time.Minute})
	require.EqualError(t, err, "db down")
}

// ---- JobClose ---------------------------------------------------------------------------------------------

func TestJobCloseMapsRegistryCounts(t *testing.T) {
	f := fleettest.New()
	f.AddDevice("on", fleettest.Device{Online: true})
	f.AddDevice("off", fleettest.Device{})
	ids := []string{"on", "on", "on", "off", "on", "off", "off", "on", "off", "on"}
	f.AddJob("j", ids...)
	states := []fleet.JobState{fleet.JobSucceeded, fleet.JobSucceeded, fleet.JobFailed, fleet.JobOffline, fleet.JobTimedOut,
		fleet.JobRunning /* off: -> offline */, fleet.JobPending /* -> cancelled */, fleet.JobRunning, /* on: -> timed_out */
		fleet.JobCancelled, fleet.JobPending /* -> cancelled */}
	for i, s := range states {
		f.Targets["j"][i].State = s
	}
	a := &Activities{Jobs: f, Rollouts: f}
	c, err := a.JobClose(context.Background(), workflows.JobCloseInput{JobID: "j", State: "cancelled"})
	require.NoError(t, err)
	require.Equal(t, []string{"j=cancelled"}, f.Closed)
	require.Equal(t, fleet.JobCounts{Succeeded: 2, Failed: 1, TimedOut: 2, Offline: 2, Cancelled: 3}, c)

	// Each registry state goes to its own field; unknown states are not counted.
	f.JobCounts = map[fleet.JobState]int64{fleet.JobSucceeded: 7, fleet.JobFailed: 6, fleet.JobTimedOut: 5,
		fleet.JobOffline: 4, fleet.JobRunning: 3, fleet.JobCancelled: 2, fleet.JobPending: 100, "mystery": 9}
	c, err = a.JobClose(context.Background(), workflows.JobCloseInput{JobID: "j", State: "completed"})
	require.NoError(t, err)
	require.Equal(t, fleet.JobCounts{Succeeded: 7, Failed: 6, TimedOut: 5, Offline: 4, Running: 3, Cancelled: 2}, c)

	for _, method := range []string{"CloseJob", "JobTotals"} {
		f.Fail = map[string]error{method: errors.New(method + " failed")}
		_, err = a.JobClose(context.Background(), workflows.JobCloseInput{JobID: "j", State: "completed"})
		require.EqualError(t, err, method+" failed")
	}
}

// The pause between acknowledgement polls follows what the next poll costs: a short period while polls are
// cheap, twice the expected scan when they are not, and the expected scan shrinks with the targets still
// waiting (a poll that just marked 95,000 of 100,000 targets predicts a small next one).
func TestAckPollPauseFollowsTheNextPollsCost(t *testing.T) {
	if got := ackPollPause(10*time.Millisecond, 0, 1000); got != ackPollEvery {
		t.Fatalf("cheap poll: pause %s, want %s", got, ackPollEvery)
	}
	if got := ackPollPause(time.Second, 0, 100_000); got != 2*time.Second {
		t.Fatalf("a 1 s poll with every target still waiting: pause %s, want 2 s", got)
	}
	if got := ackPollPause(4*time.Second, 95_000, 5_000); got != 400*time.Millisecond {
		t.Fatalf("a 4 s poll that left 5%% waiting: pause %s, want 400 ms", got)
	}
	if got := ackPollPause(time.Second, 0, 0); got != 2*time.Second {
		t.Fatalf("a poll that read nothing: pause %s, want twice its time", got)
	}
}
