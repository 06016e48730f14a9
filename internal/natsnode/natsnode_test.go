package natsnode_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fleetflow/fleetflow/internal/natsnode"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// TestClusterCarriesMessagesAcrossNodes shows the property the device channel relies on: a subscriber on
// one node receives what is published on another, and a request to a subject nobody subscribes to anywhere
// in the cluster gets "no responders" at once.
func TestClusterCarriesMessagesAcrossNodes(t *testing.T) {
	c := testenv.StartNATSCluster(t, 3)
	for _, n := range c.Nodes {
		if n.NumPeers() != 2 {
			t.Fatalf("node %s has %d peers, want 2", n.ClientURL(), n.NumPeers())
		}
	}
	sub, err := nats.Connect(c.Nodes[0].ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	pub, err := nats.Connect(c.Nodes[2].ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()

	if _, err := sub.Subscribe("ff.test.echo", func(m *nats.Msg) { _ = m.Respond(append([]byte("re:"), m.Data...)) }); err != nil {
		t.Fatal(err)
	}
	if err := sub.Flush(); err != nil {
		t.Fatal(err)
	}
	// Interest travels to the other nodes asynchronously: retry until the request finds the responder.
	deadline := time.Now().Add(30 * time.Second)
	for {
		reply, err := pub.Request("ff.test.echo", []byte("hi"), 5*time.Second)
		if err == nil {
			if string(reply.Data) != "re:hi" {
				t.Fatalf("reply %q, want re:hi", reply.Data)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("request across nodes: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	start := time.Now()
	_, err = pub.Request("ff.test.nobody", nil, 20*time.Second)
	if err != nats.ErrNoResponders {
		t.Fatalf("request to an unsubscribed subject: %v, want no responders", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("no responders took %s: it waited for the timeout", time.Since(start))
	}
}

func TestSingleNodeWithTLSAndPassword(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := writeCerts(t, dir)
	n, err := natsnode.Start(natsnode.Config{
		Listen: "127.0.0.1:0", TLSCertFile: cert, TLSKeyFile: key, TLSCAFile: ca, User: "svc", Password: "s3cret",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if !strings.HasPrefix(n.ClientURL(), "tls://127.0.0.1:") {
		t.Fatalf("client URL %s, want tls://127.0.0.1:port", n.ClientURL())
	}
	if nc, err := nats.Connect(n.ClientURL(), nats.RootCAs(ca)); err == nil {
		nc.Close()
		t.Fatal("connected without credentials")
	}
	if nc, err := nats.Connect(n.ClientURL(), nats.UserInfo("svc", "s3cret")); err == nil {
		nc.Close()
		t.Fatal("connected without trusting the CA")
	}
	nc, err := nats.Connect(n.ClientURL(), nats.RootCAs(ca), nats.UserInfo("svc", "s3cret"))
	if err != nil {
		t.Fatalf("connect with CA and credentials: %v", err)
	}
	defer nc.Close()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func TestTLSClusterRoutes(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := writeCerts(t, dir)
	cfg := natsnode.Config{Listen: "127.0.0.1:0", ClusterListen: "127.0.0.1:0", TLSCertFile: cert, TLSKeyFile: key,
		TLSCAFile: ca, User: "u", Password: "p"}
	a, err := natsnode.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	cfg.Routes = []string{a.ClusterURL()}
	cfg.Name = "second"
	b, err := natsnode.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	deadline := time.Now().Add(30 * time.Second)
	for a.NumPeers() < 1 || b.NumPeers() < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("TLS route did not come up: peers %d and %d", a.NumPeers(), b.NumPeers())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestConfigErrors(t *testing.T) {
	for name, cfg := range map[string]natsnode.Config{
		"bad listen":          {Listen: "nope"},
		"user without pass":   {Listen: "127.0.0.1:0", User: "u"},
		"routes without port": {Listen: "127.0.0.1:0", Routes: []string{"nats://127.0.0.1:1"}},
		"CA without cert":     {Listen: "127.0.0.1:0", TLSCAFile: "ca.pem"},
		"missing cert files":  {Listen: "127.0.0.1:0", TLSCertFile: "/nonexistent.pem", TLSKeyFile: "/nonexistent.key"},
	} {
		if n, err := natsnode.Start(cfg); err == nil {
			n.Close()
			t.Errorf("%s: started", name)
		}
	}
}

// writeCerts makes a CA and a certificate for 127.0.0.1 usable by servers and by route clients.
func writeCerts(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "nats"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	caCert, _ := x509.ParseCertificate(caDER)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for f, b := range map[string]*pem.Block{caFile: {Type: "CERTIFICATE", Bytes: caDER},
		certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "EC PRIVATE KEY", Bytes: keyDER}} {
		if err := os.WriteFile(f, pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return caFile, certFile, keyFile
}

// A node that lost a route (dev up shrank the cluster) keeps retrying it every second, but reports the
// failure on the first attempt and then once a minute, not on every attempt.
func TestLostRouteIsNotReportedEverySecond(t *testing.T) {
	a, err := natsnode.Start(natsnode.Config{Name: "a", Listen: "127.0.0.1:0", ClusterListen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	var log routeErrors
	b, err := natsnode.Start(natsnode.Config{Name: "b", Listen: "127.0.0.1:0", ClusterListen: "127.0.0.1:0",
		Routes: []string{a.ClusterURL()}, Logger: slog.New(&log)})
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	defer b.Close()
	deadline := time.Now().Add(30 * time.Second)
	for b.NumPeers() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("route did not come up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.Close()
	for log.count() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the lost route was never reported")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The server retries once a second (each connection of the route pool on its own): five seconds hold
	// attempts 2 to 5 of each, none of which is reported.
	time.Sleep(5 * time.Second)
	log.mu.Lock()
	defer log.mu.Unlock()
	for _, m := range log.msgs {
		if !strings.Contains(m, "(attempt 1)") {
			t.Fatalf("a later attempt was reported: %q (all: %q)", m, log.msgs)
		}
	}
}

// routeErrors is a slog handler counting the server's reports of failed route connections.
type routeErrors struct {
	mu   sync.Mutex
	n    int
	msgs []string
}

func (h *routeErrors) Enabled(context.Context, slog.Level) bool { return true }
func (h *routeErrors) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "connect to route") {
		h.mu.Lock()
		h.n++
		h.msgs = append(h.msgs, r.Message)
		h.mu.Unlock()
	}
	return nil
}
func (h *routeErrors) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *routeErrors) WithGroup(string) slog.Handler      { return h }

// count is the number of reports so far.
func (h *routeErrors) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}
