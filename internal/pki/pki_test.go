package pki_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/pki"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	block, _ := pem.Decode(b)
	require.NotNil(t, block, "%s holds PEM", path)
	c, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	return c
}

func TestEnsureLocalCreatesCAAndServerCertificate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	now := time.Now()
	l, err := pki.EnsureLocal(dir, pki.LocalHosts, now)
	require.NoError(t, err)
	assert.True(t, l.CreatedCA)
	assert.True(t, l.IssuedServer)

	ca := readCert(t, l.CA)
	srv := readCert(t, l.Cert)
	assert.True(t, ca.IsCA)
	require.NoError(t, srv.CheckSignatureFrom(ca), "the CA signs the server certificate")
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, host := range []string{"127.0.0.1", "::1", "localhost"} {
		_, err := srv.Verify(x509.VerifyOptions{DNSName: host, Roots: pool, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		assert.NoError(t, err, "valid for %s", host)
	}
	assert.Error(t, srv.VerifyHostname("example.com"), "not valid for other names")
	assert.Equal(t, l.NotAfter, srv.NotAfter)
	assert.WithinDuration(t, now.Add(pki.ServerValidity), srv.NotAfter, time.Second)
	assert.WithinDuration(t, now.Add(pki.CAValidity), ca.NotAfter, time.Second)

	for _, tc := range []struct {
		path string
		mode os.FileMode
	}{
		{l.CA, 0o644}, {l.CAKey, 0o600}, {l.Cert, 0o644}, {l.Key, 0o600},
	} {
		st, err := os.Stat(tc.path)
		require.NoError(t, err)
		assert.Equal(t, tc.mode, st.Mode().Perm(), "mode of %s", filepath.Base(tc.path))
	}
	st, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), st.Mode().Perm())
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".*"))
	assert.Empty(t, leftovers, "no temporary files left")
}

func TestEnsureLocalReusesAndRenews(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name                 string
		prepare              func(t *testing.T, l pki.Local)
		at                   time.Time
		wantCA, wantIssued   bool
		wantSameCAAsOriginal bool
	}{
		{name: "second run reuses both", at: now.Add(time.Hour), wantSameCAAsOriginal: true},
		{name: "server near expiry is re-issued by the same CA", at: now.Add(pki.ServerValidity - pki.RenewBefore + time.Hour),
			wantIssued: true, wantSameCAAsOriginal: true},
		{name: "missing server key is re-issued", prepare: func(t *testing.T, l pki.Local) { require.NoError(t, os.Remove(l.Key)) },
			at: now, wantIssued: true, wantSameCAAsOriginal: true},
		{name: "server cert of another CA is re-issued", prepare: func(t *testing.T, l pki.Local) {
			other, _, err := pki.NewCA("other", now, time.Hour*24*400)
			require.NoError(t, err)
			c, k, err := other.IssueServer(pki.LocalHosts, now, pki.ServerValidity)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(l.Cert, c, 0o644))
			require.NoError(t, os.WriteFile(l.Key, k, 0o600))
		}, at: now, wantIssued: true, wantSameCAAsOriginal: true},
		{name: "CA near its end is replaced", at: now.Add(pki.CAValidity - pki.ServerValidity + time.Hour), wantCA: true, wantIssued: true},
		{name: "damaged CA is replaced", prepare: func(t *testing.T, l pki.Local) {
			require.NoError(t, os.WriteFile(l.CA, []byte("garbage"), 0o644))
		}, at: now, wantCA: true, wantIssued: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			first, err := pki.EnsureLocal(dir, pki.LocalHosts, now)
			require.NoError(t, err)
			caBefore, _ := os.ReadFile(first.CA)
			if tc.prepare != nil {
				tc.prepare(t, first)
			}
			l, err := pki.EnsureLocal(dir, pki.LocalHosts, tc.at)
			require.NoError(t, err)
			assert.Equal(t, tc.wantCA, l.CreatedCA, "CA created")
			assert.Equal(t, tc.wantIssued, l.IssuedServer, "server certificate issued")
			caAfter, _ := os.ReadFile(l.CA)
			assert.Equal(t, tc.wantSameCAAsOriginal, bytes.Equal(caBefore, caAfter), "same ca.pem")
			require.NoError(t, readCert(t, l.Cert).CheckSignatureFrom(readCert(t, l.CA)))
			assert.True(t, l.NotAfter.After(tc.at.Add(pki.RenewBefore)), "served certificate not near its end")
		})
	}
}

