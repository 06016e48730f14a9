package registry

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// Kinds of the events stored in device_events. Each is written in the transaction that makes the change, so
// the timeline never shows a change that did not commit nor misses one that did.
//
// Reported changes are deliberately not recorded: they are the hot ingest path (~50k rows/s,
// docs/architecture.md, "Data limits") and an event per reported patch would double its writes. The timeline shows what devices report through the
// jobs and rollouts that wait for their acknowledgements, and through the twin's current reported version
// (KindLastSeen).
const (
	EventConnected      = "connected"       // a session opened; detail {"session": n}
	EventDisconnected   = "disconnected"    // the current session ended; detail {"session": n}
	EventDesiredChanged = "desired_changed" // detail {"version": desired version after the write, "patch": merge patch}
	EventTagsChanged    = "tags_changed"    // detail {"version": tags version after the write, "patch": merge patch}
	EventRetired        = "retired"         // detail LifecycleDetail
	EventDisabled       = "disabled"        // detail LifecycleDetail
	EventEnabled        = "enabled"         // detail LifecycleDetail
	EventReplacedBy     = "replaced_by"     // detail LifecycleDetail, Device = the replacement
	EventReplaces       = "replaces"        // detail LifecycleDetail, Device = the device replaced
	EventMethod         = "method"          // a direct method called on its own; detail {"method", "status", "outcome"}
	EventEnrolled       = "enrolled"        // registered on first contact through an enrollment group; detail {"group"}
	// EventConnectRefused: a CONNECT with the right credentials was refused because they have expired;
	// detail {"reason"}. Gateways record it at most once an hour per device.
	EventConnectRefused = "connect_refused"
	// EventReportRefused: a reported patch was refused because it violates the metadata scheme's
	// reported-properties schema; detail {"reason"} (the paths and rules). Gateways record it at most once an
	// hour per device.
	EventReportRefused = "report_refused"
	// EventCredentialsRotated: a rotation confirmed the device's new secret and cleared the old slot;
	// detail {"jobId", "slot"}.
	EventCredentialsRotated = "credentials_rotated"
)

// Kinds of the timeline entries derived from other tables rather than stored in device_events.
const (
	KindProvisioned       = "provisioned"        // devices.created_at; detail {"operation"}
	KindJob               = "job"                // a job_devices row at its last change; detail {"jobId", "jobKind", "method", "state", "status", "error"}
	KindRolloutDispatched = "rollout_dispatched" // the firmware was written to desired; detail as KindRollout
	KindRolloutRollback   = "rollout_rollback"   // the previous firmware was written back; detail as KindRollout
	KindRollout           = "rollout"            // a rollout_devices row at its last change; detail {"rolloutId", "version", "wave" (1-based), "phase", "reason", "previousVersion"}
	KindAlertOpened       = "alert_opened"       // detail {"alertId", "alert", "message", "ackedBy", "open"}
	KindAlertAcked        = "alert_acked"        // detail as KindAlertOpened
	KindAlertResolved     = "alert_resolved"     // detail as KindAlertOpened
	KindLastSeen          = "last_seen"          // the device's last activity; detail {"online", "reportedVersion", "firmware"}
	KindArchived          = "archived"           // the twin and timeline went to devices_archive; detail {"reason", "operation"}
)

// Lifecycle stages of a timeline entry (docs/architecture.md, "The life of an operation": plan, provision,
// configure, monitor, retire; connections are a stage of their own in the timeline because they are most of
// it).
const (
	StageProvision = "provision"
	StageConnect   = "connect"
	StageConfigure = "configure"
	StageMonitor   = "monitor"
	StageRetire    = "retire"
)

// DeviceEvent is one row of device_events.
type DeviceEvent struct {
	DeviceID string
	At       time.Time // zero: the time of the transaction that records it
	Kind     string    // one of the Event… kinds; any other kind is shown as it is
	// Detail is stored as a JSON object: a json.RawMessage as it is, anything else marshalled; nil is {}.
	Detail any
}

// LifecycleDetail is the detail of status and lineage events (retired, disabled, enabled, replaced_by,
// replaces), in the shape the timeline words.
type LifecycleDetail struct {
	Device    string `json:"device,omitempty"`    // the other device of a lineage event
	Reason    string `json:"reason,omitempty"`    // why, in the operator's words
	Operation string `json:"operation,omitempty"` // the workflow or job that made the change
}

