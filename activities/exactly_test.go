package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleet/fleettest"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/testenv"
	"github.com/fleetflow/fleetflow/workflows"
)

// The fault matrix: every batch activity is stopped at each of its step boundaries (the Fault… points) and
// then retried until it succeeds, as Temporal does after a worker crash. Whatever the point, each device is
// patched once (its section's version goes up by exactly one, one timeline event), each method and factory
// reset is sent at most once, each device is retired once, and the counts the batch reports are exact. It runs
// against the Postgres registry, where the transactions are the point, and against the fake, which must
// behave the same.

// exactStore is what the matrix needs of a store besides the activities' interfaces.
type exactStore interface {
	fleet.JobStore
	fleet.RetireStore
}

// exactWorld is one store with a fleet of online devices.
type exactWorld struct {
	store exactStore
	// versions returns a device's desired and tags versions and whether it is retired.
	versions func(t *testing.T, id string) (desired, tags int64, retired bool)
	// events counts a device's timeline events of kind (-1: the store keeps no timeline).
	events func(t *testing.T, id, kind string) int
	// setup creates the devices (online) and the job over them.
	setup func(t *testing.T, job string, kind fleet.JobKind, ids []string)
}

func fakeWorld() exactWorld {
	f := fleettest.New()
	return exactWorld{
		store: f,
		versions: func(t *testing.T, id string) (int64, int64, bool) {
			f.Mu.Lock()
			defer f.Mu.Unlock()
			d := f.Devices[id]
			return d.DesiredVersion, d.TagsVersion, d.Status == fleet.StatusRetired
		},
		events: func(*testing.T, string, string) int { return -1 },
		setup: func(t *testing.T, job string, _ fleet.JobKind, ids []string) {
			for _, id := range ids {
				f.AddDevice(id, fleettest.Device{Online: true})
			}
			f.AddJob(job, ids...)
		},
	}
}

func registryWorld(t *testing.T) exactWorld {
	ctx := context.Background()
	reg, err := registry.Open(ctx, testenv.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(reg.Close)
	return exactWorld{
		store: reg,
		versions: func(t *testing.T, id string) (int64, int64, bool) {
			var desired, tags int64
			var status string
			require.NoError(t, reg.Pool().QueryRow(ctx, "SELECT desired_version, tags_version, status FROM devices WHERE id = $1", id).
				Scan(&desired, &tags, &status))
			return desired, tags, status == "retired"
		},
		events: func(t *testing.T, id, kind string) int {
			var n int
			require.NoError(t, reg.Pool().QueryRow(ctx, "SELECT count(*) FROM device_events WHERE device_id = $1 AND kind = $2", id, kind).Scan(&n))
			return n
		},
		setup: func(t *testing.T, job string, kind fleet.JobKind, ids []string) {
			i := 0
			_, err := reg.StageRows(ctx, job, "provision", func() (registry.StagedRow, bool, error) {
				if i == len(ids) {
					return registry.StagedRow{}, false, nil
				}
				r := registry.StagedRow{Seq: int64(i), Line: int64(i + 2), ID: ids[i], Tags: "{}", SecretHash: creds.Digest("s-" + ids[i])}
				i++
				return r, true, nil
			})
			require.NoError(t, err)
			_, err = reg.ProvisionBatch(ctx, job, 0, int64(len(ids)), 0)
			require.NoError(t, err)
			var ups []fleet.ConnEvent
			for _, id := range ids {
				ups = append(ups, fleet.ConnEvent{DeviceID: id, Kind: fleet.ConnUp, Session: 1, At: time.Now()})
			}
			require.NoError(t, reg.RecordConnections(ctx, ups))
			_, err = reg.CreateJobForIDs(ctx, fleet.NewJob{ID: job, Kind: kind, Query: "ids", Spec: json.RawMessage(`{}`)}, ids)
			require.NoError(t, err)
		},
	}
}

// faultPoints are the points each kind of batch passes.
var faultPoints = map[fleet.JobKind][]string{
	fleet.JobSetDesired: {FaultTargetsLoaded, FaultInTransaction, FaultCommitted, FaultPushed, FaultCounted},
	fleet.JobSetTags:    {FaultTargetsLoaded, FaultInTransaction, FaultCommitted, FaultPushed, FaultCounted},
	fleet.JobMethod:     {FaultTargetsLoaded, FaultClaimed, FaultInvoked, FaultRecorded, FaultCounted},
	fleet.JobRetire:     {FaultTargetsLoaded, FaultClaimed, FaultInvoked, FaultInTransaction, FaultCommitted, FaultCounted},
}

// TestJobBatchFaultMatrixDoesNothingTwice: the matrix, per store, kind and point, plus a point reached twice
// in a row (a retry that fails at the same place again).
func TestJobBatchFaultMatrixDoesNothingTwice(t *testing.T) {
	stores := map[string]func(t *testing.T) exactWorld{
		"fake":     func(*testing.T) exactWorld { return fakeWorld() },
		"registry": registryWorld,
	}
	for name, newWorld := range stores {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t)
			for _, kind := range []fleet.JobKind{fleet.JobSetDesired, fleet.JobSetTags, fleet.JobMethod, fleet.JobRetire} {
				for _, point := range faultPoints[kind] {
					for _, times := range []int{1, 2} {
						t.Run(fmt.Sprintf("%s/%s/x%d", kind, point, times), func(t *testing.T) {
							runFaultCase(t, w, kind, point, times)
						})
					}
				}
			}
		})
	}
}

