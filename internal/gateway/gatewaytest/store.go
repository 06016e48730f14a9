// Package gatewaytest provides an in-memory gateway.Store, so that the gateway, the device package and the
// simulator can be tested against a real broker without Postgres. Devices and their twins live in the one
// fake of the registry (internal/fleet/fleettest, held to the registry by its contract test: ErrNotFound,
// ErrNotActive, twin limits, per-section versions); this package adds what only the gateway needs:
// credentials, change notifications on status or credential changes, and a record of what the gateway wrote
// (reported patches, job statuses, connection events), so tests can assert on the traffic, not only on the
// end state.
package gatewaytest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleet/fleettest"
	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/internal/scheme"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// Store is an in-memory registry for the gateway. The zero value is not usable; call New.
type Store struct {
	// Fleet holds the devices and their twins; the credentials are kept here, beside it.
	Fleet *fleettest.Store

	mu        sync.Mutex
	devices   map[string]*device
	listeners map[int]func(string)
	nextL     int
	resumed   int // listeners whose first "" (re-check everything) has been handled

	applyCalls   int
	applyPatches int
	authLookups  int
	getBatches   int
	getCalls     int
	events       []fleet.ConnEvent
	patches      map[string][]json.RawMessage
	jobStatuses  []fleet.JobStatus
	jobCalls     int
	jobFailures  int
	lastSession  int64
	sessionCalls int
	sessionFail  error
	getFail      error
	holdReported chan struct{} // ApplyReported waits for it to close, when set
	heldReported int           // ApplyReported calls waiting on holdReported now
	holdGets     chan struct{} // twin reads wait for it to close, when set
	heldGets     int           // twin reads waiting on holdGets now
	scheme       *scheme.Scheme
	schemeFail   error
	schemeCalls  int

	// AuthDelay slows DeviceAuth, to exercise concurrent CONNECTs sharing one lookup.
	AuthDelay time.Duration
}

// device is a device's credentials; its status and twin are in Fleet.
type device struct {
	secret1, secret2 []byte
	fingerprint      []byte // of the client certificate
	fingerprint2     []byte // of the second certificate slot's (a renewal's)
}

// New returns an empty store.
func New() *Store {
	return &Store{Fleet: fleettest.New(), devices: make(map[string]*device), listeners: make(map[int]func(string)),
		patches: make(map[string][]json.RawMessage)}
}

// Add provisions an active device with secret in its primary slot and announces it as the registry does
// an insert: with fleet.DevicesInserted, which names no device.
func (s *Store) Add(id, secret string) {
	s.mu.Lock()
	s.devices[id] = &device{secret1: creds.Digest(secret)}
	s.Fleet.AddDevice(id, fleettest.Device{})
	s.mu.Unlock()
	s.Notify(fleet.DevicesInserted)
}

// fleetDevice runs fn on id's device in Fleet, under its lock; ok is false when there is none.
func (s *Store) fleetDevice(id string, fn func(*fleettest.Device)) (ok bool) {
	s.Fleet.Mu.Lock()
	defer s.Fleet.Mu.Unlock()
	d, ok := s.Fleet.Devices[id]
	if ok {
		fn(d)
	}
	return ok
}

// AddCertificate provisions an active device that authenticates with the client certificate whose SHA-256
// fingerprint is fp (docs/architecture.md, "Device certificates").
func (s *Store) AddCertificate(id string, fp []byte) {
	s.mu.Lock()
	s.devices[id] = &device{fingerprint: append([]byte(nil), fp...)}
	s.Fleet.AddDevice(id, fleettest.Device{})
	s.mu.Unlock()
	s.Notify(fleet.DevicesInserted)
}

// SetCertificate replaces (nil: clears) the device's certificate fingerprint and notifies.
func (s *Store) SetCertificate(id string, fp []byte) {
	s.update(id, func(d *device) { d.fingerprint = append([]byte(nil), fp...) })
}

// SetCertificate2 replaces (nil: clears) the device's second certificate slot and notifies
// (docs/architecture.md, "Certificate renewal").
func (s *Store) SetCertificate2(id string, fp []byte) {
	s.update(id, func(d *device) { d.fingerprint2 = append([]byte(nil), fp...) })
}

// SetSecondary sets the secondary credential (rotation).
func (s *Store) SetSecondary(id, secret string) {
	s.update(id, func(d *device) { d.secret2 = creds.Digest(secret) })
}

// StageSecondaryUnannounced sets the secondary credential without a change notice, as a rotation's staging
// looks to a gateway whose listener has not received the registry's notice yet.
func (s *Store) StageSecondaryUnannounced(id, secret string) {
	s.mu.Lock()
	if d, ok := s.devices[id]; ok {
		d.secret2 = creds.Digest(secret)
	}
	s.mu.Unlock()
}

