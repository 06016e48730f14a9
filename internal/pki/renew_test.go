package pki_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/pki"
)

// A device's renewal request is signed only when it proves possession of its key, names the device and
// uses a key strong enough; each refusal says why (docs/architecture.md, "Certificate renewal").
func TestSignDeviceCSRChecksTheRequest(t *testing.T) {
	ca, err := pki.InitDeviceCA(filepath.Join(t.TempDir(), "ca"), "", time.Now(), 0)
	require.NoError(t, err)
	now := time.Now()

	key, csr, err := pki.NewDeviceKey("dev-1")
	require.NoError(t, err)
	certPEM, fp, notAfter, err := ca.SignDeviceCSR("dev-1", csr, now, 48*time.Hour)
	require.NoError(t, err)
	cert, err := pki.ParseCertificatePEM(certPEM)
	require.NoError(t, err)
	assert.Equal(t, "dev-1", cert.Subject.CommonName)
	assert.Equal(t, pki.Fingerprint(cert), fp)
	assert.Equal(t, cert.NotAfter.UTC(), notAfter)
	assert.WithinDuration(t, now.Add(48*time.Hour), notAfter, 2*time.Second)
	assert.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, cert.ExtKeyUsage)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	_, err = cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	require.NoError(t, err, "the certificate chains to the fleet CA")
	pair, err := pki.KeyPair("dev-1", certPEM, key)
	require.NoError(t, err, "the certificate is for the device's own key")
	c2, k2, err := pki.EncodeKeyPair(pair)
	require.NoError(t, err)
	_, err = tls.X509KeyPair(c2, k2)
	require.NoError(t, err, "what a device stores loads back")

	refused := func(csr []byte, id, want string) {
		t.Helper()
		_, _, _, err := ca.SignDeviceCSR(id, csr, now, time.Hour)
		require.ErrorIs(t, err, pki.ErrCSRRefused)
		assert.Contains(t, err.Error(), want)
	}
	refused(csr, "dev-2", `its subject is "dev-1", not the device id "dev-2"`)

	b, _ := pem.Decode(csr)
	bad := append([]byte(nil), b.Bytes...)
	bad[len(bad)-1] ^= 0xff // inside the signature
	refused(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: bad}), "dev-1", "bad signature")

	weakRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	csr, err = pki.NewCSR("dev-1", weakRSA)
	require.NoError(t, err)
	refused(csr, "dev-1", "weak key: RSA 1024 bits (want at least 2048)")

	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	require.NoError(t, err)
	csr, err = pki.NewCSR("dev-1", p224)
	require.NoError(t, err)
	refused(csr, "dev-1", "weak key: ECDSA curve P-224")

	refused([]byte("not a request"), "dev-1", "not a PEM certificate request")

	// A certificate for another key is not installed.
	other, _, err := pki.NewDeviceKey("dev-1")
	require.NoError(t, err)
	_, err = pki.KeyPair("dev-1", certPEM, other)
	require.ErrorContains(t, err, "not for this device's new key")
}

// The worker's signer reads the CA on first use and says plainly when there is none.
func TestSignerWithoutCA(t *testing.T) {
	_, csr, err := pki.NewDeviceKey("dev-1")
	require.NoError(t, err)
	_, _, _, err = pki.NewSigner(filepath.Join(t.TempDir(), "none")).SignDeviceCSR("dev-1", csr, time.Hour)
	require.ErrorContains(t, err, "fleet CA in")
	require.NotErrorIs(t, err, pki.ErrCSRRefused)
	require.ErrorContains(t, pki.NewSigner("").Check(), "FLEETFLOW_DEVICE_CA_DIR")

	dir := filepath.Join(t.TempDir(), "ca")
	_, err = pki.InitDeviceCA(dir, "", time.Now(), 0)
	require.NoError(t, err)
	s := pki.NewSigner(dir)
	require.NoError(t, s.Check())
	_, fp, _, err := s.SignDeviceCSR("dev-1", csr, time.Hour)
	require.NoError(t, err)
	assert.Len(t, fp, 32)
}