func TestIsTLSURL(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want bool
	}{
		{"ssl://127.0.0.1:8883", true}, {"tls://gw:8883", true}, {"mqtts://gw", true}, {"tcps://gw:8883", true},
		{"tcp://127.0.0.1:1883", false}, {"mqtt://gw", false}, {"ws://gw/mqtt", false}, {"::", false},
	} {
		assert.Equal(t, tc.want, pki.IsTLSURL(tc.url), tc.url)
	}
}

func TestClientConfig(t *testing.T) {
	dir := t.TempDir()
	l, err := pki.EnsureLocal(dir, pki.LocalHosts, time.Now())
	require.NoError(t, err)

	cfg, err := pki.ClientConfigFor("tcp://127.0.0.1:1883", l.CA)
	require.NoError(t, err)
	assert.Nil(t, cfg, "no TLS for a plaintext URL")
	cfg, err = pki.ClientConfigFor("ssl://127.0.0.1:8883", l.CA)
	require.NoError(t, err)
	require.NotNil(t, cfg.RootCAs)
	cfg, err = pki.ClientConfig("")
	require.NoError(t, err)
	assert.Nil(t, cfg.RootCAs, "system roots")

	_, err = pki.ClientConfig(filepath.Join(dir, "missing.pem"))
	assert.ErrorContains(t, err, "read CA file")
	bad := filepath.Join(dir, "bad.pem")
	require.NoError(t, os.WriteFile(bad, []byte("not a certificate"), 0o644))
	_, err = pki.ClientConfig(bad)
	assert.ErrorContains(t, err, "no PEM certificate")
}

// serve accepts TLS connections with cfg on loopback and completes their handshakes.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_ = c.(*tls.Conn).Handshake()
				_ = c.Close()
			}()
		}
	}()
	return ln.Addr().String()
}

// servedSerial dials addr trusting caFile and returns the serial of the certificate it was shown.
func servedSerial(t *testing.T, addr, caFile string) string {
	t.Helper()
	cfg, err := pki.ClientConfig(caFile)
	require.NoError(t, err)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	require.NoError(t, err)
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

func TestReloaderServesReplacedCertificate(t *testing.T) {
	dir := t.TempDir()
	l, err := pki.EnsureLocal(dir, pki.LocalHosts, time.Now())
	require.NoError(t, err)
	r, err := pki.NewReloader(l.Cert, l.Key, time.Nanosecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	addr := serve(t, r.ServerConfig())
	first := servedSerial(t, addr, l.CA)
	assert.Equal(t, readCert(t, l.Cert).SerialNumber.String(), first)

	// Renewal: a new pair from the same CA, written over the old one.
	ca, err := pki.LoadCA(l.CA, l.CAKey)
	require.NoError(t, err)
	c, k, err := ca.IssueServer(pki.LocalHosts, time.Now(), time.Hour*24)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(l.Key, k, 0o600))
	require.NoError(t, os.WriteFile(l.Cert, c, 0o644))
	later := time.Now().Add(time.Minute) // a later mtime, whatever the file system's granularity
	require.NoError(t, os.Chtimes(l.Cert, later, later))
	second := servedSerial(t, addr, l.CA)
	assert.NotEqual(t, first, second, "the next connection gets the new certificate")
	assert.Equal(t, readCert(t, l.Cert).SerialNumber.String(), second)

	// A broken pair (a certificate without its key) is refused and the last good one kept.
	c2, _, err := ca.IssueServer(pki.LocalHosts, time.Now(), time.Hour*24)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(l.Cert, c2, 0o644))
	evenLater := later.Add(time.Minute)
	require.NoError(t, os.Chtimes(l.Cert, evenLater, evenLater))
	assert.Equal(t, second, servedSerial(t, addr, l.CA), "mismatched pair: the previous certificate is served")
}

func TestReloaderNeedsAPairAtStart(t *testing.T) {
	dir := t.TempDir()
	_, err := pki.NewReloader(filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem"), 0, nil)
	assert.ErrorContains(t, err, "TLS certificate")
}
