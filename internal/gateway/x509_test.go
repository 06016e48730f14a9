package gateway_test

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
	"github.com/fleetflow/fleetflow/internal/pki"
)

// x509Env is a gateway whose TLS listener trusts a fleet CA for device certificates (docs/architecture.md,
// "Device certificates"), on a free loopback port.
type x509Env struct {
	g      *gateway.Gateway
	store  *gatewaytest.Store
	server pki.Local // the gateway's own CA and certificate; devices verify the gateway with server.CA
	ca     *pki.CA   // the fleet CA
}

func startX509Gateway(t *testing.T) *x509Env {
	t.Helper()
	return startX509GatewayWithCAFrom(t, time.Now())
}

// startX509GatewayWithCAFrom is startX509Gateway with a fleet CA made at caFrom.
func startX509GatewayWithCAFrom(t *testing.T, caFrom time.Time) *x509Env {
	t.Helper()
	x := gatewaytest.StartX509(t, caFrom)
	return &x509Env{g: x.Gateway, store: x.Store, server: x.Server, ca: x.CA}
}

// issue makes a certificate for id signed by ca and returns it with its fingerprint.
func issue(t *testing.T, ca *pki.CA, id string) (*tls.Certificate, []byte) {
	t.Helper()
	dc, err := ca.IssueDevice(id, time.Now(), time.Hour)
	require.NoError(t, err)
	pair, err := tls.X509KeyPair(dc.CertPEM, dc.KeyPEM)
	require.NoError(t, err)
	return &pair, dc.Fingerprint
}

// connect connects id over TLS with cert and secret (either may be empty).
func (e *x509Env) connect(t *testing.T, id, secret string, cert *tls.Certificate, mod ...func(*device.Config)) (*device.Device, error) {
	t.Helper()
	return connectDevice(t, "ssl://"+e.g.TLSAddr(), id, secret, append([]func(*device.Config){func(c *device.Config) {
		c.CAFile, c.ClientCertificate = e.server.CA, cert
	}}, mod...)...)
}

func TestX509DeviceConnectsWithoutASecretBesideSecretDevices(t *testing.T) {
	e := startX509Gateway(t)
	cert, fp := issue(t, e.ca, "dev-x509")
	e.store.AddCertificate("dev-x509", fp)
	e.store.Add("dev-secret", "s3cret")
	_, err := e.store.SetDesired("dev-x509", []byte(`{"telemetryInterval": 30}`))
	require.NoError(t, err)

	d, err := e.connect(t, "dev-x509", "", cert)
	require.NoError(t, err, "no password needed with a registered certificate")
	desired, _ := d.Desired()
	assert.JSONEq(t, `{"telemetryInterval": 30}`, string(desired), "the twin/get of the connect was answered")
	_, err = d.ReportPatch(context.Background(), map[string]any{"auth": "x509"})
	require.NoError(t, err)

	// Secrets and certificates coexist: a secret device on the same listener presents no certificate.
	ds, err := e.connect(t, "dev-secret", "s3cret", nil)
	require.NoError(t, err)
	ds.Close() // or the two connections would take the session from each other in turn
	_, err = connectDevice(t, gatewaytest.URL(e.g), "dev-secret", "s3cret")
	require.NoError(t, err, "and on the loopback plaintext listener")
	assert.Equal(t, int64(0), e.g.Stats().AuthFailures)

	// The certificate device has no secret: without its certificate it cannot get in.
	_, err = e.connect(t, "dev-x509", "anything", nil)
	require.ErrorIs(t, err, device.ErrNotAuthorized)
}

