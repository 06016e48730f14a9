package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fleetflow/fleetflow/internal/enroll"
	"github.com/fleetflow/fleetflow/internal/fleet"
)

// EnrollmentProvisionedBy is the provisioned_by of devices registered through group g, so that the timeline's
// "provisioned" entry names the group.
func EnrollmentProvisionedBy(group string) string { return "enrollment/" + group }

// CreateEnrollmentGroup records a new group. Its name must be free: a group's key is shown once, when it is
// created, so replacing one silently would strand the devices built with the old key.
func (r *Registry) CreateEnrollmentGroup(ctx context.Context, g fleet.EnrollmentGroup) error {
	if _, err := enroll.CompilePattern(g.IDPattern); err != nil {
		return err
	}
	tags, desired := jsonOrEmpty(g.Tags), jsonOrEmpty(g.Desired)
	_, err := r.pool.Exec(ctx, `INSERT INTO enrollment_groups (name, kind, sealed_key, tags, desired, max_devices, id_pattern)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, g.Name, string(g.Kind), g.SealedKey, tags, desired, g.MaxDevices, g.IDPattern)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return fmt.Errorf("enrollment group %s: %w", g.Name, fleet.ErrEnrollmentGroupExists)
	}
	if err != nil {
		return fmt.Errorf("create enrollment group %s: %w", g.Name, err)
	}
	return nil
}

func jsonOrEmpty(b json.RawMessage) string {
	if len(b) == 0 {
		return "{}"
	}
	return string(b)
}

const groupColumns = `name, kind, sealed_key, tags, desired, max_devices, id_pattern, disabled, registered, refused, created_at`

func scanGroup(row pgx.Row) (fleet.EnrollmentGroup, error) {
	var g fleet.EnrollmentGroup
	var kind string
	var tags, desired []byte
	err := row.Scan(&g.Name, &kind, &g.SealedKey, &tags, &desired, &g.MaxDevices, &g.IDPattern, &g.Disabled,
		&g.Registered, &g.Refused, &g.CreatedAt)
	g.Kind, g.Tags, g.Desired = fleet.EnrollmentKind(kind), tags, desired
	return g, err
}

// EnrollmentGroups lists every group by name, disabled ones included.
func (r *Registry) EnrollmentGroups(ctx context.Context) ([]fleet.EnrollmentGroup, error) {
	rows, err := r.pool.Query(ctx, `SELECT `+groupColumns+` FROM enrollment_groups ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list enrollment groups: %w", err)
	}
	defer rows.Close()
	var out []fleet.EnrollmentGroup
	for rows.Next() {
		g, err := scanGroup(rows)
		if err != nil {
			return nil, fmt.Errorf("list enrollment groups: %w", err)
		}
		out = append(out, g)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list enrollment groups: %w", err)
	}
	return out, nil
}

// EnrollmentGroup returns one group; fleet.ErrEnrollmentGroupNotFound when there is none of that name.
func (r *Registry) EnrollmentGroup(ctx context.Context, name string) (fleet.EnrollmentGroup, error) {
	g, err := scanGroup(r.pool.QueryRow(ctx, `SELECT `+groupColumns+` FROM enrollment_groups WHERE name = $1`, name))
	if isNoRows(err) {
		return g, fmt.Errorf("enrollment group %s: %w", name, fleet.ErrEnrollmentGroupNotFound)
	}
	if err != nil {
		return g, fmt.Errorf("load enrollment group %s: %w", name, err)
	}
	return g, nil
}

// SetEnrollmentGroupDisabled disables or re-enables a group and reports whether that changed anything.
// Devices the group registered stay as they are: disabling stops new registrations only.
func (r *Registry) SetEnrollmentGroupDisabled(ctx context.Context, name string, disabled bool) (bool, error) {
	tag, err := r.pool.Exec(ctx, `UPDATE enrollment_groups SET disabled = $2, updated_at = now() WHERE name = $1 AND disabled <> $2`, name, disabled)
	if err != nil {
		return false, fmt.Errorf("update enrollment group %s: %w", name, err)
	}
	if tag.RowsAffected() == 1 {
		return true, nil
	}
	if _, err := r.EnrollmentGroup(ctx, name); err != nil {
		return false, err
	}
	return false, nil
}

// RegisterEnrolled creates reg's device in one transaction that holds the group's row, so that the group's
// cap and its disabling are exact however many gateways register at once.
func (r *Registry) RegisterEnrolled(ctx context.Context, reg fleet.Registration) (fleet.RegistrationOutcome, error) {
	var out fleet.RegistrationOutcome
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		out = fleet.RegistrationOutcome{}
		g, err := scanGroup(tx.QueryRow(ctx, `SELECT `+groupColumns+` FROM enrollment_groups WHERE name = $1 FOR UPDATE`, reg.Group))
		if isNoRows(err) {
			out.Reason = "no enrollment group " + reg.Group
			return nil
		}
		if err != nil {
			return fmt.Errorf("lock enrollment group: %w", err)
		}
		refuse := func(reason string) error {
			out.Reason = reason
			_, err := tx.Exec(ctx, `UPDATE enrollment_groups SET refused = refused + 1 WHERE name = $1`, reg.Group)
			if err != nil {
				return fmt.Errorf("count refusal: %w", err)
			}
			return nil
		}
		var status string
		var group *string
		var digest []byte
		err = tx.QueryRow(ctx, `SELECT status, enrollment_group, secret1_hash FROM devices WHERE id = $1`, reg.DeviceID).Scan(&status, &group, &digest)
		switch {
		case err == nil:
			if group != nil && *group == reg.Group && string(digest) == string(reg.SecretDigest) && status != string(fleet.StatusRetired) {
				out.Registered = true // an earlier first contact registered it
				return nil
			}
			if status == string(fleet.StatusRetired) {
				return refuse("id is retired (purge it to reuse the id)")
			}
			return refuse("id is registered already")
		case !isNoRows(err):
			return fmt.Errorf("look up device: %w", err)
		}
		if g.Disabled {
			return refuse("enrollment group is disabled")
		}
		re, err := enroll.CompilePattern(g.IDPattern)
		if err != nil {
			return refuse(err.Error())
		}
		if re != nil && !re.MatchString(reg.DeviceID) {
			return refuse("id does not match the group's pattern " + g.IDPattern)
		}
		if g.MaxDevices > 0 && g.Registered >= g.MaxDevices {
			return refuse(fmt.Sprintf("enrollment group is full (%d devices)", g.MaxDevices))
		}
		_, err = tx.Exec(ctx, `INSERT INTO devices (id, secret1_hash, tags, desired, provisioned_by, enrollment_group)
			VALUES ($1, $2, $3, $4, $5, $6)`, reg.DeviceID, reg.SecretDigest, jsonOrEmpty(g.Tags), jsonOrEmpty(g.Desired),
			EnrollmentProvisionedBy(reg.Group), reg.Group)
		if err != nil {
			return fmt.Errorf("insert device: %w", err)
		}
		if err := RecordEvents(ctx, tx, []DeviceEvent{{DeviceID: reg.DeviceID, Kind: EventEnrolled,
			Detail: map[string]string{"group": reg.Group}}}); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE enrollment_groups SET registered = registered + 1 WHERE name = $1`, reg.Group); err != nil {
			return fmt.Errorf("count registration: %w", err)
		}
		out.Registered, out.Created = true, true
		return nil
	})
	if err != nil {
		return fleet.RegistrationOutcome{}, fmt.Errorf("register %s through enrollment group %s: %w", reg.DeviceID, reg.Group, err)
	}
	return out, nil
}
