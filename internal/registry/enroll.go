package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"

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
	var sealed []byte
	var ca *string
	if g.Kind == fleet.EnrollX509 {
		ca = &g.CACert
	} else {
		sealed = g.SealedKey
	}
	_, err := r.pool.Exec(ctx, `INSERT INTO enrollment_groups (name, kind, sealed_key, ca_cert, tags, desired, max_devices, id_pattern)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, g.Name, string(g.Kind), sealed, ca, tags, desired, g.MaxDevices, g.IDPattern)
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

const groupColumns = `name, kind, sealed_key, coalesce(ca_cert, ''), tags, desired, max_devices, id_pattern, disabled, registered, refused, created_at`

func scanGroup(row pgx.Row) (fleet.EnrollmentGroup, error) {
	var g fleet.EnrollmentGroup
	var kind string
	var tags, desired []byte
	err := row.Scan(&g.Name, &kind, &g.SealedKey, &g.CACert, &tags, &desired, &g.MaxDevices, &g.IDPattern, &g.Disabled,
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

// RegisterEnrolled creates the devices of regs in one transaction that holds their groups' rows, so that a
// group's cap and its disabling are exact however many gateways register at once, and returns one outcome per
// registration, in order. A registration repeated in the batch, or of a device the same group registered
// before with the same digest, is reported registered without creating anything.
func (r *Registry) RegisterEnrolled(ctx context.Context, regs []fleet.Registration) ([]fleet.RegistrationOutcome, error) {
	var outs []fleet.RegistrationOutcome
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		var err error
		outs, err = registerEnrolled(ctx, tx, regs)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("register %d devices through enrollment groups: %w", len(regs), err)
	}
	return outs, nil
}

// enrolledGroup is a locked group row with its pattern compiled and the batch's counts.
type enrolledGroup struct {
	fleet.EnrollmentGroup
	pattern             *regexp.Regexp
	badPattern          string
	schemeProblem       string // the group's tags break the metadata scheme in force
	registered, refused int64
}

func registerEnrolled(ctx context.Context, tx pgx.Tx, regs []fleet.Registration) ([]fleet.RegistrationOutcome, error) {
	outs := make([]fleet.RegistrationOutcome, len(regs))
	var names, ids []string
	seenName := map[string]bool{}
	for _, reg := range regs {
		if !seenName[reg.Group] {
			seenName[reg.Group] = true
			names = append(names, reg.Group)
		}
		ids = append(ids, reg.DeviceID)
	}
	// One statement locks every group of the batch, in name order, so that two batches never deadlock.
	rows, err := tx.Query(ctx, `SELECT `+groupColumns+` FROM enrollment_groups WHERE name = ANY($1) ORDER BY name FOR UPDATE`, names)
	if err != nil {
		return nil, fmt.Errorf("lock enrollment groups: %w", err)
	}
	groups := map[string]*enrolledGroup{}
	for rows.Next() {
		g, err := scanGroup(rows)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("lock enrollment groups: %w", err)
		}
		eg := &enrolledGroup{EnrollmentGroup: g}
		if eg.pattern, err = enroll.CompilePattern(g.IDPattern); err != nil {
			eg.badPattern = err.Error()
		}
		groups[g.Name] = eg
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("lock enrollment groups: %w", err)
	}
	// The devices get their group's tags, which must satisfy the metadata scheme in force now
	// (docs/architecture.md, "Metadata scheme"): a scheme set after the group was created may refuse them.
	sch, err := activeScheme(ctx, tx)
	if err != nil {
		return nil, err
	}
	for _, g := range groups {
		if err := checkTags(sch, "of enrollment group "+g.Name, []byte(jsonOrEmpty(g.Tags))); err != nil {
			g.schemeProblem = err.Error()
		}
	}
	type existing struct {
		status      string
		group       *string
		digest      []byte
		fingerprint []byte
	}
	have := map[string]existing{}
	erows, err := tx.Query(ctx, `SELECT id, status, enrollment_group, secret1_hash, cert_fingerprint FROM devices WHERE id = ANY($1)`, ids)
	if err != nil {
		return nil, fmt.Errorf("look up devices: %w", err)
	}
	for erows.Next() {
		var id string
		var e existing
		if err := erows.Scan(&id, &e.status, &e.group, &e.digest, &e.fingerprint); err != nil {
			erows.Close()
			return nil, fmt.Errorf("look up devices: %w", err)
		}
		have[id] = e
	}
	if err := erows.Err(); err != nil {
		return nil, fmt.Errorf("look up devices: %w", err)
	}
	var insIDs, insTags, insDesired, insBy, insGroups []string
	var insDigests, insFingerprints [][]byte
	var events []DeviceEvent
	for i, reg := range regs {
		g := groups[reg.Group]
		if g == nil {
			outs[i].Reason = "no enrollment group " + reg.Group
			continue
		}
		refuse := func(reason string) {
			outs[i].Reason = reason
			g.refused++
		}
		if e, ok := have[reg.DeviceID]; ok {
			switch {
			case e.group != nil && *e.group == reg.Group && bytes.Equal(e.digest, reg.SecretDigest) &&
				bytes.Equal(e.fingerprint, reg.CertFingerprint) && e.status != string(fleet.StatusRetired):
				outs[i].Registered = true // an earlier first contact registered it
			case e.status == string(fleet.StatusRetired):
				refuse("id is retired (purge it to reuse the id)")
			default:
				refuse("id is registered already")
			}
			continue
		}
		switch {
		case (g.Kind == fleet.EnrollX509) != (len(reg.CertFingerprint) > 0):
			refuse("credential of the wrong kind for a " + string(g.Kind) + " group")
			continue
		case g.Disabled:
			refuse("enrollment group is disabled")
			continue
		case g.badPattern != "":
			refuse(g.badPattern)
			continue
		case g.schemeProblem != "":
			refuse(g.schemeProblem)
			continue
		case g.pattern != nil && !g.pattern.MatchString(reg.DeviceID):
			refuse("id does not match the group's pattern " + g.IDPattern)
			continue
		case g.MaxDevices > 0 && g.Registered+g.registered >= g.MaxDevices:
			refuse(fmt.Sprintf("enrollment group is full (%d devices)", g.MaxDevices))
			continue
		}
		// Created now: a repeat later in the batch finds it as an earlier contact's.
		have[reg.DeviceID] = existing{status: string(fleet.StatusActive), group: &reg.Group, digest: reg.SecretDigest, fingerprint: reg.CertFingerprint}
		g.registered++
		outs[i] = fleet.RegistrationOutcome{Registered: true, Created: true}
		insIDs, insDigests = append(insIDs, reg.DeviceID), append(insDigests, nilIfEmpty(reg.SecretDigest))
		insFingerprints = append(insFingerprints, nilIfEmpty(reg.CertFingerprint))
		insTags, insDesired = append(insTags, jsonOrEmpty(g.Tags)), append(insDesired, jsonOrEmpty(g.Desired))
		insBy, insGroups = append(insBy, EnrollmentProvisionedBy(reg.Group)), append(insGroups, reg.Group)
		events = append(events, DeviceEvent{DeviceID: reg.DeviceID, Kind: EventEnrolled, Detail: map[string]string{"group": reg.Group}})
	}
	if len(insIDs) > 0 {
		_, err := tx.Exec(ctx, `INSERT INTO devices (id, secret1_hash, cert_fingerprint, tags, desired, provisioned_by, enrollment_group)
			SELECT u.id, u.digest, u.fp, u.tags::jsonb, u.desired::jsonb, u.by, u.grp
			FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::text[], $5::text[], $6::text[], $7::text[])
				AS u(id, digest, fp, tags, desired, by, grp)`,
			insIDs, insDigests, insFingerprints, insTags, insDesired, insBy, insGroups)
		if err != nil {
			return nil, fmt.Errorf("insert devices: %w", err)
		}
		if err := RecordEvents(ctx, tx, events); err != nil {
			return nil, err
		}
	}
	var cNames []string
	var cReg, cRef []int64
	for _, name := range names {
		if g := groups[name]; g != nil && (g.registered > 0 || g.refused > 0) {
			cNames, cReg, cRef = append(cNames, name), append(cReg, g.registered), append(cRef, g.refused)
		}
	}
	if len(cNames) > 0 {
		_, err := tx.Exec(ctx, `UPDATE enrollment_groups g SET registered = g.registered + u.r, refused = g.refused + u.f
			FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(name, r, f) WHERE g.name = u.name`, cNames, cReg, cRef)
		if err != nil {
			return nil, fmt.Errorf("count registrations: %w", err)
		}
	}
	return outs, nil
}

// nilIfEmpty stores an absent credential as NULL, not as an empty value.
func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}
