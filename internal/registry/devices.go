package registry

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/query"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// twinColumns is the select list scanTwin reads; it is the twin query language's SELECT * list, so query
// results scan with the same code.
const twinColumns = query.StarColumns

func scanTwin(row pgx.Row) (twin.Twin, error) {
	var t twin.Twin
	var online bool
	var tags, desired, reported []byte
	if err := row.Scan(&t.DeviceID, &t.Status, &online, &t.LastActivityTime, &tags, &desired,
		&t.Properties.Desired.Version, &reported, &t.Properties.Reported.Version, &t.Version, &t.TagsVersion); err != nil {
		return t, err
	}
	t.Tags = tags
	t.Properties.Desired.Doc = desired
	t.Properties.Reported.Doc = reported
	t.ConnectionState = "disconnected"
	if online {
		t.ConnectionState = "connected"
	}
	t.ETag = twin.ETag(t.TagsVersion, t.Properties.Desired.Version)
	return t, nil
}

// GetDevice returns a device's identity and connection state.
func (r *Registry) GetDevice(ctx context.Context, id string) (Device, error) {
	var d Device
	err := r.pool.QueryRow(ctx, `SELECT id, status, created_at, updated_at, online, session, last_seen, connected_at,
		secret1_hash IS NOT NULL, secret2_hash IS NOT NULL, coalesce(encode(cert_fingerprint, 'hex'), ''), coalesce(provisioned_by, ''), retired_at,
		coalesce(replaces, ''), coalesce(replaced_by, ''), auth_slot::int, credential_expires_at,
		coalesce(encode(cert2_fingerprint, 'hex'), ''), cert_not_after, cert2_not_after,
		CASE WHEN auth_digest IS NULL THEN 0 WHEN auth_digest = cert_fingerprint THEN 1 WHEN auth_digest = cert2_fingerprint THEN 2 ELSE 0 END
		FROM devices WHERE id = $1`, id).Scan(&d.ID, &d.Status, &d.CreatedAt, &d.UpdatedAt, &d.Online, &d.Session,
		&d.LastSeen, &d.ConnectedAt, &d.HasSecret1, &d.HasSecret2, &d.CertFingerprint, &d.Provisioned, &d.RetiredAt, &d.Replaces, &d.ReplacedBy,
		&d.AuthSlot, &d.CredentialExpiresAt, &d.Cert2Fingerprint, &d.CertNotAfter, &d.Cert2NotAfter, &d.CertSlotInUse)
	if isNoRows(err) {
		return d, notFound(id)
	}
	if err != nil {
		return d, fmt.Errorf("load device %s: %w", id, err)
	}
	return d, nil
}

// DeviceAuth returns what the gateway needs to authenticate a device.
func (r *Registry) DeviceAuth(ctx context.Context, id string) (fleet.DeviceAuth, error) {
	a := fleet.DeviceAuth{ID: id}
	// Scanned into a plain string: pgx finds a named string type's plan by reflection on every row, and
	// this runs once per CONNECT with a cold cache.
	var status string
	var expires pgtype.Timestamptz
	err := r.pool.QueryRow(ctx, "SELECT status, secret1_hash, secret2_hash, cert_fingerprint, cert2_fingerprint, credential_expires_at FROM devices WHERE id = $1", id).
		Scan(&status, &a.Secret1Hash, &a.Secret2Hash, &a.CertFingerprint, &a.Cert2Fingerprint, &expires)
	a.Status = fleet.DeviceStatus(status)
	if expires.Valid {
		a.ExpiresAt = expires.Time
	}
	if isNoRows(err) {
		return a, notFound(id)
	}
	if err != nil {
		return a, fmt.Errorf("load credentials of %s: %w", id, err)
	}
	return a, nil
}

// GetTwin returns a device's twin.
func (r *Registry) GetTwin(ctx context.Context, id string) (twin.Twin, error) {
	t, err := scanTwin(r.pool.QueryRow(ctx, "SELECT "+twinColumns+" FROM devices WHERE id = $1", id))
	if isNoRows(err) {
		return t, notFound(id)
	}
	if err != nil {
		return t, fmt.Errorf("load twin %s: %w", id, err)
	}
	return t, nil
}

