package registry_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/twin"
)

type storedEvent struct {
	Kind   string
	At     time.Time
	Detail string
}

// deviceEvents reads a device's device_events rows in insertion order.
func deviceEvents(t *testing.T, reg *registry.Registry, id string) []storedEvent {
	t.Helper()
	rows, err := reg.Pool().Query(context.Background(),
		"SELECT kind, at, detail::text FROM device_events WHERE device_id = $1 ORDER BY id", id)
	require.NoError(t, err)
	evs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (storedEvent, error) {
		var e storedEvent
		err := row.Scan(&e.Kind, &e.At, &e.Detail)
		return e, err
	})
	require.NoError(t, err)
	return evs
}

func kindsOf(evs []storedEvent) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.Kind + " " + e.Detail
	}
	return out
}

func TestConnectionsAreRecordedOnTheTimeline(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	provision(t, reg, "op", "dev-1", "dev-2")
	now := time.Now().Truncate(time.Microsecond)
	require.NoError(t, reg.RecordConnections(ctx, []fleet.ConnEvent{
		{DeviceID: "dev-1", Kind: fleet.ConnUp, Session: 100, At: now},
		{DeviceID: "dev-2", Kind: fleet.ConnUp, Session: 5, At: now},
		{DeviceID: "dev-1", Kind: fleet.ConnUp, Session: 200, At: now.Add(time.Second)},       // takeover
		{DeviceID: "dev-1", Kind: fleet.ConnDown, Session: 100, At: now.Add(2 * time.Second)}, // its late LWT: no event
		{DeviceID: "dev-1", Kind: fleet.ConnSeen, Session: 200, At: now.Add(2 * time.Second)}, // activity: no event
		{DeviceID: "dev-2", Kind: fleet.ConnDown, Session: 5, At: now.Add(3 * time.Second)},
		{DeviceID: "ghost", Kind: fleet.ConnUp, Session: 1, At: now}, // unknown: no event
	}))
	require.Equal(t, []string{`connected {"session": 100}`, `connected {"session": 200}`}, kindsOf(deviceEvents(t, reg, "dev-1")))
	require.Equal(t, []string{`connected {"session": 5}`, `disconnected {"session": 5}`}, kindsOf(deviceEvents(t, reg, "dev-2")))
	require.Empty(t, deviceEvents(t, reg, "ghost"))
	evs := deviceEvents(t, reg, "dev-1")
	require.True(t, evs[1].At.Equal(now.Add(time.Second)), "events carry the gateway's time")

	// A stale down (older session), a stale up and a duplicate up change nothing and leave no event; the
	// down of the current session does.
	require.NoError(t, reg.RecordConnections(ctx, []fleet.ConnEvent{
		{DeviceID: "dev-1", Kind: fleet.ConnDown, Session: 150, At: now.Add(4 * time.Second)},
		{DeviceID: "dev-1", Kind: fleet.ConnUp, Session: 150, At: now.Add(4 * time.Second)},
		{DeviceID: "dev-1", Kind: fleet.ConnUp, Session: 200, At: now.Add(4 * time.Second)},
		{DeviceID: "dev-1", Kind: fleet.ConnDown, Session: 200, At: now.Add(5 * time.Second)},
		{DeviceID: "dev-1", Kind: fleet.ConnDown, Session: 200, At: now.Add(6 * time.Second)}, // already offline
	}))
	require.Equal(t, []string{`connected {"session": 100}`, `connected {"session": 200}`, `disconnected {"session": 200}`},
		kindsOf(deviceEvents(t, reg, "dev-1")))
	d, err := reg.GetDevice(ctx, "dev-1")
	require.NoError(t, err)
	require.False(t, d.Online)
	require.Equal(t, int64(200), d.Session)

	// A device flapping within one batch: every session is on the timeline, and the state is the last one.
	require.NoError(t, reg.RecordConnections(ctx, []fleet.ConnEvent{
		{DeviceID: "dev-2", Kind: fleet.ConnUp, Session: 6, At: now.Add(7 * time.Second)},
		{DeviceID: "dev-2", Kind: fleet.ConnDown, Session: 6, At: now.Add(8 * time.Second)},
		{DeviceID: "dev-2", Kind: fleet.ConnUp, Session: 7, At: now.Add(9 * time.Second)},
	}))
	require.Equal(t, []string{`connected {"session": 5}`, `disconnected {"session": 5}`,
		`connected {"session": 6}`, `disconnected {"session": 6}`, `connected {"session": 7}`}, kindsOf(deviceEvents(t, reg, "dev-2")))
	d, err = reg.GetDevice(ctx, "dev-2")
	require.NoError(t, err)
	require.True(t, d.Online)
	require.Equal(t, int64(7), d.Session)
}

