package fleettest

import (
	"context"
	"encoding/json"
	"sort"
	"time"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/health"
)

// maxComplianceRollouts is the registry's bound on the completed rollouts the firmware rule considers.
const maxComplianceRollouts = 10

// RunHealthCheck is the registry's health check over the in-memory fleet: the pure rules of internal/health
// (Evaluate per device, Reconcile against the open alerts) instead of the registry's set-based SQL, with the
// same results — new problems open alerts, persisting ones refresh theirs, alerts whose problem is gone
// (including those of devices disabled, retired or purged since) resolve — and the summary recorded under
// runID, a retry with the same id replacing it.
func (s *Store) RunHealthCheck(ctx context.Context, runID string, rules health.Rules) (fleet.HealthSummary, error) {
	if s.OnHealthCheck != nil {
		if err := s.OnHealthCheck(ctx); err != nil {
			return fleet.HealthSummary{}, err
		}
	}
	s.Mu.Lock()
	defer s.Mu.Unlock()
	s.HealthCalls = append(s.HealthCalls, HealthCall{RunID: runID, Rules: rules})
	if err := s.err("RunHealthCheck"); err != nil {
		return fleet.HealthSummary{}, err
	}
	rules, err := fleet.PrepareHealthCheck(runID, rules)
	if err != nil {
		return fleet.HealthSummary{}, err
	}
	t0 := time.Now()
	now := s.now()
	sum := fleet.HealthSummary{At: now, Problems: map[string]int64{}, Rules: rules}
	for _, k := range health.Kinds() {
		sum.Problems[k] = 0
	}

	compliance := s.complianceLocked()
	for _, c := range compliance {
		sum.Rollouts = append(sum.Rollouts, c.ID)
	}
	ids := make([]string, 0, len(s.Devices))
	for id := range s.Devices {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var findings []health.Finding
	for _, id := range ids {
		d := s.Devices[id]
		if d.Status != fleet.StatusRetired {
			sum.Devices++
			if d.Online {
				sum.Online++
			} else {
				sum.Offline++
			}
		}
		switch d.Status {
		case fleet.StatusActive:
			sum.Active++
		case fleet.StatusDisabled:
			sum.Disabled++
		case fleet.StatusRetired:
			sum.Retired++
		}
		for _, p := range health.Evaluate(s.healthDeviceLocked(id, d, compliance), rules, now) {
			findings = append(findings, health.Finding{DeviceID: id, Problem: p})
			sum.Problems[p.Kind]++
		}
	}

	var open []health.Alert
	byID := map[int64]*Alert{}
	for _, a := range s.Alerts {
		if a.ResolvedAt.IsZero() {
			open = append(open, health.Alert{ID: a.ID, DeviceID: a.DeviceID, Kind: string(a.Kind), Detail: a.Detail})
			byID[a.ID] = a
		}
	}
	toOpen, toRefresh, toResolve := health.Reconcile(open, findings)
	for _, f := range toOpen {
		s.Alerts = append(s.Alerts, &Alert{ID: int64(len(s.Alerts) + 1), DeviceID: f.DeviceID, Kind: fleet.AlertKind(f.Kind),
			Detail: f.Detail, FirstSeen: now, LastSeen: now})
	}
	for _, f := range toRefresh {
		for _, a := range byID {
			if a.DeviceID == f.DeviceID && string(a.Kind) == f.Kind {
				a.LastSeen, a.Detail = now, f.Detail
			}
		}
	}
	for _, a := range toResolve {
		byID[a.ID].ResolvedAt = now
	}
	sum.Opened, sum.Resolved = int64(len(toOpen)), int64(len(toResolve))
	sum.Open = int64(len(open) + len(toOpen) - len(toResolve))
	sum.Duration = time.Since(t0)
	s.Summaries[runID] = sum
	return sum, nil
}

// complianceLocked returns the rollouts the firmware rule holds devices to, as the registry chooses them:
// the newest completed rollout per distinct query, newest first, at most maxComplianceRollouts.
func (s *Store) complianceLocked() []*RolloutSpec {
	at := func(r *RolloutSpec) time.Time {
		if !r.Completed.IsZero() {
			return r.Completed
		}
		return r.Created
	}
	var done []*RolloutSpec
	for _, r := range s.RolloutSpecs {
		if !r.Completed.IsZero() {
			done = append(done, r)
		}
	}
	sort.Slice(done, func(i, j int) bool {
		if !at(done[i]).Equal(at(done[j])) {
			return at(done[i]).After(at(done[j]))
		}
		return done[i].ID > done[j].ID
	})
	seen := map[string]bool{}
	var out []*RolloutSpec
	for _, r := range done {
		if seen[r.Query] || len(out) == maxComplianceRollouts {
			continue
		}
		seen[r.Query] = true
		out = append(out, r)
	}
	return out
}

// healthDeviceLocked is what the rules read of d: the compliant version is that of the first (newest)
// rollout whose query selects it (Selects; a query the fake was not taught selects nothing).
func (s *Store) healthDeviceLocked(id string, d *Device, compliance []*RolloutSpec) health.Device {
	hd := health.Device{ID: id, Status: string(d.Status), Online: d.Online, LastSeen: d.LastSeen, CreatedAt: d.CreatedAt,
		DesiredAt: d.DesiredAt, CredentialExpiresAt: d.CredentialExpiresAt, Health: d.Health,
		FirmwareVersion: d.ReportedVersion}
	// The documents are the fake's own JSON; a document that does not decode has no keys for the rules.
	_ = json.Unmarshal(d.Desired, &hd.Desired)
	_ = json.Unmarshal(d.Reported, &hd.Reported)
	for _, r := range compliance {
		for _, sel := range s.Selects[r.Query] {
			if sel == id {
				hd.CompliantVersion, hd.CompliantRollout = r.Version, r.ID
				return hd
			}
		}
	}
	return hd
}
