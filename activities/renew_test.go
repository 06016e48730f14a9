package activities

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/workflows"
)

// certFP is the fingerprint of the certificate a test device was provisioned with.
func certFP(id string) []byte {
	fp := sha256.Sum256([]byte("provisioned-" + id))
	return fp[:]
}

// certDevice is a certificate device as a renewal sees it: it holds the fingerprints of the certificates of
// its two slots, generates a key for each request (kept as the SDK stores it), installs a certificate
// only for its newest key, and reconnects presenting its preferred slot, then the other.
type certDevice struct {
	fps       [3][]byte
	prefer    int
	pending   *ecdsa.PrivateKey
	behaviour string // "" answers and reconnects; offline; unsupported; late; lost; subject (requests for another id); weak (a P-224 key)
	lockedOut bool
	requests  int
	installs  int
}

// certChannel serves renewCertificate and installCertificate to certDevices.
type certChannel struct {
	t       *testing.T
	w       rotateWorld
	mu      sync.Mutex
	devices map[string]*certDevice
	signed  [][]byte // every certificate delivered
}

func (c *certChannel) PublishDesired(context.Context, []fleet.DesiredPush) (int, error) {
	return 0, nil
}

func (c *certChannel) InvokeMany(_ context.Context, calls []fleet.MethodCall, _ time.Duration, _ float64) []fleet.MethodResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]fleet.MethodResult, len(calls))
	for i, call := range calls {
		d := c.devices[call.DeviceID]
		out[i] = fleet.MethodResult{DeviceID: call.DeviceID, Outcome: fleet.MethodSucceeded, Status: 200, Payload: json.RawMessage(`{}`)}
		switch {
		case d == nil || d.behaviour == "offline":
			out[i] = fleet.MethodResult{DeviceID: call.DeviceID, Outcome: fleet.MethodOffline, Status: 404}
		case d.behaviour == "unsupported":
			out[i] = fleet.MethodResult{DeviceID: call.DeviceID, Outcome: fleet.MethodFailed, Status: 404, Payload: protocol.ErrorPayload("unknown method")}
		case call.Method == protocol.MethodRenewCertificate:
			d.requests++
			curve, id := elliptic.P256(), call.DeviceID
			switch d.behaviour {
			case "weak":
				curve = elliptic.P224()
			case "subject":
				id = "someone-else"
			}
			key, err := ecdsa.GenerateKey(curve, rand.Reader)
			require.NoError(c.t, err)
			csr, err := pki.NewCSR(id, key)
			require.NoError(c.t, err)
			d.pending = key
			b, _ := json.Marshal(protocol.RenewCertificateAnswer{CSR: string(csr)})
			out[i].Payload = b
		case call.Method == protocol.MethodInstallCertificate:
			r, err := protocol.ParseInstallCertificate(call.Payload)
			require.NoError(c.t, err)
			c.signed = append(c.signed, []byte(r.Certificate))
			if d.pending == nil {
				out[i] = fleet.MethodResult{DeviceID: call.DeviceID, Outcome: fleet.MethodFailed, Status: 409, Payload: protocol.ErrorPayload("no request pending")}
				continue
			}
			pair, err := pki.KeyPair(call.DeviceID, []byte(r.Certificate), d.pending)
			if err != nil {
				out[i] = fleet.MethodResult{DeviceID: call.DeviceID, Outcome: fleet.MethodFailed, Status: 409, Payload: protocol.ErrorPayload(err.Error())}
				continue
			}
			d.installs++
			d.fps[r.Slot], d.prefer, d.pending = pki.Fingerprint(pair.Leaf), r.Slot, nil
			switch d.behaviour {
			case "late":
				continue
			case "lost":
				out[i] = fleet.MethodResult{DeviceID: call.DeviceID, Outcome: fleet.MethodTimedOut}
			}
			c.reconnectLocked(call.DeviceID)
		default:
			out[i] = fleet.MethodResult{DeviceID: call.DeviceID, Outcome: fleet.MethodFailed, Status: 404, Payload: protocol.ErrorPayload("unknown method")}
		}
	}
	return out
}

// reconnectLocked connects the device as the SDK would: its preferred slot's certificate, then the other's.
func (c *certChannel) reconnectLocked(id string) {
	d := c.devices[id]
	c1, c2, _ := c.w.certSlots(c.t, id)
	reg := [3][]byte{nil, c1, c2}
	for _, slot := range []int{d.prefer, 3 - d.prefer} {
		if d.fps[slot] != nil && bytes.Equal(d.fps[slot], reg[slot]) {
			d.prefer = slot
			c.w.connected(c.t, id, 0, reg[slot])
			return
		}
	}
	d.lockedOut = true
}