func TestConnectionEventsRollBackWithTheBatch(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	provision(t, reg, "op", "dev-1")
	// Make the event insert fail: the connection state of the batch must not commit without its events.
	_, err := reg.Pool().Exec(ctx, "ALTER TABLE device_events ADD CONSTRAINT no_connects CHECK (kind <> 'connected')")
	require.NoError(t, err)
	err = reg.RecordConnections(ctx, []fleet.ConnEvent{{DeviceID: "dev-1", Kind: fleet.ConnUp, Session: 1, At: time.Now()}})
	require.ErrorContains(t, err, "no_connects")
	d, err := reg.GetDevice(ctx, "dev-1")
	require.NoError(t, err)
	require.False(t, d.Online)
	require.Zero(t, d.Session)
}

// The timeline's events are derived from the state the batch's row locks guard, not from a read before them:
// a batch that waited for another writer's lock (a takeover committed on another gateway meanwhile) records
// only what it changed on top of that writer's state. A session reopened after it went down is a connect,
// and refusals keep their place among the batch's events.
func TestConnectionEventsFollowTheStateTheirLocksGuard(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	provision(t, reg, "op", "dev-1", "dev-2")
	now := time.Now().Truncate(time.Microsecond)
	require.NoError(t, reg.RecordConnections(ctx, []fleet.ConnEvent{
		{DeviceID: "dev-1", Kind: fleet.ConnUp, Session: 100, At: now},
		{DeviceID: "dev-2", Kind: fleet.ConnUp, Session: 5, At: now},
		{DeviceID: "dev-2", Kind: fleet.ConnDown, Session: 5, At: now.Add(time.Second)},
	}))

	tx, err := reg.Pool().Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, "UPDATE devices SET session = 300, online = true WHERE id = 'dev-1'")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		done <- reg.RecordConnections(ctx, []fleet.ConnEvent{
			{DeviceID: "dev-1", Kind: fleet.ConnUp, Session: 200, At: now.Add(2 * time.Second)},   // older than the locker's 300
			{DeviceID: "dev-1", Kind: fleet.ConnDown, Session: 300, At: now.Add(3 * time.Second)}, // the locker's session ends
			{DeviceID: "dev-2", Kind: fleet.ConnRefused, At: now.Add(2 * time.Second), Reason: "credentials expired"},
			{DeviceID: "dev-2", Kind: fleet.ConnUp, Session: 5, At: now.Add(3 * time.Second)}, // reopens session 5
		})
	}()
	// Wait until the batch waits for dev-1's lock, then let the other writer commit.
	require.Eventually(t, func() bool {
		var waiting int
		require.NoError(t, reg.Pool().QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE NOT granted").Scan(&waiting))
		return waiting > 0
	}, 30*time.Second, 10*time.Millisecond)
	require.NoError(t, tx.Commit(ctx))
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("the batch did not finish after the lock was released")
	}

	require.Equal(t, []string{`connected {"session": 100}`, `disconnected {"session": 300}`}, kindsOf(deviceEvents(t, reg, "dev-1")))
	d, err := reg.GetDevice(ctx, "dev-1")
	require.NoError(t, err)
	require.False(t, d.Online)
	require.Equal(t, int64(300), d.Session)
	require.Equal(t, []string{`connected {"session": 5}`, `disconnected {"session": 5}`,
		`connect_refused {"reason": "credentials expired"}`, `connected {"session": 5}`}, kindsOf(deviceEvents(t, reg, "dev-2")))
	d, err = reg.GetDevice(ctx, "dev-2")
	require.NoError(t, err)
	require.True(t, d.Online)
}