// GetTwins returns the twins of the devices of ids that exist, in one round trip (the gateway's twin/get
// batches: docs/architecture.md, "Ingest lanes").
func (r *Registry) GetTwins(ctx context.Context, ids []string) (map[string]twin.Twin, error) {
	rows, err := r.pool.Query(ctx, "SELECT "+twinColumns+" FROM devices WHERE id = ANY($1)", ids)
	if err != nil {
		return nil, fmt.Errorf("load %d twins: %w", len(ids), err)
	}
	defer rows.Close()
	out := make(map[string]twin.Twin, len(ids))
	for rows.Next() {
		t, err := scanTwin(rows)
		if err != nil {
			return nil, fmt.Errorf("load %d twins: %w", len(ids), err)
		}
		out[t.DeviceID] = t
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load %d twins: %w", len(ids), err)
	}
	return out, nil
}

// UpdateTwin applies a merge patch to the tags or desired section of one device. With ifMatch set, the write
// happens only if the twin's etag still equals it; otherwise ErrPreconditionFailed names the current etag.
// The row lock makes concurrent writers queue, so no update is ever lost. The change is recorded in the
// device's timeline (a desired_changed or tags_changed event with the new version and the patch) in the same
// transaction.
func (r *Registry) UpdateTwin(ctx context.Context, id string, section twin.Section, patch []byte, ifMatch string) (twin.Twin, error) {
	if section != twin.Tags && section != twin.Desired {
		return twin.Twin{}, fmt.Errorf("update twin %s: section %q cannot be written by operators", id, section)
	}
	var out twin.Twin
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		cur, err := scanTwin(tx.QueryRow(ctx, "SELECT "+twinColumns+" FROM devices WHERE id = $1 FOR UPDATE", id))
		if isNoRows(err) {
			return notFound(id)
		}
		if err != nil {
			return fmt.Errorf("load twin %s: %w", id, err)
		}
		if cur.Status == statusRetired {
			return fmt.Errorf("device %s is retired: %w", id, fleet.ErrNotActive)
		}
		if ifMatch != "" && ifMatch != cur.ETag {
			return fmt.Errorf("device %s: etag %s does not match the current etag %s: %w", id, ifMatch, cur.ETag, fleet.ErrPreconditionFailed)
		}
		doc := []byte(cur.Tags)
		if section == twin.Desired {
			doc = cur.Properties.Desired.Doc
		}
		merged, err := twin.Apply(section, doc, patch)
		if err != nil {
			return err
		}
		if section == twin.Tags {
			// Checked in the writing transaction, against the scheme in force (docs/architecture.md,
			// "Metadata scheme"): the merged document, not the patch, is what must satisfy it.
			s, err := activeScheme(ctx, tx)
			if err != nil {
				return err
			}
			if err := checkTags(s, id, merged); err != nil {
				return err
			}
		}
		col, ver := "tags", "tags_version"
		if section == twin.Desired {
			col, ver = "desired", "desired_version"
		}
		// col and ver are one of two fixed identifiers chosen above, never input.
		out, err = scanTwin(tx.QueryRow(ctx, "UPDATE devices SET "+col+" = $2::jsonb, "+ver+" = "+ver+" + 1, "+
			"twin_version = twin_version + 1, updated_at = now() WHERE id = $1 RETURNING "+twinColumns, id, string(merged)))
		if err != nil {
			return fmt.Errorf("update twin %s: %w", id, err)
		}
		v := out.TagsVersion
		if section == twin.Desired {
			v = out.Properties.Desired.Version
		}
		// In the same transaction: the timeline shows the change if and only if it committed.
		return recordTwinChanges(ctx, tx, section, []twinChange{{id: id, version: v, patch: patch}})
	})
	return out, err
}

type reportedState struct {
	status  string
	doc     []byte
	version int64
	base    int64 // the version read, which the write requires still to be current
	dirty   bool
}