// SetPrimary replaces the primary credential.
func (s *Store) SetPrimary(id, secret string) {
	s.update(id, func(d *device) { d.secret1 = creds.Digest(secret) })
}

// SetExpiry sets when id's credentials expire (zero: never) and announces the change, as the registry's
// trigger does.
func (s *Store) SetExpiry(id string, at time.Time) {
	s.update(id, func(*device) {
		s.fleetDevice(id, func(d *fleettest.Device) { d.CredentialExpiresAt = at })
	})
}

// SetStatus changes the status and notifies, as the registry does.
func (s *Store) SetStatus(id string, status fleet.DeviceStatus) {
	s.update(id, func(*device) {
		s.fleetDevice(id, func(d *fleettest.Device) { d.Status = status })
	})
}

// Delete removes the device and notifies.
func (s *Store) Delete(id string) {
	s.Forget(id)
	s.Notify(id)
}

// Forget removes the device without a notification, as if the gateway had missed it.
func (s *Store) Forget(id string) {
	s.mu.Lock()
	delete(s.devices, id)
	s.Fleet.Mu.Lock()
	delete(s.Fleet.Devices, id)
	s.Fleet.Mu.Unlock()
	s.mu.Unlock()
}

func (s *Store) update(id string, fn func(*device)) {
	s.mu.Lock()
	d, ok := s.devices[id]
	if ok {
		fn(d)
	}
	s.mu.Unlock()
	if ok {
		s.Notify(id)
	}
}

// SetDesired merges patch into the desired document and returns the new desired version.
func (s *Store) SetDesired(id string, patch json.RawMessage) (int64, error) {
	res, err := s.Fleet.PatchTwins(context.Background(), twin.Desired, []fleet.DevicePatch{{DeviceID: id, Patch: patch}})
	if err != nil {
		return 0, err
	}
	if res[0].Err != nil {
		return 0, fmt.Errorf("set desired %s: %w", id, res[0].Err)
	}
	return res[0].Version, nil
}

// SetReported merges patch into the reported document, as if the device had reported it earlier (e.g. before
// a simulator restart), and returns the new reported version.
func (s *Store) SetReported(id string, patch json.RawMessage) (int64, error) {
	var doc []byte
	var v int64
	var err error
	if !s.fleetDevice(id, func(d *fleettest.Device) {
		if doc, err = twin.Apply(twin.Reported, d.Reported, patch); err == nil {
			d.Reported = doc
			d.ReportedRev++
			v = d.ReportedRev
		}
	}) {
		return 0, fmt.Errorf("set reported %s: %w", id, fleet.ErrNotFound)
	}
	return v, err
}

// Reported returns the device's reported document and version.
func (s *Store) Reported(id string) (json.RawMessage, int64) {
	var doc json.RawMessage
	var v int64
	s.fleetDevice(id, func(d *fleettest.Device) { doc, v = append(json.RawMessage(nil), d.Reported...), d.ReportedRev })
	return doc, v
}

// ApplyCalls is the number of ApplyReported calls so far, and Patches the number of patches they carried.
func (s *Store) ApplyCalls() (calls, patches int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applyCalls, s.applyPatches
}

// Listening reports whether a gateway listens for device changes and has handled the listener's first
// notice: its listener starts on a goroutine of its own, a change announced before it does would reach no
// one, and that first notice empties the gateway's auth cache (a test counting registry lookups must not
// start before it, or a lookup in flight is discarded and made again).
func (s *Store) Listening() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.listeners) > 0 && s.resumed > 0
}

// AuthLookups is the number of DeviceAuth calls so far.
func (s *Store) AuthLookups() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.authLookups
}

// GetCalls is the number of GetTwin calls so far.
func (s *Store) GetCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.getCalls
}

// Events returns a copy of the connection events recorded so far.
func (s *Store) Events() []fleet.ConnEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]fleet.ConnEvent(nil), s.events...)
}

// Notify announces a change of id to every listener, as NOTIFY fleetflow_device does.
func (s *Store) Notify(id string) {
	s.mu.Lock()
	fns := make([]func(string), 0, len(s.listeners))
	for _, fn := range s.listeners {
		fns = append(fns, fn)
	}
	s.mu.Unlock()
	for _, fn := range fns {
		fn(id)
	}
}

