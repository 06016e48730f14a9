package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleet/fleettest"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/registry/registrytest"
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
	fleet.RolloutStore
	fleet.ProvisionStore
}

// exactWorld is one store and the way to set it up: devices are created through the store's provisioning
// (staged under op), online and reporting firmware 1.0.0.
type exactWorld struct {
	store exactStore
	// versions returns a device's desired and tags versions and whether it is retired.
	versions func(t *testing.T, id string) (desired, tags int64, retired bool)
	// events counts a device's timeline events of kind (-1: the store keeps no timeline).
	events func(t *testing.T, id, kind string) int
	// stage stages manifest rows for ids under op; devices creates them (staged, provisioned, online).
	stage   func(t *testing.T, op string, ids []string)
	devices func(t *testing.T, op string, ids []string)
	// createJob freezes a job over ids; createRollout claims ids for a rollout of fw.
	createJob     func(t *testing.T, job string, kind fleet.JobKind, ids []string)
	createRollout func(t *testing.T, ro string, fw fleet.Firmware, ids []string)
}

var (
	fwOld = fleet.Firmware{Version: "1.0.0", URL: "https://fw.example/1.0.0.bin", SHA256: strings.Repeat("ab", 32)}
	fwNew = fleet.Firmware{Version: "2.0.0", URL: "https://fw.example/2.0.0.bin", SHA256: strings.Repeat("cd", 32)}
)

func fakeWorld() exactWorld {
	f := fleettest.New()
	seed := f.Subject().Seed
	return exactWorld{
		store: f,
		versions: func(t *testing.T, id string) (int64, int64, bool) {
			f.Mu.Lock()
			defer f.Mu.Unlock()
			d := f.Devices[id]
			return d.DesiredVersion, d.TagsVersion, d.Status == fleet.StatusRetired
		},
		events: func(*testing.T, string, string) int { return -1 },
		stage: func(t *testing.T, op string, ids []string) {
			rows := make([]fleettest.StagedRow, len(ids))
			for i, id := range ids {
				rows[i] = fleettest.StagedRow{Line: int64(i + 2), ID: id}
			}
			seed.Stage(t, op, rows)
		},
		devices: func(t *testing.T, _ string, ids []string) {
			for _, id := range ids {
				f.AddDevice(id, fleettest.Device{Online: true, ReportedVersion: fwOld.Version,
					Reported: []byte(`{"firmware":{"version":"` + fwOld.Version + `"}}`)})
			}
			seed.AddFirmware(t, fwOld)
		},
		createJob: func(t *testing.T, job string, kind fleet.JobKind, ids []string) { seed.CreateJob(t, job, kind, ids...) },
		createRollout: func(t *testing.T, ro string, fw fleet.Firmware, ids []string) {
			require.Equal(t, int64(len(ids)), seed.CreateRollout(t, ro, fw, ids...))
		},
	}
}

func registryWorld(t *testing.T) exactWorld {
	ctx := context.Background()
	reg := registrytest.Open(t)
	stage := func(t *testing.T, op string, ids []string) {
		i := 0
		_, err := reg.StageRows(ctx, op, "provision", func() (registry.StagedRow, bool, error) {
			if i == len(ids) {
				return registry.StagedRow{}, false, nil
			}
			r := registry.StagedRow{Seq: int64(i), Line: int64(i + 2), ID: ids[i], Tags: "{}", SecretHash: creds.Digest("s-" + ids[i])}
			i++
			return r, true, nil
		})
		require.NoError(t, err)
	}
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
		stage: stage,
		devices: func(t *testing.T, op string, ids []string) {
			stage(t, op, ids)
			_, err := reg.ProvisionBatch(ctx, op, 0, int64(len(ids)), 0)
			require.NoError(t, err)
			var ups []fleet.ConnEvent
			var reports []fleet.ReportedPatch
			for _, id := range ids {
				ups = append(ups, fleet.ConnEvent{DeviceID: id, Kind: fleet.ConnUp, Session: 1, At: time.Now()})
				reports = append(reports, fleet.ReportedPatch{DeviceID: id, RequestID: "r1",
					Patch: []byte(`{"firmware":{"version":"` + fwOld.Version + `"}}`)})
			}
			require.NoError(t, reg.RecordConnections(ctx, ups))
			_, err = reg.ApplyReported(ctx, reports)
			require.NoError(t, err)
			addFirmware(t, reg, fwOld)
		},
		createJob: func(t *testing.T, job string, kind fleet.JobKind, ids []string) {
			_, err := reg.CreateJobForIDs(ctx, fleet.NewJob{ID: job, Kind: kind, Query: "ids", Spec: json.RawMessage(`{}`)}, ids)
			require.NoError(t, err)
		},
		createRollout: func(t *testing.T, ro string, fw fleet.Firmware, ids []string) {
			addFirmware(t, reg, fw)
			quoted := make([]string, len(ids))
			for i, d := range ids {
				quoted[i] = fmt.Sprintf("'%s'", d)
			}
			n, err := reg.CreateRollout(ctx, fleet.NewRollout{ID: ro, Version: fw.Version,
				Query: "SELECT * FROM devices WHERE deviceId IN (" + strings.Join(quoted, ", ") + ")", Spec: json.RawMessage(`{}`)})
			require.NoError(t, err)
			require.Equal(t, int64(len(ids)), n)
		},
	}
}