// Execer runs statements: a *pgxpool.Pool, a *pgx.Conn or a pgx.Tx.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Querier runs queries: a *pgxpool.Pool, a *pgx.Conn or a pgx.Tx.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// insertEventsSQL writes any number of events in one statement; the arguments come from eventArgs.
const insertEventsSQL = `INSERT INTO device_events (device_id, at, kind, detail)
	SELECT u.id, coalesce(u.at, now()), u.kind, u.detail::jsonb
	FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[]) AS u(id, at, kind, detail)`

// RecordEvents inserts events into device_events with one INSERT … SELECT FROM unnest, however many there
// are. Pass the transaction that makes the change the events describe, so that they commit or roll back
// together; with a pool, the events are written on their own.
func RecordEvents(ctx context.Context, q Execer, evs []DeviceEvent) error {
	if len(evs) == 0 {
		return nil
	}
	args, err := eventArgs(evs)
	if err != nil {
		return err
	}
	if _, err := q.Exec(ctx, insertEventsSQL, args...); err != nil {
		return fmt.Errorf("record %d device events: %w", len(evs), err)
	}
	return nil
}

// eventArgs turns events into the column arrays of insertEventsSQL.
func eventArgs(evs []DeviceEvent) ([]any, error) {
	ids := make([]string, len(evs))
	ats := make([]pgtype.Timestamptz, len(evs)) // not []*time.Time: no allocation per event in a connect storm
	kinds := make([]string, len(evs))
	details := make([]string, len(evs))
	for i, e := range evs {
		if e.DeviceID == "" || e.Kind == "" {
			return nil, fmt.Errorf("record device events: event %d has no device id or kind", i)
		}
		ids[i], kinds[i] = e.DeviceID, e.Kind
		ats[i] = pgtype.Timestamptz{Time: e.At, Valid: !e.At.IsZero()}
		switch d := e.Detail.(type) {
		case nil:
			details[i] = "{}"
		case json.RawMessage:
			details[i] = string(d)
			if len(d) == 0 {
				details[i] = "{}"
			}
		default:
			b, err := json.Marshal(d)
			if err != nil {
				return nil, fmt.Errorf("record %s event of %s: %w", e.Kind, e.DeviceID, err)
			}
			details[i] = string(b)
		}
	}
	return []any{ids, ats, kinds, details}, nil
}

// twinChange is one device's committed tags or desired write, for its timeline.
type twinChange struct {
	id      string
	version int64
	patch   []byte
}

// recordTwinChanges records a desired_changed or tags_changed event per written device, with the section's new
// version and the merge patch, in one INSERT … SELECT FROM unnest. Each distinct patch crosses the wire and is
// parsed once, however many devices it was written to: a job or a rollout writes the same patch (up to 32 KB)
// to every device of a batch.
func recordTwinChanges(ctx context.Context, tx pgx.Tx, section twin.Section, changes []twinChange) error {
	if len(changes) == 0 {
		return nil
	}
	sql, args := twinChangesQuery(section, changes)
	if _, err := tx.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("record %d %s events: %w", len(changes), args[0], err)
	}
	return nil
}

// twinChangesQuery is recordTwinChanges' statement and its arguments (the first is the events' kind), for a
// caller that queues it in a batch.
func twinChangesQuery(section twin.Section, changes []twinChange) (string, []any) {
	kind := EventTagsChanged
	if section == twin.Desired {
		kind = EventDesiredChanged
	}
	ids := make([]string, len(changes))
	versions := make([]int64, len(changes))
	which := make([]int32, len(changes))
	var patches []string
	index := map[string]int32{}
	var last []byte
	for i, c := range changes {
		ids[i], versions[i] = c.id, c.version
		// Comparing with the previous patch first costs nothing when callers share one slice (bytes.Equal
		// of the same memory returns at once), which is the common case; the map catches the rest.
		if i > 0 && bytes.Equal(c.patch, last) {
			which[i] = which[i-1]
			continue
		}
		n, ok := index[string(c.patch)]
		if !ok {
			patches = append(patches, string(c.patch))
			n = int32(len(patches)) // WITH ORDINALITY counts from 1
			index[patches[n-1]] = n
		}
		which[i], last = n, c.patch
	}
	// MATERIALIZED: each distinct patch is parsed once, not once per device it joins.
	return `WITH p AS MATERIALIZED (
			SELECT n, doc::jsonb AS patch FROM unnest($5::text[]) WITH ORDINALITY AS t(doc, n))
		INSERT INTO device_events (device_id, kind, detail)
		SELECT u.id, $1, jsonb_build_object('version', u.v, 'patch', p.patch)
		FROM unnest($2::text[], $3::bigint[], $4::int[]) AS u(id, v, n) JOIN p ON p.n = u.n`,
		[]any{kind, ids, versions, which, patches}
}

