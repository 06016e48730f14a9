package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// Staging states of an operation (operations.staging): docs/architecture.md, "Provisioning: staging and
// batches overlap".
const (
	stagingOpen      = "open"
	stagingDone      = "done"
	stagingAbandoned = "abandoned"
)

// stagingHeartbeat is how often StageChunks shows that its caller is alive while it reads rows between
// commits (a manifest piped from a slow source): well inside fleet.StagingStallAfter.
const stagingHeartbeat = 5 * time.Second

// StageHooks are what StageChunks calls around each chunk's commit, and how it groups rows into records.
type StageHooks struct {
	// Record is how many rows each staged record holds (0: a whole chunk). A batch reads the records its
	// range covers, so a record size that divides the batches' boundaries lets each batch read only its own.
	Record int
	// BeforeCommit runs before each chunk commits. Once committed, a chunk's rows can become devices at
	// any moment, so whatever must be durable before a device exists (the only copy of its secret) is
	// made durable here.
	BeforeCommit func() error
	// Committed runs after each chunk has committed, with the rows staged so far and whether staging is
	// done (the chunk was the last). The CLI starts the workflow from the first call.
	Committed func(rows int64, done bool) error
}

// StageChunks stages rows under op like StageRows, but in chunks of up to chunk rows that each commit on their
// own, so that the workflow can provision the first chunks while the next are staged, and into the
// operation's own table of staged chunks (docs/architecture.md, "Provisioning: staged chunks"), in records of
// hooks.Record rows each, created with the first chunk and dropped whole by DropStaging. The operation is
// recorded with the first chunk as 'open', its row count (the staged-rows cursor the workflow follows, see
// StagedRows) grows with every commit, and the last chunk marks it 'done' in its own transaction; a manifest
// that fits in one chunk is staged exactly as StageRows stages it. While it runs, a heartbeat refreshes the
// operation's staged_at so that a workflow can tell a slow source from a dead CLI. If the workflow has
// closed the staging meanwhile (it stalled), the chunk is rolled back and the error wraps
// fleet.ErrStagingClosed. On any other error after the first commit the caller should AbandonStaging.
func (r *Registry) StageChunks(ctx context.Context, op, kind string, chunk int, next func() (StagedRow, bool, error), hooks StageHooks) (int64, error) {
	if chunk <= 0 {
		return 0, errors.New("stage: the chunk size must be positive")
	}
	record := hooks.Record
	if record <= 0 || record > chunk {
		record = chunk
	}
	var no, staged int64
	var table string
	var held *StagedRow // the row read to see whether the source has more, staged with the next chunk
	stopBeat := func() {}
	defer func() { stopBeat() }()
	// Two encoders: while one record is inserted, the next is encoded (the source's work, parsing and
	// credentials, overlaps Postgres' storing of the previous record).
	var encs [2]chunkEncoder
	for first := true; ; first = false {
		done := false
		err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
			if first {
				if err := tx.QueryRow(ctx, `INSERT INTO operations (id, kind, staging, staged_at) VALUES ($1, $2, $3, now())
					RETURNING no`, op, kind, stagingOpen).Scan(&no); err != nil {
					return fmt.Errorf("record operation: %w", err)
				}
				var err error
				if table, err = createChunkTable(ctx, tx, no); err != nil {
					return err
				}
			}
			var copied, recordFirst int64
			enc := &encs[0]
			enc.reset()
			var inserting chan error // the insert in flight, if any; tx is used by one goroutine at a time
			wait := func() error {
				if inserting == nil {
					return nil
				}
				err := <-inserting
				inserting = nil
				return err
			}
			defer func() { _ = wait() }() // never leave tx in use by an insert when it ends
			flush := func() error {
				if err := wait(); err != nil {
					return err
				}
				if enc.rows == 0 {
					return nil
				}
				at, rows, data := recordFirst, enc.rows, enc.buf
				inserting = make(chan error, 1)
				go func() {
					_, err := tx.Exec(ctx, `INSERT INTO `+table+` (first, rows, data) VALUES ($1, $2, $3)`, at, rows, data)
					switch {
					case isUndefinedTable(err):
						// The workflow has ended and dropped the staging (it failed, or found the staging stalled).
						err = fmt.Errorf("after %d rows: %w", staged, fleet.ErrStagingClosed)
					case err != nil:
						err = fmt.Errorf("stage manifest rows: %w", err)
					}
					inserting <- err
				}()
				copied += int64(rows)
				if enc == &encs[0] {
					enc = &encs[1]
				} else {
					enc = &encs[0]
				}
				enc.reset()
				return nil
			}
			for n := 0; ; n++ {
				var row StagedRow
				if held != nil {
					row, held = *held, nil
				} else {
					more, ok, err := next()
					if err != nil {
						return err
					}
					if !ok {
						done = true
						break
					}
					if n == chunk {
						// Full: the row read says the chunk is not the last; it goes with the next.
						held = &more
						break
					}
					row = more
				}
				if enc.rows == 0 {
					recordFirst = row.Seq
				}
				enc.add(row)
				if enc.rows == record {
					if err := flush(); err != nil {
						return err
					}
				}
			}
			if err := flush(); err != nil {
				return err
			}
			if err := wait(); err != nil {
				return err
			}
			state := stagingOpen
			if done {
				state = stagingDone
			}
			tag, err := tx.Exec(ctx, `UPDATE operations SET rows = rows + $2, staged_at = now(), staging = $3
				WHERE no = $1 AND staging = 'open'`, no, copied, state)
			if err != nil {
				return fmt.Errorf("record operation: %w", err)
			}
			if tag.RowsAffected() == 0 {
				return fmt.Errorf("after %d rows: %w", staged, fleet.ErrStagingClosed)
			}
			if hooks.BeforeCommit != nil {
				if err := hooks.BeforeCommit(); err != nil {
					return err
				}
			}
			staged += copied
			return nil
		})
		if err != nil {
			return staged, fmt.Errorf("stage %s: %w", op, err)
		}
		if first && !done {
			stopBeat = r.stagingHeartbeat(ctx, no)
		}
		if hooks.Committed != nil {
			if err := hooks.Committed(staged, done); err != nil {
				return staged, err
			}
		}
		if done {
			return staged, nil
		}
	}
}