// addFirmware adds fw to the catalogue unless it is there.
func addFirmware(t *testing.T, reg *registry.Registry, fw fleet.Firmware) {
	if _, err := reg.AddFirmware(context.Background(), fw); err != nil && !errors.Is(err, registry.ErrExists) {
		require.NoError(t, err)
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
	w.devices(t, job, ids)
	w.createJob(t, job, kind, ids)
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

// TestRolloutAndProvisionBatchesFaultMatrix: a rollout wave's dispatch and a rollback, stopped after a chunk's
// commit or after its push and retried, write each device's desired firmware once (version +1 per step, one
// timeline event), push it at most once and leave exact phase counts; a provisioning batch stopped after
// its commit reports the same counts on the retry and creates each device once.
func TestRolloutAndProvisionBatchesFaultMatrix(t *testing.T) {
	stores := map[string]func(t *testing.T) exactWorld{
		"fake":     func(*testing.T) exactWorld { return fakeWorld() },
		"registry": registryWorld,
	}
	ctx := context.Background()
	errCrash := errors.New("worker crashed")
	for name, newWorld := range stores {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t)
			for _, point := range []string{FaultCommitted, FaultPushed} {
				t.Run("rollout/"+point, func(t *testing.T) {
					const n = 5
					ro := "ro-" + name + "-" + point
					ids := make([]string, n)
					for i := range ids {
						ids[i] = fmt.Sprintf("%s.d%d", ro, i)
					}
					w.devices(t, ro, ids)
					w.createRollout(t, ro, fwNew, ids)
					was := map[string]int64{}
					for _, id := range ids {
						was[id], _, _ = w.versions(t, id)
					}
					ch := &fakeChannel{}
					crashes := 0
					a := &Activities{Rollouts: w.store, Channel: ch, Fault: func(p string) error {
						if p == point && crashes == 0 {
							crashes++
							return errCrash
						}
						return nil
					}}
					step := func(name string, run func() error) {
						crashes, ch.published = 0, nil
						require.ErrorIs(t, run(), errCrash, "%s: the fault stops the first attempt", name)
						require.NoError(t, run(), "%s: the retry finishes", name)
						require.NoError(t, run(), "%s: a further retry is harmless", name)
						pushes := map[string]int{}
						for _, p := range ch.published {
							pushes[p.DeviceID]++
						}
						for _, id := range ids {
							require.LessOrEqual(t, pushes[id], 1, "%s: %s pushed at most once", name, id)
						}
						if point == FaultPushed {
							require.Len(t, pushes, n, "%s: every device pushed once", name)
						}
					}
					fw := workflows.FirmwareRef{Version: fwNew.Version, URL: fwNew.URL, SHA256: fwNew.SHA256}
					step("dispatch", func() error {
						_, err := a.RolloutDispatch(ctx, workflows.RolloutDispatchInput{RolloutID: ro, Wave: 0, Cutoff: n, Firmware: fw})
						return err
					})
					phases := func() map[string]int64 {
						counts, err := w.store.RolloutCounts(ctx, ro)
						require.NoError(t, err)
						m := map[string]int64{}
						for _, pc := range counts {
							m[string(pc.Phase)] += pc.N
						}
						return m
					}
					require.Equal(t, map[string]int64{"dispatched": n}, phases())
					for _, id := range ids {
						d, _, _ := w.versions(t, id)
						require.Equal(t, was[id]+1, d, "%s: desired version +1 exactly", id)
						if ev := w.events(t, id, registry.EventDesiredChanged); ev >= 0 {
							require.Equal(t, 1, ev, "%s: one desired_changed event", id)
						}
					}
					step("rollback", func() error {
						_, err := a.RolloutRollback(ctx, workflows.RolloutRollbackInput{RolloutID: ro, JobID: ro + "-rollback"})
						return err
					})
					require.Equal(t, map[string]int64{"rolling_back": n}, phases())
					for _, id := range ids {
						d, _, _ := w.versions(t, id)
						require.Equal(t, was[id]+2, d, "%s: one write forward, one back", id)
						if ev := w.events(t, id, registry.EventDesiredChanged); ev >= 0 {
							require.Equal(t, 2, ev, "%s: one event each way", id)
						}
					}
				})
			}
			t.Run("provision", func(t *testing.T) {
				op := "prov-" + name
				ids := []string{op + ".a", op + ".b", op + ".c"}
				w.stage(t, op, ids)
				crashes := 0
				a := &Activities{Provision: w.store, Fault: func(p string) error {
					if p == FaultCommitted && crashes == 0 {
						crashes++
						return errCrash
					}
					return nil
				}}
				in := workflows.ProvisionBatchInput{Op: op, First: 0, Last: int64(len(ids))}
				_, err := a.ProvisionBatch(ctx, in)
				require.ErrorIs(t, err, errCrash)
				created := map[string]int64{}
				for _, id := range ids {
					_, created[id], _ = w.versions(t, id)
				}
				c, err := a.ProvisionBatch(ctx, in)
				require.NoError(t, err)
				require.Equal(t, fleet.ProvisionCounts{Created: int64(len(ids))}, c, "the retry reports what the first attempt created")
				c, err = a.ProvisionBatch(ctx, in)
				require.NoError(t, err)
				require.Equal(t, fleet.ProvisionCounts{Created: int64(len(ids))}, c)
				for _, id := range ids {
					_, tags, retired := w.versions(t, id)
					require.False(t, retired)
					require.Equal(t, created[id], tags, "%s created by the first attempt, never written again", id)
				}
			})
		})
	}
}