// HistoryEntry is one line of a device's timeline.
type HistoryEntry struct {
	At      time.Time       `json:"at"`
	Stage   string          `json:"stage"`   // provision | connect | configure | monitor | retire
	Kind    string          `json:"kind"`    // an Event… or Kind… constant
	Summary string          `json:"summary"` // one readable line
	Detail  json.RawMessage `json:"detail,omitempty"`
}

// historySQL reads every source of a device's timeline in one statement, hence one snapshot: $1 is the device
// id, $2 the number of newest rows each source returns (NULL: all). Rows are (at, kind, seq, detail); seq orders
// entries of one source at the same instant (-1 marks the devices row). Synthesized retirement and lineage entries (from the columns)
// yield to events of the same kind, which carry the exact time and the reason. The '_archive' row carries the
// devices_archive row, and its stored timeline when the device row is gone.
const historySQL = `WITH d AS (
	SELECT created_at, provisioned_by, retired_at, replaces, replaced_by, updated_at, last_seen, online,
		reported_version, reported -> 'firmware' ->> 'version' AS firmware
	FROM devices WHERE id = $1
), a AS (
	SELECT retired_at, archived_at, reason, operation, history FROM devices_archive WHERE id = $1
)
(SELECT created_at AS at, 'provisioned'::text AS kind, -1::bigint AS seq,
	jsonb_strip_nulls(jsonb_build_object('operation', provisioned_by)) AS detail FROM d)
UNION ALL
(SELECT at, kind, id, detail FROM device_events WHERE device_id = $1 ORDER BY at DESC, id DESC LIMIT $2)
UNION ALL
(SELECT jd.updated_at, 'job', jd.seq, jsonb_strip_nulls(jsonb_build_object('jobId', j.id, 'jobKind', j.kind,
		'method', nullif(j.spec ->> 'method', ''), 'state', jd.state, 'status', jd.status, 'error', nullif(jd.error, '')))
	FROM job_devices jd JOIN jobs j ON j.id = jd.job_id
	WHERE jd.device_id = $1 ORDER BY jd.updated_at DESC LIMIT $2)
UNION ALL
(SELECT x.at, x.kind, rd.rank, jsonb_strip_nulls(jsonb_build_object('rolloutId', r.id, 'version', r.version,
		'wave', rd.wave + 1, 'phase', rd.phase, 'reason', nullif(rd.reason, ''), 'previousVersion', nullif(rd.prev_version, '')))
	FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
	CROSS JOIN LATERAL (VALUES (rd.dispatched_at, 'rollout_dispatched'), (rd.rollback_at, 'rollout_rollback'),
		(rd.updated_at, 'rollout')) AS x(at, kind)
	WHERE rd.device_id = $1 AND x.at IS NOT NULL AND (x.kind = 'rollout' OR x.at < rd.updated_at)
	ORDER BY x.at DESC LIMIT $2)
UNION ALL
(SELECT x.at, x.kind, al.id, jsonb_strip_nulls(jsonb_build_object('alertId', al.id, 'alert', al.kind,
		'message', nullif(al.detail, ''), 'ackedBy', nullif(al.acked_by, ''), 'open', al.resolved_at IS NULL))
	FROM alerts al
	CROSS JOIN LATERAL (VALUES (al.first_seen, 'alert_opened'), (al.acked_at, 'alert_acked'),
		(al.resolved_at, 'alert_resolved')) AS x(at, kind)
	WHERE al.device_id = $1 AND x.at IS NOT NULL ORDER BY x.at DESC LIMIT $2)
UNION ALL
(SELECT last_seen, 'last_seen', 0, jsonb_strip_nulls(jsonb_build_object('online', online,
		'reportedVersion', reported_version, 'firmware', firmware))
	FROM d WHERE last_seen IS NOT NULL)
UNION ALL
(SELECT d.retired_at, 'retired', 0, jsonb_strip_nulls(jsonb_build_object('reason', nullif(a.reason, ''),
		'operation', nullif(a.operation, '')))
	FROM d LEFT JOIN a ON true WHERE d.retired_at IS NOT NULL
	AND NOT EXISTS (SELECT 1 FROM device_events WHERE device_id = $1 AND kind = 'retired'))
UNION ALL
(SELECT created_at, 'replaces', 0, jsonb_build_object('device', replaces) FROM d WHERE replaces IS NOT NULL
	AND NOT EXISTS (SELECT 1 FROM device_events WHERE device_id = $1 AND kind = 'replaces'))
UNION ALL
(SELECT coalesce(retired_at, updated_at), 'replaced_by', 0, jsonb_build_object('device', replaced_by) FROM d
	WHERE replaced_by IS NOT NULL
	AND NOT EXISTS (SELECT 1 FROM device_events WHERE device_id = $1 AND kind = 'replaced_by'))
UNION ALL
(SELECT archived_at, '_archive', 0, jsonb_strip_nulls(jsonb_build_object('retiredAt', retired_at,
		'reason', nullif(reason, ''), 'operation', nullif(operation, ''),
		'history', CASE WHEN NOT EXISTS (SELECT 1 FROM d) THEN history END))
	FROM a)`

