package registry_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/registry"
)

func fingerprint(s string) []byte {
	d := sha256.Sum256([]byte("certificate of " + s))
	return d[:]
}

// Devices with certificates and devices with secrets in one registry: provisioning stores each row's
// fingerprint or digest (in one INSERT, and through the row-by-row path a conflict takes), the gateway's
// lookup returns them, a changed fingerprint is announced, and retiring clears it.
func TestCertificateFingerprintsAreProvisionedAnnouncedAndCleared(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := open(t)
	stage(t, reg, "op-1", []registry.StagedRow{
		{ID: "s-1", SecretHash: creds.Digest("secret-s-1")},
		{ID: "c-1", CertFingerprint: fingerprint("c-1")},
		{ID: "b-1", SecretHash: creds.Digest("secret-b-1"), CertFingerprint: fingerprint("b-1")},
		{ID: "c-bad", CertFingerprint: fingerprint("c-bad")[:16]},
	})
	counts, err := reg.ProvisionBatch(ctx, "op-1", 0, 4, 0)
	require.NoError(t, err)
	require.Equal(t, fleet.ProvisionCounts{Created: 3, Invalid: 1}, counts)
	res, err := reg.ProvisionResults(ctx, "op-1", fleet.RowInvalid, 10)
	require.NoError(t, err)
	require.Len(t, res, 1)
	require.Equal(t, "c-bad", res[0].ID)
	require.Equal(t, "missing credential digest", res[0].Reason)

	// A second manifest whose batch conflicts with an existing device goes row by row.
	stage(t, reg, "op-2", []registry.StagedRow{
		{ID: "c-1", CertFingerprint: fingerprint("c-1 again")},
		{ID: "c-2", CertFingerprint: fingerprint("c-2")},
	})
	counts, err = reg.ProvisionBatch(ctx, "op-2", 0, 2, 0)
	require.NoError(t, err)
	require.Equal(t, fleet.ProvisionCounts{Created: 1, Existing: 1}, counts)

	for id, want := range map[string]struct {
		secret bool
		fp     []byte
	}{
		"s-1": {secret: true},
		"c-1": {fp: fingerprint("c-1")}, // the existing device kept its certificate
		"c-2": {fp: fingerprint("c-2")},
		"b-1": {secret: true, fp: fingerprint("b-1")},
	} {
		a, err := reg.DeviceAuth(ctx, id)
		require.NoError(t, err)
		require.Equal(t, want.secret, creds.Matches("secret-"+id, a.Secret1Hash), id)
		require.Equal(t, want.fp, a.CertFingerprint, id)
		d, err := reg.GetDevice(ctx, id)
		require.NoError(t, err)
		require.Equal(t, hex.EncodeToString(want.fp), d.CertFingerprint, id)
		require.Equal(t, want.secret, d.HasSecret1, id)
	}

	got := make(chan string, 10)
	go reg.ListenDeviceChanges(ctx, func(id string) { got <- id }) //nolint:errcheck
	next := func() string {
		select {
		case id := <-got:
			return id
		case <-time.After(10 * time.Second):
			t.Fatal("no notification")
			return ""
		}
	}
	require.Equal(t, "", next(), "listening")
	_, err = reg.Pool().Exec(ctx, "UPDATE devices SET cert_fingerprint = $2 WHERE id = $1", "c-2", fingerprint("c-2 renewed"))
	require.NoError(t, err)
	require.Equal(t, "c-2", next(), "a new fingerprint is announced")

	_, err = reg.RetireDevices(ctx, "retire-1", []string{"c-1"}, "test")
	require.NoError(t, err)
	require.Equal(t, "c-1", next())
	a, err := reg.DeviceAuth(ctx, "c-1")
	require.NoError(t, err)
	require.Equal(t, fleet.StatusRetired, a.Status)
	require.Nil(t, a.CertFingerprint, "retiring clears the fingerprint")
	require.False(t, bytes.Equal(a.CertFingerprint, fingerprint("c-1")))
}