func TestTwinWritesAreRecordedInTheSameTransaction(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	provision(t, reg, "op", "dev-1", "dev-2", "dev-3")

	_, err := reg.UpdateTwin(ctx, "dev-1", twin.Desired, []byte(`{"telemetryInterval": 30}`), "")
	require.NoError(t, err)
	_, err = reg.UpdateTwin(ctx, "dev-1", twin.Tags, []byte(`{"site":"ber-1"}`), "")
	require.NoError(t, err)
	_, err = reg.UpdateTwin(ctx, "dev-1", twin.Tags, []byte(`{"site":"x"}`), `"stale"`)
	require.ErrorIs(t, err, fleet.ErrPreconditionFailed)
	_, err = reg.UpdateTwin(ctx, "dev-1", twin.Tags, []byte(`{"big":"`+strings.Repeat("x", 9000)+`"}`), "")
	require.Error(t, err, "oversized tags are refused")
	require.Equal(t, []string{`desired_changed {"patch": {"telemetryInterval": 30}, "version": 2}`,
		`tags_changed {"patch": {"site": "ber-1"}, "version": 2}`}, kindsOf(deviceEvents(t, reg, "dev-1")))

	// A batch: one event per written device with its own version; the refused device has none.
	_, err = reg.UpdateTwin(ctx, "dev-2", twin.Desired, []byte(`{"a":1}`), "")
	require.NoError(t, err)
	_, err = reg.Pool().Exec(ctx, "UPDATE devices SET status = 'retired' WHERE id = 'dev-3'")
	require.NoError(t, err)
	shared := []byte(`{"firmware":{"version":"2.1.0"}}`)
	res, err := reg.PatchTwins(ctx, twin.Desired, []fleet.DevicePatch{
		{DeviceID: "dev-1", Patch: shared}, {DeviceID: "dev-2", Patch: shared},
		{DeviceID: "dev-3", Patch: shared}, {DeviceID: "ghost", Patch: shared},
	})
	require.NoError(t, err)
	require.NoError(t, res[0].Err)
	require.ErrorIs(t, res[2].Err, fleet.ErrNotActive)
	require.Equal(t, `desired_changed {"patch": {"firmware": {"version": "2.1.0"}}, "version": 3}`, kindsOf(deviceEvents(t, reg, "dev-1"))[2])
	require.Equal(t, `desired_changed {"patch": {"firmware": {"version": "2.1.0"}}, "version": 3}`, kindsOf(deviceEvents(t, reg, "dev-2"))[1])
	require.Empty(t, deviceEvents(t, reg, "dev-3"))

	// Different patches in one batch each reach their own device.
	_, err = reg.PatchTwins(ctx, twin.Tags, []fleet.DevicePatch{
		{DeviceID: "dev-1", Patch: []byte(`{"n":1}`)}, {DeviceID: "dev-2", Patch: []byte(`{"n":2}`)},
	})
	require.NoError(t, err)
	require.Equal(t, `tags_changed {"patch": {"n": 1}, "version": 3}`, kindsOf(deviceEvents(t, reg, "dev-1"))[3])
	require.Equal(t, `tags_changed {"patch": {"n": 2}, "version": 2}`, kindsOf(deviceEvents(t, reg, "dev-2"))[2])

	// When the event cannot be written, the twin write rolls back with it: one transaction.
	_, err = reg.Pool().Exec(ctx, "ALTER TABLE device_events ADD CONSTRAINT no_desired CHECK (kind <> 'desired_changed') NOT VALID")
	require.NoError(t, err)
	_, err = reg.UpdateTwin(ctx, "dev-1", twin.Desired, []byte(`{"b":2}`), "")
	require.ErrorContains(t, err, "no_desired")
	_, err = reg.PatchTwins(ctx, twin.Desired, []fleet.DevicePatch{{DeviceID: "dev-1", Patch: []byte(`{"c":3}`)}})
	require.ErrorContains(t, err, "no_desired")
	tw, err := reg.GetTwin(ctx, "dev-1")
	require.NoError(t, err)
	require.Equal(t, int64(3), tw.Properties.Desired.Version)
	require.JSONEq(t, `{"telemetryInterval":30,"firmware":{"version":"2.1.0"}}`, string(tw.Properties.Desired.Doc))
	require.Len(t, deviceEvents(t, reg, "dev-1"), 4)
}

