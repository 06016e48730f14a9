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
