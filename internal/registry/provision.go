package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// StagedRow is one manifest row as the CLI stages it: the parsed id and tags (JSON text, possibly invalid),
// the digest of the secret or the fingerprint of the certificate the CLI generated, or the reason the row
// could not be parsed at all.
type StagedRow struct {
	Seq        int64 // 0-based, contiguous: the workflow's batches are ranges of Seq
	Line       int64 // line in the manifest file, for reports
	ID         string
	Tags       string
	SecretHash []byte
	// CertFingerprint is the SHA-256 of the device's client certificate (docs/architecture.md, "Device
	// certificates"); a row needs it or SecretHash.
	CertFingerprint []byte
	// CertNotAfter is that certificate's end as it states it, recorded with the fingerprint (cert_not_after);
	// nil when the row has no certificate.
	CertNotAfter *time.Time
	ParseError   string
	// Checked says the caller has already run RowProblem on ID and Tags (and put any problem in
	// ParseError), so staging need not check them again.
	Checked bool
}

// deviceCopyColumns are the columns provisioning writes; everything else takes its default.
var deviceCopyColumns = []string{"id", "secret1_hash", "cert_fingerprint", "cert_not_after", "tags", "provisioned_by"}

// StageRows copies manifest rows into provision_rows under op with COPY, the fastest way into Postgres, and
// records the operation with its row count so the workflow can plan batches without reading rows.
// next returns false when there are no more rows. Staging the same op twice is refused by the primary key.
func (r *Registry) StageRows(ctx context.Context, op, kind string, next func() (StagedRow, bool, error)) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		var no int64
		if err := tx.QueryRow(ctx, "INSERT INTO operations (id, kind) VALUES ($1, $2) RETURNING no", op, kind).Scan(&no); err != nil {
			return fmt.Errorf("record operation: %w", err)
		}
		var iterErr error
		src := pgx.CopyFromFunc(func() ([]any, error) {
			row, ok, err := next()
			if err != nil {
				iterErr = err
				return nil, err
			}
			if !ok {
				return nil, nil
			}
			return stagedValues(no, row), nil
		})
		copied, err := tx.CopyFrom(ctx, pgx.Identifier{"provision_rows"}, stagedColumns, src)
		if iterErr != nil {
			return iterErr
		}
		if err != nil {
			return fmt.Errorf("copy manifest rows: %w", err)
		}
		n = copied
		if _, err := tx.Exec(ctx, "UPDATE operations SET rows = $2 WHERE no = $1", no, copied); err != nil {
			return fmt.Errorf("record operation: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("stage %s: %w", op, err)
	}
	return n, nil
}

// OperationExists reports whether an operation id has been used, so the CLI can pick a free one before it
// consumes a manifest stream it cannot rewind.
func (r *Registry) OperationExists(ctx context.Context, op string) (bool, error) {
	var ok bool
	if err := r.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM operations WHERE id = $1)", op).Scan(&ok); err != nil {
		return false, fmt.Errorf("check operation %s: %w", op, err)
	}
	return ok, nil
}

// OperationRows returns how many rows were staged for op.
func (r *Registry) OperationRows(ctx context.Context, op string) (int64, error) {
	var n int64
	err := r.pool.QueryRow(ctx, "SELECT rows FROM operations WHERE id = $1", op).Scan(&n)
	if isNoRows(err) {
		return 0, fmt.Errorf("%s: %w", op, fleet.ErrOperationNotStaged)
	}
	if err != nil {
		return 0, fmt.Errorf("load operation %s: %w", op, err)
	}
	return n, nil
}

type rowResult struct {
	line          int64
	id            string
	outcome, note string
}

