package activities

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleet/fleettest"
	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/registry/registrytest"
	"github.com/fleetflow/fleetflow/workflows"
)

// rotateWorld is a store that rotations run against, with what the tests read and write besides the
// activities' interfaces: the devices' slots and the digest of their newest session, as the gateway records
// it.
type rotateWorld struct {
	store interface {
		fleet.JobStore
		fleet.RotateStore
	}
	// add creates devices with secret "s-"+id in slot 1, connected with it; extra adjusts one (fake only).
	add func(t *testing.T, ids ...string)
	// slots returns a device's slot digests and the digest of its newest session.
	slots func(t *testing.T, id string) (s1, s2, auth []byte)
	// connected records a new session of id authenticated with digest in slot.
	connected func(t *testing.T, id string, slot int, digest []byte)
	job       func(t *testing.T, job string, ids ...string)
	// turn makes a device one a rotation must refuse: retired, disabled, certificate (a client
	// certificate and no secret), ambiguous (both slots in use, never connected since).
	turn func(t *testing.T, id, kind string)
	fake *fleettest.Store // nil for the registry
	// addCert creates certificate devices (no secret) with fingerprint certFP(id) in certificate slot 1,
	// connected with it; certSlots returns a device's certificate slots and the digest of its newest session.
	addCert   func(t *testing.T, ids ...string)
	certSlots func(t *testing.T, id string) (c1, c2, auth []byte)
}

func fakeRotateWorld() rotateWorld {
	f := fleettest.New()
	seed := f.Subject().Seed
	return rotateWorld{
		store: f, fake: f,
		add: func(_ *testing.T, ids ...string) {
			for _, id := range ids {
				f.AddDevice(id, fleettest.Device{Online: true, Secret1Hash: creds.Digest("s-" + id), AuthDigest: creds.Digest("s-" + id)})
			}
		},
		slots: func(_ *testing.T, id string) ([]byte, []byte, []byte) {
			f.Mu.Lock()
			defer f.Mu.Unlock()
			d := f.Devices[id]
			return d.Secret1Hash, d.Secret2Hash, d.AuthDigest
		},
		connected: func(_ *testing.T, id string, _ int, digest []byte) {
			f.Mu.Lock()
			defer f.Mu.Unlock()
			f.Devices[id].AuthDigest = digest
		},
		job: func(t *testing.T, job string, ids ...string) { seed.CreateJob(t, job, fleet.JobRotate, ids...) },
		addCert: func(_ *testing.T, ids ...string) {
			for _, id := range ids {
				f.AddDevice(id, fleettest.Device{Online: true, CertFingerprint: certFP(id), AuthDigest: certFP(id)})
			}
		},
		certSlots: func(_ *testing.T, id string) ([]byte, []byte, []byte) {
			f.Mu.Lock()
			defer f.Mu.Unlock()
			d := f.Devices[id]
			return d.CertFingerprint, d.Cert2Fingerprint, d.AuthDigest
		},
		turn: func(t *testing.T, id, kind string) {
			f.Mu.Lock()
			defer f.Mu.Unlock()
			d := f.Devices[id]
			switch kind {
			case "retired":
				d.Status = fleet.StatusRetired
			case "disabled":
				d.Status = fleet.StatusDisabled
			case "certificate":
				d.Secret1Hash, d.AuthDigest, d.CertFingerprint = nil, nil, creds.Digest("cert-"+id)
			case "ambiguous":
				d.Secret2Hash, d.AuthDigest = creds.Digest("other-"+id), nil
			default:
				t.Fatalf("unknown kind %q", kind)
			}
		},
	}
}