// TestJobBatchRacingAttemptsDoNothingTwice: two attempts of one batch at once (a retry started after a
// heartbeat timeout while the first attempt still runs) patch each device once, send each method once, and
// the one that loses fails with a retryable error whose retry finds the batch done.
func TestJobBatchRacingAttemptsDoNothingTwice(t *testing.T) {
	stores := map[string]func(t *testing.T) exactWorld{
		"fake":     func(*testing.T) exactWorld { return fakeWorld() },
		"registry": registryWorld,
	}
	for name, newWorld := range stores {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t)
			for _, kind := range []fleet.JobKind{fleet.JobSetDesired, fleet.JobMethod} {
				t.Run(string(kind), func(t *testing.T) {
					const n = 40
					job := "race-" + string(kind)
					ids := make([]string, n)
					for i := range ids {
						ids[i] = fmt.Sprintf("%s.d%02d", job, i)
					}
					w.devices(t, job, ids)
					w.createJob(t, job, kind, ids)
					was := map[string]int64{}
					for _, id := range ids {
						was[id], _, _ = w.versions(t, id)
					}
					ch := &fakeChannel{}
					// Both attempts read their targets before either writes: the race at its worst.
					var loaded sync.WaitGroup
					loaded.Add(2)
					a := &Activities{Jobs: w.store, Channel: ch, Fault: func(p string) error {
						if p == FaultTargetsLoaded {
							loaded.Done()
							loaded.Wait()
						}
						return nil
					}}
					req := workflows.JobBatchInput{JobID: job, Kind: kind, First: 0, Last: n, Patch: json.RawMessage(`{"mode":"eco"}`),
						Method: "reboot", Timeout: time.Second}
					errs := make(chan error, 2)
					for range 2 {
						go func() {
							_, err := a.JobBatch(context.Background(), req)
							errs <- err
						}()
					}
					failed := 0
					for range 2 {
						if err := <-errs; err != nil {
							failed++
							requireRetryable(t, err)
						}
					}
					require.Less(t, failed, 2, "one attempt wins")
					a.Fault = nil
					c, err := a.JobBatch(context.Background(), req)
					require.NoError(t, err, "the retry finds the batch done")
					calls := map[string]int{}
					for _, call := range ch.calls {
						calls[call.DeviceID]++
					}
					for _, id := range ids {
						d, _, _ := w.versions(t, id)
						if kind == fleet.JobSetDesired {
							require.Equal(t, was[id]+1, d, "%s: desired version +1 exactly", id)
							if ev := w.events(t, id, registry.EventDesiredChanged); ev >= 0 {
								require.Equal(t, 1, ev, "%s: one event", id)
							}
						} else {
							require.Equal(t, 1, calls[id], "%s: the method sent exactly once", id)
						}
					}
					want := fleet.JobCounts{Running: n}
					if kind == fleet.JobMethod {
						want = fleet.JobCounts{Succeeded: n}
					}
					require.Equal(t, want, c)
				})
			}
		})
	}
}

