package registry_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

// versions lists the versions goose recorded as applied, ascending, each as often as it was recorded.
func versions(t *testing.T, url string) []int64 {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer func() { _ = conn.Close(ctx) }()
	rows, err := conn.Query(ctx, "SELECT version_id FROM goose_db_version WHERE version_id > 0 AND is_applied ORDER BY version_id")
	require.NoError(t, err)
	vs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	return vs
}

func execURL(t *testing.T, url, sql string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer func() { _ = conn.Close(ctx) }()
	_, err = conn.Exec(ctx, sql)
	require.NoError(t, err, sql)
}

// allVersions is 1..SchemaVersion, the versions a fully migrated database has.
// allVersions are the versions of the embedded migrations, in order. Numbers may have gaps: numbers are
// reserved for work in progress on other branches, so a branch can hold 011 without 008-010.
func allVersions() []int64 {
	files, err := filepath.Glob("migrations/*.sql")
	if err != nil {
		panic(err)
	}
	sort.Strings(files)
	vs := make([]int64, len(files))
	for i, f := range files {
		v, err := strconv.ParseInt(filepath.Base(f)[:3], 10, 64)
		if err != nil {
			panic(f)
		}
		vs[i] = v
	}
	return vs
}

func TestSchemaVersionIsTheNewestMigration(t *testing.T) {
	files, err := filepath.Glob("migrations/*.sql")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	sort.Strings(files)
	last := filepath.Base(files[len(files)-1])
	// Numbers increase without repeats; gaps are allowed, since numbers are reserved for branches that may
	// land in any order (see allVersions).
	vs := allVersions()
	for i := 1; i < len(vs); i++ {
		require.Less(t, vs[i-1], vs[i], "migration numbers repeat: %v", vs)
	}
	require.Equal(t, vs[len(vs)-1], registry.SchemaVersion())
	require.Equal(t, fmt.Sprintf("%03d_", registry.SchemaVersion()), last[:4], last)
}

func TestMigrateFreshDatabase(t *testing.T) {
	ctx := context.Background()
	url := testenv.EmptyPostgres(t)

	// Open never migrates: on an empty database it says what to do.
	_, err := registry.Open(ctx, url)
	require.ErrorIs(t, err, registry.ErrSchemaOutdated)
	require.NotErrorIs(t, err, registry.ErrSchemaNewer)
	require.Contains(t, err.Error(), "run `fleetflow migrate`")
	require.Contains(t, err.Error(), "is at version 0")
	var se *registry.SchemaError
	require.ErrorAs(t, err, &se)
	require.Equal(t, registry.SchemaVersion(), se.Required)

	st, err := registry.Status(ctx, url)
	require.NoError(t, err)
	require.Equal(t, int64(0), st.Current)
	require.Equal(t, registry.SchemaVersion(), st.Latest)
	require.Len(t, st.Migrations, len(allVersions()))
	require.False(t, st.Migrations[0].Applied)

	applied, err := registry.Migrate(ctx, url)
	require.NoError(t, err)
	var got []int64
	for _, m := range applied {
		require.False(t, m.Adopted, m.Name)
		require.True(t, strings.HasSuffix(m.Name, ".sql"), m.Name)
		got = append(got, m.Version)
	}
	require.Equal(t, allVersions(), got)
	require.Equal(t, "001_init.sql", applied[0].Name)
	require.Equal(t, allVersions(), versions(t, url))

	reg, err := registry.Open(ctx, url)
	require.NoError(t, err)
	reg.Close()
	st, err = registry.Status(ctx, url)
	require.NoError(t, err)
	require.Equal(t, st.Latest, st.Current)
	for _, m := range st.Migrations {
		require.True(t, m.Applied, m.Name)
		require.False(t, m.AppliedAt.IsZero(), m.Name)
	}
}

func TestMigrateAgainIsANoOp(t *testing.T) {
	ctx := context.Background()
	url := testenv.EmptyPostgres(t)
	// The URL may carry the pool's settings, as Open's may.
	_, err := registry.Migrate(ctx, url+"&pool_max_conns=4")
	require.NoError(t, err)
	for i := 0; i < 3; i++ {
		applied, err := registry.Migrate(ctx, url)
		require.NoError(t, err)
		require.Empty(t, applied)
		reg, err := registry.Open(ctx, url)
		require.NoError(t, err)
		reg.Close()
	}
	require.Equal(t, allVersions(), versions(t, url))
}

