package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/simulator"
)

// Device certificates end to end (docs/architecture.md, "Device certificates"): `ca init` makes the fleet
// CA once and refuses to replace it; `provision --auth x509` writes each new device's key and certificate
// once (0600), chained to the CA, with the fingerprint in the registry and nothing of it in Temporal;
// certificate and secret devices of one registry connect to a gateway trusting the CA; retiring or
// disabling a certificate device drops its session and refuses it afterwards.
func TestX509ProvisionConnectAndRevoke(t *testing.T) {
	e := newEnv(t)
	e.workerProcess() // the whole worker: retire runs a decommission job
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	caDir := filepath.Join(t.TempDir(), "ca")
	files := pki.DeviceCAIn(caDir)

	out, err := e.cli(ctx, "ca", "init", "--ca-dir", caDir, "-o", "json")
	require.NoError(t, err)
	var created struct {
		Certificate, Subject, FingerprintSha256 string
		Created                                 bool
	}
	require.NoError(t, json.Unmarshal([]byte(out), &created), out)
	require.True(t, created.Created)
	require.Equal(t, files.Cert, created.Certificate)
	st, err := os.Stat(files.Key)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "the CA's key is private")
	key, err := os.ReadFile(files.Key)
	require.NoError(t, err)

	msg, err := e.cliCombined(ctx, "ca", "init", "--ca-dir", caDir)
	require.Equal(t, 1, exitCodeOf(err), msg)
	require.Contains(t, msg, "already holds a fleet CA")
	again, err := os.ReadFile(files.Key)
	require.NoError(t, err)
	require.Equal(t, key, again, "the existing CA is untouched")

	out, err = e.cli(ctx, "ca", "show", "--ca-dir", caDir, "-o", "json")
	require.NoError(t, err)
	var shown struct{ FingerprintSha256 string }
	require.NoError(t, json.Unmarshal([]byte(out), &shown))
	ca, err := pki.LoadCA(files.Cert, files.Key)
	require.NoError(t, err)
	require.Equal(t, pki.FormatFingerprint(pki.Fingerprint(ca.Cert)), shown.FingerprintSha256)
	require.Equal(t, created.FingerprintSha256, shown.FingerprintSha256)

	// One registry, two kinds of devices.
	secretsFile := filepath.Join(t.TempDir(), "secrets.ndjson")
	_, err = e.cli(ctx, "provision", "--count", "3", "--prefix", "sec-", "--creds-out", secretsFile, "-o", "json")
	require.NoError(t, err)
	certsFile := filepath.Join(t.TempDir(), "certs.ndjson")
	out, err = e.cli(ctx, "provision", "--count", "5", "--prefix", "crt-", "--auth", "x509", "--ca-dir", caDir,
		"--credential-validity", "30d", "--creds-out", certsFile, "-o", "json")
	require.NoError(t, err)
	s := parseSummary(t, out)
	require.Equal(t, int64(5), s.Counts.Created)
	require.Equal(t, 5, s.Credentials)
	st, err = os.Stat(certsFile)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "the credentials file holds private keys")
	_, err = os.Stat(certsFile + ".pending")
	require.ErrorIs(t, err, os.ErrNotExist, "the pending file became the credentials file")

	certs := mustCreds(t, certsFile)
	require.Len(t, certs, 5)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	for _, c := range certs {
		require.Empty(t, c.Secret, c.ID)
		require.NotNil(t, c.TLS, c.ID)
		leaf := c.TLS.Leaf
		require.Equal(t, c.ID, leaf.Subject.CommonName)
		_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		require.NoError(t, err, "%s chains to the fleet CA", c.ID)
		assert.WithinDuration(t, time.Now().Add(30*24*time.Hour), leaf.NotAfter, 5*time.Minute, "--credential-validity")
		a, err := e.reg.DeviceAuth(ctx, c.ID)
		require.NoError(t, err)
		require.Equal(t, pki.Fingerprint(leaf), a.CertFingerprint, "the registry keeps the fingerprint")
		require.Nil(t, a.Secret1Hash, "and no secret")
		var expires, notAfter time.Time
		require.NoError(t, e.reg.Pool().QueryRow(ctx, "SELECT credential_expires_at, cert_not_after FROM devices WHERE id = $1", c.ID).
			Scan(&expires, &notAfter))
		assert.True(t, leaf.NotAfter.Equal(notAfter), "%s: the certificate's end is recorded (%s, want %s)", c.ID, notAfter, leaf.NotAfter)
		assert.True(t, leaf.NotAfter.Equal(expires), "%s: the health check watches the certificate's end (%s, want %s)", c.ID, expires, leaf.NotAfter)
	}

	// No private key (nor certificate) went through Temporal.
	hist := e.tc.GetWorkflowHistory(ctx, s.WorkflowID, "", false, 0)
	var events strings.Builder
	for hist.HasNext() {
		ev, err := hist.Next()
		require.NoError(t, err)
		events.WriteString(ev.String())
	}
	require.NotEmpty(t, events.String())
	for _, c := range certs {
		block, _ := pem.Decode([]byte(c.Key))
		require.NotNil(t, block)
		require.NotContains(t, events.String(), string(block.Bytes[:24]))
		require.NotContains(t, events.String(), strings.Split(c.Key, "\n")[1], "a line of the PEM key")
		require.NotContains(t, events.String(), "PRIVATE KEY")
	}

	// A gateway that trusts the fleet CA, on the same registry.
	gw := gateway.New(gateway.Config{Listen: "127.0.0.1:0", TLSListen: "127.0.0.1:0", TLSCertFile: e.tls.Cert,
		TLSKeyFile: e.tls.Key, DeviceCAFile: files.Cert}, e.reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, gw.Start(ctx))
	t.Cleanup(func() { gw.Close() })
	tlsURL := "ssl://" + gw.TLSAddr()

	// The simulator reads both credentials files: certificates and secrets side by side.
	all := append(mustCreds(t, secretsFile), certs[2:]...)
	simCtx, stopSim := context.WithCancel(ctx)
	defer stopSim()
	sim, err := simulator.New(simulator.Config{BrokerURL: tlsURL, CAFile: e.tls.CA, Creds: all})
	require.NoError(t, err)
	simDone := make(chan error, 1)
	go func() { simDone <- sim.Run(simCtx) }()
	require.Eventually(t, func() bool { return sim.Stats().Reported == int64(len(all)) }, time.Minute, 50*time.Millisecond,
		"stats: %s", sim.Stats())
	require.Zero(t, gw.Stats().AuthFailures)

	// Retire one certificate device and disable another while they are connected.
	connect := func(c creds.Credential, lost chan<- struct{}) (*device.Device, error) {
		d, err := device.New(device.Config{BrokerURL: tlsURL, CAFile: e.tls.CA, ID: c.ID, ClientCertificate: c.TLS,
			MaxReconnectInterval: time.Second, OnConnectionLost: func(error) {
				if lost != nil {
					lost <- struct{}{}
				}
			}})
		require.NoError(t, err)
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if err := d.Connect(cctx); err != nil {
			return nil, err
		}
		t.Cleanup(d.Close)
		return d, nil
	}
	for _, tc := range []struct {
		c    creds.Credential
		args []string
	}{
		{certs[0], []string{"retire", certs[0].ID, "--reason", "x509 test"}},
		{certs[1], []string{"devices", "disable", certs[1].ID}},
	} {
		lost := make(chan struct{}, 4)
		d, err := connect(tc.c, lost)
		require.NoError(t, err, tc.c.ID)
		_, err = e.cli(ctx, tc.args...)
		require.NoError(t, err)
		select {
		case <-lost:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: the session of %s was not dropped", tc.args[0], tc.c.ID)
		}
		d.Close()
		_, err = connect(tc.c, nil)
		require.ErrorIs(t, err, device.ErrNotAuthorized, "%s: %s is refused", tc.args[0], tc.c.ID)
	}
	a, err := e.reg.DeviceAuth(ctx, certs[0].ID)
	require.NoError(t, err)
	require.Equal(t, fleet.StatusRetired, a.Status)
	require.Nil(t, a.CertFingerprint, "retiring cleared the fingerprint")
	a, err = e.reg.DeviceAuth(ctx, certs[1].ID)
	require.NoError(t, err)
	require.Equal(t, fleet.StatusDisabled, a.Status)
	require.NotNil(t, a.CertFingerprint, "disabling keeps it, so enable lets the device back")
	stopSim()
	require.NoError(t, <-simDone)

	// A certificate device is replaced by one with a certificate too (OLD has no secret), connecting at once.
	newFile := filepath.Join(t.TempDir(), "crt-new.creds.ndjson")
	_, err = e.cli(ctx, "replace", certs[4].ID, "crt-new", "--ca-dir", caDir, "--creds-out", newFile, "-o", "json")
	require.NoError(t, err)
	st, err = os.Stat(newFile)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	repl := mustCreds(t, newFile)
	require.Len(t, repl, 1)
	require.Empty(t, repl[0].Secret)
	require.NotNil(t, repl[0].TLS)
	require.Equal(t, "crt-new", repl[0].TLS.Leaf.Subject.CommonName)
	a, err = e.reg.DeviceAuth(ctx, "crt-new")
	require.NoError(t, err)
	require.Equal(t, pki.Fingerprint(repl[0].TLS.Leaf), a.CertFingerprint)
	var expires, notAfter time.Time
	require.NoError(t, e.reg.Pool().QueryRow(ctx, "SELECT credential_expires_at, cert_not_after FROM devices WHERE id = 'crt-new'").Scan(&expires, &notAfter))
	assert.True(t, repl[0].TLS.Leaf.NotAfter.Equal(notAfter), "the replacement's certificate end is recorded")
	assert.True(t, repl[0].TLS.Leaf.NotAfter.Equal(expires), "its expiry is its certificate's end")
	_, err = connect(repl[0], nil)
	require.NoError(t, err)
	_, err = connect(certs[4], nil)
	require.ErrorIs(t, err, device.ErrNotAuthorized, "the replaced device is retired")
}