func registryRotateWorld(t *testing.T) rotateWorld {
	ctx := context.Background()
	reg := registrytest.Open(t)
	var mu sync.Mutex
	session := int64(1)
	connected := func(t *testing.T, id string, slot int, digest []byte) {
		mu.Lock()
		session++
		n := session
		mu.Unlock()
		require.NoError(t, reg.RecordConnections(ctx, []fleet.ConnEvent{{DeviceID: id, Kind: fleet.ConnUp, Session: n, At: time.Now(),
			Slot: slot, Digest: digest}}))
	}
	return rotateWorld{
		store: reg,
		add: func(t *testing.T, ids ...string) {
			op := fmt.Sprintf("op-%d", time.Now().UnixNano())
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
			_, err = reg.ProvisionBatch(ctx, op, 0, int64(len(ids)), 0)
			require.NoError(t, err)
			for _, id := range ids {
				connected(t, id, 1, creds.Digest("s-"+id))
			}
		},
		slots: func(t *testing.T, id string) (s1, s2, auth []byte) {
			require.NoError(t, reg.Pool().QueryRow(ctx, "SELECT secret1_hash, secret2_hash, auth_digest FROM devices WHERE id = $1", id).
				Scan(&s1, &s2, &auth))
			return s1, s2, auth
		},
		connected: connected,
		addCert: func(t *testing.T, ids ...string) {
			op := fmt.Sprintf("op-%d", time.Now().UnixNano())
			i := 0
			_, err := reg.StageRows(ctx, op, "provision", func() (registry.StagedRow, bool, error) {
				if i == len(ids) {
					return registry.StagedRow{}, false, nil
				}
				r := registry.StagedRow{Seq: int64(i), Line: int64(i + 2), ID: ids[i], Tags: "{}", CertFingerprint: certFP(ids[i])}
				i++
				return r, true, nil
			})
			require.NoError(t, err)
			_, err = reg.ProvisionBatch(ctx, op, 0, int64(len(ids)), 0)
			require.NoError(t, err)
			for _, id := range ids {
				connected(t, id, 0, certFP(id))
			}
		},
		certSlots: func(t *testing.T, id string) (c1, c2, auth []byte) {
			require.NoError(t, reg.Pool().QueryRow(ctx, "SELECT cert_fingerprint, cert2_fingerprint, auth_digest FROM devices WHERE id = $1", id).
				Scan(&c1, &c2, &auth))
			return c1, c2, auth
		},
		job: func(t *testing.T, job string, ids ...string) {
			_, err := reg.CreateJobForIDs(ctx, fleet.NewJob{ID: job, Kind: fleet.JobRotate, Query: "ids", Spec: json.RawMessage(`{}`)}, ids)
			require.NoError(t, err)
		},
		turn: func(t *testing.T, id, kind string) {
			q := map[string]string{
				"retired":     "UPDATE devices SET status = 'retired' WHERE id = $1",
				"disabled":    "UPDATE devices SET status = 'disabled' WHERE id = $1",
				"certificate": "UPDATE devices SET secret1_hash = NULL, auth_digest = NULL, cert_fingerprint = sha256(('cert-' || $1)::bytea) WHERE id = $1",
				"ambiguous":   "UPDATE devices SET secret2_hash = sha256(('other-' || $1)::bytea), auth_digest = NULL WHERE id = $1",
			}[kind]
			require.NotEmpty(t, q, kind)
			_, err := reg.Pool().Exec(ctx, q, id)
			require.NoError(t, err)
		},
	}
}

// simDevice is a device as the rotation sees it: it mirrors the registry's two slots, stores what
// rotateCredentials delivers, and reconnects presenting the new slot first and then the other, as the device
// SDK does. lockedOut records a reconnect that no slot could make.
type rotDevice struct {
	slots     [3]string
	prefer    int
	behaviour string // "" answers and reconnects; offline; unsupported; refuse; late (stores, reconnects only on reconnect()); lost (stores and reconnects, the answer is lost)
	lockedOut bool
	calls     int
}

// rotChannel delivers rotateCredentials to rotDevices and records their sessions in the world.
type rotChannel struct {
	t       *testing.T
	w       rotateWorld
	mu      sync.Mutex
	devices map[string]*rotDevice
	secrets []string // every secret delivered, to check none leaks elsewhere
}

func (c *rotChannel) PublishDesired(context.Context, []fleet.DesiredPush) (int, error) { return 0, nil }

