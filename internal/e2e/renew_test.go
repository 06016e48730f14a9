package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/simulator"
)

// Certificate renewal through the real binaries (docs/architecture.md, "Certificate renewal"): the worker
// (with the fleet CA's directory), the gateway (trusting the fleet CA) and the CLI. One `credentials rotate`
// over x509 devices and a secret device rotates each by its kind: the simulated x509 devices generate new
// keys, get certificates of --cert-validity signed for them, store them in their credentials file and
// reconnect with them; their old certificates are then refused. `credentials status` shows each slot's
// expiry. No private key, no CA key and no certificate is in the workflow's history.
func TestCertificateRenewal(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	caDir := filepath.Join(t.TempDir(), "ca")
	_, err := e.cli(ctx, "ca", "init", "--ca-dir", caDir, "-o", "json")
	require.NoError(t, err)
	files := pki.DeviceCAIn(caDir)
	e.workerProcess("FLEETFLOW_DEVICE_CA_DIR=" + caDir)
	_, tlsURL := e.gatewayProcess("FLEETFLOW_DEVICE_CA=" + files.Cert)

	certsFile := filepath.Join(t.TempDir(), "certs.ndjson")
	_, err = e.cli(ctx, "provision", "--count", "3", "--prefix", "ren-", "--auth", "x509", "--ca-dir", caDir,
		"--credential-validity", "30d", "--creds-out", certsFile, "-o", "json")
	require.NoError(t, err)
	secretsFile := filepath.Join(t.TempDir(), "secrets.ndjson")
	_, err = e.cli(ctx, "provision", "--count", "1", "--prefix", "rsec-", "--creds-out", secretsFile, "-o", "json")
	require.NoError(t, err)
	certs, secrets := mustCreds(t, certsFile), mustCreds(t, secretsFile)
	require.Len(t, certs, 3)

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	sim, err := simulator.New(simulator.Config{BrokerURL: tlsURL, CAFile: e.tls.CA, Creds: certs, CredentialsFile: certsFile, Logger: quiet})
	require.NoError(t, err)
	simCtx, stopSim := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = sim.Run(simCtx) }()
	t.Cleanup(func() { stopSim(); <-done })
	require.Eventually(t, func() bool { return sim.Stats().Reported == 3 }, 60*time.Second, 100*time.Millisecond, "%s", sim.Stats())
	e.simulate(ctx, secrets, simulator.Config{CredentialsFile: secretsFile})

	ids := []string{certs[0].ID, certs[1].ID, certs[2].ID, secrets[0].ID}
	out, err := e.cli(ctx, append([]string{"credentials", "rotate"}, append(ids, "--grace", "2m", "--cert-validity", "90d", "-o", "json")...)...)
	require.NoError(t, err, out)
	var res struct {
		ID      string `json:"id"`
		State   string `json:"state"`
		Rotated int    `json:"rotated"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &res), out)
	assert.Equal(t, 4, res.Rotated, "each device rotated by its kind")
	assert.Equal(t, int64(3), sim.Stats().Rotations, "the three x509 devices stored their certificates")

	renewed := mustCreds(t, certsFile)
	for i, c := range renewed {
		require.Equal(t, certs[i].ID, c.ID)
		require.Equal(t, 2, c.Slot, "%s presents slot 2", c.ID)
		require.NotNil(t, c.TLS2, "%s stored its new certificate and key", c.ID)
		require.Equal(t, certs[i].Cert, c.Cert, "%s keeps its old certificate on its side", c.ID)
		leaf := c.TLS2.Leaf
		assert.WithinDuration(t, time.Now().Add(90*24*time.Hour), leaf.NotAfter, 5*time.Minute, "--cert-validity")
		assert.NotEqual(t, certs[i].TLS.Leaf.PublicKey, leaf.PublicKey, "a new key")
		var c1, c2, auth []byte
		var notAfter, expires time.Time
		require.NoError(t, e.reg.Pool().QueryRow(ctx, `SELECT cert_fingerprint, cert2_fingerprint, auth_digest, cert2_not_after, credential_expires_at
			FROM devices WHERE id = $1`, c.ID).Scan(&c1, &c2, &auth, &notAfter, &expires))
		assert.Nil(t, c1, "%s: the old certificate is revoked", c.ID)
		assert.Equal(t, pki.Fingerprint(leaf), c2, "%s", c.ID)
		assert.Equal(t, c2, auth, "%s connected with it", c.ID)
		assert.WithinDuration(t, leaf.NotAfter, notAfter, time.Second)
		assert.WithinDuration(t, leaf.NotAfter, expires, time.Second, "the expiry follows the new certificate")
	}
	var s1, s2 []byte
	require.NoError(t, e.reg.Pool().QueryRow(ctx, "SELECT secret1_hash, secret2_hash FROM devices WHERE id = $1", secrets[0].ID).Scan(&s1, &s2))
	assert.Nil(t, s1, "the secret device got a new secret")
	assert.Equal(t, creds.Digest(mustCreds(t, secretsFile)[0].Secret2), s2)

	// The old certificate is refused; the new one connects.
	connectWith := func(cert *creds.Credential, slot int) error {
		cfg := device.Config{BrokerURL: tlsURL, CAFile: e.tls.CA, ID: cert.ID, Logger: quiet, ClientCertificate: cert.TLS}
		if slot == 2 {
			cfg.ClientCertificate = cert.TLS2
		}
		d, err := device.New(cfg)
		require.NoError(t, err)
		defer d.Close()
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		return d.Connect(cctx)
	}
	// The simulated devices are stopped first: a connection of the same id here would take their sessions
	// over, and their reconnects (no floor on the first wait) take them back before this one subscribed.
	stopSim()
	<-done
	require.ErrorIs(t, connectWith(&certs[0], 1), device.ErrNotAuthorized, "the old certificate is refused")
	require.NoError(t, connectWith(&renewed[0], 2), "the renewed certificate connects")

	// credentials status shows each certificate slot's expiry.
	status, err := e.cli(ctx, "credentials", "status", res.ID)
	require.NoError(t, err)
	assert.Contains(t, status, "CERTIFICATE DEVICE")
	assert.Contains(t, status, renewed[1].TLS2.Leaf.NotAfter.UTC().Format(time.RFC3339))
	assert.Contains(t, status, "slot 2")

	// Nothing secret (and no certificate) in the workflow's history.
	var history bytes.Buffer
	it := e.tc.GetWorkflowHistory(ctx, res.ID, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		ev, err := it.Next()
		require.NoError(t, err)
		history.WriteString(ev.String())
	}
	require.Positive(t, history.Len())
	h := history.String()
	assert.NotContains(t, h, "PRIVATE KEY")
	assert.NotContains(t, h, "CERTIFICATE REQUEST")
	assert.NotContains(t, h, "BEGIN CERTIFICATE")
	caKey := mustRead(t, files.Key)
	for _, pemText := range []string{caKey, renewed[0].Key2, renewed[1].Key2, renewed[0].Cert2} {
		line := strings.Split(pemText, "\n")[1]
		assert.NotContains(t, h, line, "a line of a key or certificate is in the history")
	}
}

// mustRead is a file's text.
func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}
