package device_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/protocol"
)

// Certificate renewal on the device's side (docs/architecture.md, "Certificate renewal"): renewCertificate
// answers a request for a key the device generated; installCertificate stores a certificate for that key, in
// the slot named, before answering, and the device reconnects presenting it; a certificate for another key,
// or one the device cannot store, is refused and changes nothing.
func TestRenewCertificate(t *testing.T) {
	now := time.Now()
	x := gatewaytest.StartX509(t, now)
	g, store, server, ca := x.Gateway, x.Store, x.Server, x.CA
	dc, err := ca.IssueDevice("dev-c", now, time.Hour)
	require.NoError(t, err)
	pair, err := tls.X509KeyPair(dc.CertPEM, dc.KeyPEM)
	require.NoError(t, err)
	store.AddCertificate("dev-c", dc.Fingerprint)

	var mu sync.Mutex
	var saved []device.Credentials
	fail := false
	d := newDevice(t, "ssl://"+g.TLSAddr(), "dev-c", func(c *device.Config) {
		c.Secret, c.CAFile, c.ClientCertificate = "", server.CA, &pair
		c.SaveCredentials = func(_ context.Context, cr device.Credentials) error {
			mu.Lock()
			defer mu.Unlock()
			if fail {
				return assert.AnError
			}
			saved = append(saved, cr)
			return nil
		}
	})
	connect(t, d)
	session := func(fp []byte) func() bool {
		return func() bool {
			for _, ev := range store.Events() {
				if ev.DeviceID == "dev-c" && ev.Kind == fleet.ConnUp && string(ev.Digest) == string(fp) {
					return true
				}
			}
			return false
		}
	}
	require.Eventually(t, session(dc.Fingerprint), 10*time.Second, 10*time.Millisecond)

	call, request := renewalCalls(t, gatewaytest.URL(g), "dev-c", 10*time.Second)

	// A certificate for a key the device did not generate (an older request's) is refused.
	old := request("q0")
	oldCert, _, _, err := ca.SignDeviceCSR("dev-c", old, time.Now(), time.Hour)
	require.NoError(t, err)
	csr := request("q1")
	m := call(protocol.MethodInstallCertificate, "i0", string(protocol.InstallCertificate{Slot: 2, Certificate: string(oldCert)}.Payload()),
		"devices/dev-c/methods/res/409/i0")
	assert.Contains(t, string(m.Payload), "not for this device's new key")

	// One it cannot store is refused too.
	certPEM, fp, _, err := ca.SignDeviceCSR("dev-c", csr, time.Now(), 2*time.Hour)
	require.NoError(t, err)
	install := protocol.InstallCertificate{Slot: 2, Certificate: string(certPEM)}.Payload()
	mu.Lock()
	fail = true
	mu.Unlock()
	call(protocol.MethodInstallCertificate, "i1", string(install), "devices/dev-c/methods/res/500/i1")
	assert.Nil(t, d.Credentials().Cert2)

	mu.Lock()
	fail = false
	mu.Unlock()
	store.SetCertificate2("dev-c", fp)
	require.Eventually(t, d.IsConnected, 10*time.Second, 10*time.Millisecond)
	call(protocol.MethodInstallCertificate, "i2", string(install), "devices/dev-c/methods/res/200/i2")
	mu.Lock()
	require.Len(t, saved, 3, "each request's key, then the certificate, stored before the answers")
	got := saved[2]
	requested := saved[1].PendingKey
	mu.Unlock()
	require.NotNil(t, requested)
	assert.Nil(t, got.PendingKey, "installed: no longer pending")
	assert.Equal(t, 2, got.Slot)
	require.NotNil(t, got.Cert2)
	assert.Equal(t, fp, pki.Fingerprint(got.Cert2.Leaf))
	assert.True(t, requested.Public().(*ecdsa.PublicKey).Equal(got.Cert2.Leaf.PublicKey), "for the pending key")
	assert.Equal(t, &pair, got.Cert, "the old certificate is kept")
	require.Eventually(t, session(fp), 30*time.Second, 20*time.Millisecond, "the device reconnected with its new certificate")

	// The key never left the device: the answers carried a request and nothing else.
	var answer map[string]any
	require.NoError(t, json.Unmarshal(call(protocol.MethodRenewCertificate, "q2", "{}", "devices/dev-c/methods/res/200/q2").Payload, &answer))
	assert.Len(t, answer, 1)
	assert.NotContains(t, answer["csr"], "PRIVATE KEY")
}