func (c *rotChannel) InvokeMany(_ context.Context, calls []fleet.MethodCall, _ time.Duration, _ float64) []fleet.MethodResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]fleet.MethodResult, len(calls))
	for i, call := range calls {
		out[i] = fleet.MethodResult{DeviceID: call.DeviceID, Outcome: fleet.MethodSucceeded, Status: 200, Payload: json.RawMessage(`{}`)}
		d := c.devices[call.DeviceID]
		if call.Method != protocol.MethodRotateCredentials || d == nil {
			out[i] = fleet.MethodResult{DeviceID: call.DeviceID, Outcome: fleet.MethodOffline, Status: 404}
			continue
		}
		r, err := protocol.ParseRotateCredentials(call.Payload)
		require.NoError(c.t, err)
		c.secrets = append(c.secrets, r.Secret)
		d.calls++
		switch d.behaviour {
		case "offline":
			out[i] = fleet.MethodResult{DeviceID: call.DeviceID, Outcome: fleet.MethodOffline, Status: 404}
			continue
		case "unsupported":
			out[i] = fleet.MethodResult{DeviceID: call.DeviceID, Outcome: fleet.MethodFailed, Status: 404, Payload: protocol.ErrorPayload("unknown method")}
			continue
		case "refuse":
			out[i] = fleet.MethodResult{DeviceID: call.DeviceID, Outcome: fleet.MethodFailed, Status: 500, Payload: protocol.ErrorPayload("disk full")}
			continue
		}
		d.slots[r.Slot], d.prefer = r.Secret, r.Slot
		switch d.behaviour {
		case "late":
			continue
		case "lost":
			out[i] = fleet.MethodResult{DeviceID: call.DeviceID, Outcome: fleet.MethodTimedOut}
		}
		c.reconnectLocked(call.DeviceID)
	}
	return out
}

// reconnectLocked connects the device as the SDK would: its preferred slot, then the other.
func (c *rotChannel) reconnectLocked(id string) {
	d := c.devices[id]
	s1, s2, _ := c.w.slots(c.t, id)
	reg := [3][]byte{nil, s1, s2}
	for _, slot := range []int{d.prefer, 3 - d.prefer} {
		if d.slots[slot] != "" && bytes.Equal(creds.Digest(d.slots[slot]), reg[slot]) {
			d.prefer = slot
			c.w.connected(c.t, id, slot, reg[slot])
			return
		}
	}
	d.lockedOut = true
}

func (c *rotChannel) reconnect(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reconnectLocked(id)
}

func newRotChannel(t *testing.T, w rotateWorld, ids ...string) *rotChannel {
	c := &rotChannel{t: t, w: w, devices: map[string]*rotDevice{}}
	for _, id := range ids {
		c.devices[id] = &rotDevice{slots: [3]string{"", "s-" + id, ""}, prefer: 1}
	}
	return c
}

// collect runs the rotation's wait step once.
func collect(t *testing.T, a *Activities, job string) workflows.JobCollectAcksResult {
	t.Helper()
	st, err := a.JobCollectAcks(context.Background(), workflows.JobCollectAcksInput{JobID: job, Kind: fleet.JobRotate})
	require.NoError(t, err)
	return st
}

// requireRotated checks a device finished its rotation: the registry holds exactly the secret the device
// presents first, the old slot is cleared, and the device never found itself without a working secret.
func requireRotated(t *testing.T, w rotateWorld, ch *rotChannel, id string) {
	t.Helper()
	d := ch.devices[id]
	require.False(t, d.lockedOut, "%s was left without a secret the registry knows", id)
	s1, s2, auth := w.slots(t, id)
	reg := [3][]byte{nil, s1, s2}
	require.NotEqual(t, "s-"+id, d.slots[d.prefer], "%s still presents its old secret", id)
	require.Equal(t, creds.Digest(d.slots[d.prefer]), reg[d.prefer], "%s: the registry knows the device's new secret", id)
	require.Nil(t, reg[3-d.prefer], "%s: the old slot is cleared", id)
	require.Equal(t, reg[d.prefer], auth, "%s connected with it", id)
}