// flakyOutcomes fails the first fails RecordJobOutcomes calls, as a registry restarting would.
type flakyOutcomes struct {
	*fleettest.Store
	fails int
}

func (s *flakyOutcomes) RecordJobOutcomes(ctx context.Context, job string, outs []fleet.JobOutcome) error {
	if s.fails > 0 {
		s.fails--
		return errors.New("connection refused")
	}
	return s.Store.RecordJobOutcomes(ctx, job, outs)
}

// TestJobBatchMethodRidesOutARegistryBlipBeforeLosingAnswers: answers of methods already sent are not lost to
// a short registry outage (the retry would have to close them as lost, never resending them).
func TestJobBatchMethodRidesOutARegistryBlipBeforeLosingAnswers(t *testing.T) {
	defer func(d time.Duration) { recordSentBackoff = d }(recordSentBackoff)
	recordSentBackoff = time.Millisecond
	f := fleettest.New()
	f.AddJob("j", "a", "b")
	store := &flakyOutcomes{Store: f, fails: 2}
	ch := &fakeChannel{}
	a := &Activities{Jobs: store, Channel: ch}
	c, err := a.JobBatch(context.Background(), workflows.JobBatchInput{JobID: "j", Kind: fleet.JobMethod, First: 0, Last: 2, Method: "ping", Timeout: time.Second})
	require.NoError(t, err)
	require.Equal(t, fleet.JobCounts{Succeeded: 2}, c, "the answers were recorded once the registry came back")
	require.Equal(t, []string{"a", "b"}, ch.calledDevices(), "sent once")

	f2 := fleettest.New()
	f2.AddJob("j", "a")
	a = &Activities{Jobs: &flakyOutcomes{Store: f2, fails: recordSentTries}, Channel: ch}
	_, err = a.JobBatch(context.Background(), workflows.JobBatchInput{JobID: "j", Kind: fleet.JobMethod, First: 0, Last: 1, Method: "ping", Timeout: time.Second})
	requireRetryable(t, err)
	require.Equal(t, fleet.JobDispatched, f2.TargetState("j", 0), "an outage that lasts fails the attempt; the target stays dispatched, never resent")
}

// TestJobBatchFaultWhileClosingLostAnswers: an attempt that stops after claiming its targets, then a retry
// that stops right after closing them as lost, then a retry that finishes: nothing is ever sent, each target
// is closed once, and the counts are exact.
func TestJobBatchFaultWhileClosingLostAnswers(t *testing.T) {
	stores := map[string]func(t *testing.T) exactWorld{
		"fake":     func(*testing.T) exactWorld { return fakeWorld() },
		"registry": registryWorld,
	}
	for name, newWorld := range stores {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t)
			const n = 4
			job := "lost-" + name
			ids := make([]string, n)
			for i := range ids {
				ids[i] = fmt.Sprintf("%s.d%d", job, i)
			}
			w.devices(t, job, ids)
			w.createJob(t, job, fleet.JobMethod, ids)
			errCrash := errors.New("worker crashed")
			plan := []string{FaultClaimed, FaultLostClosed}
			ch := &fakeChannel{}
			a := &Activities{Jobs: w.store, Channel: ch, Fault: func(p string) error {
				if len(plan) > 0 && p == plan[0] {
					plan = plan[1:]
					return errCrash
				}
				return nil
			}}
			req := workflows.JobBatchInput{JobID: job, Kind: fleet.JobMethod, First: 0, Last: n, Method: "reboot", Timeout: time.Second}
			for attempt := 1; attempt <= 2; attempt++ {
				_, err := a.JobBatch(context.Background(), req)
				require.ErrorIs(t, err, errCrash, "attempt %d", attempt)
			}
			require.Empty(t, plan, "both fault points were reached")
			c, err := a.JobBatch(context.Background(), req)
			require.NoError(t, err)
			require.Equal(t, fleet.JobCounts{TimedOut: n}, c)
			require.Empty(t, ch.calls, "claimed but never sent: nothing is sent by any retry")
			totals, err := w.store.JobTotals(context.Background(), job)
			require.NoError(t, err)
			require.Equal(t, c, totals)
		})
	}
}
