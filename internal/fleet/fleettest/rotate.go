package fleettest

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// renewsCertificate is the registry's rule for a device's rotation kind.
func renewsCertificate(d *Device) bool {
	if d.CertFingerprint == nil && d.Cert2Fingerprint == nil {
		return false
	}
	if d.Secret1Hash == nil && d.Secret2Hash == nil {
		return true
	}
	return d.AuthDigest != nil && (bytes.Equal(d.AuthDigest, d.CertFingerprint) || bytes.Equal(d.AuthDigest, d.Cert2Fingerprint))
}

// slotsOf points at a device's two slots of a kind.
func slotsOf(d *Device, cert bool) (a, b *[]byte) {
	if cert {
		return &d.CertFingerprint, &d.Cert2Fingerprint
	}
	return &d.Secret1Hash, &d.Secret2Hash
}

// CertificateTargets reports which devices renew a certificate, as the registry does.
func (s *Store) CertificateTargets(_ context.Context, ids []string) (map[string]bool, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("CertificateTargets"); err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, id := range ids {
		d := s.Devices[id]
		if d != nil && (d.Status == "" || d.Status == fleet.StatusActive) && renewsCertificate(d) {
			out[id] = true
		}
	}
	return out, nil
}

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
		d        *Device
		slot     int
		digest   []byte
		cert     bool
		notAfter time.Time
	}
	var ws []write
	var outs []fleet.JobOutcome
	var running []int64
	slots := s.CredSlots[job]
	if slots == nil {
		slots = map[int64]int{}
	}
	certs := s.CredCerts[job]
	if certs == nil {
		certs = map[int64]bool{}
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
		slot := slots[t.Seq]
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
		case renewsCertificate(d) != w.Cert || (slot != 0 && certs[t.Seq] != w.Cert):
			fail(fleet.RotateKindChanged)
			continue
		}
		pa, pb := slotsOf(d, w.Cert)
		a, b := *pa, *pb
		if slot != 0 {
			staged := a
			if slot == 2 {
				staged = b
			}
			if staged != nil && bytes.Equal(staged, d.AuthDigest) {
				running = append(running, t.Seq)
				out[i].Slot = slot
				continue
			}
		} else {
			switch {
			case d.AuthDigest != nil && bytes.Equal(d.AuthDigest, a):
				slot = 2
			case d.AuthDigest != nil && bytes.Equal(d.AuthDigest, b):
				slot = 1
			case b == nil:
				slot = 2
			case a == nil:
				slot = 1
			default:
				fail(fleet.RotateAmbiguous)
				continue
			}
		}
		out[i].Slot, out[i].Send = slot, true
		ws = append(ws, write{d: d, slot: slot, digest: w.Digest, cert: w.Cert, notAfter: w.NotAfter})
		newSlots[t.Seq] = slot
		certs[t.Seq] = w.Cert
	}
	for _, w := range ws {
		pa, pb := slotsOf(w.d, w.cert)
		switch {
		case w.slot == 1:
			*pa = w.digest
		default:
			*pb = w.digest
		}
		if w.cert {
			if w.slot == 1 {
				w.d.CertNotAfter = w.notAfter
			} else {
				w.d.Cert2NotAfter = w.notAfter
			}
		}
	}
	for seq, slot := range newSlots {
		slots[seq] = slot
		s.targetLocked(job, seq).State = fleet.JobDispatched
	}
	s.CredSlots[job] = slots
	s.CredCerts[job] = certs
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
		pa, pb := slotsOf(d, u.Cert)
		if u.Slot == 1 && bytes.Equal(*pa, u.Digest) {
			*pa = nil
		}
		if u.Slot == 2 && bytes.Equal(*pb, u.Digest) {
			*pb = nil
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
		cert := s.CredCerts[job][t.Seq]
		pa, pb := slotsOf(d, cert)
		cur := *pa
		if slot == 2 {
			cur = *pb
		}
		if d.AuthDigest == nil || !bytes.Equal(d.AuthDigest, cur) {
			p.Waiting++
			if d.Online {
				p.WaitingOnline++
			}
			continue
		}
		if slot == 1 {
			*pb = nil
		} else {
			*pa = nil
		}
		switch {
		case !cert:
			if validity > 0 {
				d.CredentialExpiresAt = s.now().Add(validity)
			}
		default:
			end := d.CertNotAfter
			if slot == 2 {
				end = d.Cert2NotAfter
			}
			if slot == 1 {
				d.Cert2NotAfter = time.Time{}
			} else {
				d.CertNotAfter = time.Time{}
			}
			switch {
			case validity > 0:
				d.CredentialExpiresAt = s.now().Add(validity)
				if !end.IsZero() && end.Before(d.CredentialExpiresAt) {
					d.CredentialExpiresAt = end
				}
			case !d.CredentialExpiresAt.IsZero() && !end.IsZero():
				d.CredentialExpiresAt = end
			}
		}
		t.State = fleet.JobSucceeded
		s.Rotated = append(s.Rotated, t.DeviceID)
		p.Acked++
	}
	return p, nil
}