// provisionInDatabase is the common case of a batch, done without the rows leaving Postgres: every staged
// row that passed validation at staging becomes a device in one
// INSERT ... SELECT, and the rows that did not are recorded as invalid. If any row conflicts with an
// existing device, or anything else fails, the savepoint undoes it and ok is false, and the caller
// classifies the batch row by row.
func provisionInDatabase(ctx context.Context, tx pgx.Tx, op string, first, last int64) (fleet.ProvisionCounts, bool, error) {
	var out fleet.ProvisionCounts
	var staged int64
	st, err := stagingOf(ctx, tx, op)
	if err != nil {
		return out, false, err
	}
	q := st.rows(first, last)
	err = tx.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE parse_error IS NOT NULL) FROM `+q.from+` WHERE `+q.cond,
		q.args...).Scan(&staged, &out.Invalid)
	if err != nil && !isUndefinedTable(err) {
		return out, false, fmt.Errorf("count staged rows: %w", err)
	}
	if want := last - first; staged != want {
		// Staged rows live in unlogged tables: a database crash empties them (and a table dropped as
		// stale is gone). Say so rather than provisioning a partial fleet.
		return out, false, fmt.Errorf("%w: expected %d staged rows for %s %d-%d, found %d (did the database restart? re-run the manifest; existing devices are kept)",
			fleet.ErrStagingLost, want, op, first, last-1, staged)
	}
	if _, err := tx.Exec(ctx, "SAVEPOINT in_database"); err != nil {
		return out, false, fmt.Errorf("create devices: %w", err)
	}
	// Staging validated every row, so a row without parse_error is a valid device (re-checking in SQL
	// measured 50% slower at a million rows).
	created, err := copyStagedToDevices(ctx, tx, st, op, first, last)
	if err == nil && created != staged-out.Invalid {
		err = errors.New("some rows need a closer look")
	}
	if err == nil && out.Invalid > 0 {
		// The SQL is built before q.args is read: q.arg appends to it.
		q = st.rows(first, last)
		invalid := `INSERT INTO provision_results (op, line, id, outcome, reason)
			SELECT ` + q.arg(op) + `, line, id, 'invalid', parse_error FROM ` + q.from + `
			WHERE ` + q.cond + ` AND parse_error IS NOT NULL
			ON CONFLICT (op, line) DO NOTHING`
		_, err = tx.Exec(ctx, invalid, q.args...)
	}
	if err != nil {
		if _, rerr := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT in_database"); rerr != nil {
			return out, false, fmt.Errorf("create devices: %w (rollback: %v)", err, rerr)
		}
		return out, false, nil
	}
	out.Created = created
	return out, true, nil
}

// relayBuffers hold the rows copyStagedToDevices relays (a few MB a batch), reused: fresh ones cost page
// faults and garbage collections in a worker that runs batches back to back.
var relayBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// copyStagedToDevices creates the devices of the valid staged rows with seq in [first, last) of staging st
// in tx, and returns how many it created. It relays the rows from a COPY out of the staging table into a
// COPY into devices, in text format, through a buffer: Postgres writes the devices with COPY's multi-row
// inserts, where INSERT … SELECT inserted them row by row (a buffer look-up, a lock and a WAL record per
// row: on a million devices its backends used ~5.7 CPU-seconds where the raw COPY's used ~3.7;
// docs/benchmarks.md), and the worker only moves bytes. COPY takes no bind parameters, so the operation and the range reach its query as
// transaction-local settings, read once each (an uncorrelated subquery is evaluated once). A duplicate id
// fails the COPY like the INSERT it replaces, and the caller classifies the batch row by row.
func copyStagedToDevices(ctx context.Context, tx pgx.Tx, st staging, op string, first, last int64) (int64, error) {
	_, err := tx.Exec(ctx, `SELECT set_config('fleetflow.batch_op', $1, true), set_config('fleetflow.batch_no', $2, true),
		set_config('fleetflow.batch_first', $3, true), set_config('fleetflow.batch_last', $4, true)`,
		op, strconv.FormatInt(st.no, 10), strconv.FormatInt(first, 10), strconv.FormatInt(last, 10))
	if err != nil {
		return 0, fmt.Errorf("create devices: %w", err)
	}
	from, cond := st.table, ""
	if from == "" {
		from, cond = "provision_rows", "op_no = (SELECT current_setting('fleetflow.batch_no')::bigint) AND "
	}
	buf := relayBuffers.Get().(*bytes.Buffer)
	defer func() { buf.Reset(); relayBuffers.Put(buf) }()
	conn := tx.Conn().PgConn()
	_, err = conn.CopyTo(ctx, buf, `COPY (SELECT id, secret_hash, cert_fingerprint, cert_not_after, tags, (SELECT current_setting('fleetflow.batch_op'))
		FROM `+from+` WHERE `+cond+`seq >= (SELECT current_setting('fleetflow.batch_first')::bigint)
		AND seq < (SELECT current_setting('fleetflow.batch_last')::bigint) AND parse_error IS NULL) TO STDOUT`)
	if err != nil {
		return 0, fmt.Errorf("read staged rows: %w", err)
	}
	tag, err := conn.CopyFrom(ctx, buf, `COPY devices (id, secret1_hash, cert_fingerprint, cert_not_after, tags, provisioned_by) FROM STDIN`)
	if err != nil {
		return 0, fmt.Errorf("create devices: %w", err)
	}
	return tag.RowsAffected(), nil
}

// ProvisionBatch validates staged rows with seq in [first, last) of op and creates their devices with their twins' tags,
// all in one transaction that also records the batch's counts. A retry of a batch that committed returns
// the recorded counts, so a worker crash between commit and completion never double-counts or re-creates.
// Rows whose id already exists are reported as existing and their credentials left untouched. A positive
// validity gives the devices the batch creates their credential expiry in the same transaction, so an
// interrupted CLI can no longer leave devices without the expiry it asked for. The batch's staged rows are
// dropped in the same transaction too when they are in the shared provision_rows (an operation's own
// staging table is dropped whole at the end: dropBatchStaging).
func (r *Registry) ProvisionBatch(ctx context.Context, op string, first, last int64, validity time.Duration) (fleet.ProvisionCounts, error) {
	var out fleet.ProvisionCounts
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		err := provisionBatch(ctx, tx, op, first, last, validity, &out)
		if err == nil && validity > 0 && out.Created > 0 {
			// Only the batch's own new devices (provisioned_by = op) that have no expiry yet: a device that
			// existed before keeps its credentials and their expiry. (A batch of staged chunks set them.)
			var st staging
			if st, err = stagingOf(ctx, tx, op); err == nil && !st.chunks {
				q := st.rows(first, last)
				// A certificate's recorded end caps it (least ignores a NULL): the registry's expiry is then
				// exactly the certificate's, which the health check warns before.
				update := `UPDATE devices d SET credential_expires_at = least(d.created_at + make_interval(secs => ` + q.arg(validity.Seconds()) + `), d.cert_not_after)
					FROM (SELECT id FROM ` + q.from + ` WHERE ` + q.cond + `) r
					WHERE d.id = r.id AND d.provisioned_by = ` + q.arg(op) + ` AND d.credential_expires_at IS NULL`
				_, err = tx.Exec(ctx, update, q.args...)
			}
			if err != nil {
				err = fmt.Errorf("set credential expiry: %w", err)
			}
		}
		if err != nil {
			return err
		}
		return dropBatchStaging(ctx, tx, op, first, last)
	})
	if err != nil {
		return fleet.ProvisionCounts{}, fmt.Errorf("provision %s rows %d-%d: %w", op, first, last-1, err)
	}
	return out, nil
}

// dropBatchStaging deletes the staged rows of a batch in the batch's transaction when they are in the shared
// provision_rows: once it commits nothing reads them again (a retry finds the batch's recorded counts
// first), and they hold credential digests. Dropped batch by batch, while other batches run, rather than all
// at once after the last one, which kept a million-device run waiting about a second longer
// (docs/benchmarks.md). An operation's own staging table is left whole: DropStaging drops it at once
// when the workflow ends, which costs nothing per row.
func dropBatchStaging(ctx context.Context, tx pgx.Tx, op string, first, last int64) error {
	st, err := stagingOf(ctx, tx, op)
	if err != nil || st.table != "" {
		return err
	}
	q := st.rows(first, last)
	if _, err := tx.Exec(ctx, `DELETE FROM `+q.from+` WHERE `+q.cond, q.args...); err != nil {
		return fmt.Errorf("drop staged rows: %w", err)
	}
	return nil
}

// provisionBatch is ProvisionBatch's work in tx; out receives the batch's counts.
func provisionBatch(ctx context.Context, tx pgx.Tx, op string, first, last int64, validity time.Duration, out *fleet.ProvisionCounts) error {
	{
		err := tx.QueryRow(ctx, "SELECT created, existing, invalid FROM provision_batches WHERE op = $1 AND first = $2",
			op, first).Scan(&out.Created, &out.Existing, &out.Invalid)
		if err == nil {
			return nil
		}
		if !isNoRows(err) {
			return fmt.Errorf("check batch: %w", err)
		}
		if st, err := stagingOf(ctx, tx, op); err != nil {
			return err
		} else if st.chunks {
			return provisionChunkBatch(ctx, tx, st, op, first, last, validity, out)
		}
		fast, ok, err := provisionInDatabase(ctx, tx, op, first, last)
		if err != nil {
			return err
		}
		if ok {
			*out = fast
			_, err = tx.Exec(ctx, `INSERT INTO provision_batches (op, first, created, existing, invalid)
				VALUES ($1, $2, $3, $4, $5)`, op, first, out.Created, out.Existing, out.Invalid)
			if err != nil {
				return fmt.Errorf("record batch: %w", err)
			}
			return nil
		}
		// Some row conflicts with an existing device (or was never validated): classify every row here.
		st, err := stagingOf(ctx, tx, op)
		if err != nil {
			return err
		}
		q := st.rows(first, last)
		rows, err := tx.Query(ctx, `SELECT line, id, tags, secret_hash, cert_fingerprint, cert_not_after, coalesce(parse_error, '') FROM `+q.from+`
			WHERE `+q.cond+` ORDER BY seq`, q.args...)
		if err != nil {
			return fmt.Errorf("read staged rows: %w", err)
		}
		var staged []StagedRow
		for rows.Next() {
			var s StagedRow
			if err := rows.Scan(&s.Line, &s.ID, &s.Tags, &s.SecretHash, &s.CertFingerprint, &s.CertNotAfter, &s.ParseError); err != nil {
				rows.Close()
				return fmt.Errorf("scan staged row: %w", err)
			}
			staged = append(staged, s)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read staged rows: %w", err)
		}
		return classifyBatch(ctx, tx, op, first, last, staged, out)
	}
}

// classifyBatch creates the devices of a batch's staged rows (those with seq in [first, last), in order) row
// by row in tx: each row is checked again, and reported as invalid, as a duplicate or as an existing device
// when it cannot be created; it records the batch's counts.
func classifyBatch(ctx context.Context, tx pgx.Tx, op string, first, last int64, staged []StagedRow, out *fleet.ProvisionCounts) error {
	var ids, tags []string
	var hashes, fingerprints [][]byte
	var notAfters []*time.Time
	var lines []int64
	var results []rowResult
	seen := map[string]int64{}
	read := int64(len(staged))
	for _, s := range staged {
		if reason := validateRow(s); reason != "" {
			results = append(results, rowResult{s.Line, s.ID, "invalid", reason})
			continue
		}
		if prev, dup := seen[s.ID]; dup {
			results = append(results, rowResult{s.Line, s.ID, "invalid", fmt.Sprintf("duplicate id: already on line %d", prev)})
			continue
		}
		seen[s.ID] = s.Line
		ids, tags, hashes, lines = append(ids, s.ID), append(tags, s.Tags), append(hashes, s.SecretHash), append(lines, s.Line)
		fingerprints, notAfters = append(fingerprints, s.CertFingerprint), append(notAfters, s.CertNotAfter)
	}
	if want := last - first; read != want {
		// Staged rows live in an unlogged table: a database crash empties it. Say so rather than
		// provisioning a partial fleet.
		return fmt.Errorf("%w: expected %d staged rows for %s %d-%d, found %d (did the database restart? re-run the manifest; existing devices are kept)",
			fleet.ErrStagingLost, want, op, first, last-1, read)
	}
	// Which ids exist already, and which of those this operation created in another batch (a duplicate
	// row of the manifest rather than a device that was present before).
	existing := map[string]string{}
	retired := map[string]time.Time{}
	if len(ids) > 0 {
		erows, err := tx.Query(ctx, `SELECT id, coalesce(provisioned_by, ''), status = 'retired', coalesce(retired_at, updated_at)
			FROM devices WHERE id = ANY($1)`, ids)
		if err != nil {
			return fmt.Errorf("look up existing devices: %w", err)
		}
		for erows.Next() {
			var id, by string
			var isRetired bool
			var at time.Time
			if err := erows.Scan(&id, &by, &isRetired, &at); err != nil {
				erows.Close()
				return fmt.Errorf("look up existing devices: %w", err)
			}
			existing[id] = by
			if isRetired {
				retired[id] = at
			}
		}
		if err := erows.Err(); err != nil {
			return fmt.Errorf("look up existing devices: %w", err)
		}
	}
	var fresh [][]any
	for i, id := range ids {
		by, ok := existing[id]
		switch {
		case !ok:
			fresh = append(fresh, []any{id, hashes[i], fingerprints[i], notAfters[i], tags[i], op})
		case by == op:
			results = append(results, rowResult{lines[i], id, "invalid", "duplicate id: already on an earlier line of this manifest"})
		case !retired[id].IsZero():
			results = append(results, rowResult{lines[i], id, "invalid", RetiredIDReason(retired[id])})
		default:
			results = append(results, rowResult{lines[i], id, "exists", "already present; credentials untouched"})
		}
	}
	// A device created by someone else since the look-up fails this COPY with a unique violation, which
	// fails this attempt; the retry then finds that device as existing.
	if len(fresh) > 0 {
		n, err := tx.CopyFrom(ctx, pgx.Identifier{"devices"}, deviceCopyColumns, pgx.CopyFromRows(fresh))
		if err != nil {
			return fmt.Errorf("create devices: %w", err)
		}
		out.Created = n
	}
	var rLines []int64
	var rIDs, rOutcomes, rReasons []string
	for _, res := range results {
		if res.outcome == "exists" {
			out.Existing++
		} else {
			out.Invalid++
		}
		rLines, rIDs = append(rLines, res.line), append(rIDs, res.id)
		rOutcomes, rReasons = append(rOutcomes, res.outcome), append(rReasons, res.note)
	}
	if len(results) > 0 {
		_, err := tx.Exec(ctx, `INSERT INTO provision_results (op, line, id, outcome, reason)
			SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[])
			ON CONFLICT (op, line) DO NOTHING`, op, rLines, rIDs, rOutcomes, rReasons)
		if err != nil {
			return fmt.Errorf("record row results: %w", err)
		}
	}
	_, err := tx.Exec(ctx, `INSERT INTO provision_batches (op, first, created, existing, invalid)
		VALUES ($1, $2, $3, $4, $5)`, op, first, out.Created, out.Existing, out.Invalid)
	if err != nil {
		return fmt.Errorf("record batch: %w", err)
	}
	return nil
}

// RowProblem says why a manifest row's id or tags cannot make a device, or "" if they can: the check every
// staged row passes. The CLI runs it before it generates a row's credential, so that a row that can never
// become a device never gets a secret that could reach the credentials file.
func RowProblem(id, tags string) string {
	if p := IDProblem(id); p != "" {
		return p
	}
	if err := twin.Validate(twin.Tags, []byte(tags)); err != nil {
		return err.Error()
	}
	return ""
}

// IDProblem is RowProblem's check of the id alone: all a row still needs when its tags are known to pass
// twin.Validate (a CSV row the manifest reader built plainly, manifest.Row.Plain).
func IDProblem(id string) string {
	if id == "" {
		return "missing id"
	}
	if err := twin.ValidateID(id); err != nil {
		return err.Error()
	}
	return ""
}

func validateRow(s StagedRow) string {
	if s.ParseError != "" {
		return s.ParseError
	}
	if p := RowProblem(s.ID, s.Tags); p != "" {
		return p
	}
	return credentialProblem(s)
}

// credentialProblem says why a row's credential digest cannot let a device connect, or "".
func credentialProblem(s StagedRow) string {
	// A secret's digest or a certificate's fingerprint (or both): a device without either could never connect.
	if s.SecretHash != nil && len(s.SecretHash) != 32 || s.CertFingerprint != nil && len(s.CertFingerprint) != 32 ||
		s.SecretHash == nil && s.CertFingerprint == nil {
		return "missing credential digest"
	}
	return ""
}

// RetiredIDReason is the sentence that refuses a retired device's id to a new device: ids are not reused
// while the retired device's record (its archive and timeline) exists, and `purge` is what removes it.
func RetiredIDReason(retiredAt time.Time) string {
	return fmt.Sprintf("retired on %s: a retired device's id cannot be provisioned again until the retired device is purged "+
		"(fleetflow purge --older-than D, with D shorter than its time in retirement)", retiredAt.UTC().Format("2006-01-02"))
}

// ProvisionResults lists up to limit rows of op with the given outcome ("" for both), in line order.
func (r *Registry) ProvisionResults(ctx context.Context, op string, outcome fleet.RowOutcome, limit int) ([]fleet.RowResult, error) {
	rows, err := r.pool.Query(ctx, `SELECT line, id, outcome, reason FROM provision_results
		WHERE op = $1 AND ($2 = '' OR outcome = $2) ORDER BY line LIMIT $3`, op, string(outcome), limit)
	if err != nil {
		return nil, fmt.Errorf("list results of %s: %w", op, err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (fleet.RowResult, error) {
		var x fleet.RowResult
		err := row.Scan(&x.Line, &x.ID, &x.Outcome, &x.Reason)
		return x, err
	})
}

// ProvisionCounts sums the recorded batch counts of op.
func (r *Registry) ProvisionCounts(ctx context.Context, op string) (fleet.ProvisionCounts, error) {
	var c fleet.ProvisionCounts
	err := r.pool.QueryRow(ctx, `SELECT coalesce(sum(created), 0), coalesce(sum(existing), 0), coalesce(sum(invalid), 0)
		FROM provision_batches WHERE op = $1`, op).Scan(&c.Created, &c.Existing, &c.Invalid)
	if err != nil {
		return c, fmt.Errorf("count results of %s: %w", op, err)
	}
	return c, nil
}

// fleet.ConnectProgress counts op's devices that have ever connected and that have reported capabilities
// (a non-empty reported document), with a sample of up to sample ids that have not reported.
func (r *Registry) ConnectProgress(ctx context.Context, op string, sample int) (fleet.ConnectProgress, error) {
	var p fleet.ConnectProgress
	// A device that has reported has connected even if the gateway's batched connection event is not written
	// yet, so reporting counts as connecting.
	err := r.pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE connected_at IS NOT NULL OR reported <> '{}'::jsonb),
		count(*) FILTER (WHERE reported <> '{}'::jsonb) FROM devices WHERE provisioned_by = $1`, op).
		Scan(&p.Created, &p.Connected, &p.Reported)
	if err != nil {
		return p, fmt.Errorf("connect progress of %s: %w", op, err)
	}
	if sample > 0 && p.Reported < p.Created {
		rows, err := r.pool.Query(ctx, `SELECT id FROM devices WHERE provisioned_by = $1 AND reported = '{}'::jsonb
			ORDER BY id LIMIT $2`, op, sample)
		if err != nil {
			return p, fmt.Errorf("connect progress of %s: %w", op, err)
		}
		p.Missing, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return p, fmt.Errorf("connect progress of %s: %w", op, err)
		}
	}
	return p, nil
}

