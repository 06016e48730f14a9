// Package gatewaytest provides an in-memory gateway.Store, so that the gateway, the device package and the
// simulator can be tested against a real broker without Postgres. It mimics the registry's semantics that
// the gateway depends on: ErrNotFound, ErrNotActive, twin limits, per-section versions and change
// notifications on status or credential changes. It also records what the gateway wrote (reported patches,
// job statuses, connection events), so tests can assert on the traffic, not only on the end state.
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
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// Store is an in-memory registry. The zero value is not usable; call New.
type Store struct {
	mu        sync.Mutex
	devices   map[string]*device
	listeners map[int]func(string)
	nextL     int

	applyCalls   int
	applyPatches int
	authLookups  int
	getCalls     int
	events       []registry.ConnEvent
	patches      map[string][]json.RawMessage
	jobStatuses  []registry.JobStatus
	jobCalls     int
	jobFailures  int

	// AuthDelay slows DeviceAuth, to exercise concurrent CONNECTs sharing one lookup.
	AuthDelay time.Duration
}

type device struct {
	auth      registry.DeviceAuth
	desired   []byte
	desiredV  int64
	reported  []byte
	reportedV int64
}

// New returns an empty store.
func New() *Store {
	return &Store{devices: make(map[string]*device), listeners: make(map[int]func(string)),
		patches: make(map[string][]json.RawMessage)}
}

// Add provisions an active device with secret in its primary slot.
func (s *Store) Add(id, secret string) {
	s.mu.Lock()
	s.devices[id] = &device{auth: registry.DeviceAuth{ID: id, Status: registry.StatusActive, Secret1Hash: creds.Digest(secret)}}
	s.mu.Unlock()
	s.Notify(id)
}

// SetSecondary sets the secondary credential (rotation).
func (s *Store) SetSecondary(id, secret string) {
	s.update(id, func(d *device) { d.auth.Secret2Hash = creds.Digest(secret) })
}

// SetPrimary replaces the primary credential.
func (s *Store) SetPrimary(id, secret string) {
	s.update(id, func(d *device) { d.auth.Secret1Hash = creds.Digest(secret) })
}

// SetStatus changes the status and notifies, as the registry does.
func (s *Store) SetStatus(id, status string) {
	s.update(id, func(d *device) { d.auth.Status = fleet.DeviceStatus(status) })
}

// Delete removes the device and notifies.
func (s *Store) Delete(id string) {
	s.mu.Lock()
	delete(s.devices, id)
	s.mu.Unlock()
	s.Notify(id)
}

// Forget removes the device without a notification, as if the gateway had missed it.
func (s *Store) Forget(id string) {
	s.mu.Lock()
	delete(s.devices, id)
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
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[id]
	if !ok {
		return 0, fmt.Errorf("set desired %s: %w", id, registry.ErrNotFound)
	}
	doc, err := twin.Apply(twin.Desired, d.desired, patch)
	if err != nil {
		return 0, err
	}
	d.desired = doc
	d.desiredV++
	return d.desiredV, nil
}

// SetReported merges patch into the reported document, as if the device had reported it earlier (e.g. before
// a simulator restart), and returns the new reported version.
func (s *Store) SetReported(id string, patch json.RawMessage) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[id]
	if !ok {
		return 0, fmt.Errorf("set reported %s: %w", id, registry.ErrNotFound)
	}
	doc, err := twin.Apply(twin.Reported, d.reported, patch)
	if err != nil {
		return 0, err
	}
	d.reported = doc
	d.reportedV++
	return d.reportedV, nil
}

// Reported returns the device's reported document and version.
func (s *Store) Reported(id string) (json.RawMessage, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[id]
	if !ok {
		return nil, 0
	}
	return append(json.RawMessage(nil), d.reported...), d.reportedV
}

