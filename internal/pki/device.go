package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The fleet CA signs the client certificates devices authenticate with (docs/architecture.md, "Device
// certificates"). It is another CA than the local stack's TLS CA: that one vouches for the gateway to devices,
// this one for devices to the gateway, and an operator may well keep the two in different hands.
const (
	// DeviceCAValidity is how long `fleetflow ca init` makes the fleet CA valid: device certificates cannot
	// outlive it, and replacing it means re-provisioning every certificate device.
	DeviceCAValidity = 20 * 365 * 24 * time.Hour
	// DeviceCertValidity is a device certificate's validity when provisioning names none.
	DeviceCertValidity = 5 * 365 * 24 * time.Hour
	deviceCAName       = "fleetflow device CA"
)

// ErrCAExists is returned by InitDeviceCA when the directory already holds a CA: replacing it would orphan
// every certificate it signed, so that is never done silently.
var ErrCAExists = errors.New("a CA already exists there")

// DeviceCA are the paths of a fleet CA's files in its directory.
type DeviceCA struct {
	Dir, Cert, Key string
}

// DeviceCAIn names the files of the fleet CA kept in dir (ca.pem and ca-key.pem).
func DeviceCAIn(dir string) DeviceCA {
	return DeviceCA{Dir: dir, Cert: filepath.Join(dir, CAFile), Key: filepath.Join(dir, CAKeyFile)}
}

// Exists reports whether either file of the CA is present.
func (d DeviceCA) Exists() bool {
	for _, p := range []string{d.Cert, d.Key} {
		if _, err := os.Lstat(p); err == nil || !errors.Is(err, fs.ErrNotExist) {
			return true
		}
	}
	return false
}

// InitDeviceCA creates a fleet CA in dir (made 0700 if missing): a new P-256 key written with mode 0600 and a
// self-signed certificate, mode 0644. It refuses with ErrCAExists when dir already holds either file, and
// creates each file exclusively, so two concurrent runs cannot both succeed. name is the CA's common name
// ("" for "fleetflow device CA (host)").
func InitDeviceCA(dir, name string, now time.Time, validity time.Duration) (*CA, error) {
	d := DeviceCAIn(dir)
	if d.Exists() {
		return nil, fmt.Errorf("create fleet CA in %s: %w", dir, ErrCAExists)
	}
	if name == "" {
		name = deviceCAName
		if h, err := os.Hostname(); err == nil {
			name += " (" + h + ")"
		}
	}
	if validity <= 0 {
		validity = DeviceCAValidity
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	ca, keyPEM, err := NewCA(name, now, validity)
	if err != nil {
		return nil, err
	}
	// The key first, exclusively: a concurrent init loses here, before it could pair its certificate with
	// our key. A crash between the two files leaves a key without a certificate, which LoadCA refuses and
	// init refuses to overwrite: the operator removes it knowing that nothing was signed with it.
	if err := createExclusive(d.Key, keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := createExclusive(d.Cert, ca.PEM, 0o644); err != nil {
		return nil, err
	}
	return ca, nil
}

// createExclusive writes a new file that must not exist yet.
func createExclusive(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create %s: %w", path, ErrCAExists)
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// DeviceCert is a device's client certificate and new private key, PEM-encoded, with the certificate's
// fingerprint, which is all the registry keeps of it.
type DeviceCert struct {
	CertPEM, KeyPEM []byte
	Fingerprint     []byte // SHA-256 of the certificate's DER encoding
	NotAfter        time.Time
}

// IssueDevice generates a P-256 key for device id and signs a client certificate for it whose subject's
// common name is the id, the name the gateway compares with the MQTT client id. The certificate cannot
// outlive the CA.
func (ca *CA) IssueDevice(id string, now time.Time, validity time.Duration) (DeviceCert, error) {
	if id == "" {
		return DeviceCert{}, errors.New("issue device certificate: empty id")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return DeviceCert{}, fmt.Errorf("generate key of %s: %w", id, err)
	}
	tmpl, err := ca.deviceTemplate(id, now, validity)
	if err != nil {
		return DeviceCert{}, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return DeviceCert{}, fmt.Errorf("sign certificate of %s: %w", id, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return DeviceCert{}, err
	}
	fp := sha256.Sum256(der)
	// The certificate stores whole seconds in UTC: report what it says, not what was asked.
	notAfter := tmpl.NotAfter.UTC().Truncate(time.Second)
	return DeviceCert{CertPEM: encodeCert(der), KeyPEM: keyPEM, Fingerprint: fp[:], NotAfter: notAfter}, nil
}

// Fingerprint is the SHA-256 of a certificate's DER encoding, what the registry keeps of a device's
// certificate and what `openssl x509 -fingerprint -sha256` prints.
func Fingerprint(cert *x509.Certificate) []byte {
	fp := sha256.Sum256(cert.Raw)
	return fp[:]
}

// FingerprintMatches reports, in constant time, whether cert's fingerprint is fp.
func FingerprintMatches(cert *x509.Certificate, fp []byte) bool {
	if cert == nil || len(fp) != sha256.Size {
		return false
	}
	return subtle.ConstantTimeCompare(Fingerprint(cert), fp) == 1
}

// FormatFingerprint writes a fingerprint as openssl does: upper-case hex pairs separated by colons.
func FormatFingerprint(fp []byte) string {
	h := strings.ToUpper(hex.EncodeToString(fp))
	var b strings.Builder
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(h[i : i+2])
	}
	return b.String()
}

// CertPool reads the PEM certificates of file into a pool, refusing a file that holds none.
func CertPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", file)
	}
	return pool, nil
}

// RequestClientCerts makes a server config ask clients for a certificate and verify any it gets against
// pool; a client may still connect without one (and authenticate with a secret). The chain to pool and the
// client-auth key usage are checked during the handshake (VerifyClientChain, at every handshake, resumed ones
// included, against the pool of that handshake), so a certificate from another CA fails the handshake before
// the CONNECT is read. A certificate whose end has passed does not: its CONNECT is refused as not authorized
// for expired credentials, counted and put on the device's timeline like an expired secret's
// (docs/architecture.md, "Credential rotation"), where a failed handshake would tell the device, the
// operator and the metrics nothing.
func RequestClientCerts(cfg *tls.Config, pool *x509.CertPool) {
	cfg.ClientCAs = pool // named in the certificate request, so that a client picks a certificate they signed
	cfg.ClientAuth = tls.RequestClientCert
	cfg.VerifyConnection = func(st tls.ConnectionState) error {
		_, err := VerifyClientChain(st.PeerCertificates, pool, time.Now())
		return err
	}
}

// VerifyClientChain verifies a client's certificate chain (leaf first; none is no error) against pool for
// client authentication at now, as crypto/tls does with tls.VerifyClientCertIfGiven, except that a leaf past
// its end passes when it verifies at its end: expired reports that, and the caller refuses it where it can
// say why. A leaf not valid yet, or any other failure, is an error.
func VerifyClientChain(certs []*x509.Certificate, pool *x509.CertPool, now time.Time) (expired bool, err error) {
	if len(certs) == 0 {
		return false, nil
	}
	if pool == nil {
		return false, errors.New("tls: client certificate presented but no client CA is trusted")
	}
	leaf := certs[0]
	opts := x509.VerifyOptions{Roots: pool, CurrentTime: now, Intermediates: x509.NewCertPool(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	for _, c := range certs[1:] {
		opts.Intermediates.AddCert(c)
	}
	_, err = leaf.Verify(opts)
	if err == nil {
		return false, nil
	}
	if now.After(leaf.NotAfter) {
		// At its end the CA was valid too (a device certificate never outlives its CA).
		opts.CurrentTime = leaf.NotAfter
		if _, again := leaf.Verify(opts); again == nil {
			return true, nil
		}
	}
	return false, &tls.CertificateVerificationError{UnverifiedCertificates: certs, Err: err}
}

// VerifiedClientCert returns the client certificate of a completed handshake on a config made by
// RequestClientCerts (whose verification every such handshake passed), or nil when the client sent none (or
// the handshake is not complete). It may be past its end: compare now with its NotAfter.
func VerifiedClientCert(st tls.ConnectionState) *x509.Certificate {
	if !st.HandshakeComplete || len(st.PeerCertificates) == 0 {
		return nil
	}
	return st.PeerCertificates[0]
}

// PoolReloader serves the certificate pool of a CA file and re-reads it when the file's modification time
// or size changes, so that a gateway picks up a fleet CA bundle that gained a certificate (a CA being
// replaced: old and new side by side while devices move over) without a restart. A file that no longer
// loads is logged and the previous pool kept.
type PoolReloader struct {
	file  string
	every time.Duration
	log   *slog.Logger

	pool atomic.Pointer[x509.CertPool]

	mu      sync.Mutex
	checked time.Time
	mod     time.Time
	size    int64
	failed  bool
}

// NewPoolReloader loads file once (an error is the caller's: there is nothing to trust yet) and looks for
// changes at most every `every` (DefaultReloadEvery when ≤ 0).
func NewPoolReloader(file string, every time.Duration, log *slog.Logger) (*PoolReloader, error) {
	if every <= 0 {
		every = DefaultReloadEvery
	}
	if log == nil {
		log = slog.Default()
	}
	st, err := os.Stat(file)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool, err := CertPool(file)
	if err != nil {
		return nil, err
	}
	r := &PoolReloader{file: file, every: every, log: log, checked: time.Now(), mod: st.ModTime(), size: st.Size()}
	r.pool.Store(pool)
	return r, nil
}

// Pool returns the current pool, re-read first when the file changed.
func (r *PoolReloader) Pool() *x509.CertPool {
	r.maybeReload(time.Now())
	return r.pool.Load()
}

func (r *PoolReloader) maybeReload(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Sub(r.checked) < r.every {
		return
	}
	r.checked = now
	st, err := os.Stat(r.file)
	if err != nil {
		if !r.failed {
			r.log.Error("device CA file unreadable; trusting the previous one", "file", r.file, "err", err)
		}
		r.failed = true
		return
	}
	if st.ModTime().Equal(r.mod) && st.Size() == r.size {
		return
	}
	r.mod, r.size = st.ModTime(), st.Size()
	pool, err := CertPool(r.file)
	if err != nil {
		r.failed = true
		r.log.Error("new device CA file does not load; trusting the previous one", "file", r.file, "err", err)
		return
	}
	r.failed = false
	r.pool.Store(pool)
	r.log.Info("device CA reloaded", "file", r.file)
}

// RequestClientCertsFrom is RequestClientCerts with the pool of a PoolReloader: each handshake gets cfg with
// the current pool (one derived config per pool, not one per handshake).
func RequestClientCertsFrom(cfg *tls.Config, cas *PoolReloader) *tls.Config {
	return RequestClientCertsFromFunc(cfg, cas.Pool)
}

// RequestClientCertsFromFunc is RequestClientCerts with the pool pool returns at each handshake; a nil pool
// asks the client for no certificate (there is no CA to verify one against). pool should return the same
// pointer while nothing changed, since one config is derived per pool.
func RequestClientCertsFromFunc(cfg *tls.Config, pool func() *x509.CertPool) *tls.Config {
	base := cfg.Clone()
	var derived atomic.Pointer[tls.Config]
	out := cfg.Clone()
	out.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		p := pool()
		if p == nil {
			return base, nil
		}
		if c := derived.Load(); c != nil && c.ClientCAs == p {
			return c, nil
		}
		c := base.Clone()
		RequestClientCerts(c, p)
		derived.Store(c)
		return c, nil
	}
	// The outer config is used until GetConfigForClient answers; it asks for certificates too, so that it
	// never matters which of the two the handshake ends up with.
	if p := pool(); p != nil {
		RequestClientCerts(out, p)
	}
	return out
}

// deviceTemplate is the template of a device's client certificate (subject = its id), valid from a minute
// before now for validity, never past the CA's own end: issued at provisioning and at renewal alike, so a
// renewed certificate is accepted exactly as the first one was.
func (ca *CA) deviceTemplate(id string, now time.Time, validity time.Duration) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: id},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	return tmpl, nil
}