// TestMigrateAdoptsTheOldMigrator sets a database up as fleetflow did before goose (each file run whole and
// recorded by path in schema_migrations), with the newest migration missing, and checks that Migrate records
// the old files without running them and applies only the missing one.
func TestMigrateAdoptsTheOldMigrator(t *testing.T) {
	ctx := context.Background()
	url := testenv.EmptyPostgres(t)
	files, err := filepath.Glob("migrations/*.sql")
	require.NoError(t, err)
	sort.Strings(files)
	execURL(t, url, `CREATE TABLE schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`)
	for _, f := range files[:len(files)-1] {
		body, err := os.ReadFile(f)
		require.NoError(t, err)
		// The old migrator's files had no Down section (goose's annotations came with goose): run what they
		// had, the Up part, or a file's Down would drop what a newer migration builds on.
		up, _, _ := strings.Cut(string(body), "-- +goose Down")
		execURL(t, url, up)
		execURL(t, url, "INSERT INTO schema_migrations (name) VALUES ('migrations/"+filepath.Base(f)+"')")
	}
	// A trap: were 001_init.sql run again, this function would be replaced by the migration's own.
	execURL(t, url, `CREATE OR REPLACE FUNCTION fleetflow_notify_device() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RETURN NULL; END $$`)

	_, err = registry.Open(ctx, url)
	require.ErrorIs(t, err, registry.ErrSchemaOutdated)
	require.Contains(t, err.Error(), "older fleetflow")
	require.Contains(t, err.Error(), "run `fleetflow migrate`")

	applied, err := registry.Migrate(ctx, url)
	require.NoError(t, err)
	require.Len(t, applied, len(files))
	for i, m := range applied {
		require.Equal(t, allVersions()[i], m.Version)
		require.Equal(t, i < len(files)-1, m.Adopted, "migration %s adopted", m.Name)
	}
	require.Equal(t, allVersions(), versions(t, url))

	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer func() { _ = conn.Close(ctx) }()
	var src string
	require.NoError(t, conn.QueryRow(ctx, "SELECT prosrc FROM pg_proc WHERE proname = 'fleetflow_notify_device'").Scan(&src))
	require.Contains(t, src, "RETURN NULL", "an adopted migration ran again")
	var hasSeq bool // added by the last migration, which had to run
	require.NoError(t, conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_class
		WHERE relname = 'device_session_seq' AND relkind = 'S')`).Scan(&hasSeq))
	require.True(t, hasSeq)

	again, err := registry.Migrate(ctx, url)
	require.NoError(t, err)
	require.Empty(t, again)
	reg, err := registry.Open(ctx, url)
	require.NoError(t, err)
	reg.Close()
}

func TestOpenOnANewerSchemaFails(t *testing.T) {
	ctx := context.Background()
	url := testenv.Postgres(t)
	execURL(t, url, "INSERT INTO goose_db_version (version_id, is_applied) VALUES (999, true)")
	_, err := registry.Open(ctx, url)
	require.ErrorIs(t, err, registry.ErrSchemaNewer)
	require.False(t, errors.Is(err, registry.ErrSchemaOutdated))
	require.Contains(t, err.Error(), "version 999")
	require.Contains(t, err.Error(), "upgrade fleetflow")

	// Migrate does not pretend such a database is up to date.
	_, err = registry.Migrate(ctx, url)
	require.ErrorIs(t, err, registry.ErrSchemaNewer)
}

func TestConcurrentMigrateAppliesEachMigrationOnce(t *testing.T) {
	ctx := context.Background()
	url := testenv.EmptyPostgres(t)
	const n = 4
	var wg sync.WaitGroup
	results := make([][]registry.Migration, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = registry.Migrate(ctx, url)
		}()
	}
	wg.Wait()
	var all []int64
	for i := range n {
		require.NoError(t, errs[i])
		for _, m := range results[i] {
			all = append(all, m.Version)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	require.Equal(t, allVersions(), all, "every migration applied by exactly one caller")
	require.Equal(t, allVersions(), versions(t, url))
}

// TestSessionSequenceStartsAboveStoredSessions upgrades a database whose gateways numbered sessions with
// their clocks: the sequence must start above every stored number, or a device's next session would look
// older than its last one and the registry would ignore it.
func TestSessionSequenceStartsAboveStoredSessions(t *testing.T) {
	ctx := context.Background()
	url := testenv.EmptyPostgres(t)
	files, err := filepath.Glob("migrations/*.sql")
	require.NoError(t, err)
	sort.Strings(files)
	require.Equal(t, "005_session_numbers.sql", filepath.Base(files[4]))
	execURL(t, url, `CREATE TABLE schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`)
	for _, f := range files[:4] {
		body, err := os.ReadFile(f)
		require.NoError(t, err)
		execURL(t, url, string(body))
		execURL(t, url, "INSERT INTO schema_migrations (name) VALUES ('migrations/"+filepath.Base(f)+"')")
	}
	// A session number from a gateway whose clock ran a day ahead.
	future := time.Now().Add(24 * time.Hour).UnixMicro()
	execURL(t, url, fmt.Sprintf("INSERT INTO devices (id, online, session) VALUES ('old-dev', true, %d)", future))

	_, err = registry.Migrate(ctx, url)
	require.NoError(t, err)
	reg, err := registry.Open(ctx, url)
	require.NoError(t, err)
	defer reg.Close()
	nums, err := reg.NextSessions(ctx, 2)
	require.NoError(t, err)
	require.Len(t, nums, 2)
	require.Greater(t, nums[0], future)
	require.Greater(t, nums[1], nums[0])
}

// TestSessionSequenceStartsAboveNow: with no stored sessions (or only small ones) the sequence starts above
// the current time in microseconds, so it also stays above numbers an old gateway hands out meanwhile.
func TestSessionSequenceStartsAboveNow(t *testing.T) {
	ctx := context.Background()
	url := testenv.EmptyPostgres(t)
	before := time.Now().UnixMicro()
	_, err := registry.Migrate(ctx, url)
	require.NoError(t, err)
	reg, err := registry.Open(ctx, url)
	require.NoError(t, err)
	defer reg.Close()
	nums, err := reg.NextSessions(ctx, 1)
	require.NoError(t, err)
	require.Greater(t, nums[0], before)
}