// ApplyReported merges a batch of reported patches (the ingest path must never spend a transaction per
// message). Patches for the same device apply in order. Per-patch problems are returned in the results; the
// error is only for the batch as a whole.
//
// No row lock is held while the gateway merges: the twins are read without locks, merged in Go, and written
// by one statement that takes the rows' locks in id order and writes each only if its reported version is
// still the one read (and the device still active); a device another writer got to first is read and
// merged again. A lock held across the gateway's round trips is held as long as the gateway waits for a
// core, and with 100,000 devices reporting at once on two cores that wait reached 10 s, blocking every other
// writer of those rows behind it.
func (r *Registry) ApplyReported(ctx context.Context, patches []fleet.ReportedPatch) ([]fleet.ReportedResult, error) {
	results := make([]fleet.ReportedResult, len(patches))
	if len(patches) == 0 {
		return results, nil
	}
	todo := make([]int, len(patches)) // indexes of the patches not yet written or refused
	for i := range patches {
		todo[i] = i
	}
	for attempt := 1; len(todo) > 0; attempt++ {
		if attempt > applyReportedTries {
			// Devices written by others in every round (many writers of one device at once): merge them
			// under their row locks, which cannot lose the race, rather than give up on their patches.
			if err := r.applyReportedLocked(ctx, patches, todo, results); err != nil {
				return nil, fmt.Errorf("apply %d reported patches: %w", len(patches), err)
			}
			return results, nil
		}
		var err error
		if todo, err = r.applyReportedOnce(ctx, patches, todo, results); err != nil {
			return nil, fmt.Errorf("apply %d reported patches: %w", len(patches), err)
		}
	}
	return results, nil
}

// applyReportedTries bounds the optimistic rounds of ApplyReported; only a device written by two gateways at
// once (a takeover in progress) needs a second, and the rare device that loses every round is merged under
// its row lock.
const applyReportedTries = 5

// applyReportedLocked reads the devices of the patches listed in todo under their row locks (in id order),
// merges and writes them in one transaction, filling their results.
func (r *Registry) applyReportedLocked(ctx context.Context, patches []fleet.ReportedPatch, todo []int, results []fleet.ReportedResult) error {
	return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		ids := make([]string, 0, len(todo))
		for _, i := range todo {
			ids = append(ids, patches[i].DeviceID)
		}
		slices.Sort(ids)
		ids = slices.Compact(ids)
		state, err := readReported(ctx, tx, `SELECT id, status, reported, reported_version FROM devices WHERE id = ANY($1) ORDER BY id FOR UPDATE`, ids)
		if err != nil {
			return err
		}
		uids, docs, vers, _ := mergeReported(patches, todo, results, ids, state)
		if len(uids) == 0 {
			return nil
		}
		_, err = tx.Exec(ctx, `UPDATE devices d SET reported = u.doc::jsonb, reported_version = u.v,
				twin_version = d.twin_version + 1, last_seen = now(), updated_at = now()
			FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(id, doc, v)
			WHERE d.id = u.id`, uids, docs, vers)
		if err != nil {
			return fmt.Errorf("write reported: %w", err)
		}
		return nil
	})
}

// readReported reads the reported state of ids with query (its one parameter is the ids).
func readReported(ctx context.Context, q Querier, query string, ids []string) (map[string]*reportedState, error) {
	rows, err := q.Query(ctx, query, ids)
	if err != nil {
		return nil, fmt.Errorf("read reported: %w", err)
	}
	defer rows.Close()
	state := make(map[string]*reportedState, len(ids))
	for rows.Next() {
		var id string
		st := &reportedState{}
		if err := rows.Scan(&id, &st.status, &st.doc, &st.version); err != nil {
			return nil, fmt.Errorf("scan reported: %w", err)
		}
		st.base = st.version
		state[id] = st
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read reported: %w", err)
	}
	return state, nil
}

// mergeReported merges the patches listed in todo into state, in order, filling their results, and returns
// the devices to write (ids in order) with their documents, new versions and the versions read.
func mergeReported(patches []fleet.ReportedPatch, todo []int, results []fleet.ReportedResult, ids []string,
	state map[string]*reportedState) (uids, docs []string, vers, bases []int64) {
	for _, i := range todo {
		p := patches[i]
		results[i] = fleet.ReportedResult{DeviceID: p.DeviceID, RequestID: p.RequestID}
		st, ok := state[p.DeviceID]
		switch {
		case !ok:
			results[i].Err = notFound(p.DeviceID)
			continue
		case st.status != statusActive:
			results[i].Err = fmt.Errorf("device %s is %s: %w", p.DeviceID, st.status, fleet.ErrNotActive)
			continue
		}
		merged, err := twin.Apply(twin.Reported, st.doc, p.Patch)
		if err != nil {
			results[i].Err = err
			continue
		}
		st.doc, st.dirty = merged, true
		st.version++
		results[i].Version = st.version
	}
	for _, id := range ids {
		if st := state[id]; st != nil && st.dirty {
			uids = append(uids, id)
			docs = append(docs, string(st.doc))
			vers = append(vers, st.version)
			bases = append(bases, st.base)
		}
	}
	return uids, docs, vers, bases
}