// stagingHeartbeat refreshes operation no's staged_at until stop is called.
func (r *Registry) stagingHeartbeat(ctx context.Context, no int64) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(stagingHeartbeat)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				// Best effort: a missed beat is made up by the next chunk's commit.
				_, _ = r.pool.Exec(ctx, "UPDATE operations SET staged_at = now() WHERE no = $1 AND staging = 'open'", no)
			}
		}
	}()
	return func() { cancel(); <-finished }
}

// AbandonStaging closes op's open staging as abandoned: its caller gave up before the end of the manifest
// (a read error), and the workflow following it fails rather than waiting. Closed staging is left as it is.
func (r *Registry) AbandonStaging(ctx context.Context, op string) error {
	if _, err := r.pool.Exec(ctx, "UPDATE operations SET staging = 'abandoned' WHERE id = $1 AND staging = 'open'", op); err != nil {
		return fmt.Errorf("abandon staging of %s: %w", op, err)
	}
	return nil
}

// StagedRows returns how many rows of op are staged so far and whether staging has ended (fleet.Staged). A
// staging still open but without sign of life (a chunk or a heartbeat) for longer than stall is closed here
// as abandoned — its CLI was killed — and reported so; a staging that was abandoned is an error wrapping
// fleet.ErrStagingAbandoned.
func (r *Registry) StagedRows(ctx context.Context, op string, stall time.Duration) (fleet.Staged, error) {
	var s fleet.Staged
	var state string
	var stalled bool
	err := r.pool.QueryRow(ctx, `SELECT rows, staging, staging = 'open' AND staged_at < now() - make_interval(secs => $2)
		FROM operations WHERE id = $1`, op, stall.Seconds()).Scan(&s.Rows, &state, &stalled)
	if isNoRows(err) {
		return s, fmt.Errorf("%s: %w", op, fleet.ErrOperationNotStaged)
	}
	if err == nil && stalled {
		// Written only when stalled: this is polled several times a second while staging goes on. The
		// condition is checked again under the row's lock, so a chunk committing now wins.
		err = r.pool.QueryRow(ctx, `UPDATE operations SET staging = CASE WHEN staging = 'open'
				AND staged_at < now() - make_interval(secs => $2) THEN 'abandoned' ELSE staging END
			WHERE id = $1 RETURNING rows, staging`, op, stall.Seconds()).Scan(&s.Rows, &state)
	}
	if err != nil {
		return s, fmt.Errorf("staged rows of %s: %w", op, err)
	}
	switch state {
	case stagingAbandoned:
		return s, fmt.Errorf("%s after %d rows (the CLI staging the manifest stopped: killed, or it failed to read it; "+
			"the devices of the rows staged before were created; write their credentials with provision --resume): %w",
			op, s.Rows, fleet.ErrStagingAbandoned)
	case stagingDone:
		s.Done = true
	}
	return s, nil
}

