package registry_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/registry"
)

// rowsOf returns a StageChunks source of n valid rows (ids dev-0000…), failing with fail once it has handed
// out failAt rows (never when fail is nil).
func rowsOf(n, failAt int, fail error) func() (registry.StagedRow, bool, error) {
	i := 0
	return func() (registry.StagedRow, bool, error) {
		if fail != nil && i == failAt {
			return registry.StagedRow{}, false, fail
		}
		if i == n {
			return registry.StagedRow{}, false, nil
		}
		id := fmt.Sprintf("dev-%04d", i)
		r := registry.StagedRow{Seq: int64(i), Line: int64(i + 2), ID: id, Tags: "{}", SecretHash: creds.Digest("s-" + id)}
		i++
		return r, true, nil
	}
}

// Chunks commit one by one: the workflow can see (and provision) each as soon as it is committed, the cursor
// grows chunk by chunk, and the last chunk closes the staging in its own transaction.
func TestStageChunksCommitsEachChunkAndClosesWithTheLast(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	var commits []fleet.Staged
	var before int
	n, err := reg.StageChunks(ctx, "op-chunks", "provision", 4, rowsOf(10, 0, nil), registry.StageHooks{
		BeforeCommit: func() error { before++; return nil },
		Committed: func(rows int64, done bool) error {
			// What a workflow sees right after the commit.
			st, err := reg.StagedRows(ctx, "op-chunks", time.Minute)
			require.NoError(t, err)
			require.Equal(t, fleet.Staged{Rows: rows, Done: done}, st)
			if !done {
				c, err := reg.ProvisionBatch(ctx, "op-chunks", rows-4, rows, 0)
				require.NoError(t, err)
				require.Equal(t, int64(4), c.Created)
			}
			commits = append(commits, st)
			return nil
		},
	})
	require.NoError(t, err)
	require.Equal(t, int64(10), n)
	require.Equal(t, []fleet.Staged{{Rows: 4}, {Rows: 8}, {Rows: 10, Done: true}}, commits)
	require.Equal(t, 3, before, "whatever must be durable first is made durable before every commit")
	c, err := reg.ProvisionBatch(ctx, "op-chunks", 8, 10, 0)
	require.NoError(t, err)
	require.Equal(t, int64(2), c.Created)
	rows, err := reg.OperationRows(ctx, "op-chunks")
	require.NoError(t, err)
	require.Equal(t, int64(10), rows)

	// A manifest of exactly one chunk is done with its only commit (the source is read one row ahead).
	commits = nil
	_, err = reg.StageChunks(ctx, "op-one", "provision", 4, rowsOf(4, 0, nil), registry.StageHooks{
		Committed: func(rows int64, done bool) error {
			commits = append(commits, fleet.Staged{Rows: rows, Done: done})
			return nil
		}})
	require.NoError(t, err)
	require.Equal(t, []fleet.Staged{{Rows: 4, Done: true}}, commits)
}

// A source that fails after the first chunk leaves the committed chunks and an open staging, which
// AbandonStaging closes: the workflow following it is told, and no more chunk can follow.
func TestAbandonedStagingIsReportedAndRefusesMoreChunks(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	boom := errors.New("disk read error")
	n, err := reg.StageChunks(ctx, "op-broken", "provision", 3, rowsOf(10, 5, boom), registry.StageHooks{})
	require.ErrorIs(t, err, boom)
	require.Equal(t, int64(3), n, "the first chunk committed, the second rolled back")
	st, err := reg.StagedRows(ctx, "op-broken", time.Minute)
	require.NoError(t, err)
	require.Equal(t, fleet.Staged{Rows: 3}, st, "still open until the CLI says otherwise")

	require.NoError(t, reg.AbandonStaging(ctx, "op-broken"))
	_, err = reg.StagedRows(ctx, "op-broken", time.Minute)
	require.ErrorIs(t, err, fleet.ErrStagingAbandoned)

	_, err = reg.StagedRows(ctx, "never-staged", time.Minute)
	require.ErrorIs(t, err, fleet.ErrOperationNotStaged)
}

