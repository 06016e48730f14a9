package pki_test

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/pki"
)

func TestInitDeviceCAWritesAPrivateKeyAndRefusesToOverwrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	now := time.Now()
	ca, err := pki.InitDeviceCA(dir, "", now, 0)
	require.NoError(t, err)
	assert.True(t, ca.Cert.IsCA)
	assert.Contains(t, ca.Cert.Subject.CommonName, "fleetflow device CA")
	assert.WithinDuration(t, now.Add(pki.DeviceCAValidity), ca.Cert.NotAfter, time.Second)

	files := pki.DeviceCAIn(dir)
	for path, mode := range map[string]os.FileMode{files.Key: 0o600, files.Cert: 0o644, dir: 0o700} {
		st, err := os.Stat(path)
		require.NoError(t, err)
		assert.Equal(t, mode, st.Mode().Perm(), path)
	}
	loaded, err := pki.LoadCA(files.Cert, files.Key)
	require.NoError(t, err)
	assert.Equal(t, ca.Cert.Raw, loaded.Cert.Raw)

	before, err := os.ReadFile(files.Key)
	require.NoError(t, err)
	_, err = pki.InitDeviceCA(dir, "other", now, 0)
	require.ErrorIs(t, err, pki.ErrCAExists)
	after, err := os.ReadFile(files.Key)
	require.NoError(t, err)
	assert.Equal(t, before, after, "the existing key is untouched")

	// A key left alone by a crash still counts as a CA: nothing may silently replace it.
	lone := filepath.Join(t.TempDir(), "ca")
	require.NoError(t, os.MkdirAll(lone, 0o700))
	require.NoError(t, os.WriteFile(pki.DeviceCAIn(lone).Key, []byte("key"), 0o600))
	_, err = pki.InitDeviceCA(lone, "", now, 0)
	require.ErrorIs(t, err, pki.ErrCAExists)
}

func TestInitDeviceCAConcurrentRunsMakeOneCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = pki.InitDeviceCA(dir, "", time.Now(), 0)
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
		} else {
			assert.ErrorIs(t, err, pki.ErrCAExists)
		}
	}
	assert.Equal(t, 1, ok, "exactly one run created the CA")
	_, err := pki.LoadCA(pki.DeviceCAIn(dir).Cert, pki.DeviceCAIn(dir).Key)
	require.NoError(t, err, "the winner's key and certificate belong together")
}

func TestIssueDeviceCertificate(t *testing.T) {
	now := time.Now()
	ca, err := pki.InitDeviceCA(t.TempDir(), "test fleet", now, 0)
	require.NoError(t, err)
	dc, err := ca.IssueDevice("sensor-0042", now, 24*time.Hour)
	require.NoError(t, err)

	pair, err := tls.X509KeyPair(dc.CertPEM, dc.KeyPEM)
	require.NoError(t, err, "the key belongs to the certificate")
	block, _ := pem.Decode(dc.CertPEM)
	require.NotNil(t, block)
	cert, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	assert.Equal(t, pair.Certificate[0], cert.Raw)
	assert.Equal(t, "sensor-0042", cert.Subject.CommonName)
	assert.True(t, dc.NotAfter.Equal(cert.NotAfter), "%s = %s", dc.NotAfter, cert.NotAfter)
	assert.WithinDuration(t, now.Add(24*time.Hour), cert.NotAfter, time.Second)

	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	_, err = cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	require.NoError(t, err, "chains to the fleet CA as a client certificate")
	_, err = cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	require.Error(t, err, "not usable as a server certificate")

	want := sha256.Sum256(cert.Raw)
	assert.Equal(t, want[:], dc.Fingerprint)
	assert.Equal(t, want[:], pki.Fingerprint(cert))
	assert.True(t, pki.FingerprintMatches(cert, dc.Fingerprint))
	other, err := ca.IssueDevice("sensor-0042", now, time.Hour)
	require.NoError(t, err)
	assert.NotEqual(t, dc.Fingerprint, other.Fingerprint, "every certificate has its own fingerprint")
	assert.False(t, pki.FingerprintMatches(cert, other.Fingerprint))
	assert.False(t, pki.FingerprintMatches(cert, nil))
	assert.False(t, pki.FingerprintMatches(nil, dc.Fingerprint))

	long, err := ca.IssueDevice("sensor-0043", now, 100*365*24*time.Hour)
	require.NoError(t, err)
	assert.True(t, ca.Cert.NotAfter.Equal(long.NotAfter), "a certificate cannot outlive its CA")
}

func TestFormatFingerprint(t *testing.T) {
	assert.Equal(t, "00:AB:FF", pki.FormatFingerprint([]byte{0x00, 0xab, 0xff}))
	assert.Equal(t, "", pki.FormatFingerprint(nil))
	assert.Len(t, pki.FormatFingerprint(make([]byte, 32)), 32*3-1)
}

// A real handshake against a server that requests client certificates from the fleet CA: a device
// certificate is verified and visible, no certificate is allowed, one from another CA fails the handshake.
func TestRequestClientCertsHandshake(t *testing.T) {
	t.Run("fixed pool", func(t *testing.T) { testRequestClientCertsHandshake(t, false) })
	t.Run("reloaded pool", func(t *testing.T) { testRequestClientCertsHandshake(t, true) })
}

