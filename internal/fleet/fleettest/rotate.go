package fleettest

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// StageRotation writes the new digests into the devices' free slots and marks the targets dispatched, all or
// nothing, as the registry does.
func (s *Store) StageRotation(_ context.Context, job string, writes []fleet.RotationWrite) ([]fleet.RotationStaged, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("StageRotation"); err != nil {
		return nil, err
	}
	out := make([]fleet.RotationStaged, len(writes))
	type write struct {
		d      *Device
		slot   int
		digest []byte
	}
	var ws []write
	var outs []fleet.JobOutcome
	var running []int64
	slots := s.CredSlots[job]
	if slots == nil {
		slots = map[int64]int{}
	}
	newSlots := map[int64]int{}
	for i, w := range writes {
		t := w.Target
		out[i] = fleet.RotationStaged{Seq: t.Seq, DeviceID: t.DeviceID}
		cur := s.targetLocked(job, t.Seq)
		if cur == nil || (cur.State != fleet.JobPending && cur.State != fleet.JobDispatched) {
			return nil, fmt.Errorf("job %s: target %d was finished by another attempt meanwhile", job, t.Seq)
		}
		d := s.Devices[t.DeviceID]
		fail := func(reason string) {
			outs = append(outs, fleet.JobOutcome{Seq: t.Seq, State: fleet.JobFailed, Error: reason})
		}
		switch {
		case d == nil:
			fail(fleet.RotateUnknown)
			continue
		case d.Status == fleet.StatusRetired:
			fail(fleet.RotateRetired)
			continue
		case d.Status != "" && d.Status != fleet.StatusActive:
			fail(fleet.RotateDisabled)
			continue
		case d.Secret1Hash == nil && d.Secret2Hash == nil && d.CertFingerprint != nil:
			fail(fleet.RotateCertificate)
			continue
		}
		slot := slots[t.Seq]
		if slot != 0 {
			staged := d.Secret1Hash
			if slot == 2 {
				staged = d.Secret2Hash
			}
			if staged != nil && bytes.Equal(staged, d.AuthDigest) {
				running = append(running, t.Seq)
				out[i].Slot = slot
				continue
			}
		} else {
			switch {
			case d.AuthDigest != nil && bytes.Equal(d.AuthDigest, d.Secret1Hash):
				slot = 2
			case d.AuthDigest != nil && bytes.Equal(d.AuthDigest, d.Secret2Hash):
				slot = 1
			case d.Secret2Hash == nil:
				slot = 2
			case d.Secret1Hash == nil:
				slot = 1
			default:
				fail(fleet.RotateAmbiguous)
				continue
			}
		}
		out[i].Slot, out[i].Send = slot, true
		ws = append(ws, write{d: d, slot: slot, digest: w.Digest})
		newSlots[t.Seq] = slot
	}
	for _, w := range ws {
		if w.slot == 1 {
			w.d.Secret1Hash = w.digest
		} else {
			w.d.Secret2Hash = w.digest
		}
	}
	for seq, slot := range newSlots {
		slots[seq] = slot
		s.targetLocked(job, seq).State = fleet.JobDispatched
	}
	s.CredSlots[job] = slots
	for _, seq := range running {
		s.targetLocked(job, seq).State = fleet.JobRunning
	}
	s.recordLocked(job, outs)
	return out, nil
}

// targetLocked is a pointer to a job's target.
func (s *Store) targetLocked(job string, seq int64) *fleet.JobTarget {
	for i := range s.Targets[job] {
		if s.Targets[job][i].Seq == seq {
			return &s.Targets[job][i]
		}
	}
	return nil
}

// FinishRotationSends clears the undelivered digests still in place and records the outcomes.
func (s *Store) FinishRotationSends(_ context.Context, job string, outs []fleet.JobOutcome, undos []fleet.RotationUndo) error {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("FinishRotationSends"); err != nil {
		return err
	}
	for _, u := range undos {
		d := s.Devices[u.DeviceID]
		if d == nil {
			continue
		}
		if u.Slot == 1 && bytes.Equal(d.Secret1Hash, u.Digest) {
			d.Secret1Hash = nil
		}
		if u.Slot == 2 && bytes.Equal(d.Secret2Hash, u.Digest) {
			d.Secret2Hash = nil
		}
	}
	s.recordLocked(job, outs)
	return nil
}

// CollectRotations confirms the running targets whose device connected with its new slot's digest.
func (s *Store) CollectRotations(_ context.Context, job string, validity time.Duration) (fleet.AckProgress, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	var p fleet.AckProgress
	if err := s.err("CollectRotations"); err != nil {
		return p, err
	}
	for i := range s.Targets[job] {
		t := &s.Targets[job][i]
		if t.State != fleet.JobRunning {
			continue
		}
		d := s.Devices[t.DeviceID]
		slot := s.CredSlots[job][t.Seq]
		cur := d.Secret1Hash
		if slot == 2 {
			cur = d.Secret2Hash
		}
		if d.AuthDigest == nil || !bytes.Equal(d.AuthDigest, cur) {
			p.Waiting++
			if d.Online {
				p.WaitingOnline++
			}
			continue
		}
		if slot == 1 {
			d.Secret2Hash = nil
		} else {
			d.Secret1Hash = nil
		}
		if validity > 0 {
			d.CredentialExpiresAt = s.now().Add(validity)
		}
		t.State = fleet.JobSucceeded
		s.Rotated = append(s.Rotated, t.DeviceID)
		p.Acked++
	}
	return p, nil
}