// A certificate from another CA never gets a device in, even with its fingerprint in the registry. The server
// names the CAs it accepts in its certificate request; a client whose certificate's issuer is not among them
// (Go's crypto/tls) sends none and is refused for want of a password, while one that sends it anyway
// (OpenSSL's, or an issuer of the same name) fails the handshake. Neither reaches the registry lookup.
func TestX509CertificateFromAnotherCAIsRefused(t *testing.T) {
	e := startX509Gateway(t)
	for _, tc := range []struct {
		name, caName string
		handshake    bool
	}{
		{"issuer of another name", "another fleet", false},
		{"issuer of the same name", e.ca.Cert.Subject.CommonName, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			other, err := pki.InitDeviceCA(filepath.Join(t.TempDir(), "ca"), tc.caName, time.Now(), 0)
			require.NoError(t, err)
			cert, fp := issue(t, other, "dev-x509")
			e.store.AddCertificate("dev-x509", fp)
			lookups := e.store.AuthLookups()

			_, err = e.connect(t, "dev-x509", "", cert)
			require.Error(t, err)
			if tc.handshake {
				assert.NotErrorIs(t, err, device.ErrNotAuthorized, "refused in the handshake, before any CONNECT")
			} else {
				assert.ErrorIs(t, err, device.ErrNotAuthorized, "sent no certificate, and has no password")
			}
			assert.Equal(t, lookups, e.store.AuthLookups(), "no registry lookup")
			assert.Zero(t, e.g.Stats().Connected)
		})
	}
}

func TestX509CertificateMustNameTheDeviceAndBeRegistered(t *testing.T) {
	e := startX509Gateway(t)
	certX, fpX := issue(t, e.ca, "dev-x")
	certY, fpY := issue(t, e.ca, "dev-y")
	e.store.AddCertificate("dev-x", fpX)
	e.store.AddCertificate("dev-y", fpY)
	e.store.Add("dev-s", "s3cret")
	unregistered, _ := issue(t, e.ca, "dev-x") // signed by the fleet CA, but not the one provisioned
	// A registry row holding the fingerprint of a certificate that names another device (a mistake, or a
	// tampered row): the subject still has to be the id.
	certZ, _ := issue(t, e.ca, "dev-other")
	e.store.AddCertificate("dev-z", pki.Fingerprint(certZ.Leaf))

	for _, tc := range []struct {
		name, id, secret string
		cert             *tls.Certificate
	}{
		{"certificate of another device", "dev-x", "", certY},
		{"certificate of another device, with that device's secret", "dev-s", "s3cret", certX},
		{"certificate not registered", "dev-x", "", unregistered},
		{"certificate for a device with only a secret", "dev-s", "", certX},
		{"registered certificate naming another device", "dev-z", "", certZ},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.g.Stats().AuthFailures
			_, err := e.connect(t, tc.id, tc.secret, tc.cert)
			require.ErrorIs(t, err, device.ErrNotAuthorized)
			assert.Equal(t, before+1, e.g.Stats().AuthFailures)
		})
	}
	_, err := e.connect(t, "dev-x", "", certX)
	require.NoError(t, err, "the right certificate still works")
}

