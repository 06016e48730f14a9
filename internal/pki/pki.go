// Package pki makes and loads the TLS material of the device channel (docs/architecture.md, "Where secrets
// live"): a local certificate authority and a server certificate for the local stack, a holder that serves a
// certificate and key pair from files and reloads them when they change, and the client side's tls.Config
// that verifies the gateway against a CA file; and the fleet CA that signs devices' client certificates, with
// the fingerprints the registry keeps of them (docs/architecture.md, "Device certificates"). It uses only the standard library (crypto/x509), so the
// gateway, the device SDK, the service channel and the CLI can all share it.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// File names under the local stack's TLS directory (.fleetflow/tls).
const (
	CAFile        = "ca.pem"             // the CA certificate clients verify the gateway with
	CAKeyFile     = "ca-key.pem"         // the CA's private key (0600)
	ServerFile    = "server.pem"         // the gateway's certificate, signed by the CA
	ServerKeyFile = "server-key.pem"     // the gateway's private key (0600)
	caCommonName  = "fleetflow local CA" // with the host name appended
)

// Validity of what EnsureLocal issues, and how long before its end a certificate is replaced.
const (
	CAValidity     = 10 * 365 * 24 * time.Hour
	ServerValidity = 365 * 24 * time.Hour
	// RenewBefore: a server certificate with less than this left is re-issued by the next `dev up`, so a
	// stack restarted now and then never serves an expired one. A CA with less than ServerValidity left is
	// replaced, so that it outlives every certificate it signs.
	RenewBefore = 30 * 24 * time.Hour
)

// LocalHosts are the names the local stack's server certificate is valid for: the gateway listens on
// loopback, and clients may dial it by either address or by name.
var LocalHosts = []string{"127.0.0.1", "::1", "localhost"}

// CA is a certificate authority that can sign server certificates.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	PEM  []byte // Cert, PEM-encoded
}

// NewCA creates a self-signed CA valid from now (less a minute of clock skew) for validity.
func NewCA(commonName string, now time.Time, validity time.Duration) (*CA, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"fleetflow"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // signs leaf certificates only
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return &CA{Cert: cert, Key: key, PEM: encodeCert(der)}, keyPEM, nil
}

// LoadCA reads a CA certificate and its key from PEM files.
func LoadCA(certFile, keyFile string) (*CA, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load CA %s: %w", certFile, err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parse CA %s: %w", certFile, err)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok || !cert.IsCA {
		return nil, fmt.Errorf("load CA %s: not a CA certificate with a signing key", certFile)
	}
	return &CA{Cert: cert, Key: signer, PEM: encodeCert(pair.Certificate[0])}, nil
}

// IssueServer signs a server certificate for hosts (IP addresses and DNS names) and returns it and its new
// private key, PEM-encoded.
func (ca *CA) IssueServer(hosts []string, now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if len(hosts) == 0 {
		return nil, nil, errors.New("issue server certificate: no host")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate server key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hosts[0], Organization: []string{"fleetflow"}},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter // a certificate cannot outlive its issuer
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign server certificate: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return encodeCert(der), keyPEM, nil
}

// Local are the paths of the local stack's TLS files and what EnsureLocal did.
type Local struct {
	Dir, CA, CAKey, Cert, Key string
	// CreatedCA and IssuedServer say what EnsureLocal made in this call (false: reused from disk).
	CreatedCA, IssuedServer bool
	// NotAfter is the end of the server certificate's validity.
	NotAfter time.Time
}