// archiveRow is the detail of historySQL's '_archive' row.
type archiveRow struct {
	RetiredAt time.Time       `json:"retiredAt"`
	Reason    string          `json:"reason"`
	Operation string          `json:"operation"`
	History   json.RawMessage `json:"history"` // only when the device row is gone
}

// DeviceHistory returns a device's timeline, oldest first: its provisioning, connections, desired and tags
// changes, the jobs and rollouts that reached it, its alerts, its last activity and reported version, and its
// retirement and lineage, merged by time (ties in the order things happen, then by insertion). limit > 0 keeps
// the newest limit entries. Reported changes are not in it (see the Event… kinds). A device whose row is gone
// but whose archive is kept is answered from devices_archive.history (an array of HistoryEntry, as
// archives once stored it, or raw {at, kind, detail} events, worded the same way), with its retirement and archiving. All sources are read in
// one statement, so the timeline is one consistent snapshot. An unknown device is an ErrNotFound (wrapped).
func (r *Registry) DeviceHistory(ctx context.Context, id string, limit int) ([]HistoryEntry, error) {
	return deviceHistory(ctx, r.pool, id, limit)
}

// sortedEntry is a timeline entry with its tiebreak within one instant.
type sortedEntry struct {
	HistoryEntry
	seq int64
}

func deviceHistory(ctx context.Context, q Querier, id string, limit int) ([]HistoryEntry, error) {
	var lim any // NULL: LIMIT ALL
	if limit > 0 {
		lim = int64(limit)
	}
	rows, err := q.Query(ctx, historySQL, id, lim)
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", id, err)
	}
	var entries []sortedEntry
	var archive *archiveRow
	var archivedAt time.Time
	exists := false
	for rows.Next() {
		var e sortedEntry
		var detail []byte
		if err := rows.Scan(&e.At, &e.Kind, &e.seq, &detail); err != nil {
			rows.Close()
			return nil, fmt.Errorf("history of %s: %w", id, err)
		}
		e.At = e.At.UTC()
		switch e.Kind {
		case "_archive":
			archive, archivedAt = &archiveRow{}, e.At
			if err := json.Unmarshal(detail, archive); err != nil {
				rows.Close()
				return nil, fmt.Errorf("history of %s: archive row: %w", id, err)
			}
			continue
		case KindProvisioned:
			exists = exists || e.seq < 0 // the devices row's (events number from 1)
		}
		detail = compact(detail)
		e.Detail = detail
		e.Stage, e.Summary = describe(e.Kind, detail)
		entries = append(entries, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("history of %s: %w", id, err)
	}
	switch {
	case !exists && archive == nil:
		return nil, notFound(id)
	case !exists:
		// Purged: the device's own rows may be gone or partial, so the timeline stored at retirement is
		// the record.
		entries = entries[:0]
		var stored []HistoryEntry
		if len(archive.History) > 0 {
			if err := json.Unmarshal(archive.History, &stored); err != nil {
				return nil, fmt.Errorf("history of %s: archived history: %w", id, err)
			}
		}
		for _, h := range stored {
			if h.Stage == "" || h.Summary == "" {
				// An archive written as raw events ({at, kind, detail}) rather than timeline entries.
				h.Stage, h.Summary = describe(h.Kind, h.Detail)
			}
			h.At, h.Detail = h.At.UTC(), compact(h.Detail)
			entries = append(entries, sortedEntry{HistoryEntry: h})
		}
		if !slices.ContainsFunc(stored, func(h HistoryEntry) bool { return h.Kind == EventRetired }) {
			entries = append(entries, lifecycleEntry(EventRetired, archive.RetiredAt.UTC(), archive))
		}
	}
	if archive != nil && !slices.ContainsFunc(entries, func(e sortedEntry) bool { return e.Kind == KindArchived }) {
		entries = append(entries, lifecycleEntry(KindArchived, archivedAt, archive))
	}
	slices.SortStableFunc(entries, func(a, b sortedEntry) int {
		return cmp.Or(a.At.Compare(b.At), cmp.Compare(kindRank(a.Kind), kindRank(b.Kind)),
			cmp.Compare(a.seq, b.seq), strings.Compare(a.Summary, b.Summary))
	})
	if limit > 0 && len(entries) > limit {
		entries = entries[len(entries)-limit:]
	}
	out := make([]HistoryEntry, len(entries))
	for i, e := range entries {
		out[i] = e.HistoryEntry
	}
	return out, nil
}