// applyReportedOnce reads, merges and writes the patches listed in todo, filling their results, and returns
// those whose devices changed between the read and the write.
func (r *Registry) applyReportedOnce(ctx context.Context, patches []fleet.ReportedPatch, todo []int, results []fleet.ReportedResult) ([]int, error) {
	ids := make([]string, 0, len(todo))
	for _, i := range todo {
		ids = append(ids, patches[i].DeviceID)
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	state, err := readReported(ctx, r.pool, `SELECT id, status, reported, reported_version FROM devices WHERE id = ANY($1)`, ids)
	if err != nil {
		return nil, err
	}
	uids, docs, vers, bases := mergeReported(patches, todo, results, ids, state)
	if len(uids) == 0 {
		return nil, nil
	}
	// One round trip, one implicit transaction: the rows are locked in id order, as every batch writer of
	// devices locks them (two batch updates that lock the same devices in different orders deadlock), then
	// written where the version is still the one read; the update's snapshot, taken after the locks, sees
	// every write that came first. The locks are released at the end of the batch, never held while the
	// gateway waits for a core.
	b := &pgx.Batch{}
	b.Queue(`SELECT 1 FROM devices WHERE id = ANY($1) ORDER BY id FOR UPDATE`, uids)
	b.Queue(`UPDATE devices d SET reported = u.doc::jsonb, reported_version = u.v,
			twin_version = d.twin_version + 1, last_seen = now(), updated_at = now()
		FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS u(id, doc, v, base)
		WHERE d.id = u.id AND d.reported_version = u.base AND d.status = 'active'
		RETURNING d.id`, uids, docs, vers, bases)
	br := r.pool.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return nil, fmt.Errorf("lock reported: %w", err)
	}
	out, err := br.Query()
	if err != nil {
		return nil, fmt.Errorf("write reported: %w", err)
	}
	written := make(map[string]bool, len(uids))
	for out.Next() {
		var id string
		if err := out.Scan(&id); err != nil {
			out.Close()
			return nil, fmt.Errorf("write reported: %w", err)
		}
		written[id] = true
	}
	if err := out.Err(); err != nil {
		return nil, fmt.Errorf("write reported: %w", err)
	}
	if err := br.Close(); err != nil {
		return nil, fmt.Errorf("write reported: %w", err)
	}
	var again []int
	for _, i := range todo {
		if st := state[patches[i].DeviceID]; st != nil && st.dirty && !written[patches[i].DeviceID] {
			again = append(again, i)
		}
	}
	return again, nil
}

