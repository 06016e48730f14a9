package gatewaytest

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/pki"
)

// X509 is a started gateway whose TLS listener trusts a fleet CA for device certificates (docs/architecture.md,
// "Device certificates"), on a free loopback port.
type X509 struct {
	Gateway *gateway.Gateway
	Store   *Store
	Server  pki.Local // the gateway's own CA and certificate; devices verify the gateway with Server.CA
	CA      *pki.CA   // the fleet CA
}

// StartX509 starts a gateway with a new Store, a local server certificate and a fleet
// CA made at caFrom, stopped when the test ends.
func StartX509(t testing.TB, caFrom time.Time) *X509 {
	t.Helper()
	server, err := pki.EnsureLocal(t.TempDir(), pki.LocalHosts, time.Now())
	if err != nil {
		t.Fatalf("server certificate: %v", err)
	}
	caDir := filepath.Join(t.TempDir(), "ca")
	ca, err := pki.InitDeviceCA(caDir, "", caFrom, 0)
	if err != nil {
		t.Fatalf("fleet CA: %v", err)
	}
	store := New()
	g := StartGateway(t, store, gateway.Config{TLSListen: "127.0.0.1:0", TLSCertFile: server.Cert,
		TLSKeyFile: server.Key, DeviceCAFile: pki.DeviceCAIn(caDir).Cert})
	return &X509{Gateway: g, Store: store, Server: server, CA: ca}
}
