package config_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/config"
)

// isolate points the SDK at a temporal.toml of the test's own (none when toml is empty) and unsets every
// TEMPORAL_* variable, so the developer's own settings cannot leak in. Unset, not empty: envconfig takes an
// empty TEMPORAL_ADDRESS as "no address".
func isolate(t *testing.T, toml string) {
	t.Helper()
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "TEMPORAL_") {
			t.Setenv(name, "") // restores the value after the test
			require.NoError(t, os.Unsetenv(name))
		}
	}
	path := filepath.Join(t.TempDir(), "temporal.toml")
	if toml != "" {
		require.NoError(t, os.WriteFile(path, []byte(toml), 0o600))
	}
	t.Setenv("TEMPORAL_CONFIG_FILE", path)
}

func TestTemporalDefaultsWhenNothingIsSet(t *testing.T) {
	isolate(t, "")
	opts, err := config.TemporalClientOptions("", "")
	require.NoError(t, err)
	require.Equal(t, config.DefaultTemporalAddress, opts.HostPort)
	require.Equal(t, config.DefaultNamespace, opts.Namespace)
	require.Nil(t, opts.ConnectionOptions.TLS, "plain connection to the local dev server")
	require.Nil(t, opts.Credentials)

	cfg := config.FromEnv()
	require.Equal(t, config.DefaultTemporalAddress, cfg.TemporalAddress)
	require.Equal(t, config.DefaultNamespace, cfg.Namespace)
	require.Empty(t, cfg.TemporalProfile)
}

func TestTemporalFromEnvironment(t *testing.T) {
	isolate(t, "")
	t.Setenv("TEMPORAL_ADDRESS", "ns.a1b2c.tmprl.cloud:7233")
	t.Setenv("TEMPORAL_NAMESPACE", "ns.a1b2c")
	t.Setenv("TEMPORAL_API_KEY", "secret-key")
	opts, err := config.TemporalClientOptions("", "")
	require.NoError(t, err)
	require.Equal(t, "ns.a1b2c.tmprl.cloud:7233", opts.HostPort)
	require.Equal(t, "ns.a1b2c", opts.Namespace)
	require.NotNil(t, opts.Credentials, "API key set")
	require.NotNil(t, opts.ConnectionOptions.TLS, "an API key implies TLS")

	cfg := config.FromEnv()
	require.Equal(t, "ns.a1b2c.tmprl.cloud:7233", cfg.TemporalAddress)
	require.Equal(t, "ns.a1b2c", cfg.Namespace)

	// Flags override the environment; the API key stays.
	opts, err = config.TemporalClientOptions("127.0.0.1:9999", "other")
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:9999", opts.HostPort)
	require.Equal(t, "other", opts.Namespace)
	require.NotNil(t, opts.Credentials)
}

func TestTemporalFromProfileWithMutualTLS(t *testing.T) {
	certPath, keyPath := writeClientCert(t)
	isolate(t, `
[profile.default]
address = "127.0.0.1:7233"

[profile.prod]
address = "temporal.prod.example:7233"
namespace = "fleet-prod"

[profile.prod.tls]
client_cert_path = "`+certPath+`"
client_key_path = "`+keyPath+`"
server_name = "temporal.prod.example"
`)
	t.Setenv("TEMPORAL_PROFILE", "prod")
	opts, err := config.TemporalClientOptions("", "")
	require.NoError(t, err)
	require.Equal(t, "temporal.prod.example:7233", opts.HostPort, "address from the profile")
	require.Equal(t, "fleet-prod", opts.Namespace)
	require.NotNil(t, opts.ConnectionOptions.TLS, "TLS on")
	require.Len(t, opts.ConnectionOptions.TLS.Certificates, 1, "client certificate loaded (mTLS)")
	require.Equal(t, "temporal.prod.example", opts.ConnectionOptions.TLS.ServerName)
	require.Nil(t, opts.Credentials)

	cfg := config.FromEnv()
	require.Equal(t, "temporal.prod.example:7233", cfg.TemporalAddress)
	require.Equal(t, "fleet-prod", cfg.Namespace)
	require.Equal(t, "prod", cfg.TemporalProfile)

	// The variables override the profile, the flags override both.
	t.Setenv("TEMPORAL_NAMESPACE", "fleet-staging")
	opts, err = config.TemporalClientOptions("", "")
	require.NoError(t, err)
	require.Equal(t, "fleet-staging", opts.Namespace)
	opts, err = config.TemporalClientOptions("10.0.0.1:7233", "")
	require.NoError(t, err)
	require.Equal(t, "10.0.0.1:7233", opts.HostPort)
	require.Equal(t, "fleet-staging", opts.Namespace)
	require.Len(t, opts.ConnectionOptions.TLS.Certificates, 1, "flags change the address, not the TLS settings")

	// TEMPORAL_TLS=false turns the profile's TLS off, as with the temporal CLI.
	t.Setenv("TEMPORAL_TLS", "false")
	opts, err = config.TemporalClientOptions("", "")
	require.NoError(t, err)
	require.True(t, opts.ConnectionOptions.TLSDisabled)
}

func TestTemporalProfileErrors(t *testing.T) {
	isolate(t, "[profile.default]\naddress = \"127.0.0.1:7233\"\n")
	t.Setenv("TEMPORAL_PROFILE", "missing")
	_, err := config.TemporalClientOptions("", "")
	require.ErrorContains(t, err, "missing")
	// FromEnv cannot fail: it falls back to the defaults and the dial reports the error.
	require.Equal(t, config.DefaultTemporalAddress, config.FromEnv().TemporalAddress)

	isolate(t, "")
	t.Setenv("TEMPORAL_TLS_CLIENT_CERT_PATH", filepath.Join(t.TempDir(), "nope.pem")) // without a key
	_, err = config.TemporalClientOptions("", "")
	require.ErrorContains(t, err, "client cert or key")
}

// writeClientCert writes a self-signed certificate and its key as PEM files.
func writeClientCert(t *testing.T) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fleetflow-worker"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key")
	require.NoError(t, os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))
	return certPath, keyPath
}