func testRequestClientCertsHandshake(t *testing.T, reload bool) {
	now := time.Now()
	srv, err := pki.EnsureLocal(t.TempDir(), pki.LocalHosts, now)
	require.NoError(t, err)
	fleetCA, err := pki.InitDeviceCA(filepath.Join(t.TempDir(), "ca"), "", now, 0)
	require.NoError(t, err)
	otherCA, err := pki.InitDeviceCA(filepath.Join(t.TempDir(), "ca"), "", now, 0)
	require.NoError(t, err)
	pool, err := pki.CertPool(filepath.Join(fleetCADir(t, fleetCA), pki.CAFile))
	require.NoError(t, err)

	r, err := pki.NewReloader(srv.Cert, srv.Key, 0, nil)
	require.NoError(t, err)
	scfg := r.ServerConfig()
	if reload {
		cas, err := pki.NewPoolReloader(filepath.Join(fleetCADir(t, fleetCA), pki.CAFile), time.Nanosecond, nil)
		require.NoError(t, err)
		scfg = pki.RequestClientCertsFrom(scfg, cas)
	} else {
		pki.RequestClientCerts(scfg, pool)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", scfg)
	require.NoError(t, err)
	defer ln.Close()
	seen := make(chan *x509.Certificate, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if tc.Handshake() != nil {
				seen <- nil
			} else {
				seen <- pki.VerifiedClientCert(tc.ConnectionState())
			}
			c.Close()
		}
	}()

	dial := func(cert *tls.Certificate) error {
		cfg, err := pki.ClientConfig(srv.CA)
		require.NoError(t, err)
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		// With TLS 1.3 the client learns of a refused certificate only at its first read.
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		if errors.Is(err, io.EOF) {
			return nil
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		return err
	}
	pair := func(ca *pki.CA, id string) *tls.Certificate {
		dc, err := ca.IssueDevice(id, now, time.Hour)
		require.NoError(t, err)
		p, err := tls.X509KeyPair(dc.CertPEM, dc.KeyPEM)
		require.NoError(t, err)
		return &p
	}

	good := pair(fleetCA, "dev-1")
	go func() { _ = dial(good) }()
	got := <-seen
	require.NotNil(t, got, "the device certificate was verified")
	assert.Equal(t, "dev-1", got.Subject.CommonName)

	go func() { _ = dial(nil) }()
	assert.Nil(t, <-seen, "no certificate: the handshake succeeds without one")

	// otherCA has the fleet CA's name (both default to the host's), so Go's client sends its certificate
	// (it picks one whose issuer the server names as acceptable) and the chain check fails.
	require.Equal(t, fleetCA.Cert.Subject.String(), otherCA.Cert.Subject.String())
	errc := make(chan error, 1)
	go func() { errc <- dial(pair(otherCA, "dev-1")) }()
	assert.Nil(t, <-seen, "a certificate from another CA fails the handshake")
	assert.Error(t, <-errc)
}

func fleetCADir(t *testing.T, ca *pki.CA) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, pki.CAFile), ca.PEM, 0o644))
	return dir
}

// VerifyClientChain checks a client's chain as the handshake did, except that a certificate past its end
// passes, reported as expired, when it verified at its end: the gateway refuses it at CONNECT, where it can
// say why. One not valid yet, or from another CA, is an error, expired or not.
func TestVerifyClientChain(t *testing.T) {
	now := time.Now()
	ca, err := pki.InitDeviceCA(filepath.Join(t.TempDir(), "ca"), "", now.Add(-24*time.Hour), 0)
	require.NoError(t, err)
	other, err := pki.InitDeviceCA(filepath.Join(t.TempDir(), "ca"), "", now.Add(-24*time.Hour), 0)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	leaf := func(ca *pki.CA, from time.Time) []*x509.Certificate {
		dc, err := ca.IssueDevice("dev-1", from, time.Hour)
		require.NoError(t, err)
		c, err := pki.ParseCertificatePEM(dc.CertPEM)
		require.NoError(t, err)
		return []*x509.Certificate{c}
	}

	expired, err := pki.VerifyClientChain(leaf(ca, now), pool, now)
	require.NoError(t, err)
	assert.False(t, expired)
	expired, err = pki.VerifyClientChain(leaf(ca, now.Add(-2*time.Hour)), pool, now)
	require.NoError(t, err, "past its end: passes the handshake")
	assert.True(t, expired)
	expired, err = pki.VerifyClientChain(nil, pool, now)
	require.NoError(t, err, "no certificate: the client authenticates with a secret")
	assert.False(t, expired)

	for name, certs := range map[string][]*x509.Certificate{
		"not valid yet":          leaf(ca, now.Add(2*time.Hour)),
		"another CA":             leaf(other, now),
		"another CA, past end":   leaf(other, now.Add(-2*time.Hour)),
		"another CA, not yet ok": leaf(other, now.Add(2*time.Hour)),
	} {
		expired, err := pki.VerifyClientChain(certs, pool, now)
		require.Error(t, err, name)
		assert.False(t, expired, name)
	}
	_, err = pki.VerifyClientChain(leaf(ca, now), nil, now)
	require.Error(t, err, "no CA trusted")
}
