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

// StageHooks are what StageChunks calls around each chunk's commit.
type StageHooks struct {
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
// operation's own staging table, created with the first chunk and dropped whole by DropStaging. The operation is
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
	var no, staged int64
	var table pgx.Identifier
	var held *StagedRow // the row read to see whether the source has more, copied with the next chunk
	stopBeat := func() {}
	defer func() { stopBeat() }()
	values := make([]any, len(ownStagedColumns)) // pgx encodes each row before it asks for the next
	for first := true; ; first = false {
		done := false
		err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
			if first {
				if err := tx.QueryRow(ctx, `INSERT INTO operations (id, kind, staging, staged_at) VALUES ($1, $2, $3, now())
					RETURNING no`, op, kind, stagingOpen).Scan(&no); err != nil {
					return fmt.Errorf("record operation: %w", err)
				}
				var err error
				if table, err = createStagingTable(ctx, tx, no); err != nil {
					return err
				}
			}
			var iterErr error
			n := 0
			src := pgx.CopyFromFunc(func() ([]any, error) {
				var row StagedRow
				switch {
				case held != nil:
					row, held = *held, nil
				case n == chunk:
					// Full: one more row says whether this chunk is the last.
					more, ok, err := next()
					if err != nil {
						iterErr = err
						return nil, err
					}
					if ok {
						held = &more
					} else {
						done = true
					}
					return nil, nil
				default:
					var ok bool
					var err error
					if row, ok, err = next(); err != nil {
						iterErr = err
						return nil, err
					}
					if !ok {
						done = true
						return nil, nil
					}
				}
				n++
				ownStagedValues(values, row)
				return values, nil
			})
			copied, err := tx.CopyFrom(ctx, table, ownStagedColumns, src)
			if iterErr != nil {
				return iterErr
			}
			if isUndefinedTable(err) {
				// The workflow has ended and dropped the staging (it failed, or found the staging stalled).
				return fmt.Errorf("after %d rows: %w", staged, fleet.ErrStagingClosed)
			}
			if err != nil {
				return fmt.Errorf("copy manifest rows: %w", err)
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

// ownStagedValues fills values with row as a row of an operation's own staging table, validated as
// stagedValues validates it.
func ownStagedValues(values []any, row StagedRow) {
	row.ParseError = stagedProblem(row)
	var perr any
	if row.ParseError != "" {
		perr = row.ParseError
	}
	values[0], values[1], values[2], values[3], values[4], values[5], values[6], values[7] =
		row.Seq, row.Line, row.ID, row.Tags, row.SecretHash, row.CertFingerprint, row.CertNotAfter, perr
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

// stagingTablePrefix starts the name of an operation's own staging table (migration 017).
const stagingTablePrefix = "provision_rows_"

// ownStagedColumns are the columns of an operation's own staging table that ownStagedValues fills, in its
// order: provision_rows' without op_no, which the table's name says.
var ownStagedColumns = []string{"seq", "line", "id", "tags", "secret_hash", "cert_fingerprint", "cert_not_after", "parse_error"}

// createStagingTable creates operation no's own staging table in tx and records its name. Unlogged like
// provision_rows (a crash empties it, which the batches detect), without autovacuum: it is only ever
// appended to, read by ranges of seq through its primary key, and dropped whole, so vacuuming or
// analyzing it would be work for nothing.
func createStagingTable(ctx context.Context, tx pgx.Tx, no int64) (pgx.Identifier, error) {
	name := fmt.Sprintf("%s%d", stagingTablePrefix, no)
	table := pgx.Identifier{name}
	_, err := tx.Exec(ctx, `CREATE UNLOGGED TABLE `+table.Sanitize()+` (
		seq              bigint PRIMARY KEY,
		line             bigint NOT NULL,
		id               text   NOT NULL,
		tags             text   NOT NULL,
		secret_hash      bytea,
		cert_fingerprint bytea,
		cert_not_after   timestamptz,
		parse_error      text
	) WITH (autovacuum_enabled = false)`)
	if err == nil {
		_, err = tx.Exec(ctx, "UPDATE operations SET staging_table = $2 WHERE no = $1", no, name)
	}
	if err != nil {
		return nil, fmt.Errorf("create staging table: %w", err)
	}
	return table, nil
}

// staging is where an operation's staged rows are: its own table, or the shared provision_rows.
type staging struct {
	no    int64
	table string // the sanitized name of its own table; "" for provision_rows
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
		s.table = pgx.Identifier{*name}.Sanitize()
	}
	return s, nil
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