// The second certificate slot of a renewal (docs/architecture.md, "Certificate renewal"): staged with its
// certificate's end, announced, returned to the gateway, shown per slot with the slot in use, confirmed by a
// session that presented it (the old slot cleared, the expiry following the new certificate), and cleared by
// retiring.
func TestCertificateRenewalSlots(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := open(t)
	stage(t, reg, "op-r", []registry.StagedRow{{ID: "r-1", CertFingerprint: fingerprint("r-1")}, {ID: "r-s", SecretHash: creds.Digest("secret-r-s")}})
	_, err := reg.ProvisionBatch(ctx, "op-r", 0, 2, 0)
	require.NoError(t, err)
	_, err = reg.Pool().Exec(ctx, "UPDATE devices SET credential_expires_at = now() + interval '30 days' WHERE id = 'r-1'")
	require.NoError(t, err)
	require.NoError(t, reg.RecordConnections(ctx, []fleet.ConnEvent{
		{DeviceID: "r-1", Kind: fleet.ConnUp, Session: 1, At: time.Now(), Slot: 0, Digest: fingerprint("r-1")},
		{DeviceID: "r-s", Kind: fleet.ConnUp, Session: 1, At: time.Now(), Slot: 1, Digest: creds.Digest("secret-r-s")},
	}))
	kinds, err := reg.CertificateTargets(ctx, []string{"r-1", "r-s", "nobody"})
	require.NoError(t, err)
	require.Equal(t, map[string]bool{"r-1": true}, kinds, "only the certificate device renews a certificate")

	_, err = reg.CreateJobForIDs(ctx, fleet.NewJob{ID: "rot-1", Kind: fleet.JobRotate, Query: "ids", Spec: []byte(`{}`)}, []string{"r-1", "r-s"})
	require.NoError(t, err)
	got := make(chan string, 10)
	go reg.ListenDeviceChanges(ctx, func(id string) { got <- id }) //nolint:errcheck
	next := func() string {
		select {
		case id := <-got:
			return id
		case <-time.After(10 * time.Second):
			t.Fatal("no notification")
			return ""
		}
	}
	require.Equal(t, "", next(), "listening")
	end := time.Now().Add(90 * 24 * time.Hour).UTC().Truncate(time.Second)
	staged, err := reg.StageRotation(ctx, "rot-1", []fleet.RotationWrite{
		{Target: fleet.JobTarget{Seq: 0, DeviceID: "r-1", State: fleet.JobPending}, Digest: fingerprint("r-1 renewed"), Cert: true, NotAfter: end},
		// A certificate for a secret device is refused: the write does not match the device's kind.
		{Target: fleet.JobTarget{Seq: 1, DeviceID: "r-s", State: fleet.JobPending}, Digest: fingerprint("not a secret"), Cert: true},
	})
	require.NoError(t, err)
	require.Equal(t, fleet.RotationStaged{Seq: 0, DeviceID: "r-1", Slot: 2, Send: true}, staged[0])
	require.False(t, staged[1].Send, "a certificate for a secret device is refused")
	require.Equal(t, "r-1", next(), "the new slot is announced")
	a, err := reg.DeviceAuth(ctx, "r-1")
	require.NoError(t, err)
	require.Equal(t, fingerprint("r-1"), a.CertFingerprint)
	require.Equal(t, fingerprint("r-1 renewed"), a.Cert2Fingerprint, "the gateway accepts either slot")
	devs, err := reg.JobDevices(ctx, "rot-1", []fleet.JobState{fleet.JobFailed}, 10)
	require.NoError(t, err)
	require.Len(t, devs, 1)
	require.Equal(t, fleet.RotateKindChanged, devs[0].Error)

	require.NoError(t, reg.FinishRotationSends(ctx, "rot-1", []fleet.JobOutcome{{Seq: 0, State: fleet.JobRunning}}, nil))
	p, err := reg.CollectRotations(ctx, "rot-1", 0)
	require.NoError(t, err)
	require.Equal(t, fleet.AckProgress{Waiting: 1, WaitingOnline: 1}, p, "not confirmed before a session presents it")
	require.NoError(t, reg.RecordConnections(ctx, []fleet.ConnEvent{
		{DeviceID: "r-1", Kind: fleet.ConnUp, Session: 2, At: time.Now(), Slot: 0, Digest: fingerprint("r-1 renewed")}}))
	d, err := reg.GetDevice(ctx, "r-1")
	require.NoError(t, err)
	require.Equal(t, 2, d.CertSlotInUse)
	require.NotNil(t, d.Cert2NotAfter)
	require.True(t, end.Equal(*d.Cert2NotAfter))
	p, err = reg.CollectRotations(ctx, "rot-1", 0)
	require.NoError(t, err)
	require.Equal(t, int64(1), p.Acked)

	d, err = reg.GetDevice(ctx, "r-1")
	require.NoError(t, err)
	require.Empty(t, d.CertFingerprint, "the old certificate is revoked")
	require.Equal(t, hex.EncodeToString(fingerprint("r-1 renewed")), d.Cert2Fingerprint)
	require.NotNil(t, d.CredentialExpiresAt)
	require.True(t, end.Equal(*d.CredentialExpiresAt), "the expiry follows the new certificate")
	certs, err := reg.RotationCertificates(ctx, "rot-1", 10)
	require.NoError(t, err)
	require.Equal(t, []registry.CertificateSlots{{DeviceID: "r-1", State: fleet.JobSucceeded, Slot2: hex.EncodeToString(fingerprint("r-1 renewed")),
		Slot2NotAfter: d.Cert2NotAfter, InUse: 2}}, certs)

	// A renewal the device never confirms is reported as such when the job closes.
	_, err = reg.CreateJobForIDs(ctx, fleet.NewJob{ID: "rot-2", Kind: fleet.JobRotate, Query: "ids", Spec: []byte(`{}`)}, []string{"r-1"})
	require.NoError(t, err)
	_, err = reg.StageRotation(ctx, "rot-2", []fleet.RotationWrite{
		{Target: fleet.JobTarget{Seq: 0, DeviceID: "r-1", State: fleet.JobPending}, Digest: fingerprint("r-1 third"), Cert: true, NotAfter: end}})
	require.NoError(t, err)
	require.NoError(t, reg.FinishRotationSends(ctx, "rot-2", []fleet.JobOutcome{{Seq: 0, State: fleet.JobRunning}}, nil))
	require.NoError(t, reg.CloseJob(ctx, "rot-2", fleet.JobCompletedWithFailures))
	devs, err = reg.JobDevices(ctx, "rot-2", nil, 10)
	require.NoError(t, err)
	require.Len(t, devs, 1)
	require.Equal(t, fleet.RotateMissedCertificate, devs[0].Error)

	_, err = reg.RetireDevices(ctx, "retire-r", []string{"r-1"}, "test")
	require.NoError(t, err)
	a, err = reg.DeviceAuth(ctx, "r-1")
	require.NoError(t, err)
	require.Nil(t, a.Cert2Fingerprint, "retiring clears both slots")
}