// compact removes the spaces Postgres prints in jsonb, so that a detail reads the same from the live tables and
// from an archived timeline (which went through jsonb too).
func compact(b []byte) []byte {
	var buf bytes.Buffer
	if len(b) == 0 || json.Compact(&buf, b) != nil {
		return b
	}
	return buf.Bytes()
}

// lifecycleEntry words a retirement or archiving taken from the devices_archive row.
func lifecycleEntry(kind string, at time.Time, a *archiveRow) sortedEntry {
	detail, _ := json.Marshal(LifecycleDetail{Reason: a.Reason, Operation: a.Operation})
	e := sortedEntry{HistoryEntry: HistoryEntry{At: at, Kind: kind, Detail: detail}}
	e.Stage, e.Summary = describe(kind, detail)
	return e
}

// kindRanks order entries of different kinds at the same instant the way they happen: a rollout writes
// desired in the transaction that marks the device dispatched, a device is disabled before it is retired,
// and so on.
var kindRanks = map[string]int{
	KindProvisioned: 0, EventEnrolled: 0, EventReplaces: 1,
	EventConnected: 2, EventDisconnected: 2, EventConnectRefused: 2, EventCredentialsRotated: 2, EventReportRefused: 2,
	KindRolloutDispatched: 3, KindRolloutRollback: 3,
	EventDesiredChanged: 4, EventTagsChanged: 4,
	KindJob: 5, KindRollout: 5,
	KindAlertOpened: 6, KindAlertAcked: 7, KindAlertResolved: 8,
	KindLastSeen:  9,
	EventDisabled: 10, EventEnabled: 10,
	EventRetired: 11, EventReplacedBy: 12, KindArchived: 13,
}

func kindRank(kind string) int {
	if r, ok := kindRanks[kind]; ok {
		return r
	}
	return len(kindRanks)
}

// details reads the fields of an entry's detail object for its summary.
type details map[string]any