// DeviceAuth implements gateway.Store.
func (s *Store) DeviceAuth(ctx context.Context, id string) (fleet.DeviceAuth, error) {
	if s.AuthDelay > 0 {
		select {
		case <-time.After(s.AuthDelay):
		case <-ctx.Done():
			return fleet.DeviceAuth{}, ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.authLookups++
	c, ok := s.devices[id]
	a := fleet.DeviceAuth{ID: id}
	if ok && s.fleetDevice(id, func(d *fleettest.Device) { a.Status, a.ExpiresAt = d.Status, d.CredentialExpiresAt }) {
		a.Secret1Hash = append([]byte(nil), c.secret1...)
		a.Secret2Hash = append([]byte(nil), c.secret2...)
		a.CertFingerprint = append([]byte(nil), c.fingerprint...)
		if c.fingerprint2 != nil {
			a.Cert2Fingerprint = append([]byte(nil), c.fingerprint2...)
		}
		return a, nil
	}
	return fleet.DeviceAuth{}, fmt.Errorf("device %s: %w", id, fleet.ErrNotFound)
}

// HoldGets makes twin reads (GetTwin, GetTwins) wait until hold is closed (nil: no wait), as a registry that
// is slow to answer would.
func (s *Store) HoldGets(hold chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holdGets = hold
}

// HeldGets is the number of twin reads waiting on HoldGets' channel now.
func (s *Store) HeldGets() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.heldGets
}

// waitGets blocks while HoldGets holds reads.
func (s *Store) waitGets(ctx context.Context) {
	s.mu.Lock()
	hold := s.holdGets
	if hold == nil {
		s.mu.Unlock()
		return
	}
	s.heldGets++
	s.mu.Unlock()
	select {
	case <-hold:
	case <-ctx.Done():
	}
	s.mu.Lock()
	s.heldGets--
	s.mu.Unlock()
}

// GetTwin implements gateway.Store.
func (s *Store) GetTwin(ctx context.Context, id string) (twin.Twin, error) {
	s.waitGets(ctx)
	return s.getTwin(id)
}

func (s *Store) getTwin(id string) (twin.Twin, error) {
	s.mu.Lock()
	s.getCalls++
	fail := s.getFail
	s.mu.Unlock()
	if fail != nil {
		return twin.Twin{}, fmt.Errorf("get twin %s: %w", id, fail)
	}
	var t twin.Twin
	if !s.fleetDevice(id, func(d *fleettest.Device) {
		t = twin.Twin{
			DeviceID: id,
			Status:   string(d.Status),
			Properties: twin.Properties{
				Desired:  twin.VersionedDocument{Doc: append([]byte(nil), d.Desired...), Version: d.DesiredVersion},
				Reported: twin.VersionedDocument{Doc: append([]byte(nil), d.Reported...), Version: d.ReportedRev},
			},
		}
	}) {
		return twin.Twin{}, fmt.Errorf("device %s: %w", id, fleet.ErrNotFound)
	}
	return t, nil
}

// GetTwins implements gateway.TwinBatchGetter with GetTwin's answers (a failure fails the whole read).
func (s *Store) GetTwins(ctx context.Context, ids []string) (map[string]twin.Twin, error) {
	s.waitGets(ctx)
	s.mu.Lock()
	s.getBatches++
	s.mu.Unlock()
	out := make(map[string]twin.Twin, len(ids))
	for _, id := range ids {
		t, err := s.getTwin(id)
		if errors.Is(err, fleet.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[id] = t
	}
	return out, nil
}

// TwinGetBatches is how many batched twin reads (GetTwins) the gateway made.
func (s *Store) TwinGetBatches() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.getBatches
}

// HoldReported makes ApplyReported wait until hold is closed (nil: no wait), as a registry that is slow to
// answer would: the devices' reported patches stay unanswered meanwhile.
func (s *Store) HoldReported(hold chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holdReported = hold
}

// HeldReported is the number of ApplyReported calls waiting on HoldReported's channel now.
func (s *Store) HeldReported() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.heldReported
}

// ApplyReported implements gateway.Store.
func (s *Store) ApplyReported(ctx context.Context, patches []fleet.ReportedPatch) ([]fleet.ReportedResult, error) {
	s.mu.Lock()
	if hold := s.holdReported; hold != nil {
		s.heldReported++
		s.mu.Unlock()
		select {
		case <-hold:
		case <-ctx.Done():
		}
		s.mu.Lock()
		s.heldReported--
	}
	defer s.mu.Unlock()
	s.applyCalls++
	s.applyPatches += len(patches)
	out, err := s.Fleet.ApplyReported(ctx, patches)
	if err != nil {
		return nil, err
	}
	for i, p := range patches {
		if out[i].Err == nil {
			s.patches[p.DeviceID] = append(s.patches[p.DeviceID], append(json.RawMessage(nil), p.Patch...))
		}
	}
	return out, nil
}

// RecordConnections implements gateway.Store.
func (s *Store) RecordConnections(ctx context.Context, events []fleet.ConnEvent) error {
	s.mu.Lock()
	s.events = append(s.events, events...)
	s.mu.Unlock()
	return nil
}