func TestRecordEventsWithAPoolOrATransaction(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	require.NoError(t, registry.RecordEvents(ctx, reg.Pool(), []registry.DeviceEvent{
		{DeviceID: "dev-1", At: at, Kind: registry.EventDisabled, Detail: registry.LifecycleDetail{Reason: "stolen"}},
		{DeviceID: "dev-1", Kind: "custom"},
	}))
	err := pgx.BeginFunc(ctx, reg.Pool(), func(tx pgx.Tx) error {
		require.NoError(t, registry.RecordEvents(ctx, tx, []registry.DeviceEvent{{DeviceID: "dev-1", Kind: registry.EventEnabled,
			Detail: json.RawMessage(`{"reason":"found"}`)}}))
		return context.Canceled // roll back
	})
	require.ErrorIs(t, err, context.Canceled)
	evs := deviceEvents(t, reg, "dev-1")
	require.Equal(t, []string{`disabled {"reason": "stolen"}`, `custom {}`}, kindsOf(evs))
	require.True(t, evs[0].At.Equal(at))
	require.WithinDuration(t, time.Now(), evs[1].At, time.Minute, "no time: the transaction's")
	require.Error(t, registry.RecordEvents(ctx, reg.Pool(), []registry.DeviceEvent{{Kind: "x"}}))
}

// historyLines renders entries as "stage kind: summary" for comparisons.
func historyLines(h []registry.HistoryEntry) []string {
	out := make([]string, len(h))
	for i, e := range h {
		out[i] = e.Stage + " " + e.Kind + ": " + e.Summary
	}
	return out
}

func exec(t *testing.T, reg *registry.Registry, sql string, args ...any) {
	t.Helper()
	_, err := reg.Pool().Exec(context.Background(), sql, args...)
	require.NoError(t, err)
}