// RecordConnections writes a batch of connection events in one round trip and one implicit transaction. A
// device's newest session wins: an "up" never moves the session backwards and a "down" only applies to the
// session that is current, so the late LWT of a taken-over session cannot mark a connected device offline.
// Each up that opens a session and each down that takes the device offline becomes a connected or
// disconnected event of the device's timeline, written in the same transaction (a connect storm runs through
// here at 10k connects/s); ignored events and ConnSeen leave no trace.
//
// No row lock is held while the gateway waits: the batch is one pipeline ending in one Sync, so its
// statements run back to back in Postgres — lock the rows in id order, derive the timeline's events in SQL
// from the state the locks guard (connectionEventsSQL), then the updates — and the locks are released at its
// end. The locking read and the timeline's derivation used to be an explicit transaction around a round
// trip to the gateway, which held the rows of every connecting device locked while the gateway waited for a
// core; during a reconnect storm those are the rows its reported patches need (docs/benchmarks.md, issue 9,
// "Fifth pass").
func (r *Registry) RecordConnections(ctx context.Context, events []fleet.ConnEvent) error {
	if len(events) == 0 {
		return nil
	}
	ups := map[string]fleet.ConnEvent{}
	seen := map[string]time.Time{}
	var downIDs []string
	var downSessions []int64
	var downAt []time.Time
	// The events that can change a device's connection state or timeline, in batch order, as the columns of
	// connectionEventsSQL.
	var evIDs, evKinds, evReasons []string
	var evSessions []int64
	var evAts []pgtype.Timestamptz
	for _, e := range events {
		kind := ""
		switch e.Kind {
		case fleet.ConnUp:
			if cur, ok := ups[e.DeviceID]; !ok || e.Session >= cur.Session {
				ups[e.DeviceID] = e
			}
			kind = "up"
		case fleet.ConnDown:
			downIDs = append(downIDs, e.DeviceID)
			downSessions = append(downSessions, e.Session)
			downAt = append(downAt, e.At)
			kind = "down"
		case fleet.ConnSeen:
			if e.At.After(seen[e.DeviceID]) {
				seen[e.DeviceID] = e.At
			}
		case fleet.ConnRefused:
			kind = EventConnectRefused
		case fleet.ConnReportRefused:
			kind = EventReportRefused
		}
		if kind == "" {
			continue
		}
		evIDs = append(evIDs, e.DeviceID)
		evKinds = append(evKinds, kind)
		evSessions = append(evSessions, e.Session)
		evAts = append(evAts, pgtype.Timestamptz{Time: e.At, Valid: !e.At.IsZero()})
		evReasons = append(evReasons, e.Reason)
	}
	b := &pgx.Batch{}
	if len(evIDs) > 0 {
		// Lock the rows of connections and disconnections in id order first, as ApplyReported does: two batch
		// updates that lock the same devices in different orders deadlock, and Postgres resolves that only
		// after deadlock_timeout (a one-second stall). Devices that were only seen need no lock here (below).
		locked := slices.Clone(evIDs)
		slices.Sort(locked)
		locked = slices.Compact(locked)
		b.Queue(`SELECT 1 FROM devices WHERE id = ANY($1) ORDER BY id FOR UPDATE`, locked)
		// The next statement's snapshot is taken after the locks, so it derives the events from the state the
		// updates below start from: the timeline's events are exactly the changes they make.
		b.Queue(connectionEventsSQL, evIDs, evKinds, evSessions, evAts, evReasons)
	}
	if len(ups) > 0 {
		ids := sortedKeys(ups)
		sessions := make([]int64, len(ids))
		ats := make([]time.Time, len(ids))
		slots := make([]int16, len(ids))
		digests := make([][]byte, len(ids))
		for i, id := range ids {
			u := ups[id]
			sessions[i], ats[i], slots[i], digests[i] = u.Session, u.At, int16(u.Slot), u.Digest
		}
		// The slot and digest the session authenticated with are what a credential rotation waits for
		// (docs/architecture.md, "Credential rotation"); like the session, they only move forwards.
		b.Queue(`UPDATE devices d SET online = true, session = u.s, connected_at = u.at,
			last_seen = greatest(d.last_seen, u.at), auth_slot = u.slot, auth_digest = u.digest
			FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::smallint[], $5::bytea[]) AS u(id, s, at, slot, digest)
			WHERE d.id = u.id AND d.session <= u.s`, ids, sessions, ats, slots, digests)
	}
	if len(downIDs) > 0 {
		b.Queue(`UPDATE devices d SET online = false, last_seen = greatest(d.last_seen, u.at)
			FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]) AS u(id, s, at)
			WHERE d.id = u.id AND d.session = u.s`, downIDs, downSessions, downAt)
	}
	if len(seen) > 0 {
		ids := sortedKeys(seen)
		ats := make([]time.Time, len(ids))
		for i, id := range ids {
			ats[i] = seen[id]
		}
		// Activity only refreshes last_seen, and a row another transaction holds (a reported patch being
		// merged, which stamps last_seen itself; a job's desired write) is skipped rather than waited for:
		// waiting would stall this batch's connection events behind it. SKIP LOCKED in id order also keeps
		// this update from deadlocking with the id-ordered lockers.
		b.Queue(`UPDATE devices d SET last_seen = greatest(d.last_seen, u.at)
			FROM unnest($1::text[], $2::timestamptz[]) AS u(id, at)
			WHERE d.id = u.id AND d.id IN (SELECT id FROM devices WHERE id = ANY($1) ORDER BY id FOR UPDATE SKIP LOCKED)`, ids, ats)
	}
	if err := r.pool.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("record %d connection events: %w", len(events), err)
	}
	return nil
}