// NextSessions implements gateway.Store with a counter shared by every gateway on this store, as the
// registry's sequence is. FailSessions makes it fail until called with nil.
func (s *Store) NextSessions(ctx context.Context, n int) ([]int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sessionCalls++
	if s.sessionFail != nil {
		return nil, fmt.Errorf("next %d session numbers: %w", n, s.sessionFail)
	}
	out := make([]int64, n)
	for i := range out {
		s.lastSession++
		out[i] = s.lastSession
	}
	return out, nil
}

// FailTwinGets makes GetTwin fail with err (nil restores it), as an unreachable registry would.
func (s *Store) FailTwinGets(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.getFail = err
}

// FailSessions makes NextSessions fail with err (nil restores it), as an unreachable registry would.
func (s *Store) FailSessions(err error) {
	s.mu.Lock()
	s.sessionFail = err
	s.mu.Unlock()
}

// SessionCalls is how many times NextSessions was called (each call is one registry round trip).
func (s *Store) SessionCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessionCalls
}

// RecordJobStatuses implements gateway.Store. Like the registry it refuses a batch with an invalid status as
// a whole; FailJobStatusWrites makes it fail on purpose.
func (s *Store) RecordJobStatuses(ctx context.Context, sts []fleet.JobStatus) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.jobCalls++
	if s.jobFailures > 0 {
		s.jobFailures--
		return errors.New("record job statuses: injected failure")
	}
	for _, st := range sts {
		if !protocol.ValidJobStatus(st.Status) || st.JobID == "" || st.DeviceID == "" {
			return fmt.Errorf("record job statuses: invalid status %+v", st)
		}
	}
	s.jobStatuses = append(s.jobStatuses, sts...)
	return nil
}

// FailJobStatusWrites makes the next n RecordJobStatuses calls fail.
func (s *Store) FailJobStatusWrites(n int) {
	s.mu.Lock()
	s.jobFailures = n
	s.mu.Unlock()
}

// JobStatuses returns every job status recorded so far, in the order they were written.
func (s *Store) JobStatuses() []fleet.JobStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]fleet.JobStatus(nil), s.jobStatuses...)
}

// JobStatusesOf returns the statuses device id reported for job, in order.
func (s *Store) JobStatusesOf(job, id string) []fleet.JobStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []fleet.JobStatus
	for _, st := range s.jobStatuses {
		if st.JobID == job && st.DeviceID == id {
			out = append(out, st)
		}
	}
	return out
}

// LatestJobStatus is what the registry would hold for (job, id): the last status recorded.
func (s *Store) LatestJobStatus(job, id string) (fleet.JobStatus, bool) {
	all := s.JobStatusesOf(job, id)
	if len(all) == 0 {
		return fleet.JobStatus{}, false
	}
	return all[len(all)-1], true
}

// JobStatusCalls is the number of RecordJobStatuses calls so far, failed ones included.
func (s *Store) JobStatusCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.jobCalls
}

// ReportedPatches returns the reported patches applied for device id, in order.
func (s *Store) ReportedPatches(id string) []json.RawMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]json.RawMessage(nil), s.patches[id]...)
}

// SetScheme makes s the scheme in force (nil: none) and announces it as the registry's trigger does
// (fleet.SchemeChanged).
func (s *Store) SetScheme(sch *scheme.Scheme) {
	s.mu.Lock()
	s.scheme = sch
	s.mu.Unlock()
	s.Notify(fleet.SchemeChanged)
}

// FailScheme makes ActiveScheme fail with err (nil: succeed again).
func (s *Store) FailScheme(err error) {
	s.mu.Lock()
	s.schemeFail = err
	s.mu.Unlock()
}

// SchemeCalls counts ActiveScheme calls.
func (s *Store) SchemeCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.schemeCalls
}

// ActiveScheme implements gateway.Store.
func (s *Store) ActiveScheme(context.Context) (*scheme.Scheme, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.schemeCalls++
	if s.schemeFail != nil {
		return nil, s.schemeFail
	}
	return s.scheme, nil
}

// ListenDeviceChanges implements gateway.Store.
func (s *Store) ListenDeviceChanges(ctx context.Context, fn func(id string)) error {
	s.mu.Lock()
	n := s.nextL
	s.nextL++
	s.listeners[n] = fn
	s.mu.Unlock()
	// As the registry does once its LISTEN is in place: changes announced before then reached no one, so ""
	// tells the gateway to re-check what it holds. Without it a revocation made while the gateway's listener
	// goroutine was still starting would be lost, which the real registry never allows.
	fn("")
	s.mu.Lock()
	s.resumed++
	s.mu.Unlock()
	<-ctx.Done()
	s.mu.Lock()
	delete(s.listeners, n)
	s.resumed--
	s.mu.Unlock()
	return nil
}