func TestDeviceHistoryMergesEverySourceInTimeOrder(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	provision(t, reg, "provision-eu-1", "dev-1", "dev-2")
	// Give every step its own, known time: the sources are merged by time, not by the order they are read.
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	at := func(min int) time.Time { return base.Add(time.Duration(min) * time.Minute) }
	exec(t, reg, "UPDATE devices SET created_at = $1", at(0))

	require.NoError(t, reg.RecordConnections(ctx, []fleet.ConnEvent{
		{DeviceID: "dev-1", Kind: fleet.ConnUp, Session: 1, At: at(1)},
		{DeviceID: "dev-1", Kind: fleet.ConnDown, Session: 1, At: at(9)},
		{DeviceID: "dev-1", Kind: fleet.ConnUp, Session: 2, At: at(10)},
	}))
	_, err := reg.UpdateTwin(ctx, "dev-1", twin.Tags, []byte(`{"region":"eu"}`), "")
	require.NoError(t, err)
	exec(t, reg, "UPDATE device_events SET at = $1 WHERE kind = 'tags_changed'", at(2))

	// A desired job, acknowledged.
	_, err = reg.CreateJob(ctx, fleet.NewJob{ID: "job-set-desired-1", Kind: fleet.JobSetDesired,
		Query: "SELECT * FROM devices WHERE deviceId = 'dev-1'", Spec: json.RawMessage(`{"patch":{"interval":30}}`)})
	require.NoError(t, err)
	_, err = reg.PatchTwins(ctx, twin.Desired, []fleet.DevicePatch{{DeviceID: "dev-1", Patch: []byte(`{"interval":30}`)}})
	require.NoError(t, err)
	exec(t, reg, "UPDATE device_events SET at = $1 WHERE kind = 'desired_changed'", at(3))
	require.NoError(t, reg.RecordJobOutcomes(ctx, "job-set-desired-1", []fleet.JobOutcome{{Seq: 0, State: fleet.JobSucceeded}}))
	exec(t, reg, "UPDATE job_devices SET updated_at = $1", at(4))

	// A method job that failed on the device.
	_, err = reg.CreateJob(ctx, fleet.NewJob{ID: "job-method-reboot-1", Kind: fleet.JobMethod,
		Query: "SELECT * FROM devices WHERE deviceId = 'dev-1'", Spec: json.RawMessage(`{"method":"reboot"}`)})
	require.NoError(t, err)
	require.NoError(t, reg.RecordJobOutcomes(ctx, "job-method-reboot-1", []fleet.JobOutcome{{Seq: 0, State: fleet.JobFailed, Status: 500, Error: "busy"}}))
	exec(t, reg, "UPDATE job_devices SET updated_at = $1 WHERE job_id = 'job-method-reboot-1'", at(5))

	// A rollout: dispatched in wave 1 (0 stored), succeeded later.
	_, err = reg.AddFirmware(ctx, fleet.Firmware{Version: "2.1.0", URL: "https://fw.example/2.1.0.bin", SHA256: strings.Repeat("a", 64)})
	require.NoError(t, err)
	fw, err := reg.GetFirmware(ctx, "2.1.0")
	require.NoError(t, err)
	_, err = reg.CreateRollout(ctx, fleet.NewRollout{ID: "rollout-2.1.0-1", Version: "2.1.0",
		Query: "SELECT * FROM devices WHERE deviceId = 'dev-1'", Spec: json.RawMessage(`{}`)})
	require.NoError(t, err)
	_, _, _, err = reg.DispatchWave(ctx, "rollout-2.1.0-1", 0, 1, fw, 10)
	require.NoError(t, err)
	exec(t, reg, "UPDATE device_events SET at = $1 WHERE kind = 'desired_changed' AND detail->'patch' ? 'firmware'", at(6))
	require.NoError(t, reg.UpdateRolloutPhases(ctx, "rollout-2.1.0-1", []fleet.PhaseUpdate{{Rank: 0, Phase: "succeeded"}}))
	exec(t, reg, "UPDATE rollout_devices SET dispatched_at = $1, updated_at = $2", at(6), at(8))

	// An alert opened, acknowledged and resolved; another still open.
	exec(t, reg, `INSERT INTO alerts (device_id, kind, detail, first_seen, last_seen, acked_at, acked_by, resolved_at)
		VALUES ('dev-1', 'offline', 'not connected for 15m', $1, $1, $2, 'alice', $3),
		       ('dev-1', 'unhealthy', 'disk full', $4, $4, NULL, '', NULL),
		       ('dev-2', 'offline', 'someone else', $1, $1, NULL, '', NULL)`, at(7), at(8), at(11), at(12))
	exec(t, reg, "UPDATE devices SET last_seen = $1, replaces = 'dev-0'", at(13))
	// Another device's rows never leak in.
	require.NoError(t, reg.RecordConnections(ctx, []fleet.ConnEvent{{DeviceID: "dev-2", Kind: fleet.ConnUp, Session: 1, At: at(1)}}))

	h, err := reg.DeviceHistory(ctx, "dev-1", 0)
	require.NoError(t, err)
	require.Equal(t, []string{
		"provision provisioned: provisioned by provision-eu-1",
		"provision replaces: replaces dev-0",
		"connect connected: connected (session 1)",
		`configure tags_changed: tags v2: {"region":"eu"}`,
		`configure desired_changed: desired properties v2: {"interval":30}`,
		"configure job: job job-set-desired-1 (set desired): succeeded",
		"configure job: job job-method-reboot-1 (method reboot): failed, status 500: busy",
		"configure rollout_dispatched: rollout rollout-2.1.0-1: firmware 2.1.0 sent in wave 1",
		`configure desired_changed: desired properties v3: {"firmware":{"jobId":"rollout-2.1.0-1","sha256":"` + strings.Repeat("a", 50) + "…",
		"monitor alert_opened: alert offline opened: not connected for 15m",
		"configure rollout: rollout rollout-2.1.0-1: firmware 2.1.0, wave 1, succeeded",
		"monitor alert_acked: alert offline acknowledged by alice",
		"connect disconnected: disconnected (session 1)",
		"connect connected: connected (session 2)",
		"monitor alert_resolved: alert offline resolved",
		"monitor alert_opened: alert unhealthy opened: disk full",
		"monitor last_seen: last seen (online now); reported properties v1",
	}, historyLines(h))
	for i := 1; i < len(h); i++ {
		require.False(t, h[i].At.Before(h[i-1].At), "entry %d is out of order", i)
	}
	require.JSONEq(t, `{"rolloutId":"rollout-2.1.0-1","version":"2.1.0","wave":1,"phase":"succeeded"}`, string(h[10].Detail))
	require.Equal(t, at(8), h[10].At)

	// The limit keeps the newest entries, still oldest first.
	last3, err := reg.DeviceHistory(ctx, "dev-1", 3)
	require.NoError(t, err)
	require.Equal(t, h[len(h)-3:], last3)

	_, err = reg.DeviceHistory(ctx, "nope", 10)
	require.ErrorIs(t, err, fleet.ErrNotFound)
}