// ApplyCalls is the number of ApplyReported calls so far, and Patches the number of patches they carried.
func (s *Store) ApplyCalls() (calls, patches int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applyCalls, s.applyPatches
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
func (s *Store) Events() []registry.ConnEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]registry.ConnEvent(nil), s.events...)
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
func (s *Store) DeviceAuth(ctx context.Context, id string) (registry.DeviceAuth, error) {
	if s.AuthDelay > 0 {
		select {
		case <-time.After(s.AuthDelay):
		case <-ctx.Done():
			return registry.DeviceAuth{}, ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.authLookups++
	d, ok := s.devices[id]
	if !ok {
		return registry.DeviceAuth{}, fmt.Errorf("device %s: %w", id, registry.ErrNotFound)
	}
	a := d.auth
	a.Secret1Hash = append([]byte(nil), a.Secret1Hash...)
	a.Secret2Hash = append([]byte(nil), a.Secret2Hash...)
	return a, nil
}

// GetTwin implements gateway.Store.
func (s *Store) GetTwin(ctx context.Context, id string) (twin.Twin, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.getCalls++
	d, ok := s.devices[id]
	if !ok {
		return twin.Twin{}, fmt.Errorf("device %s: %w", id, registry.ErrNotFound)
	}
	return twin.Twin{
		DeviceID: id,
		Status:   string(d.auth.Status),
		Properties: twin.Properties{
			Desired:  twin.VersionedDocument{Doc: append([]byte(nil), d.desired...), Version: d.desiredV},
			Reported: twin.VersionedDocument{Doc: append([]byte(nil), d.reported...), Version: d.reportedV},
		},
	}, nil
}

// ApplyReported implements gateway.Store.
func (s *Store) ApplyReported(ctx context.Context, patches []registry.ReportedPatch) ([]registry.ReportedResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applyCalls++
	s.applyPatches += len(patches)
	out := make([]registry.ReportedResult, len(patches))
	for i, p := range patches {
		out[i] = registry.ReportedResult{DeviceID: p.DeviceID, RequestID: p.RequestID}
		d, ok := s.devices[p.DeviceID]
		switch {
		case !ok:
			out[i].Err = fmt.Errorf("device %s: %w", p.DeviceID, registry.ErrNotFound)
		case d.auth.Status != registry.StatusActive:
			out[i].Err = fmt.Errorf("device %s: %w", p.DeviceID, registry.ErrNotActive)
		default:
			doc, err := twin.Apply(twin.Reported, d.reported, p.Patch)
			if err != nil {
				out[i].Err = err
				continue
			}
			d.reported = doc
			d.reportedV++
			out[i].Version = d.reportedV
			s.patches[p.DeviceID] = append(s.patches[p.DeviceID], append(json.RawMessage(nil), p.Patch...))
		}
	}
	return out, nil
}

// RecordConnections implements gateway.Store.
func (s *Store) RecordConnections(ctx context.Context, events []registry.ConnEvent) error {
	s.mu.Lock()
	s.events = append(s.events, events...)
	s.mu.Unlock()
	return nil
}

// RecordJobStatuses implements gateway.Store. Like the registry it refuses a batch with an invalid status as
// a whole; FailJobStatusWrites makes it fail on purpose.
func (s *Store) RecordJobStatuses(ctx context.Context, sts []registry.JobStatus) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.jobCalls++
	if s.jobFailures > 0 {
		s.jobFailures--
		return errors.New("record job statuses: injected failure")
	}
	for _, st := range sts {
		if !registry.ValidJobStatus(st.Status) || st.JobID == "" || st.DeviceID == "" {
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
func (s *Store) JobStatuses() []registry.JobStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]registry.JobStatus(nil), s.jobStatuses...)
}

// JobStatusesOf returns the statuses device id reported for job, in order.
func (s *Store) JobStatusesOf(job, id string) []registry.JobStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []registry.JobStatus
	for _, st := range s.jobStatuses {
		if st.JobID == job && st.DeviceID == id {
			out = append(out, st)
		}
	}
	return out
}

// LatestJobStatus is what the registry would hold for (job, id): the last status recorded.
func (s *Store) LatestJobStatus(job, id string) (registry.JobStatus, bool) {
	all := s.JobStatusesOf(job, id)
	if len(all) == 0 {
		return registry.JobStatus{}, false
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

// ListenDeviceChanges implements gateway.Store.
func (s *Store) ListenDeviceChanges(ctx context.Context, fn func(id string)) error {
	s.mu.Lock()
	n := s.nextL
	s.nextL++
	s.listeners[n] = fn
	s.mu.Unlock()
	<-ctx.Done()
	s.mu.Lock()
	delete(s.listeners, n)
	s.mu.Unlock()
	return nil
}