// A client fleetflow did not write (libmosquitto, with OpenSSL) connects as a certificate device: --cert and
// --key from the credentials file of `provision --auth x509`, no password; with the certificate of another
// device it is refused.
func TestMosquittoClientWithADeviceCertificate(t *testing.T) {
	rr := mosquittoTool(t, "mosquitto_rr")
	e := newEnv(t)
	e.startWorker()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	caDir := filepath.Join(t.TempDir(), "ca")
	_, err := e.cli(ctx, "ca", "init", "--ca-dir", caDir)
	require.NoError(t, err)
	certsFile := filepath.Join(t.TempDir(), "certs.ndjson")
	_, err = e.cli(ctx, "provision", "--count", "2", "--prefix", "mqx-", "--auth", "x509", "--ca-dir", caDir,
		"--creds-out", certsFile, "-o", "json")
	require.NoError(t, err)
	certs := mustCreds(t, certsFile)
	require.Len(t, certs, 2)
	dir := t.TempDir()
	files := map[string][2]string{}
	for _, c := range certs {
		cf, kf := filepath.Join(dir, c.ID+".pem"), filepath.Join(dir, c.ID+"-key.pem")
		require.NoError(t, os.WriteFile(cf, []byte(c.Cert), 0o600))
		require.NoError(t, os.WriteFile(kf, []byte(c.Key), 0o600))
		files[c.ID] = [2]string{cf, kf}
	}
	gw := gateway.New(gateway.Config{Listen: "127.0.0.1:0", TLSListen: "127.0.0.1:0", TLSCertFile: e.tls.Cert,
		TLSKeyFile: e.tls.Key, DeviceCAFile: pki.DeviceCAIn(caDir).Cert}, e.reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, gw.Start(ctx))
	t.Cleanup(func() { gw.Close() })
	host, port, err := net.SplitHostPort(gw.TLSAddr())
	require.NoError(t, err)

	// twinGet returns mosquitto_rr's stdout (the answer; with -d also its packet log) and stderr.
	twinGet := func(id string, pair [2]string, debug ...string) (string, string, error) {
		rid := "rid-x509"
		cmd := exec.CommandContext(ctx, rr, append(debug, "-h", host, "-p", port, "--cafile", e.tls.CA, "--cert", pair[0], "--key", pair[1],
			"-V", "mqttv311", "-i", id, "-u", id, "-q", "1", "-v", "-W", "20",
			"-t", "devices/"+id+"/twin/get/"+rid, "-e", "devices/"+id+"/twin/res/200/"+rid, "-m", "{}")...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		return out.String(), errb.String(), err
	}
	id, other := certs[0].ID, certs[1].ID
	out, stderr, err := twinGet(id, files[id])
	require.NoError(t, err, stderr)
	topic, payload, _ := strings.Cut(strings.TrimSpace(out), " ")
	require.Equal(t, "devices/"+id+"/twin/res/200/rid-x509", topic)
	var props map[string]json.RawMessage
	require.NoError(t, json.Unmarshal([]byte(payload), &props), payload)
	assert.Contains(t, props, "desired")

	failures := gw.Stats().AuthFailures
	out, stderr, err = twinGet(id, files[other], "-d")
	require.Error(t, err, "connected as %s with the certificate of %s: %s", id, other, out)
	// 5: "not authorized", the MQTT 3.1.1 return code (mosquitto_rr itself prints "Unknown reason").
	assert.Contains(t, out+stderr, "received CONNACK (5)")
	assert.Equal(t, failures+1, gw.Stats().AuthFailures)
}
