package registry

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/database"
)

// The schema is versioned by goose (docs/architecture.md, "Schema and migrations"): migrations/NNN_name.sql
// are goose-annotated SQL files, applied in order by Migrate (`fleetflow migrate`, `fleetflow dev up`) and
// recorded in goose's own table, so the goose CLI can inspect a registry too. Processes never migrate on
// their own; Open only checks that the database is at the version this binary was built for.

//go:embed migrations/*.sql
var migrationFS embed.FS

// versionTable is goose's default table, kept so that `goose status` works on a registry without flags.
const versionTable = goose.DefaultTablename

// legacyTable is where fleetflow recorded applied files (by path) before it used goose.
const legacyTable = "schema_migrations"

// migrationLock is the advisory lock key that serializes Migrate calls. It is the key the hand-written
// migrator of older fleetflow versions took, so an old and a new binary migrating at once also wait for
// each other.
const migrationLock = 0x666c656574 // "fleet"

// ErrSchemaOutdated is matched (errors.Is) by the error of Open when the database's schema is older than
// this binary needs: run `fleetflow migrate`.
var ErrSchemaOutdated = errors.New("registry schema outdated")

// ErrSchemaNewer is matched (errors.Is) by the error of Open when the database was migrated by a newer
// fleetflow than this one: upgrade this binary.
var ErrSchemaNewer = errors.New("registry schema newer than this fleetflow")

// SchemaError is the error of Open when the database's schema version is not the one this binary needs.
// It matches ErrSchemaOutdated or ErrSchemaNewer.
type SchemaError struct {
	Current  int64 // the database's version (0: never migrated by goose)
	Required int64 // the version this binary needs
	Legacy   bool  // migrated by an older fleetflow before it used goose; Migrate adopts it
}

func (e *SchemaError) Error() string {
	switch {
	case e.Current > e.Required:
		return fmt.Sprintf("registry schema is at version %d, newer than this fleetflow knows (%d): upgrade fleetflow", e.Current, e.Required)
	case e.Legacy:
		return fmt.Sprintf("registry schema was migrated by an older fleetflow, this fleetflow needs version %d: run `fleetflow migrate`", e.Required)
	default:
		return fmt.Sprintf("registry schema is at version %d, this fleetflow needs %d: run `fleetflow migrate`", e.Current, e.Required)
	}
}

// Is makes errors.Is(err, ErrSchemaOutdated) and errors.Is(err, ErrSchemaNewer) work.
func (e *SchemaError) Is(target error) bool {
	if e.Current > e.Required {
		return target == ErrSchemaNewer
	}
	return target == ErrSchemaOutdated
}

// Migration is one schema migration that Migrate recorded.
type Migration struct {
	Version  int64         `json:"version"`
	Name     string        `json:"name"` // file name, e.g. 001_init.sql
	Duration time.Duration `json:"durationNs"`
	// Adopted: already applied by an older fleetflow (table schema_migrations), so only recorded.
	Adopted bool `json:"adopted,omitempty"`
}

// MigrationState is one migration of the binary and whether the database has it.
type MigrationState struct {
	Version   int64     `json:"version"`
	Name      string    `json:"name"`
	Applied   bool      `json:"applied"`
	AppliedAt time.Time `json:"appliedAt,omitzero"`
}

// SchemaStatus is the database's schema version against the binary's.
type SchemaStatus struct {
	Current    int64            `json:"current"`
	Latest     int64            `json:"latest"`
	Legacy     bool             `json:"legacy,omitempty"` // recorded by an older fleetflow; Migrate adopts it
	Migrations []MigrationState `json:"migrations"`
}

// migrationsDir is the embedded directory goose reads.
func migrationsDir() fs.FS {
	sub, err := fs.Sub(migrationFS, "migrations")
	if err != nil {
		panic(err) // the directory is embedded at build time
	}
	return sub
}

var schemaVersion = sync.OnceValue(func() int64 {
	names, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		panic(err)
	}
	var max int64
	for _, n := range names {
		v, err := goose.NumericComponent(path.Base(n))
		if err != nil {
			panic(fmt.Sprintf("migration %s: %v", n, err)) // caught by every test that opens a registry
		}
		max = maxInt(max, v)
	}
	return max
})