// EnsureLocal makes sure dir holds a CA and a server certificate for hosts signed by it, creating them the
// first time and reusing them afterwards, so that clients keep trusting the same ca.pem across restarts of
// the stack. The server certificate is re-issued when it is missing, unreadable, not signed by the CA, not
// valid for every host or within RenewBefore of its end; the CA is replaced (and with it the server
// certificate) when it is missing, unreadable or within ServerValidity of its end. Private keys are written
// with mode 0600, certificates 0644, each file atomically.
func EnsureLocal(dir string, hosts []string, now time.Time) (Local, error) {
	l := Local{Dir: dir, CA: filepath.Join(dir, CAFile), CAKey: filepath.Join(dir, CAKeyFile),
		Cert: filepath.Join(dir, ServerFile), Key: filepath.Join(dir, ServerKeyFile)}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return l, fmt.Errorf("create %s: %w", dir, err)
	}
	ca, err := LoadCA(l.CA, l.CAKey)
	if err != nil || now.Add(ServerValidity).After(ca.Cert.NotAfter) {
		name := caCommonName
		if h, herr := os.Hostname(); herr == nil {
			name += " (" + h + ")"
		}
		var keyPEM []byte
		ca, keyPEM, err = NewCA(name, now, CAValidity)
		if err != nil {
			return l, err
		}
		// The key first: a crash in between leaves a CA that does not load, which is then made again.
		if err := writeFileAtomic(l.CAKey, keyPEM, 0o600); err != nil {
			return l, err
		}
		if err := writeFileAtomic(l.CA, ca.PEM, 0o644); err != nil {
			return l, err
		}
		l.CreatedCA = true
	}
	if !l.CreatedCA {
		if cert, err := loadLeaf(l.Cert, l.Key); err == nil && serverUsable(cert, ca, hosts, now) {
			l.NotAfter = cert.NotAfter
			return l, nil
		}
	}
	certPEM, keyPEM, err := ca.IssueServer(hosts, now, ServerValidity)
	if err != nil {
		return l, err
	}
	// The gateway may be reloading these files right now: write the key first and the certificate last, so
	// a reload between the two sees a mismatched pair, refuses it and keeps the old one until the next change.
	if err := writeFileAtomic(l.Key, keyPEM, 0o600); err != nil {
		return l, err
	}
	if err := writeFileAtomic(l.Cert, certPEM, 0o644); err != nil {
		return l, err
	}
	l.IssuedServer = true
	cert, err := loadLeaf(l.Cert, l.Key)
	if err != nil {
		return l, err
	}
	l.NotAfter = cert.NotAfter
	return l, nil
}

// serverUsable reports whether cert is signed by ca, valid for every host and not near its end.
func serverUsable(cert *x509.Certificate, ca *CA, hosts []string, now time.Time) bool {
	if cert.CheckSignatureFrom(ca.Cert) != nil || !bytes.Equal(cert.RawIssuer, ca.Cert.RawSubject) {
		return false
	}
	if now.Add(RenewBefore).After(cert.NotAfter) || now.Before(cert.NotBefore) {
		return false
	}
	for _, h := range hosts {
		if cert.VerifyHostname(h) != nil {
			return false
		}
	}
	return slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
}

// loadLeaf reads a certificate and key pair and returns the parsed certificate.
func loadLeaf(certFile, keyFile string) (*x509.Certificate, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(pair.Certificate[0])
}

// IsTLSURL reports whether an MQTT broker URL asks for TLS: ssl://, tls://, mqtts:// (and paho's other
// spellings, mqtt+ssl:// and tcps://).
func IsTLSURL(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil {
		return false
	}
	switch u.Scheme {
	case "ssl", "tls", "mqtts", "mqtt+ssl", "tcps":
		return true
	}
	return false
}

// ClientConfig is the tls.Config of a client of the device channel: TLS 1.2 or newer, the server verified
// against the CA certificates in caFile, or against the system's roots when caFile is empty (a gateway with a
// certificate from a public CA). The same config may be shared by any number of connections.
func ClientConfig(caFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return cfg, nil
	}
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", caFile)
	}
	cfg.RootCAs = pool
	return cfg, nil
}

// ClientConfigFor returns ClientConfig(caFile) for a TLS broker URL and nil for a plaintext one, so that a
// CA file set for the whole environment (FLEETFLOW_MQTT_CA) does not get in the way of a loopback tcp:// URL.
func ClientConfigFor(brokerURL, caFile string) (*tls.Config, error) {
	if !IsTLSURL(brokerURL) {
		return nil, nil
	}
	return ClientConfig(caFile)
}

func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	return n, nil
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// writeFileAtomic writes data to a temporary file in path's directory with the given mode and renames it over
// path, so a reader never sees half a file and a key is never readable by others, even for a moment.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() { _ = os.Remove(tmp) }() // after a successful rename there is nothing left to remove
	if err := f.Chmod(mode); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