func (c *certChannel) reconnect(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reconnectLocked(id)
}

func newCertChannel(t *testing.T, w rotateWorld, ids ...string) *certChannel {
	c := &certChannel{t: t, w: w, devices: map[string]*certDevice{}}
	for _, id := range ids {
		c.devices[id] = &certDevice{fps: [3][]byte{nil, certFP(id), nil}, prefer: 1}
	}
	return c
}

// testSigner is a fleet CA for the tests.
func testSigner(t *testing.T) *pki.Signer {
	ca, err := pki.InitDeviceCA(filepath.Join(t.TempDir(), "ca"), "", time.Now(), 0)
	require.NoError(t, err)
	return pki.SignerOf(ca)
}

// requireRenewed checks a certificate device finished its renewal: the registry holds exactly the
// certificate the device presents first (one the fleet CA signed for it), the old slot is cleared, and the
// device never found itself without a certificate the registry knows.
func requireRenewed(t *testing.T, w rotateWorld, ch *certChannel, id string) {
	t.Helper()
	d := ch.devices[id]
	require.False(t, d.lockedOut, "%s was left without a certificate the registry knows", id)
	c1, c2, auth := w.certSlots(t, id)
	reg := [3][]byte{nil, c1, c2}
	require.NotEqual(t, certFP(id), d.fps[d.prefer], "%s still presents its old certificate", id)
	require.Equal(t, d.fps[d.prefer], reg[d.prefer], "%s: the registry knows the device's new certificate", id)
	require.Nil(t, reg[3-d.prefer], "%s: the old slot is cleared", id)
	require.Equal(t, reg[d.prefer], auth, "%s connected with it", id)
}

// A rotation over secret and certificate devices rotates each by its kind: certificate devices answer a
// signing request, get a certificate for their own new key, reconnect with it and lose the old one; requests
// for another subject or with a weak key are refused with the reason and change nothing; devices offline or
// without the methods keep their certificate; no private key or CA key is in anything the activity records.
func TestRenewBatchOutcomes(t *testing.T) {
	for name, newWorld := range rotateWorlds(t) {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t)
			certs := []string{"c-ok", "c-lost", "c-late", "c-off", "c-old-sdk", "c-subject", "c-weak"}
			w.addCert(t, certs...)
			w.add(t, "s-ok")
			cc := newCertChannel(t, w, certs...)
			for id, b := range map[string]string{"c-lost": "lost", "c-late": "late", "c-off": "offline", "c-old-sdk": "unsupported",
				"c-subject": "subject", "c-weak": "weak"} {
				cc.devices[id].behaviour = b
			}
			sc := newRotChannel(t, w, "s-ok")
			ch := &mixedChannel{secrets: sc, certs: cc}
			job := "renew-" + name
			all := append(append([]string(nil), certs...), "s-ok")
			w.job(t, job, all...)

			a := &Activities{Jobs: w.store, Rotate: w.store, Channel: ch, CA: testSigner(t)}
			c, err := a.JobBatch(context.Background(), workflows.JobBatchInput{JobID: job, Kind: fleet.JobRotate, First: 0,
				Last: int64(len(all)), Timeout: time.Second, CertValidity: 72 * time.Hour})
			require.NoError(t, err)
			assert.Equal(t, fleet.JobCounts{Running: 4, Offline: 1, Failed: 3}, c)
			if w.fake == nil {
				devs, err := w.store.(*registry.Registry).JobDevices(context.Background(), job, []fleet.JobState{fleet.JobFailed}, 100)
				require.NoError(t, err)
				got := map[string]string{}
				for _, d := range devs {
					got[d.DeviceID] = d.Error
				}
				assert.Contains(t, got["c-subject"], `certificate request refused: its subject is "someone-else", not the device id "c-subject"`)
				assert.Contains(t, got["c-weak"], "weak key: ECDSA curve P-224")
				assert.Contains(t, got["c-old-sdk"], "no renewCertificate method")
			}
			st := collect(t, a, job)
			assert.Equal(t, int64(3), st.Acked, "c-ok, c-lost and s-ok connected with their new credential")
			cc.reconnect("c-late")
			st = collect(t, a, job)
			assert.Equal(t, workflows.JobCollectAcksResult{Acked: 1}, st)
			for _, id := range []string{"c-ok", "c-lost", "c-late"} {
				requireRenewed(t, w, cc, id)
			}
			requireRotated(t, w, sc, "s-ok")
			for _, id := range []string{"c-off", "c-old-sdk", "c-subject", "c-weak"} {
				c1, c2, _ := w.certSlots(t, id)
				assert.Equal(t, certFP(id), c1, "%s keeps its certificate", id)
				assert.Nil(t, c2, "%s: nothing else is registered", id)
			}
			assert.Len(t, cc.signed, 3, "one certificate for each good request")
			for _, p := range cc.signed {
				cert, err := pki.ParseCertificatePEM(p)
				require.NoError(t, err)
				assert.WithinDuration(t, time.Now().Add(72*time.Hour), cert.NotAfter, time.Minute, "--cert-validity")
			}
		})
	}
}