func TestX509DisabledOrClearedCertificateDropsTheSessionAndIsRefused(t *testing.T) {
	e := startX509Gateway(t)
	cert, fp := issue(t, e.ca, "dev-x")
	e.store.AddCertificate("dev-x", fp)
	lost := make(chan struct{}, 8)
	onLost := func(c *device.Config) { c.OnConnectionLost = func(error) { lost <- struct{}{} } }
	waitLost := func(what string) {
		t.Helper()
		select {
		case <-lost:
		case <-time.After(10 * time.Second):
			t.Fatalf("the session was not dropped after %s", what)
		}
	}

	d, err := e.connect(t, "dev-x", "", cert, onLost)
	require.NoError(t, err)
	kicks := e.g.Stats().Kicks
	e.store.SetStatus("dev-x", fleet.StatusDisabled)
	waitLost("disable")
	assert.Equal(t, kicks+1, e.g.Stats().Kicks)
	d.Close()
	_, err = e.connect(t, "dev-x", "", cert)
	require.ErrorIs(t, err, device.ErrNotAuthorized, "a disabled device's certificate is refused")

	e.store.SetStatus("dev-x", fleet.StatusActive)
	d, err = e.connect(t, "dev-x", "", cert, onLost)
	require.NoError(t, err, "enabled again, the same certificate works")

	// Retiring clears the fingerprint (the registry's retire does both); a cleared fingerprint alone drops
	// the live session too, as a rotated-away secret does.
	kicks = e.g.Stats().Kicks
	e.store.SetCertificate("dev-x", nil)
	waitLost("clearing the fingerprint")
	assert.Equal(t, kicks+1, e.g.Stats().Kicks)
	d.Close()
	_, err = e.connect(t, "dev-x", "", cert)
	require.ErrorIs(t, err, device.ErrNotAuthorized, "a cleared certificate is refused")

	// A change that leaves the session's certificate registered keeps it.
	cert2, fp2 := issue(t, e.ca, "dev-x")
	e.store.SetCertificate("dev-x", fp2)
	d2, err := e.connect(t, "dev-x", "", cert2)
	require.NoError(t, err)
	kicks = e.g.Stats().Kicks
	lookups := e.store.AuthLookups()
	e.store.SetStatus("dev-x", fleet.StatusActive) // announced, but the session's certificate is still the one
	require.Eventually(t, func() bool { return e.store.AuthLookups() > lookups }, 10*time.Second, 5*time.Millisecond,
		"the session was re-checked")
	e.store.SetStatus("dev-x", fleet.StatusRetired)
	require.Eventually(t, func() bool { return !d2.IsConnected() }, 10*time.Second, 10*time.Millisecond,
		"a retired device's session is dropped")
	assert.Equal(t, kicks+1, e.g.Stats().Kicks, "dropped once, for the retirement, not for the first re-check")
}

func TestDeviceCANeedsTheTLSListener(t *testing.T) {
	err := gateway.Config{DeviceCAFile: "ca.pem"}.Validate()
	require.ErrorContains(t, err, "--tls-cert")
	server, err := pki.EnsureLocal(t.TempDir(), pki.LocalHosts, time.Now())
	require.NoError(t, err)
	g := gateway.New(gateway.Config{Listen: "127.0.0.1:0", TLSListen: "127.0.0.1:0", TLSCertFile: server.Cert,
		TLSKeyFile: server.Key, DeviceCAFile: filepath.Join(t.TempDir(), "missing.pem")}, gatewaytest.New(), gatewaytest.Logger(t))
	require.ErrorContains(t, g.Start(t.Context()), "device CA")
	assert.Empty(t, g.TLSAddr())
}

// A fleet CA bundle that gains a CA (one being replaced) is trusted by the next handshake, without a restart.
func TestX509DeviceCABundleIsReloaded(t *testing.T) {
	now := time.Now()
	server, err := pki.EnsureLocal(t.TempDir(), pki.LocalHosts, now)
	require.NoError(t, err)
	oldCA, err := pki.InitDeviceCA(filepath.Join(t.TempDir(), "ca"), "old", now, 0)
	require.NoError(t, err)
	newCA, err := pki.InitDeviceCA(filepath.Join(t.TempDir(), "ca"), "new", now, 0)
	require.NoError(t, err)
	bundle := filepath.Join(t.TempDir(), "device-ca.pem")
	require.NoError(t, os.WriteFile(bundle, oldCA.PEM, 0o644))
	store := gatewaytest.New()
	g := gatewaytest.StartGateway(t, store, gateway.Config{TLSListen: "127.0.0.1:0", TLSCertFile: server.Cert,
		TLSKeyFile: server.Key, DeviceCAFile: bundle, TLSReloadEvery: time.Nanosecond})
	e := &x509Env{g: g, store: store, server: server, ca: oldCA}

	oldCert, oldFP := issue(t, oldCA, "dev-old")
	newCert, newFP := issue(t, newCA, "dev-new")
	store.AddCertificate("dev-old", oldFP)
	store.AddCertificate("dev-new", newFP)
	_, err = e.connect(t, "dev-new", "", newCert)
	require.Error(t, err, "the new CA is not trusted yet")

	require.NoError(t, os.WriteFile(bundle, append(append([]byte(nil), oldCA.PEM...), newCA.PEM...), 0o644))
	later := time.Now().Add(time.Minute) // a later mtime, whatever the file system's granularity
	require.NoError(t, os.Chtimes(bundle, later, later))
	_, err = e.connect(t, "dev-new", "", newCert)
	require.NoError(t, err, "trusted once the bundle holds it")
	d, err := e.connect(t, "dev-old", "", oldCert)
	require.NoError(t, err, "and the old CA still is")
	d.Close() // or its reconnects and the next connection would take the session from each other

	// A bundle that no longer loads is ignored: the previous one stays trusted.
	require.NoError(t, os.WriteFile(bundle, []byte("not PEM"), 0o644))
	later = later.Add(time.Minute)
	require.NoError(t, os.Chtimes(bundle, later, later))
	_, err = e.connect(t, "dev-old", "", oldCert)
	require.NoError(t, err)
}