// connectionEventsSQL writes the timeline's connected and disconnected events of a batch of connection events
// ($1–$5: device, kind, session, time, reason, in batch order; kind is up, down, or the kind of a refusal
// event), replayed from each device's stored state, and the batch's refusal events. Only real changes are
// events, the same ones RecordConnections' updates make: an up that opens a newer session (or reopens the
// current one after it went down) is a connect; a down of the current session while online is a
// disconnect. A late LWT of a taken-over session, a stale or duplicate up are none; unknown devices have
// none.
//
// The replay needs no loop: sessions only move forwards, so the current session before an event is the
// greatest of the stored one and the batch's earlier ups (cur). An up of a session below cur and a down of
// any session but cur change nothing. The events that remain come in runs of one session each, and within
// a run the device is online after an up and offline after a down whatever it was before — so an event is a
// change exactly when its kind differs from the run's previous one, or, first in its run, from the stored
// state (a session newer than the stored one starts offline).
const connectionEventsSQL = `WITH e AS (
		SELECT u.n, u.id, u.kind, u.s, u.at, u.reason, d.session AS s0, d.online AS on0,
			greatest(d.session, max(u.s) FILTER (WHERE u.kind = 'up') OVER (PARTITION BY u.id ORDER BY u.n
				ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) AS cur
		FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::text[])
			WITH ORDINALITY AS u(id, kind, s, at, reason, n)
		JOIN devices d ON d.id = u.id),
	c AS (
		SELECT n, id, kind, s, at,
			coalesce(lag(kind) OVER (PARTITION BY id, s ORDER BY n),
				CASE WHEN s = s0 AND on0 THEN 'up' ELSE 'down' END) AS before
		FROM e WHERE kind = 'up' AND s >= cur OR kind = 'down' AND s = cur)
	INSERT INTO device_events (device_id, at, kind, detail)
	SELECT id, coalesce(at, now()), kind, detail FROM (
		SELECT n, id, at, CASE kind WHEN 'up' THEN '` + EventConnected + `' ELSE '` + EventDisconnected + `' END AS kind,
			jsonb_build_object('session', s) AS detail
		FROM c WHERE kind <> before
		UNION ALL
		SELECT n, id, at, kind, jsonb_build_object('reason', reason)
		FROM e WHERE kind IN ('` + EventConnectRefused + `', '` + EventReportRefused + `')) x
	ORDER BY n`

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ListenDeviceChanges calls fn with the id of every device whose status or credentials change, until ctx
// ends. It holds its own connection (LISTEN needs one; to Options.ListenURL when set) and reconnects after errors; each time LISTEN is in
// place it calls fn with "" so the caller can drop everything it cached, since notifications may have been
// missed before. Inserts of devices come as fn(fleet.DevicesInserted), once per statement (migration 007); a
// change of the scheme in force as fn(fleet.SchemeChanged) (migration 021).
func (r *Registry) ListenDeviceChanges(ctx context.Context, fn func(id string)) error {
	for ctx.Err() == nil {
		err := r.listenOnce(ctx, fn)
		if ctx.Err() != nil {
			return nil
		}
		slog.Warn("device change listener lost its connection; reconnecting", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return nil
}

func (r *Registry) listenOnce(ctx context.Context, fn func(string)) error {
	conn, err := pgx.Connect(ctx, r.listenURL)
	if err != nil {
		return fmt.Errorf("listen: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+NotifyChannel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	// Changes made before LISTEN took effect (at start-up, or while reconnecting) were not announced:
	// "" tells the caller to drop its cache and re-check what it holds.
	fn("")
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("listen: %w", err)
		}
		fn(n.Payload)
	}
}

// SetStatus changes a device's status; the trigger announces it to every gateway.
func (r *Registry) SetStatus(ctx context.Context, id string, status fleet.DeviceStatus) error {
	tag, err := r.pool.Exec(ctx, "UPDATE devices SET status = $2, updated_at = now() WHERE id = $1", id, string(status))
	if err != nil {
		return fmt.Errorf("set status of %s: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return notFound(id)
	}
	return nil
}

// NextSessions hands out n session numbers from device_session_seq in one round trip, in increasing order.
// One sequence for every gateway is what makes "newest session wins" hold when a device moves between
// gateways (docs/architecture.md, "The device protocol").
func (r *Registry) NextSessions(ctx context.Context, n int) ([]int64, error) {
	if n <= 0 {
		return nil, nil
	}
	rows, err := r.pool.Query(ctx, "SELECT nextval('device_session_seq') FROM generate_series(1, $1)", n)
	if err != nil {
		return nil, fmt.Errorf("next %d session numbers: %w", n, err)
	}
	nums, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("next %d session numbers: %w", n, err)
	}
	if len(nums) != n {
		return nil, fmt.Errorf("next %d session numbers: got %d", n, len(nums))
	}
	// The rows come in generate_series order, which is nextval order in practice; sorting makes it certain.
	slices.Sort(nums)
	return nums, nil
}
