package device_test

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/pki"
)

func TestClientCertificateOptions(t *testing.T) {
	ca, err := pki.InitDeviceCA(t.TempDir(), "", time.Now(), 0)
	require.NoError(t, err)
	dc, err := ca.IssueDevice("dev-x", time.Now(), time.Hour)
	require.NoError(t, err)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "dev-x.pem"), filepath.Join(dir, "dev-x-key.pem")
	require.NoError(t, os.WriteFile(certFile, dc.CertPEM, 0o600))
	require.NoError(t, os.WriteFile(keyFile, dc.KeyPEM, 0o600))

	_, err = device.New(device.Config{BrokerURL: "ssl://127.0.0.1:8883", ID: "dev-x"})
	require.ErrorContains(t, err, "a secret or a client certificate is required")
	_, err = device.New(device.Config{BrokerURL: "tcp://127.0.0.1:1883", ID: "dev-x", ClientCertFile: certFile, ClientKeyFile: keyFile})
	require.ErrorContains(t, err, "over TLS only", "a certificate cannot be presented in plaintext")
	_, err = device.New(device.Config{BrokerURL: "ssl://127.0.0.1:8883", ID: "dev-x", ClientCertFile: certFile, ClientKeyFile: certFile})
	require.ErrorContains(t, err, "client certificate")
	_, err = device.New(device.Config{BrokerURL: "ssl://127.0.0.1:8883", ID: "dev-x", ClientCertFile: certFile, ClientKeyFile: keyFile})
	require.NoError(t, err, "the files are enough, without a secret")

	// A shared config (a simulator's) is not changed by one device's certificate.
	shared := &tls.Config{MinVersion: tls.VersionTLS12}
	pair, err := tls.X509KeyPair(dc.CertPEM, dc.KeyPEM)
	require.NoError(t, err)
	_, err = device.New(device.Config{BrokerURL: "ssl://127.0.0.1:8883", ID: "dev-x", TLSConfig: shared, ClientCertificate: &pair})
	require.NoError(t, err)
	require.Empty(t, shared.Certificates)
}