// A renewal registers the device's new certificate in the second slot beside the old one: either connects,
// a certificate session is recorded with its fingerprint (what the renewal waits for), and once the old
// slot is cleared the old certificate is refused (docs/architecture.md, "Certificate renewal").
func TestX509SecondCertificateSlot(t *testing.T) {
	e := startX509Gateway(t)
	cert1, fp1 := issue(t, e.ca, "dev-renew")
	cert2, fp2 := issue(t, e.ca, "dev-renew")
	e.store.AddCertificate("dev-renew", fp1)
	sawSession := func(fp []byte) func() bool {
		return func() bool {
			for _, ev := range e.store.Events() {
				if ev.DeviceID == "dev-renew" && ev.Kind == fleet.ConnUp && ev.Slot == 0 && string(ev.Digest) == string(fp) {
					return true
				}
			}
			return false
		}
	}

	d1, err := e.connect(t, "dev-renew", "", cert1)
	require.NoError(t, err)
	require.Eventually(t, sawSession(fp1), 10*time.Second, 10*time.Millisecond, "the session is recorded with its certificate's fingerprint")
	_, err = e.connect(t, "dev-renew", "", cert2)
	require.ErrorIs(t, err, device.ErrNotAuthorized, "a certificate in no slot is refused")

	e.store.SetCertificate2("dev-renew", fp2)
	require.Eventually(t, d1.IsConnected, 10*time.Second, 10*time.Millisecond, "the old certificate's session stays while its slot does")
	d1.Close()
	_, err = e.connect(t, "dev-renew", "", cert2)
	require.NoError(t, err, "the second slot's certificate connects")
	require.Eventually(t, sawSession(fp2), 10*time.Second, 10*time.Millisecond)

	e.store.SetCertificate("dev-renew", nil)
	require.Eventually(t, func() bool {
		_, err := e.connect(t, "dev-renew", "", cert1)
		return err != nil
	}, 10*time.Second, 50*time.Millisecond)
	_, err = e.connect(t, "dev-renew", "", cert1)
	require.ErrorIs(t, err, device.ErrNotAuthorized, "the old certificate is refused once its slot is cleared")
}

// issueEnding makes a certificate for id signed by ca that ends at end.
func issueEnding(t *testing.T, ca *pki.CA, id string, end time.Time) (*tls.Certificate, []byte) {
	t.Helper()
	dc, err := ca.IssueDevice(id, end.Add(-time.Hour), time.Hour)
	require.NoError(t, err)
	pair, err := tls.X509KeyPair(dc.CertPEM, dc.KeyPEM)
	require.NoError(t, err)
	return &pair, dc.Fingerprint
}