func runFaultCase(t *testing.T, w exactWorld, kind fleet.JobKind, point string, times int) {
	const n = 6
	job := fmt.Sprintf("job-%s-%s-%d", kind, point, times)
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s.d%d", job, i)
	}
	w.setup(t, job, kind, ids)
	type before struct{ desired, tags int64 }
	was := map[string]before{}
	for _, id := range ids {
		d, tg, _ := w.versions(t, id)
		was[id] = before{d, tg}
	}

	ch := &fakeChannel{}
	errCrash := errors.New("worker crashed")
	left := times
	a := &Activities{Jobs: w.store, Retire: w.store, Channel: ch, Fault: func(p string) error {
		if p == point && left > 0 {
			left--
			return errCrash
		}
		return nil
	}}
	req := workflows.JobBatchInput{JobID: job, Kind: kind, First: 0, Last: n, Patch: json.RawMessage(`{"mode":"eco"}`),
		Method: "reboot", Timeout: time.Second, Reason: "test", Wipe: true}
	ctx := context.Background()
	var c fleet.JobCounts
	var err error
	attempts := 0
	for attempts = 1; attempts <= times+1; attempts++ {
		if c, err = a.JobBatch(ctx, req); err == nil {
			break
		}
		require.ErrorIs(t, err, errCrash, "attempt %d", attempts)
		if point == FaultInTransaction && (kind == fleet.JobSetDesired || kind == fleet.JobSetTags) {
			for _, id := range ids {
				d, tg, _ := w.versions(t, id)
				require.Equal(t, was[id], before{d, tg}, "a fault inside the transaction rolls the patch back")
			}
		}
	}
	require.NoError(t, err, "the batch succeeds once the fault stops")
	// The fault stopped the first attempt; a retry passes the point again only if it still has work there.
	require.Less(t, left, times, "the fault point was reached")
	require.GreaterOrEqual(t, attempts, 2)

	// A further retry (a lost completion) changes nothing and reports the same counts.
	again, err := a.JobBatch(ctx, req)
	require.NoError(t, err)
	require.Equal(t, c, again, "counts are the range's, whichever attempt did the work")

	totals, err := w.store.JobTotals(ctx, job)
	require.NoError(t, err)
	require.Equal(t, totals, c, "the batch's counts are the registry's")
	perDevice := map[string]int{}
	for _, call := range ch.calls {
		perDevice[call.DeviceID]++
	}
	pushes := map[string]int{}
	for _, p := range ch.published {
		pushes[p.DeviceID]++
	}

	switch kind {
	case fleet.JobSetDesired, fleet.JobSetTags:
		for _, id := range ids {
			d, tg, _ := w.versions(t, id)
			if kind == fleet.JobSetDesired {
				require.Equal(t, was[id].desired+1, d, "%s: desired version +1 exactly", id)
				require.Equal(t, was[id].tags, tg)
				require.LessOrEqual(t, pushes[id], 1, "%s pushed at most once", id)
				if ev := w.events(t, id, registry.EventDesiredChanged); ev >= 0 {
					require.Equal(t, 1, ev, "%s: one desired_changed event", id)
				}
			} else {
				require.Equal(t, was[id].tags+1, tg, "%s: tags version +1 exactly", id)
				require.Zero(t, pushes[id], "tags are never pushed")
				if ev := w.events(t, id, registry.EventTagsChanged); ev >= 0 {
					require.Equal(t, 1, ev, "%s: one tags_changed event", id)
				}
			}
		}
		if kind == fleet.JobSetDesired {
			require.Equal(t, fleet.JobCounts{Running: n}, c)
			if point != FaultCommitted {
				// Only a crash between the commit and the push loses the push (the device reads its desired
				// state on its next twin/get); every other point pushes each device exactly once.
				require.Len(t, pushes, n, "every device pushed once")
			}
		} else {
			require.Equal(t, fleet.JobCounts{Succeeded: n}, c)
		}
	case fleet.JobMethod:
		for _, id := range ids {
			require.LessOrEqual(t, perDevice[id], 1, "%s: a method runs at most once", id)
		}
		switch point {
		case FaultTargetsLoaded:
			require.Equal(t, fleet.JobCounts{Succeeded: n}, c, "nothing was sent before the fault: everything is sent once")
			require.Len(t, perDevice, n)
		case FaultClaimed, FaultInvoked:
			// Claimed (and perhaps sent) by the attempt that stopped: never sent again, closed as lost.
			require.Equal(t, fleet.JobCounts{TimedOut: n}, c)
			if point == FaultClaimed {
				require.Empty(t, perDevice, "claimed but not sent: nothing is sent")
			} else {
				require.Len(t, perDevice, n)
			}
		default:
			require.Equal(t, fleet.JobCounts{Succeeded: n}, c)
			require.Len(t, perDevice, n)
		}
	case fleet.JobRetire:
		for _, id := range ids {
			require.LessOrEqual(t, perDevice[id], 1, "%s: factory reset sent at most once", id)
			_, _, retired := w.versions(t, id)
			require.True(t, retired, "%s retired", id)
			if ev := w.events(t, id, registry.EventRetired); ev >= 0 {
				require.Equal(t, 1, ev, "%s: one retired event", id)
			}
		}
		require.Equal(t, fleet.JobCounts{Succeeded: n}, c, "every device retired, the job's own targets not cancelled")
		if point == FaultClaimed {
			require.Empty(t, perDevice, "claimed but not sent: the reset is not sent by the retry")
		} else {
			require.Len(t, perDevice, n)
		}
	}
}