// A staging without a sign of life for longer than the stall limit is taken for dead: the workflow's look
// closes it, and the CLI's next chunk (had it only been suspended) is refused and rolled back.
func TestStalledStagingIsClosedAndItsNextChunkRefused(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	var stalled error
	n, err := reg.StageChunks(ctx, "op-stalled", "provision", 2, rowsOf(6, 0, nil), registry.StageHooks{
		Committed: func(rows int64, done bool) error {
			if rows == 2 {
				// The workflow looks while the CLI is away: with a stall limit of zero it is overdue at once.
				time.Sleep(10 * time.Millisecond)
				_, stalled = reg.StagedRows(ctx, "op-stalled", time.Nanosecond)
			}
			return nil
		}})
	require.ErrorIs(t, stalled, fleet.ErrStagingAbandoned)
	require.ErrorIs(t, err, fleet.ErrStagingClosed)
	require.Equal(t, int64(2), n)
	rows, err := reg.OperationRows(ctx, "op-stalled")
	require.NoError(t, err)
	require.Equal(t, int64(2), rows, "the refused chunk was rolled back")
}

// A manifest staged in chunks has its own staging table (migration 017): batches read it, nothing deletes
// from it, and it is dropped whole when the workflow ends; a chunk the CLI still copies after that is
// refused, and a batch that would read it is told the rows are gone.
func TestOwnStagingTableIsDroppedWhole(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	tables := func() int {
		var n int
		require.NoError(t, reg.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE tablename ~ '^provision_(rows|chunks)_[0-9]+$'`).Scan(&n))
		return n
	}
	n, err := reg.StageChunks(ctx, "op-own", "provision", 4, rowsOf(10, 0, nil), registry.StageHooks{
		Committed: func(rows int64, done bool) error {
			left, err := reg.StagedLeft(ctx, "op-own")
			require.NoError(t, err)
			require.Equal(t, rows, left)
			if rows == 4 {
				c, err := reg.ProvisionBatch(ctx, "op-own", 0, 4, 0)
				require.NoError(t, err)
				require.Equal(t, int64(4), c.Created)
				left, err := reg.StagedLeft(ctx, "op-own")
				require.NoError(t, err)
				require.Equal(t, int64(4), left, "a batch deletes nothing from its operation's own table")
			}
			if rows == 8 {
				// The workflow failed and dropped the staging while the CLI still stages.
				require.NoError(t, reg.DropStaging(ctx, "op-own"))
			}
			return nil
		}})
	require.ErrorIs(t, err, fleet.ErrStagingClosed)
	require.Equal(t, int64(8), n)
	require.Zero(t, tables(), "dropped")
	left, err := reg.StagedLeft(ctx, "op-own")
	require.NoError(t, err)
	require.Zero(t, left)
	_, err = reg.ProvisionBatch(ctx, "op-own", 4, 8, 0)
	require.ErrorIs(t, err, fleet.ErrStagingLost)
	require.NoError(t, reg.DropStaging(ctx, "op-own"), "idempotent")
	c, err := reg.ProvisionBatch(ctx, "op-own", 0, 4, 0)
	require.NoError(t, err, "a committed batch's retry still finds its counts")
	require.Equal(t, int64(4), c.Created)

	// A CLI killed before it started its workflow leaves its table to the stale-staging sweep.
	_, err = reg.StageChunks(ctx, "op-killed", "provision", 4, rowsOf(6, 0, nil), registry.StageHooks{})
	require.NoError(t, err)
	require.Equal(t, 1, tables())
	dropped, err := reg.DropStaleStaging(ctx, time.Hour)
	require.NoError(t, err)
	require.Zero(t, dropped, "not stale yet")
	_, err = reg.Pool().Exec(ctx, "UPDATE operations SET created_at = now() - interval '2 hours' WHERE id = 'op-killed'")
	require.NoError(t, err)
	dropped, err = reg.DropStaleStaging(ctx, time.Hour)
	require.NoError(t, err)
	require.Equal(t, int64(6), dropped)
	require.Zero(t, tables())
}

// A manifest staged in chunks is stored as records of many rows (docs/architecture.md, "Provisioning: staged
// chunks"): one table row per record, never a secret, and batches that do or do not line up with the
// records read exactly their rows.
func TestStagedChunksHoldRecordsOfManyRows(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	n, err := reg.StageChunks(ctx, "op-rec", "provision", 8, rowsOf(21, 0, nil), registry.StageHooks{Record: 4})
	require.NoError(t, err)
	require.Equal(t, int64(21), n)
	var table string
	require.NoError(t, reg.Pool().QueryRow(ctx, "SELECT staging_table FROM operations WHERE id = 'op-rec'").Scan(&table))
	require.Regexp(t, `^provision_chunks_[0-9]+$`, table)
	rows, err := reg.Pool().Query(ctx, "SELECT first, rows, data FROM "+pgx.Identifier{table}.Sanitize()+" ORDER BY first")
	require.NoError(t, err)
	type record struct {
		First int64
		Rows  int
		Data  []byte
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[record])
	require.NoError(t, err)
	var shape [][2]int64
	for _, r := range got {
		shape = append(shape, [2]int64{r.First, int64(r.Rows)})
		require.NotContains(t, string(r.Data), "s-dev-", "secrets never reach Postgres")
		require.Contains(t, string(r.Data), string(creds.Digest(fmt.Sprintf("s-dev-%04d", r.First))), "their digests do")
	}
	// Records end with each transaction's chunk of 8: 4+4, 4+4, 4+1.
	require.Equal(t, [][2]int64{{0, 4}, {4, 4}, {8, 4}, {12, 4}, {16, 4}, {20, 1}}, shape)
	left, err := reg.StagedLeft(ctx, "op-rec")
	require.NoError(t, err)
	require.Equal(t, int64(21), left)

	for _, b := range [][2]int64{{0, 4}, {4, 11}, {11, 20}, {20, 21}} { // aligned, across records, the tail
		c, err := reg.ProvisionBatch(ctx, "op-rec", b[0], b[1], 0)
		require.NoError(t, err)
		require.Equal(t, fleet.ProvisionCounts{Created: b[1] - b[0]}, c, "rows %v", b)
	}
	created, err := reg.CreatedBy(ctx, "op-rec")
	require.NoError(t, err)
	require.Len(t, created, 21)
	for i := range 21 {
		id := fmt.Sprintf("dev-%04d", i)
		a, err := reg.DeviceAuth(ctx, id)
		require.NoError(t, err)
		require.True(t, creds.Matches("s-"+id, a.Secret1Hash), id)
	}
	_, err = reg.ProvisionBatch(ctx, "op-rec", 21, 25, 0)
	require.ErrorIs(t, err, fleet.ErrStagingLost, "rows that were never staged")
	require.NoError(t, reg.DropStaging(ctx, "op-rec"))
	var gone bool
	require.NoError(t, reg.Pool().QueryRow(ctx, "SELECT to_regclass($1) IS NULL", table).Scan(&gone))
	require.True(t, gone, "the table is dropped whole")
}

// An operation staged in chunks before migration 024 has its rows in its own provision_rows_<no> table:
// its batches, the stale sweep and the drop still find them there.
func TestRowTablesOfEarlierStagingStillProvision(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	pool := reg.Pool()
	for _, op := range []string{"op-old", "op-old-stale"} {
		var no int64
		require.NoError(t, pool.QueryRow(ctx, "INSERT INTO operations (id, kind, rows, staging) VALUES ($1, 'provision', 3, 'done') RETURNING no", op).Scan(&no))
		table := fmt.Sprintf("provision_rows_%d", no)
		_, err := pool.Exec(ctx, `CREATE UNLOGGED TABLE `+table+` (seq bigint PRIMARY KEY, line bigint NOT NULL, id text NOT NULL,
			tags text NOT NULL, secret_hash bytea, cert_fingerprint bytea, parse_error text)`)
		require.NoError(t, err)
		// Migration 026 gave every staging table then present the certificate's end, at the table's end.
		_, err = pool.Exec(ctx, `ALTER TABLE `+table+` ADD COLUMN cert_not_after timestamptz`)
		require.NoError(t, err)
		_, err = pool.Exec(ctx, "UPDATE operations SET staging_table = $2 WHERE no = $1", no, table)
		require.NoError(t, err)
		for i := range 3 {
			id := fmt.Sprintf("%s-%d", op, i)
			var perr any
			if i == 1 {
				perr = "expected 3 fields, found 2"
			}
			_, err = pool.Exec(ctx, "INSERT INTO "+table+" VALUES ($1, $2, $3, '{\"r\":\"eu\"}', $4, NULL, $5)",
				i, i+2, id, creds.Digest("s-"+id), perr)
			require.NoError(t, err)
		}
	}
	c, err := reg.ProvisionBatch(ctx, "op-old", 0, 3, 0)
	require.NoError(t, err)
	require.Equal(t, fleet.ProvisionCounts{Created: 2, Invalid: 1}, c)
	left, err := reg.StagedLeft(ctx, "op-old")
	require.NoError(t, err)
	require.Equal(t, int64(3), left)
	require.NoError(t, reg.DropStaging(ctx, "op-old"))
	left, err = reg.StagedLeft(ctx, "op-old")
	require.NoError(t, err)
	require.Zero(t, left)

	_, err = pool.Exec(ctx, "UPDATE operations SET created_at = now() - interval '2 hours' WHERE id = 'op-old-stale'")
	require.NoError(t, err)
	dropped, err := reg.DropStaleStaging(ctx, time.Hour)
	require.NoError(t, err)
	require.Equal(t, int64(3), dropped)
}