func rotateWorlds(t *testing.T) map[string]func(*testing.T) rotateWorld {
	settle := rotateSettle
	rotateSettle = 0 // the fake devices reconnect synchronously
	t.Cleanup(func() { rotateSettle = settle })
	return map[string]func(*testing.T) rotateWorld{
		"fake":     func(*testing.T) rotateWorld { return fakeRotateWorld() },
		"registry": registryRotateWorld,
	}
}

// A rotation batch over devices of every kind: connected ones are rotated (new secret in slot 2, confirmed by
// their connect, slot 1 cleared); offline ones, ones without the method and ones that refuse keep their
// secret and the digest written for them is cleared again; retired and unknown devices are reported per
// device, and so are certificate devices when the worker has no fleet CA; a device whose answer was lost is
// confirmed by its connect all the same.
func TestRotateBatchOutcomes(t *testing.T) {
	for name, newWorld := range rotateWorlds(t) {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t)
			ids := []string{"r-ok", "r-off", "r-old-sdk", "r-refuse", "r-lost", "r-late"}
			w.add(t, ids...)
			ch := newRotChannel(t, w, ids...)
			ch.devices["r-off"].behaviour = "offline"
			ch.devices["r-old-sdk"].behaviour = "unsupported"
			ch.devices["r-refuse"].behaviour = "refuse"
			ch.devices["r-lost"].behaviour = "lost"
			ch.devices["r-late"].behaviour = "late"
			refused := map[string]string{"r-retired": fleet.RotateRetired, "r-disabled": fleet.RotateDisabled,
				"r-cert": fleet.RotateNoCA + ": this worker has no fleet CA (FLEETFLOW_DEVICE_CA_DIR)", "r-both": fleet.RotateAmbiguous, "r-ghost": fleet.RotateUnknown}
			kinds := map[string]string{"r-retired": "retired", "r-disabled": "disabled", "r-cert": "certificate", "r-both": "ambiguous"}
			for _, id := range []string{"r-retired", "r-disabled", "r-cert", "r-both"} {
				w.add(t, id)
				w.turn(t, id, kinds[id])
			}
			job := "rotate-" + name
			all := append(append([]string(nil), ids...), "r-retired", "r-disabled", "r-cert", "r-both", "r-ghost")
			w.job(t, job, all...)

			a := &Activities{Jobs: w.store, Rotate: w.store, Channel: ch}
			c, err := a.JobBatch(context.Background(), workflows.JobBatchInput{JobID: job, Kind: fleet.JobRotate, First: 0,
				Last: int64(len(all)), Timeout: time.Second})
			require.NoError(t, err)
			assert.Equal(t, fleet.JobCounts{Running: 3, Offline: 1, Failed: 2 + 5}, c)
			if w.fake == nil {
				reg := w.store.(*registry.Registry)
				devs, err := reg.JobDevices(context.Background(), job, []fleet.JobState{fleet.JobFailed}, 100)
				require.NoError(t, err)
				got := map[string]string{}
				for _, d := range devs {
					got[d.DeviceID] = d.Error
				}
				for id, why := range refused {
					assert.Equal(t, why, got[id], "%s is reported per device", id)
				}
			}
			for _, id := range []string{"r-retired", "r-disabled", "r-both"} {
				_, s2, _ := w.slots(t, id)
				if id == "r-both" {
					assert.Equal(t, creds.Digest("other-"+id), s2, "%s: nothing was written", id)
				} else {
					assert.Nil(t, s2, "%s: nothing was written", id)
				}
			}

			st := collect(t, a, job)
			assert.Equal(t, int64(2), st.Acked, "r-ok and r-lost connected with their new secret")
			assert.Equal(t, int64(1), st.Waiting, "r-late has not reconnected yet")
			ch.reconnect("r-late")
			st = collect(t, a, job)
			assert.Equal(t, workflows.JobCollectAcksResult{Acked: 1}, st)
			for _, id := range []string{"r-ok", "r-lost", "r-late"} {
				requireRotated(t, w, ch, id)
			}
			for _, id := range []string{"r-off", "r-old-sdk", "r-refuse"} {
				s1, s2, _ := w.slots(t, id)
				assert.Equal(t, creds.Digest("s-"+id), s1, "%s keeps its secret", id)
				assert.Nil(t, s2, "%s: the undelivered digest is cleared", id)
			}
			c, err = w.store.JobTotals(context.Background(), job)
			require.NoError(t, err)
			assert.Equal(t, fleet.JobCounts{Succeeded: 3, Offline: 1, Failed: 2 + 5}, c)
			for _, s := range ch.secrets {
				assert.NotContains(t, fmt.Sprint(c), s)
			}
		})
	}
}

