package registry_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/registry"
)

// The fleet's credentials as `credentials status` shows them: per kind (a device with a certificate renews it
// when it has no secret or last connected with the certificate), by expiry — a certificate device's being the
// registry's or its certificates' end, whichever comes first — with the soonest listed; retired devices left
// out; and the devices whose newest rotation timed out (a later rotation supersedes a missed one).
// `credentials rotate --dry-run` counts targets per kind the same way.
func TestCredentialOverview(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	now := time.Now().UTC().Truncate(time.Second)
	at := func(d time.Duration) *time.Time { t := now.Add(d); return &t }
	stage(t, reg, "op", []registry.StagedRow{
		{ID: "s-exp"}, {ID: "s-soon"}, {ID: "s-late"}, {ID: "s-none"},
		{ID: "c-soon", CertFingerprint: fingerprint("c-soon"), CertNotAfter: at(3 * 24 * time.Hour)},
		{ID: "c-none", CertFingerprint: fingerprint("c-none")},
		{ID: "b-cert", CertFingerprint: fingerprint("b-cert"), SecretHash: creds.Digest("secret-b-cert"), CertNotAfter: at(20 * 24 * time.Hour)},
		{ID: "r-1"},
	})
	_, err := reg.ProvisionBatch(ctx, "op", 0, 8, 0)
	require.NoError(t, err)
	for id, expires := range map[string]*time.Time{"s-exp": at(-time.Hour), "s-soon": at(5 * 24 * time.Hour), "s-late": at(60 * 24 * time.Hour),
		"b-cert": at(10 * 24 * time.Hour), "r-1": at(-time.Hour)} {
		_, err := reg.Pool().Exec(ctx, "UPDATE devices SET credential_expires_at = $2 WHERE id = $1", id, expires)
		require.NoError(t, err)
	}
	_, err = reg.Pool().Exec(ctx, "UPDATE devices SET auth_digest = cert_fingerprint WHERE id = 'b-cert'")
	require.NoError(t, err)
	_, err = reg.Pool().Exec(ctx, "UPDATE devices SET status = 'retired' WHERE id = 'r-1'")
	require.NoError(t, err)

	// Rotations: s-late missed an old one and made a newer one; s-soon missed the old one; c-soon the new one.
	_, err = reg.Pool().Exec(ctx, `INSERT INTO jobs (id, kind, query, spec, created_at) VALUES
		('rot-old', 'rotate_credentials', 'ids: …', '{}', now() - interval '2 days'),
		('rot-new', 'rotate_credentials', 'ids: …', '{}', now() - interval '1 day'),
		('job-other', 'method', 'ids: …', '{}', now())`)
	require.NoError(t, err)
	_, err = reg.Pool().Exec(ctx, `INSERT INTO job_devices (job_id, seq, device_id, state, error, updated_at) VALUES
		('rot-old', 0, 's-late', 'timed_out', 'missed', now() - interval '40 hours'),
		('rot-old', 1, 's-soon', 'timed_out', 'missed old', now() - interval '40 hours'),
		('rot-new', 0, 's-late', 'succeeded', '', now() - interval '20 hours'),
		('rot-new', 1, 'c-soon', 'timed_out', 'missed new', now() - interval '10 hours'),
		('job-other', 0, 's-none', 'timed_out', 'a method job', now())`)
	require.NoError(t, err)

	o, err := reg.CredentialOverview(ctx, now, 30*24*time.Hour, 10)
	require.NoError(t, err)
	assert.Equal(t, []registry.CredentialKindCounts{
		{Kind: registry.CredentialSecret, Devices: 4, Expired: 1, Expiring: 1, NoExpiry: 1},
		{Kind: registry.CredentialCertificate, Devices: 3, Expired: 0, Expiring: 2, NoExpiry: 1},
	}, o.Kinds)
	var ids []string
	for _, d := range o.Expiring {
		ids = append(ids, d.DeviceID+"/"+d.Kind)
	}
	assert.Equal(t, []string{"s-exp/secret", "c-soon/certificate", "s-soon/secret", "b-cert/certificate"}, ids, "soonest first")
	assert.True(t, o.Expiring[3].ExpiresAt.Equal(*at(10 * 24 * time.Hour)), "the registry's expiry, sooner than the certificate's end")
	assert.True(t, o.Expiring[1].ExpiresAt.Equal(*at(3 * 24 * time.Hour)), "the certificate's end, no registry expiry")
	assert.Equal(t, int64(2), o.Missed)
	require.Len(t, o.MissedDevices, 2)
	assert.Equal(t, registry.MissedRotation{DeviceID: "c-soon", JobID: "rot-new", Reason: "missed new", At: o.MissedDevices[0].At}, o.MissedDevices[0])
	assert.Equal(t, "s-soon", o.MissedDevices[1].DeviceID, "newest first")

	o, err = reg.CredentialOverview(ctx, now, 30*24*time.Hour, 1)
	require.NoError(t, err)
	assert.Len(t, o.Expiring, 1)
	assert.Len(t, o.MissedDevices, 1)
	assert.Equal(t, int64(2), o.Missed, "counted beyond the limit")

	secrets, certs, inactive, err := reg.CredentialKindsOf(ctx, "", []string{"s-exp", "c-soon", "b-cert", "nope", "r-1", "s-exp"})
	require.NoError(t, err)
	assert.Equal(t, [3]int64{1, 2, 2}, [3]int64{secrets, certs, inactive}, "unknown and retired apart; a repeated id once")
	secrets, certs, inactive, err = reg.CredentialKindsOf(ctx, "SELECT * FROM devices", nil)
	require.NoError(t, err)
	assert.Equal(t, [3]int64{4, 3, 0}, [3]int64{secrets, certs, inactive})
	_, _, _, err = reg.CredentialKindsOf(ctx, "SELECT * FROM nowhere", nil)
	require.Error(t, err)
}