func TestDeviceHistoryOfRetiredAndPurgedDevices(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	provision(t, reg, "op", "old", "new")
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	exec(t, reg, "UPDATE devices SET created_at = $1", base)

	// Lineage and retirement from the columns alone (no events): synthesized from them.
	exec(t, reg, "UPDATE devices SET replaced_by = 'new', status = 'retired', retired_at = $1 WHERE id = 'old'", base.Add(time.Hour))
	h, err := reg.DeviceHistory(ctx, "old", 0)
	require.NoError(t, err)
	require.Equal(t, []string{"provision provisioned: provisioned by op", "retire retired: retired", "retire replaced_by: replaced by new"},
		historyLines(h))

	// With events, the events tell it (once), with their reason and operation; the archive row adds its entry.
	require.NoError(t, registry.RecordEvents(ctx, reg.Pool(), []registry.DeviceEvent{
		{DeviceID: "old", At: base.Add(time.Hour), Kind: registry.EventReplacedBy, Detail: registry.LifecycleDetail{Device: "new", Operation: "replace-old-1"}},
		{DeviceID: "old", At: base.Add(time.Hour), Kind: registry.EventRetired, Detail: registry.LifecycleDetail{Reason: "broken screen", Operation: "replace-old-1"}},
	}))
	exec(t, reg, `INSERT INTO devices_archive (id, retired_at, archived_at, reason, operation, twin)
		VALUES ('old', $1, $1, 'broken screen', 'replace-old-1', '{}')`, base.Add(time.Hour))
	h, err = reg.DeviceHistory(ctx, "old", 0)
	require.NoError(t, err)
	want := []string{
		"provision provisioned: provisioned by op",
		"retire retired: retired: broken screen (replace-old-1)",
		"retire replaced_by: replaced by new (replace-old-1)",
		"retire archived: twin and timeline archived: broken screen (replace-old-1)",
	}
	require.Equal(t, want, historyLines(h))

	// Archived as timeline entries, then the device row and its events are gone: the archive answers.
	stored, err := json.Marshal(h)
	require.NoError(t, err)
	exec(t, reg, "UPDATE devices_archive SET history = $1::jsonb WHERE id = 'old'", string(stored))
	exec(t, reg, "DELETE FROM devices WHERE id = 'old'")
	exec(t, reg, "DELETE FROM device_events WHERE device_id = 'old'")
	purged, err := reg.DeviceHistory(ctx, "old", 0)
	require.NoError(t, err)
	require.Equal(t, h, purged)
	last, err := reg.DeviceHistory(ctx, "old", 1)
	require.NoError(t, err)
	require.Equal(t, h[len(h)-1:], last)

	// An archive of raw events ({at, kind, detail}) is worded the same way, and gains its retirement.
	exec(t, reg, `UPDATE devices_archive SET history = jsonb_build_array(
		jsonb_build_object('at', $1::timestamptz, 'kind', 'connected', 'detail', jsonb_build_object('session', 7)))`, base.Add(time.Minute))
	purged, err = reg.DeviceHistory(ctx, "old", 0)
	require.NoError(t, err)
	require.Equal(t, []string{
		"connect connected: connected (session 7)",
		"retire retired: retired: broken screen (replace-old-1)",
		"retire archived: twin and timeline archived: broken screen (replace-old-1)",
	}, historyLines(purged))

	// The replacement's side of the lineage.
	exec(t, reg, "UPDATE devices SET replaces = 'old' WHERE id = 'new'")
	h, err = reg.DeviceHistory(ctx, "new", 0)
	require.NoError(t, err)
	require.Equal(t, []string{"provision provisioned: provisioned by op", "provision replaces: replaces old"}, historyLines(h))
}
