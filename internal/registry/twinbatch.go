package registry

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/scheme"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// PatchTwins applies per-device merge patches to the tags or desired section of many devices in one
// transaction: one locking read, the merges in Go (RFC 7386 and the size limits, as for a single update), and
// one UPDATE … FROM unnest. Rows are locked in id order, as everywhere else, so concurrent batches cannot
// deadlock. A device that is refused does not fail the others. Each device must appear at most once. Every
// write is recorded in the device's timeline (desired_changed or tags_changed, with the new version and the
// patch) by one more INSERT in the same transaction.
func (r *Registry) PatchTwins(ctx context.Context, section twin.Section, patches []fleet.DevicePatch) ([]fleet.PatchResult, error) {
	var results []fleet.PatchResult
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		var err error
		results, err = patchTwinsTx(ctx, tx, section, patches)
		return err
	})
	if err != nil {
		return nil, err
	}
	return results, nil
}

// patchTwinsTx is PatchTwins inside the caller's transaction, so that a rollout can write desired firmware and
// its own bookkeeping atomically.
func patchTwinsTx(ctx context.Context, tx pgx.Tx, section twin.Section, patches []fleet.DevicePatch) ([]fleet.PatchResult, error) {
	if section != twin.Tags && section != twin.Desired {
		return nil, fmt.Errorf("patch twins: section %q cannot be written by operators", section)
	}
	col, ver := "tags", "tags_version"
	if section == twin.Desired {
		col, ver = "desired", "desired_version"
	}
	results := make([]fleet.PatchResult, len(patches))
	index := make(map[string]int, len(patches))
	ids := make([]string, len(patches))
	for i, p := range patches {
		if _, dup := index[p.DeviceID]; dup {
			return nil, fmt.Errorf("patch twins: device %s appears twice in one batch", p.DeviceID)
		}
		index[p.DeviceID] = i
		ids[i] = p.DeviceID
		results[i] = fleet.PatchResult{DeviceID: p.DeviceID, Err: notFound(p.DeviceID)}
	}
	err := func() error {
		var sch *scheme.Scheme
		if section == twin.Tags {
			// Each device's merged tags must satisfy the scheme in force (docs/architecture.md, "Metadata
			// scheme"); a device whose merge breaks it is refused alone, like any other refused patch.
			var err error
			if sch, err = activeScheme(ctx, tx); err != nil {
				return err
			}
		}
		// col is one of two fixed identifiers chosen above, never input.
		rows, err := tx.Query(ctx, "SELECT id, status, "+col+", online FROM devices WHERE id = ANY($1) ORDER BY id FOR UPDATE", ids)
		if err != nil {
			return fmt.Errorf("lock devices: %w", err)
		}
		var wIDs, wDocs []string
		for rows.Next() {
			var id, status string
			var doc []byte
			var online bool
			if err := rows.Scan(&id, &status, &doc, &online); err != nil {
				rows.Close()
				return fmt.Errorf("read devices: %w", err)
			}
			i := index[id]
			res := &results[i]
			merged, ok := mergeDevicePatch(section, id, status, online, doc, patches[i].Patch, res)
			if !ok {
				continue
			}
			if err := checkTags(sch, id, merged); err != nil {
				res.Err = err
				continue
			}
			wIDs = append(wIDs, id)
			wDocs = append(wDocs, string(merged))
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read devices: %w", err)
		}
		if len(wIDs) == 0 {
			return nil
		}
		out, err := tx.Query(ctx, "UPDATE devices d SET "+col+" = v.doc::jsonb, "+ver+" = d."+ver+" + 1, "+
			"twin_version = d.twin_version + 1, updated_at = now() FROM unnest($1::text[], $2::text[]) AS v(id, doc) "+
			"WHERE d.id = v.id RETURNING d.id, d."+ver, wIDs, wDocs)
		if err != nil {
			return fmt.Errorf("write %s: %w", col, err)
		}
		changes := make([]twinChange, 0, len(wIDs))
		for out.Next() {
			var id string
			var v int64
			if err := out.Scan(&id, &v); err != nil {
				out.Close()
				return fmt.Errorf("write %s: %w", col, err)
			}
			results[index[id]].Version = v
			changes = append(changes, twinChange{id: id, version: v, patch: patches[index[id]].Patch})
		}
		if err := out.Err(); err != nil {
			return fmt.Errorf("write %s: %w", col, err)
		}
		// One INSERT for the batch, in the caller's transaction: the timeline shows the writes if and only
		// if they commit (with a rollout's bookkeeping, when a rollout is the caller).
		return recordTwinChanges(ctx, tx, section, changes)
	}()
	if err != nil {
		return nil, err
	}
	return results, nil
}

// mergeDevicePatch merges patch into a device's section doc as read (with its status and whether it is
// online), for the batch writers of tags and desired properties: res records the device's online state and,
// when the device is refused — retired, or the merge breaks a limit or is not JSON — why; ok is false then.
func mergeDevicePatch(section twin.Section, id, status string, online bool, doc, patch []byte, res *fleet.PatchResult) (merged []byte, ok bool) {
	res.Online, res.Err = online, nil
	if status == statusRetired {
		res.Err = fmt.Errorf("device %s is retired: %w", id, fleet.ErrNotActive)
		return nil, false
	}
	merged, err := twin.Apply(section, doc, patch)
	if err != nil {
		res.Err = fmt.Errorf("device %s: %w", id, err)
		return nil, false
	}
	return merged, true
}