// mixedChannel sends secret rotations to one fake fleet and certificate renewals to another.
type mixedChannel struct {
	secrets *rotChannel
	certs   *certChannel
}

func (m *mixedChannel) PublishDesired(context.Context, []fleet.DesiredPush) (int, error) {
	return 0, nil
}

func (m *mixedChannel) InvokeMany(ctx context.Context, calls []fleet.MethodCall, timeout time.Duration, rate float64) []fleet.MethodResult {
	out := make([]fleet.MethodResult, len(calls))
	var si, ci []int
	var sc, cc []fleet.MethodCall
	for i, c := range calls {
		if _, ok := m.certs.devices[c.DeviceID]; ok {
			ci, cc = append(ci, i), append(cc, c)
		} else {
			si, sc = append(si, i), append(sc, c)
		}
	}
	for k, r := range m.secrets.InvokeMany(ctx, sc, timeout, rate) {
		out[si[k]] = r
	}
	for k, r := range m.certs.InvokeMany(ctx, cc, timeout, rate) {
		out[ci[k]] = r
	}
	return out
}

// The retry matrix of certificate renewals: a batch stopped at each step boundary (once or twice in a
// row) and retried, with devices that reconnect at once, between attempts or only after the batch. Whatever
// the point, every device ends renewed, no device is ever without a certificate the registry knows, at no
// time are two certificates signed by the renewal registered together (the device's old one is the only
// other), and a device that already connected with the first attempt's certificate is not sent another.
func TestRenewBatchRetriesNeverRegisterTwoNewCertificates(t *testing.T) {
	for name, newWorld := range rotateWorlds(t) {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t)
			signer := testSigner(t)
			for _, point := range []string{FaultTargetsLoaded, FaultRequested, FaultClaimed, FaultInvoked, FaultRecorded, FaultCounted} {
				for _, times := range []int{1, 2} {
					for _, mode := range []string{"now", "between", "after"} {
						t.Run(fmt.Sprintf("%s/x%d/%s", point, times, mode), func(t *testing.T) {
							job := fmt.Sprintf("ren-%s-%s-%d-%s", name, point, times, mode)
							ids := []string{job + ".a", job + ".b"}
							w.addCert(t, ids...)
							ch := newCertChannel(t, w, ids...)
							if mode != "now" {
								for _, d := range ch.devices {
									d.behaviour = "late"
								}
							}
							w.job(t, job, ids...)
							errCrash := errors.New("worker crashed")
							left := times
							a := &Activities{Jobs: w.store, Rotate: w.store, Channel: ch, CA: signer, Fault: func(p string) error {
								if p == point && left > 0 {
									left--
									return errCrash
								}
								return nil
							}}
							// At most one certificate besides the provisioned one is registered, at every step.
							oneNew := func() {
								for _, id := range ids {
									c1, c2, _ := w.certSlots(t, id)
									n := 0
									for _, fp := range [][]byte{c1, c2} {
										if fp != nil && !bytes.Equal(fp, certFP(id)) {
											n++
										}
									}
									require.LessOrEqual(t, n, 1, "%s: two renewed certificates are registered", id)
								}
							}
							req := workflows.JobBatchInput{JobID: job, Kind: fleet.JobRotate, First: 0, Last: 2, Timeout: time.Second}
							var c fleet.JobCounts
							var err error
							for attempt := 1; attempt <= times+1; attempt++ {
								c, err = a.JobBatch(context.Background(), req)
								oneNew()
								if err == nil {
									break
								}
								require.ErrorIs(t, err, errCrash)
								if mode == "between" {
									for _, id := range ids {
										ch.mu.Lock()
										if ch.devices[id].installs > 0 {
											ch.reconnectLocked(id)
										}
										ch.mu.Unlock()
									}
								}
							}
							require.NoError(t, err)
							assert.Equal(t, fleet.JobCounts{Running: 2}, c)
							for _, id := range ids {
								ch.reconnect(id)
							}
							st := collect(t, a, job)
							assert.Equal(t, workflows.JobCollectAcksResult{Acked: 2}, st)
							oneNew()
							for _, id := range ids {
								requireRenewed(t, w, ch, id)
								if point == FaultInvoked && mode != "after" {
									assert.Equal(t, 1, ch.devices[id].installs, "%s connected with the first certificate: not sent another", id)
								}
							}
						})
					}
				}
			}
		})
	}
}
