package registry_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

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
		require.NoError(t, reg.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE tablename LIKE 'provision\_rows\_%'`).Scan(&n))
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