// The expiry rule at CONNECT applies to certificates as it does to secrets (docs/architecture.md, "Credential
// rotation", "Certificate renewal"): a registered certificate of either slot is refused as not authorized
// once the device's registry expiry has passed, and so is one past its own end — which the TLS handshake lets
// through for that, where it used to fail the handshake, telling nobody why. Each refusal is counted as
// expired and put on the device's timeline; a device holding a valid certificate in its other slot then
// connects with it. A certificate from another CA still fails the handshake, expired or not.
func TestX509ExpiredCertificatesAreRefusedAtConnect(t *testing.T) {
	e := startX509GatewayWithCAFrom(t, time.Now().Add(-24*time.Hour)) // older than the certificates it signed
	refusedExpired := func(id string, want time.Time) func() bool {
		return func() bool {
			for _, ev := range e.store.Events() {
				if ev.DeviceID == id && ev.Kind == fleet.ConnRefused {
					return ev.Reason == "credentials expired "+want.UTC().Format(time.RFC3339)
				}
			}
			return false
		}
	}

	// The registry's expiry, for a certificate of either slot.
	cert1, fp1 := issue(t, e.ca, "dev-reg")
	cert2, fp2 := issue(t, e.ca, "dev-reg")
	e.store.AddCertificate("dev-reg", fp1)
	e.store.SetCertificate2("dev-reg", fp2)
	past := time.Now().Add(-time.Minute).Truncate(time.Second)
	e.store.SetExpiry("dev-reg", past)
	for _, c := range []*tls.Certificate{cert1, cert2} {
		_, err := e.connect(t, "dev-reg", "", c)
		require.ErrorIs(t, err, device.ErrNotAuthorized)
	}
	assert.Equal(t, int64(2), e.g.Stats().AuthExpired)
	require.Eventually(t, refusedExpired("dev-reg", past), 10*time.Second, 20*time.Millisecond, "events: %v", e.store.Events())

	// The certificate's own end, the registry's expiry unset.
	ended := time.Now().Add(-time.Hour).Truncate(time.Second)
	old, oldFP := issueEnding(t, e.ca, "dev-old", ended)
	e.store.AddCertificate("dev-old", oldFP)
	_, err := e.connect(t, "dev-old", "", old)
	require.ErrorIs(t, err, device.ErrNotAuthorized, "refused at CONNECT, not in the handshake")
	assert.Equal(t, int64(3), e.g.Stats().AuthExpired)
	require.Eventually(t, refusedExpired("dev-old", old.Leaf.NotAfter), 10*time.Second, 20*time.Millisecond, "events: %v", e.store.Events())

	// Its other slot's certificate is valid: the device moves to it.
	fresh, freshFP := issue(t, e.ca, "dev-old")
	e.store.SetCertificate2("dev-old", freshFP)
	d, err := e.connect(t, "dev-old", "", old, func(c *device.Config) { c.ClientCertificate2, c.Slot = fresh, 1 })
	require.NoError(t, err, "the valid certificate of the other slot connects")
	assert.Equal(t, 2, d.ConnectedSlot())

	// Another CA's expired certificate (of the fleet CA's name, so the client sends it) fails the handshake.
	other, err := pki.InitDeviceCA(filepath.Join(t.TempDir(), "ca"), e.ca.Cert.Subject.CommonName, time.Now().Add(-24*time.Hour), 0)
	require.NoError(t, err)
	forged, forgedFP := issueEnding(t, other, "dev-forged", ended)
	e.store.AddCertificate("dev-forged", forgedFP)
	lookups := e.store.AuthLookups()
	_, err = e.connect(t, "dev-forged", "", forged)
	require.Error(t, err)
	assert.NotErrorIs(t, err, device.ErrNotAuthorized, "refused in the handshake")
	assert.Equal(t, lookups, e.store.AuthLookups(), "no registry lookup")
}