// DropStaging drops op's staged rows (they hold credential digests and are no longer needed once every
// batch has committed): its own staging table whole, or its rows of provision_rows; the per-row results and
// counts stay for reports. Idempotent.
func (r *Registry) DropStaging(ctx context.Context, op string) error {
	st, err := stagingOf(ctx, r.pool, op)
	if errors.Is(err, fleet.ErrOperationNotStaged) {
		return nil
	}
	if err == nil {
		err = dropStaged(ctx, r.pool, st)
	}
	if err != nil {
		return fmt.Errorf("drop staging of %s: %w", op, err)
	}
	return nil
}

// dropStaged drops the rows of one staging.
func dropStaged(ctx context.Context, db interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}, st staging) error {
	if st.table != "" {
		// Waits for a chunk the CLI is still copying (a failed run's staging may still be open) to commit.
		_, err := db.Exec(ctx, "DROP TABLE IF EXISTS "+st.table)
		return err
	}
	q := st.rows(0, -1)
	_, err := db.Exec(ctx, `DELETE FROM `+q.from+` WHERE `+q.cond, q.args...)
	return err
}

// DropStaleStaging drops the staged rows of operations staged more than olderThan ago (fleet.ProvisionStore):
// a CLI killed between staging and starting its workflow leaves rows that nothing else would ever read, and
// they hold credential digests. The operation record, results and counts stay. Idempotent; returns how many
// staged rows it dropped.
func (r *Registry) DropStaleStaging(ctx context.Context, olderThan time.Duration) (int64, error) {
	if olderThan <= 0 {
		return 0, errors.New("drop stale staging: the age must be positive")
	}
	tag, err := r.pool.Exec(ctx, `DELETE FROM provision_rows WHERE op_no IN (
		SELECT no FROM operations WHERE created_at < now() - make_interval(secs => $1))`, olderThan.Seconds())
	if err != nil {
		return 0, fmt.Errorf("drop stale staging: %w", err)
	}
	n := tag.RowsAffected()
	rows, err := r.pool.Query(ctx, `SELECT no, staging_table FROM operations
		WHERE created_at < now() - make_interval(secs => $1) AND to_regclass(staging_table) IS NOT NULL`, olderThan.Seconds())
	if err != nil {
		return n, fmt.Errorf("drop stale staging: %w", err)
	}
	var stale []staging
	for rows.Next() {
		var st staging
		var name string
		if err := rows.Scan(&st.no, &name); err != nil {
			rows.Close()
			return n, fmt.Errorf("drop stale staging: %w", err)
		}
		st.table, st.chunks = pgx.Identifier{name}.Sanitize(), isChunkTable(name)
		stale = append(stale, st)
	}
	if err := rows.Err(); err != nil {
		return n, fmt.Errorf("drop stale staging: %w", err)
	}
	for _, st := range stale {
		var k int64
		count, args := st.countSQL()
		err := r.pool.QueryRow(ctx, count, args...).Scan(&k)
		if err == nil {
			err = dropStaged(ctx, r.pool, st)
		}
		if err != nil && !isUndefinedTable(err) {
			return n, fmt.Errorf("drop stale staging: %w", err)
		}
		n += k
	}
	return n, nil
}

// StagedLeft counts the rows still staged for op wherever they are (0 once they were dropped), for tests
// and diagnostics.
func (r *Registry) StagedLeft(ctx context.Context, op string) (int64, error) {
	st, err := stagingOf(ctx, r.pool, op)
	if err != nil {
		return 0, err
	}
	count, args := st.countSQL()
	var n int64
	err = r.pool.QueryRow(ctx, count, args...).Scan(&n)
	if isUndefinedTable(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("count staged rows of %s: %w", op, err)
	}
	return n, nil
}

// CreatedBy returns the ids of the devices op created.
func (r *Registry) CreatedBy(ctx context.Context, op string) (map[string]bool, error) {
	rows, err := r.pool.Query(ctx, "SELECT id FROM devices WHERE provisioned_by = $1", op)
	if err != nil {
		return nil, fmt.Errorf("list devices of %s: %w", op, err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("list devices of %s: %w", op, err)
		}
		out[id] = true
	}
	return out, rows.Err()
}