func (d details) str(key string) string {
	switch v := d[key].(type) {
	case nil:
		return ""
	case string:
		return v
	case json.Number:
		return v.String()
	case bool:
		return strconv.FormatBool(v)
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

// raw returns a detail field as compact JSON.
func (d details) raw(key string) string {
	if _, ok := d[key]; !ok {
		return ""
	}
	b, _ := json.Marshal(d[key])
	return string(b)
}

// describe returns an entry's stage and summary from its kind and detail.
func describe(kind string, raw []byte) (stage, summary string) {
	d := details{}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // sessions are unix microseconds; keep every digit
	_ = dec.Decode(&d)
	lifecycle := func(what string) string {
		if r := d.str("reason"); r != "" {
			what += ": " + r
		}
		if op := d.str("operation"); op != "" {
			what += " (" + op + ")"
		}
		return what
	}
	words := func(s string) string { return strings.ReplaceAll(s, "_", " ") }
	switch kind {
	case KindProvisioned:
		stage, summary = StageProvision, "provisioned"
		if op := d.str("operation"); op != "" {
			summary += " by " + op
		}
	case EventReplaces:
		stage, summary = StageProvision, lifecycle("replaces "+d.str("device"))
	case EventConnected, EventDisconnected:
		stage, summary = StageConnect, kind+" (session "+d.str("session")+")"
	case EventConnectRefused:
		stage, summary = StageConnect, "connect refused: "+d.str("reason")
	case EventReportRefused:
		stage, summary = StageMonitor, "reported patch refused by the scheme: "+d.str("reason")
	case EventCredentialsRotated:
		stage, summary = StageConnect, "credentials rotated by "+d.str("jobId")+": connected with the new secret (slot "+d.str("slot")+"), old secret revoked"
	case EventDesiredChanged:
		stage, summary = StageConfigure, "desired properties v"+d.str("version")+": "+abbreviate(d.raw("patch"), 100)
	case EventTagsChanged:
		stage, summary = StageConfigure, "tags v"+d.str("version")+": "+abbreviate(d.raw("patch"), 100)
	case KindJob:
		stage, summary = StageConfigure, jobSummary(d)
		if d.str("jobKind") == "retire" {
			stage = StageRetire
		}
	case KindRolloutDispatched:
		stage = StageConfigure
		summary = fmt.Sprintf("rollout %s: firmware %s sent in wave %s", d.str("rolloutId"), d.str("version"), d.str("wave"))
	case KindRolloutRollback:
		stage = StageConfigure
		summary = fmt.Sprintf("rollout %s: rolling back to firmware %s", d.str("rolloutId"), d.str("previousVersion"))
	case KindRollout:
		stage, summary = StageConfigure, "rollout "+d.str("rolloutId")+": firmware "+d.str("version")
		if w := d.str("wave"); w != "" {
			summary += ", wave " + w
		}
		summary += ", " + words(d.str("phase"))
		if r := d.str("reason"); r != "" {
			summary += ": " + r
		}
	case KindAlertOpened:
		stage, summary = StageMonitor, "alert "+words(d.str("alert"))+" opened"
		if m := d.str("message"); m != "" {
			summary += ": " + m
		}
	case KindAlertAcked:
		stage, summary = StageMonitor, "alert "+words(d.str("alert"))+" acknowledged"
		if by := d.str("ackedBy"); by != "" {
			summary += " by " + by
		}
	case KindAlertResolved:
		stage, summary = StageMonitor, "alert "+words(d.str("alert"))+" resolved"
	case KindLastSeen:
		stage, summary = StageMonitor, "last seen"
		if d["online"] == true {
			summary += " (online now)"
		}
		summary += "; reported properties v" + d.str("reportedVersion")
		if fw := d.str("firmware"); fw != "" {
			summary += ", firmware " + fw
		}
	case EventMethod:
		stage, summary = StageConfigure, "method "+d.str("method")+": "+words(d.str("outcome"))
		if st := d.str("status"); st != "" && st != "0" {
			summary += " (" + st + ")"
		}
	case EventEnrolled:
		stage, summary = StageProvision, "registered on first contact through enrollment group "+d.str("group")
	case EventDisabled, EventEnabled, EventRetired:
		stage, summary = StageRetire, lifecycle(kind)
	case EventReplacedBy:
		stage, summary = StageRetire, lifecycle("replaced by "+d.str("device"))
	case KindArchived:
		stage, summary = StageRetire, lifecycle("twin and timeline archived")
	default:
		stage, summary = StageMonitor, words(kind)
		if len(d) > 0 {
			b, _ := json.Marshal(map[string]any(d))
			summary += " " + abbreviate(string(b), 100)
		}
	}
	return stage, oneLine(summary)
}

func jobSummary(d details) string {
	what := strings.ReplaceAll(d.str("jobKind"), "_", " ")
	if m := d.str("method"); m != "" && d.str("jobKind") == string(fleet.JobMethod) {
		what = "method " + m
	}
	s := "job " + d.str("jobId") + " (" + what + "): " + strings.ReplaceAll(d.str("state"), "_", " ")
	if st := d.str("status"); st != "" {
		s += ", status " + st
	}
	if e := d.str("error"); e != "" {
		s += ": " + e
	}
	return s
}

// abbreviate shortens s to at most n runes, marking the cut.
func abbreviate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// oneLine keeps a summary on one line of a table, whatever an error message or reason contains.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
