package registry

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// ErrExists is returned (wrapped) when a catalogue entry or operation already exists.
var ErrExists = errors.New("already exists")

// AddFirmware adds a catalogue entry. Entries are immutable: a version already present is refused, because
// devices and rollouts refer to it by version and its image must not change under them.
func (r *Registry) AddFirmware(ctx context.Context, f fleet.Firmware) (fleet.Firmware, error) {
	if err := f.Validate(); err != nil {
		return f, err
	}
	err := r.pool.QueryRow(ctx, "INSERT INTO firmware (version, url, sha256, notes) VALUES ($1, $2, $3, $4) RETURNING created_at",
		f.Version, f.URL, f.SHA256, f.Notes).Scan(&f.CreatedAt)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return f, fmt.Errorf("firmware %s: %w (catalogue entries are immutable; add a new version)", f.Version, ErrExists)
	}
	if err != nil {
		return f, fmt.Errorf("add firmware %s: %w", f.Version, err)
	}
	return f, nil
}

// GetFirmware returns a catalogue entry.
func (r *Registry) GetFirmware(ctx context.Context, version string) (fleet.Firmware, error) {
	f := fleet.Firmware{Version: version}
	err := r.pool.QueryRow(ctx, "SELECT url, sha256, notes, created_at FROM firmware WHERE version = $1", version).
		Scan(&f.URL, &f.SHA256, &f.Notes, &f.CreatedAt)
	if isNoRows(err) {
		return f, fmt.Errorf("firmware %s: %w (add it with `fleetflow firmware add`)", version, fleet.ErrUnknownFirmware)
	}
	if err != nil {
		return f, fmt.Errorf("load firmware %s: %w", version, err)
	}
	return f, nil
}

// ListFirmware returns the catalogue, newest first.
func (r *Registry) ListFirmware(ctx context.Context) ([]fleet.Firmware, error) {
	rows, err := r.pool.Query(ctx, "SELECT version, url, sha256, notes, created_at FROM firmware ORDER BY created_at DESC, version")
	if err != nil {
		return nil, fmt.Errorf("list firmware: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (fleet.Firmware, error) {
		var f fleet.Firmware
		err := row.Scan(&f.Version, &f.URL, &f.SHA256, &f.Notes, &f.CreatedAt)
		return f, err
	})
	if err != nil {
		return nil, fmt.Errorf("list firmware: %w", err)
	}
	return out, nil
}