func maxInt(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// SchemaVersion is the schema version this binary needs: its newest migration.
func SchemaVersion() int64 { return schemaVersion() }

// openSQL opens a database/sql handle for goose over pgx's driver. The URL is parsed as Open parses it, so
// the pool settings it may carry (pool_max_conns, ...) are understood rather than sent to the server.
func openSQL(url string) (*sql.DB, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	return stdlib.OpenDB(*cfg.ConnConfig), nil
}

func newProvider(db *sql.DB) (*goose.Provider, error) {
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrationsDir(), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return nil, fmt.Errorf("load migrations: %w", err)
	}
	return p, nil
}

// Migrate brings the registry's schema at url to SchemaVersion and returns the migrations it applied (or
// adopted), oldest first; none when the schema was current. Concurrent calls, from any number of processes,
// are serialized by a Postgres advisory lock: the later ones wait and then find nothing to do.
//
// A database a newer fleetflow migrated is left alone, with an error matching ErrSchemaNewer. A database
// migrated by a fleetflow older than goose (its table schema_migrations) is adopted: the files it
// recorded are recorded in goose's table without being run again, and only the newer ones are applied.
func Migrate(ctx context.Context, url string) ([]Migration, error) {
	db, err := openSQL(url)
	if err != nil {
		return nil, err
	}
	defer func() { _ = db.Close() }()
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres at %s: %w", redact(url), err)
	}
	defer func() { _ = conn.Close() }()
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock($1)", migrationLock); err != nil {
		return nil, fmt.Errorf("migrate: lock: %w", err)
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", migrationLock) //nolint:errcheck

	p, err := newProvider(db)
	if err != nil {
		return nil, err
	}
	adopted, err := adoptLegacy(ctx, conn, p.ListSources())
	if err != nil {
		return nil, fmt.Errorf("migrate: adopt %s: %w", legacyTable, err)
	}
	// goose would find nothing to do on a database a newer fleetflow migrated; say so instead.
	if current, err := p.GetDBVersion(ctx); err != nil {
		return adopted, fmt.Errorf("migrate: %w", err)
	} else if current > SchemaVersion() {
		return adopted, &SchemaError{Current: current, Required: SchemaVersion()}
	}
	results, err := p.Up(ctx)
	if err != nil {
		return adopted, fmt.Errorf("migrate: %w", err)
	}
	for _, r := range results {
		adopted = append(adopted, Migration{Version: r.Source.Version, Name: path.Base(r.Source.Path), Duration: r.Duration})
	}
	return adopted, nil
}