// The retry matrix: a rotation batch stopped at each of its step boundaries (once or twice in a row) and
// retried, with devices that reconnect at once or only later. Whatever the point, every device ends rotated,
// no device is ever left without a secret the registry knows (a device that stored a secret a retry then
// replaced falls back to its other slot and takes the next delivery), and a device that already connected
// with the first attempt's secret is not sent another.
func TestRotateBatchRetriesLeaveNoDeviceWithoutASecret(t *testing.T) {
	for name, newWorld := range rotateWorlds(t) {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t)
			for _, point := range []string{FaultTargetsLoaded, FaultClaimed, FaultInvoked, FaultRecorded, FaultCounted} {
				for _, times := range []int{1, 2} {
					// now: devices reconnect as soon as they stored the secret; between: only once the attempt
					// has ended; after: only after the batch succeeded, so a retry finds the first secret
					// unconfirmed and replaces it.
					for _, mode := range []string{"now", "between", "after"} {
						late := mode != "now"
						t.Run(fmt.Sprintf("%s/x%d/%s", point, times, mode), func(t *testing.T) {
							job := fmt.Sprintf("rot-%s-%s-%d-%s", name, point, times, mode)
							ids := []string{job + ".a", job + ".b", job + ".c"}
							w.add(t, ids...)
							ch := newRotChannel(t, w, ids...)
							if late {
								for _, d := range ch.devices {
									d.behaviour = "late"
								}
							}
							w.job(t, job, ids...)
							errCrash := errors.New("worker crashed")
							left := times
							a := &Activities{Jobs: w.store, Rotate: w.store, Channel: ch, Fault: func(p string) error {
								if p == point && left > 0 {
									left--
									return errCrash
								}
								return nil
							}}
							req := workflows.JobBatchInput{JobID: job, Kind: fleet.JobRotate, First: 0, Last: 3, Timeout: time.Second}
							var c fleet.JobCounts
							var err error
							for attempt := 1; attempt <= times+1; attempt++ {
								if c, err = a.JobBatch(context.Background(), req); err == nil {
									break
								}
								require.ErrorIs(t, err, errCrash)
								// Between attempts a late device may reconnect with what it stored.
								for _, id := range ids {
									if mode != "between" {
										break
									}
									ch.mu.Lock()
									if ch.devices[id].calls > 0 {
										ch.reconnectLocked(id)
									}
									ch.mu.Unlock()
								}
							}
							require.NoError(t, err)
							assert.Equal(t, fleet.JobCounts{Running: 3}, c)
							for _, id := range ids {
								ch.reconnect(id)
							}
							st := collect(t, a, job)
							assert.Equal(t, workflows.JobCollectAcksResult{Acked: 3}, st)
							for _, id := range ids {
								requireRotated(t, w, ch, id)
								switch {
								case point == FaultInvoked && mode != "after":
									assert.Equal(t, 1, ch.devices[id].calls, "%s connected with the first secret: not sent another", id)
								case point == FaultInvoked:
									assert.Equal(t, times+1, ch.devices[id].calls, "%s: each attempt replaced the unconfirmed secret", id)
								}
							}
						})
					}
				}
			}
		})
	}
}