// A device restarted between renewCertificate and installCertificate still installs the certificate signed
// for its request: the request's key was stored (SaveCredentialsFile: mode 0600, synced) before the request
// was answered. A key a newer request superseded is no longer pending, so a certificate for it is refused;
// once installed, the key is no longer pending either, and the file holds it only as the new slot's key.
func TestRenewCertificateAcrossRestart(t *testing.T) {
	now := time.Now()
	x := gatewaytest.StartX509(t, now)
	g, store, server, ca := x.Gateway, x.Store, x.Server, x.CA
	dc, err := ca.IssueDevice("dev-r", now, time.Hour)
	require.NoError(t, err)
	pair, err := tls.X509KeyPair(dc.CertPEM, dc.KeyPEM)
	require.NoError(t, err)
	store.AddCertificate("dev-r", dc.Fingerprint)

	path := filepath.Join(t.TempDir(), "dev-r.creds.ndjson")
	save := device.SaveCredentialsFile(path, "dev-r")
	require.NoError(t, save(context.Background(), device.Credentials{Cert: &pair, Slot: 1}))
	// start is a boot of the device: its credentials are what the file holds.
	start := func() *device.Device {
		t.Helper()
		stored, err := device.LoadCredentialsFile(path)
		require.NoError(t, err)
		d := newDevice(t, "ssl://"+g.TLSAddr(), "dev-r", func(c *device.Config) {
			c.UseCredentials(stored)
			c.CAFile, c.SaveCredentials = server.CA, save
		})
		connect(t, d)
		return d
	}
	d := start()

	call, request := renewalCalls(t, gatewaytest.URL(g), "dev-r", 20*time.Second)
	stale := request("q0")
	csr := request("q1") // supersedes q0's key
	st, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	stored, err := device.LoadCredentialsFile(path)
	require.NoError(t, err)
	require.NotNil(t, stored.PendingKey, "the request's key was stored before the answer")
	parsed, err := pki.CheckDeviceCSR("dev-r", csr)
	require.NoError(t, err)
	assert.True(t, stored.PendingKey.Public().(*ecdsa.PublicKey).Equal(parsed.PublicKey), "the stored key is the newest request's")

	d.Close() // the restart
	d = start()

	staleCert, _, _, err := ca.SignDeviceCSR("dev-r", stale, time.Now(), time.Hour)
	require.NoError(t, err)
	m := call(protocol.MethodInstallCertificate, "i0", string(protocol.InstallCertificate{Slot: 2, Certificate: string(staleCert)}.Payload()),
		"devices/dev-r/methods/res/409/i0")
	assert.Contains(t, string(m.Payload), "not for this device's new key", "a superseded request's key is not pending")

	certPEM, fp, _, err := ca.SignDeviceCSR("dev-r", csr, time.Now(), 2*time.Hour)
	require.NoError(t, err)
	store.SetCertificate2("dev-r", fp)
	require.Eventually(t, d.IsConnected, 10*time.Second, 10*time.Millisecond)
	install := string(protocol.InstallCertificate{Slot: 2, Certificate: string(certPEM)}.Payload())
	call(protocol.MethodInstallCertificate, "i1", install, "devices/dev-r/methods/res/200/i1")

	stored, err = device.LoadCredentialsFile(path)
	require.NoError(t, err)
	require.NotNil(t, stored.Cert2)
	assert.Equal(t, fp, pki.Fingerprint(stored.Cert2.Leaf))
	assert.True(t, stored.Cert2.Leaf.PublicKey.(*ecdsa.PublicKey).Equal(parsed.PublicKey), "installed with the key of its request")
	assert.Equal(t, 2, stored.Slot)
	assert.Nil(t, stored.PendingKey, "installed: no longer pending")
	require.NotNil(t, stored.Cert)
	assert.Equal(t, dc.Fingerprint, pki.Fingerprint(stored.Cert.Leaf), "the old certificate is kept")
	require.Eventually(t, func() bool {
		for _, ev := range store.Events() {
			if ev.DeviceID == "dev-r" && ev.Kind == fleet.ConnUp && string(ev.Digest) == string(fp) {
				return true
			}
		}
		return false
	}, 30*time.Second, 20*time.Millisecond, "the device reconnected with its new certificate")

	// Restarted once more, it has nothing pending: the same certificate is not installed twice.
	d.Close()
	start()
	call(protocol.MethodInstallCertificate, "i2", install, "devices/dev-r/methods/res/409/i2")
}

// renewalCalls are a test's service side of the certificate renewal methods of device id on the gateway at
// url: call sends a method request and returns the answer on wantTopic, request asks for a CSR (answered 200).
func renewalCalls(t *testing.T, url, id string, wait time.Duration) (call func(method, rid, payload, wantTopic string) gatewaytest.Message, request func(rid string) []byte) {
	svc := gatewaytest.Service(t, url, "svc:test")
	svc.Sub(t, 1, "devices/"+id+"/methods/res/+/+")
	call = func(method, rid, payload, wantTopic string) gatewaytest.Message {
		t.Helper()
		require.NoError(t, svc.Pub(t, "devices/"+id+"/methods/req/"+method+"/"+rid, 0, payload))
		m, ok := svc.WaitMessage(t, wantTopic, wait)
		require.True(t, ok, "no response on %s; got %v", wantTopic, svc.Messages())
		return m
	}
	request = func(rid string) []byte {
		t.Helper()
		m := call(protocol.MethodRenewCertificate, rid, "{}", "devices/"+id+"/methods/res/200/"+rid)
		a, err := protocol.ParseRenewCertificateAnswer(m.Payload)
		require.NoError(t, err)
		return []byte(a.CSR)
	}
	return call, request
}