// stagedColumns are the provision_rows columns stagedValues fills, in its order.
var stagedColumns = []string{"op_no", "seq", "line", "id", "tags", "secret_hash", "cert_fingerprint", "cert_not_after", "parse_error"}

// stagedValues is row as a provision_rows row of operation no, validated here, inside the registry, so
// that every staged row without parse_error is a valid device whichever caller staged it: batches rely
// on that to insert without looking at rows.
func stagedValues(no int64, row StagedRow) []any {
	row.ParseError = stagedProblem(row)
	var perr any
	if row.ParseError != "" {
		perr = row.ParseError
	}
	return []any{no, row.Seq, row.Line, row.ID, row.Tags, row.SecretHash, row.CertFingerprint, row.CertNotAfter, perr}
}

// stagedProblem is why a row to be staged cannot become a device, or "": what the caller found, else the
// registry's own check (only the credential's when the caller ran RowProblem already).
func stagedProblem(row StagedRow) string {
	switch {
	case row.ParseError != "":
		return row.ParseError
	case row.Checked:
		return credentialProblem(row)
	}
	return validateRow(row)
}

// staging is where an operation's staged rows are: its own table of chunks (provision_chunks_<no>), its own
// table of rows (provision_rows_<no>, staged in chunks before migration 024), or the shared provision_rows.
type staging struct {
	no     int64
	table  string // the sanitized name of its own table; "" for provision_rows
	chunks bool   // its own table holds staged chunks (chunks.go), not rows
}

// stagingOf looks up where op's rows are staged; an operation that was never staged is
// fleet.ErrOperationNotStaged.
func stagingOf(ctx context.Context, q interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}, op string) (staging, error) {
	var s staging
	var name *string
	err := q.QueryRow(ctx, "SELECT no, staging_table FROM operations WHERE id = $1", op).Scan(&s.no, &name)
	if isNoRows(err) {
		return s, fmt.Errorf("%s: %w", op, fleet.ErrOperationNotStaged)
	}
	if err != nil {
		return s, fmt.Errorf("load operation %s: %w", op, err)
	}
	if name != nil {
		s.table, s.chunks = pgx.Identifier{*name}.Sanitize(), isChunkTable(*name)
	}
	return s, nil
}

// countSQL is a query of how many rows st holds (its table may be gone: the caller checks for that).
func (s staging) countSQL() (string, []any) {
	if s.chunks {
		return "SELECT coalesce(sum(rows), 0) FROM " + s.table, nil
	}
	q := s.rows(0, -1)
	return `SELECT count(*) FROM ` + q.from + ` WHERE ` + q.cond, q.args
}

// stagedRange is the SQL that selects a range of an operation's staged rows, with its arguments; more
// arguments are numbered after them with arg.
type stagedRange struct {
	from string // the table, for FROM
	cond string // the condition, for WHERE
	args []any
}

// rows selects the staged rows with seq in [first, last), or all of them when last is negative.
func (s staging) rows(first, last int64) *stagedRange {
	r := &stagedRange{from: s.table, cond: "true"}
	if s.table == "" {
		r.from = "provision_rows"
		r.cond = "op_no = " + r.arg(s.no)
	}
	if last >= 0 {
		r.cond += " AND seq >= " + r.arg(first) + " AND seq < " + r.arg(last)
	}
	return r
}

// arg adds an argument and returns its placeholder.
func (r *stagedRange) arg(v any) string {
	r.args = append(r.args, v)
	return fmt.Sprintf("$%d", len(r.args))
}

// isUndefinedTable reports whether err is Postgres' "relation does not exist": an operation's own staging
// table that was dropped (its workflow ended, or the stale staging was swept).
func isUndefinedTable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42P01"
}
