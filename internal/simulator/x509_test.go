package simulator_test

import (
	"context"
	"crypto/ecdsa"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/internal/simulator"
)

// A credentials file of `provision --auth x509` (certificates and keys, no secrets) mixed with secret
// devices: the simulator's certificate devices connect with their certificates and no password.
func TestSimulatorWithCertificateCredentials(t *testing.T) {
	const n = 6
	now := time.Now()
	l, err := pki.EnsureLocal(t.TempDir(), pki.LocalHosts, now)
	require.NoError(t, err)
	caDir := filepath.Join(t.TempDir(), "ca")
	ca, err := pki.InitDeviceCA(caDir, "", now, 0)
	require.NoError(t, err)
	store := gatewaytest.New()
	path := filepath.Join(t.TempDir(), "creds.ndjson")
	w, err := creds.Create(path)
	require.NoError(t, err)
	for i := range n {
		id := fmt.Sprintf("x509-%02d", i)
		if i%2 == 1 {
			require.NoError(t, w.Write(creds.Credential{ID: id, Secret: "secret-" + id}))
			store.Add(id, "secret-"+id)
			continue
		}
		dc, err := ca.IssueDevice(id, now, time.Hour)
		require.NoError(t, err)
		require.NoError(t, w.Write(creds.Credential{ID: id, Cert: string(dc.CertPEM), Key: string(dc.KeyPEM)}))
		store.AddCertificate(id, dc.Fingerprint)
	}
	require.NoError(t, w.Close())
	list, err := creds.ReadFile(path)
	require.NoError(t, err)
	g := gatewaytest.StartGateway(t, store, gateway.Config{TLSListen: "127.0.0.1:0", TLSCertFile: l.Cert, TLSKeyFile: l.Key,
		DeviceCAFile: pki.DeviceCAIn(caDir).Cert})

	_, err = simulator.New(simulator.Config{BrokerURL: gatewaytest.URL(g), Creds: list})
	require.ErrorContains(t, err, "TLS only", "certificates are not presented over plaintext")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sim, err := simulator.New(simulator.Config{BrokerURL: "ssl://" + g.TLSAddr(), CAFile: l.CA, Creds: list,
		Logger: gatewaytest.Logger(t)})
	require.NoError(t, err)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- sim.Run(runCtx) }()
	require.Eventually(t, func() bool { return sim.Stats().Reported == n }, 15*time.Second, 20*time.Millisecond, "stats: %s", sim.Stats())
	assert.Equal(t, int64(n), g.Stats().Connected)
	assert.Zero(t, g.Stats().AuthFailures)
	stop()
	require.NoError(t, <-done)
}

// A simulator stopped between a renewal's request and its certificate (a restart of its devices) keeps the
// request's key in its credentials file, appended and synced before the answer: the next run reads it and
// installs the certificate signed for it. The file's newest line then holds the certificate with that key
// and no pending key.
func TestSimulatorKeepsPendingKeyAcrossRestart(t *testing.T) {
	now := time.Now()
	l, err := pki.EnsureLocal(t.TempDir(), pki.LocalHosts, now)
	require.NoError(t, err)
	caDir := filepath.Join(t.TempDir(), "ca")
	ca, err := pki.InitDeviceCA(caDir, "", now, 0)
	require.NoError(t, err)
	store := gatewaytest.New()
	path := filepath.Join(t.TempDir(), "creds.ndjson")
	w, err := creds.Create(path)
	require.NoError(t, err)
	dc, err := ca.IssueDevice("x509-r", now, time.Hour)
	require.NoError(t, err)
	require.NoError(t, w.Write(creds.Credential{ID: "x509-r", Cert: string(dc.CertPEM), Key: string(dc.KeyPEM)}))
	require.NoError(t, w.Close())
	store.AddCertificate("x509-r", dc.Fingerprint)
	g := gatewaytest.StartGateway(t, store, gateway.Config{TLSListen: "127.0.0.1:0", TLSCertFile: l.Cert, TLSKeyFile: l.Key,
		DeviceCAFile: pki.DeviceCAIn(caDir).Cert})

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// run starts a simulator over the file as it is now; stop ends it.
	run := func() (sim *simulator.Simulator, stop func()) {
		t.Helper()
		list, err := creds.ReadFile(path)
		require.NoError(t, err)
		sim, err = simulator.New(simulator.Config{BrokerURL: "ssl://" + g.TLSAddr(), CAFile: l.CA, Creds: list, CredentialsFile: path,
			Logger: gatewaytest.Logger(t)})
		require.NoError(t, err)
		runCtx, cancelRun := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- sim.Run(runCtx) }()
		require.Eventually(t, func() bool { return sim.Stats().Reported == 1 }, 30*time.Second, 20*time.Millisecond, "stats: %s", sim.Stats())
		return sim, func() { cancelRun(); require.NoError(t, <-done) }
	}
	_, stop := run()
	svc := gatewaytest.Service(t, gatewaytest.URL(g), "svc:test")
	svc.Sub(t, 1, "devices/x509-r/methods/res/+/+")
	call := func(method, rid, payload, wantTopic string) gatewaytest.Message {
		t.Helper()
		require.NoError(t, svc.Pub(t, "devices/x509-r/methods/req/"+method+"/"+rid, 0, payload))
		m, ok := svc.WaitMessage(t, wantTopic, 20*time.Second)
		require.True(t, ok, "no response on %s; got %v", wantTopic, svc.Messages())
		return m
	}
	m := call(protocol.MethodRenewCertificate, "q1", "{}", "devices/x509-r/methods/res/200/q1")
	answer, err := protocol.ParseRenewCertificateAnswer(m.Payload)
	require.NoError(t, err)
	stop()

	list, err := creds.ReadFile(path)
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.NotNil(t, list[0].Pending, "the request's key is in the file")
	pendingPub := list[0].Pending.Public().(*ecdsa.PublicKey)
	certPEM, fp, _, err := ca.SignDeviceCSR("x509-r", []byte(answer.CSR), time.Now(), 2*time.Hour)
	require.NoError(t, err)
	store.SetCertificate2("x509-r", fp)

	sim, stop := run()
	defer stop()
	call(protocol.MethodInstallCertificate, "i1", string(protocol.InstallCertificate{Slot: 2, Certificate: string(certPEM)}.Payload()),
		"devices/x509-r/methods/res/200/i1")
	assert.Equal(t, int64(1), sim.Stats().Rotations, "one certificate stored (the request is not counted)")
	list, err = creds.ReadFile(path)
	require.NoError(t, err)
	require.NotNil(t, list[0].TLS2, "the certificate is stored with its key")
	assert.Equal(t, fp, pki.Fingerprint(list[0].TLS2.Leaf))
	assert.True(t, pendingPub.Equal(list[0].TLS2.Leaf.PublicKey), "paired with the key stored before the restart")
	assert.Nil(t, list[0].Pending, "installed: no longer pending")
	assert.Empty(t, list[0].PendingKey)
}
