package fleettest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// Subject returns the fake as a contract subject.
func (s *Store) Subject() Subject { return Subject{Store: s, Seed: seeder{s}} }

// seeder sets the fake up the way the CLI and the gateway set the registry up.
type seeder struct{ s *Store }

func (f seeder) Stage(_ *testing.T, op string, rows []StagedRow) { f.s.Stage(op, rows) }

func (f seeder) CreateJob(_ *testing.T, job string, _ fleet.JobKind, ids ...string) {
	var unique []string
	for _, id := range ids {
		if !slices.Contains(unique, id) {
			unique = append(unique, id)
		}
	}
	f.s.AddJob(job, unique...)
}

func (f seeder) CreateRollout(_ *testing.T, id string, fw fleet.Firmware, ids ...string) int64 {
	f.s.Mu.Lock()
	f.s.FirmwareURL[fw.Version] = fw.URL
	var claim []string
	for _, dev := range ids {
		if d := f.s.Devices[dev]; d != nil && d.Status == fleet.StatusActive && d.ReportedVersion != fw.Version {
			claim = append(claim, dev)
		}
	}
	f.s.Mu.Unlock()
	for _, dev := range claim {
		f.s.AddRow(RolloutRow{Rollout: id, DeviceID: dev})
	}
	return int64(len(claim))
}

func (f seeder) Connect(t *testing.T, id string) {
	f.s.Mu.Lock()
	defer f.s.Mu.Unlock()
	d := f.s.Devices[id]
	if d == nil {
		t.Fatalf("connect %s: no such device", id)
	}
	d.Online, d.LastSeen = true, f.s.now()
}

func (f seeder) Report(t *testing.T, id string, patch string) {
	res, err := f.s.ApplyReported(context.Background(), []fleet.ReportedPatch{{DeviceID: id, RequestID: "r1", Patch: []byte(patch)}})
	if err != nil || res[0].Err != nil {
		t.Fatalf("report %s: %v %v", id, err, res)
	}
}

func (f seeder) AddFirmware(_ *testing.T, fw fleet.Firmware) {
	f.s.Mu.Lock()
	defer f.s.Mu.Unlock()
	f.s.FirmwareURL[fw.Version] = fw.URL
}

func (f seeder) Selects(_ *testing.T, q string, ids ...string) {
	f.s.Mu.Lock()
	defer f.s.Mu.Unlock()
	f.s.Selects[q] = slices.Clone(ids)
}

func (f seeder) AgeStaging(_ *testing.T, op string, by time.Duration) {
	f.s.Mu.Lock()
	defer f.s.Mu.Unlock()
	f.s.StagedAt[op] = f.s.StagedAt[op].Add(-by)
}

func (f seeder) CredentialExpiry(t *testing.T, id string) time.Time {
	f.s.Mu.Lock()
	defer f.s.Mu.Unlock()
	d := f.s.Devices[id]
	if d == nil {
		t.Fatalf("credential expiry of %s: no such device", id)
	}
	return d.CredentialExpiresAt
}