// A provisioned certificate's end is staged with its fingerprint and recorded with it when the batch creates
// the device (cert_not_after), by both kinds of staging and through the row-by-row path a conflict takes;
// the credential expiry is then the certificate's end, or creation + validity if sooner. A secret device
// records no certificate end.
func TestProvisionedCertificateEndIsRecorded(t *testing.T) {
	for _, c := range []struct {
		name               string
		chunked, conflicts bool
	}{{"one transaction", false, false}, {"chunked", true, false}, {"row by row", false, true}, {"chunked row by row", true, true}} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			reg := open(t)
			if c.conflicts {
				stageAs(t, reg, "pre", []registry.StagedRow{{ID: "old-1"}}, c.chunked)
				_, err := reg.ProvisionBatch(ctx, "pre", 0, 1, 0)
				require.NoError(t, err)
			}
			soon := time.Now().Add(10 * 24 * time.Hour).UTC().Truncate(time.Second)
			late := time.Now().Add(60 * 24 * time.Hour).UTC().Truncate(time.Second)
			rows := []registry.StagedRow{
				{ID: "c-soon", CertFingerprint: fingerprint("c-soon"), CertNotAfter: &soon},
				{ID: "c-late", CertFingerprint: fingerprint("c-late"), CertNotAfter: &late},
				{ID: "s-1", SecretHash: creds.Digest("secret-s-1")},
				{ID: "old-1"},
			}
			stageAs(t, reg, "op", rows, c.chunked)
			counts, err := reg.ProvisionBatch(ctx, "op", 0, 4, 30*24*time.Hour)
			require.NoError(t, err)
			if c.conflicts {
				require.Equal(t, fleet.ProvisionCounts{Created: 3, Existing: 1}, counts)
			} else {
				require.Equal(t, fleet.ProvisionCounts{Created: 4}, counts)
			}
			for id, want := range map[string]*time.Time{"c-soon": &soon, "c-late": &late, "s-1": nil} {
				d, err := reg.GetDevice(ctx, id)
				require.NoError(t, err)
				if want == nil {
					require.Nil(t, d.CertNotAfter, id)
				} else {
					require.NotNil(t, d.CertNotAfter, id)
					require.True(t, want.Equal(*d.CertNotAfter), "%s: %s, want %s", id, d.CertNotAfter, want)
				}
				require.NotNil(t, d.CredentialExpiresAt, id)
				expires := d.CreatedAt.Add(30 * 24 * time.Hour)
				if want != nil && want.Before(expires) {
					expires = *want
				}
				require.WithinDuration(t, expires, *d.CredentialExpiresAt, time.Millisecond, id)
				a, err := reg.DeviceAuth(ctx, id)
				require.NoError(t, err)
				require.WithinDuration(t, expires, a.ExpiresAt, time.Millisecond, "%s: the gateway sees the same expiry", id)
			}
		})
	}
}