// adoptLegacy records in goose's table the migrations an older fleetflow applied and recorded in
// schema_migrations (by path, "migrations/001_init.sql"), when goose's table holds none yet. It runs under
// Migrate's lock, in one transaction, so a crash leaves either nothing adopted or everything.
func adoptLegacy(ctx context.Context, conn *sql.Conn, sources []*goose.Source) ([]Migration, error) {
	var legacy, versioned bool
	if err := conn.QueryRowContext(ctx, "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL",
		legacyTable, versionTable).Scan(&legacy, &versioned); err != nil {
		return nil, err
	}
	if !legacy {
		return nil, nil
	}
	if versioned {
		var n int64
		q := fmt.Sprintf("SELECT count(*) FROM %s WHERE version_id > 0", pgx.Identifier{versionTable}.Sanitize())
		if err := conn.QueryRowContext(ctx, q).Scan(&n); err != nil {
			return nil, err
		}
		if n > 0 {
			return nil, nil // adopted before, or migrated by goose since
		}
	}
	done := map[string]bool{}
	rows, err := conn.QueryContext(ctx, "SELECT name FROM "+legacyTable)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			_ = rows.Close()
			return nil, err
		}
		done[path.Base(name)] = true
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	sorted := append([]*goose.Source(nil), sources...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Version < sorted[j].Version })
	var adopted []Migration
	for _, s := range sorted {
		if !done[path.Base(s.Path)] {
			break // goose applies the rest in order; a gap would make it refuse
		}
		adopted = append(adopted, Migration{Version: s.Version, Name: path.Base(s.Path), Adopted: true})
	}
	if len(adopted) == 0 {
		return nil, nil
	}
	store, err := database.NewStore(goose.DialectPostgres, versionTable)
	if err != nil {
		return nil, err
	}
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback() }()
	if !versioned {
		if err := store.CreateVersionTable(ctx, tx); err != nil {
			return nil, err
		}
		if err := store.Insert(ctx, tx, database.InsertRequest{Version: 0}); err != nil {
			return nil, err
		}
	}
	for _, m := range adopted {
		if err := store.Insert(ctx, tx, database.InsertRequest{Version: m.Version}); err != nil {
			return nil, err
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	return adopted, nil
}

// Status reports the schema version of the database at url against this binary's migrations, without
// changing anything.
func Status(ctx context.Context, url string) (SchemaStatus, error) {
	db, err := openSQL(url)
	if err != nil {
		return SchemaStatus{}, err
	}
	defer func() { _ = db.Close() }()
	conn, err := db.Conn(ctx)
	if err != nil {
		return SchemaStatus{}, fmt.Errorf("connect to postgres at %s: %w", redact(url), err)
	}
	defer func() { _ = conn.Close() }()
	st := SchemaStatus{Latest: SchemaVersion()}
	var versioned bool
	if err := conn.QueryRowContext(ctx, "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL",
		legacyTable, versionTable).Scan(&st.Legacy, &versioned); err != nil {
		return SchemaStatus{}, fmt.Errorf("schema status: %w", err)
	}
	applied := map[int64]time.Time{}
	if versioned {
		q := fmt.Sprintf("SELECT version_id, tstamp FROM %s WHERE version_id > 0 AND is_applied",
			pgx.Identifier{versionTable}.Sanitize())
		rows, err := conn.QueryContext(ctx, q)
		if err != nil {
			return SchemaStatus{}, fmt.Errorf("schema status: %w", err)
		}
		for rows.Next() {
			var v int64
			var at time.Time
			if err := rows.Scan(&v, &at); err != nil {
				_ = rows.Close()
				return SchemaStatus{}, fmt.Errorf("schema status: %w", err)
			}
			applied[v] = at
			st.Current = maxInt(st.Current, v)
		}
		if err := rows.Close(); err != nil {
			return SchemaStatus{}, fmt.Errorf("schema status: %w", err)
		}
		if err := rows.Err(); err != nil {
			return SchemaStatus{}, fmt.Errorf("schema status: %w", err)
		}
	}
	st.Legacy = st.Legacy && len(applied) == 0
	p, err := newProvider(db)
	if err != nil {
		return SchemaStatus{}, err
	}
	for _, s := range p.ListSources() {
		at, ok := applied[s.Version]
		st.Migrations = append(st.Migrations, MigrationState{Version: s.Version, Name: path.Base(s.Path), Applied: ok, AppliedAt: at})
	}
	return st, nil
}

// checkSchema fails with a *SchemaError unless the database is at exactly SchemaVersion. It reads goose's
// table directly (one or two small queries per Open), so opening a registry costs no migration machinery.
func (r *Registry) checkSchema(ctx context.Context) error {
	var legacy, versioned bool
	if err := r.pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL",
		legacyTable, versionTable).Scan(&legacy, &versioned); err != nil {
		return fmt.Errorf("check registry schema: %w", err)
	}
	var current int64
	if versioned {
		q := fmt.Sprintf("SELECT coalesce(max(version_id), 0) FROM %s", pgx.Identifier{versionTable}.Sanitize())
		if err := r.pool.QueryRow(ctx, q).Scan(&current); err != nil {
			return fmt.Errorf("check registry schema: %w", err)
		}
	}
	if want := SchemaVersion(); current != want {
		return &SchemaError{Current: current, Required: want, Legacy: legacy && current == 0}
	}
	return nil
}
