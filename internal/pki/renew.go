package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Certificate renewal (docs/architecture.md, "Certificate renewal"): a device generates a new key pair
// itself and sends a certificate signing request; the worker checks it and signs it with the fleet CA. The
// device's private key never leaves the device, and the CA's key never leaves the worker's memory.

// ErrCSRRefused classifies a certificate signing request the fleet CA will not sign: unparsable, badly
// signed, for another subject, or with a key too weak. Its message says which.
var ErrCSRRefused = errors.New("certificate request refused")

// MinRSABits is the smallest RSA key a renewal accepts.
const MinRSABits = 2048

// NewDeviceKey generates a device's new P-256 key and a certificate signing request for it whose subject's
// common name is id, PEM-encoded.
func NewDeviceKey(id string) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key of %s: %w", id, err)
	}
	csr, err := NewCSR(id, key)
	if err != nil {
		return nil, nil, err
	}
	return key, csr, nil
}

// NewCSR makes a PEM certificate signing request for key with id as the subject's common name.
func NewCSR(id string, key crypto.Signer) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}}, key)
	if err != nil {
		return nil, fmt.Errorf("certificate request of %s: %w", id, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// CheckDeviceCSR parses a PEM certificate signing request and checks that the fleet CA may sign it for
// device id: its signature proves possession of the key, its subject's common name is id, and its key is
// ECDSA on P-256, P-384 or P-521, Ed25519, or RSA of at least MinRSABits bits. Every refusal wraps
// ErrCSRRefused.
func CheckDeviceCSR(id string, csrPEM []byte) (*x509.CertificateRequest, error) {
	refuse := func(format string, args ...any) (*x509.CertificateRequest, error) {
		return nil, fmt.Errorf("%w: %s", ErrCSRRefused, fmt.Sprintf(format, args...))
	}
	b, _ := pem.Decode(csrPEM)
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return refuse("not a PEM certificate request")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return refuse("unparsable: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return refuse("bad signature: %v", err)
	}
	if csr.Subject.CommonName != id {
		return refuse("its subject is %q, not the device id %q", csr.Subject.CommonName, id)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
		default:
			return refuse("weak key: ECDSA curve %s (want P-256, P-384 or P-521)", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < MinRSABits {
			return refuse("weak key: RSA %d bits (want at least %d)", n, MinRSABits)
		}
	case ed25519.PublicKey:
	default:
		return refuse("unsupported key type %T", csr.PublicKey)
	}
	return csr, nil
}

// SignDeviceCSR checks a device's certificate signing request (CheckDeviceCSR) and signs a client
// certificate for its key, valid from now for validity (never past the CA's own end). It returns the
// certificate, PEM-encoded, its fingerprint and its end as the certificate states it.
func (ca *CA) SignDeviceCSR(id string, csrPEM []byte, now time.Time, validity time.Duration) (certPEM, fingerprint []byte, notAfter time.Time, err error) {
	csr, err := CheckDeviceCSR(id, csrPEM)
	if err != nil {
		return nil, nil, time.Time{}, err
	}
	if validity <= 0 {
		validity = DeviceCertValidity
	}
	tmpl, err := ca.deviceTemplate(id, now, validity)
	if err != nil {
		return nil, nil, time.Time{}, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("sign certificate of %s: %w", id, err)
	}
	fp := sha256.Sum256(der)
	return encodeCert(der), fp[:], tmpl.NotAfter.UTC().Truncate(time.Second), nil
}

// ParseCertificatePEM parses the first certificate of a PEM block.
func ParseCertificatePEM(certPEM []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

// KeyPair pairs a certificate (PEM) with the private key it was signed for, refusing a certificate for
// another key or another subject than id; the result is ready for a tls.Config.
func KeyPair(id string, certPEM []byte, key crypto.Signer) (*tls.Certificate, error) {
	cert, err := ParseCertificatePEM(certPEM)
	if err != nil {
		return nil, err
	}
	if cert.Subject.CommonName != id {
		return nil, fmt.Errorf("the certificate's subject is %q, not %q", cert.Subject.CommonName, id)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, errors.New("the certificate is not for this device's new key")
	}
	return &tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}, nil
}

// EncodeKeyPair writes a certificate and key pair as PEM, as a credentials file keeps it.
func EncodeKeyPair(c *tls.Certificate) (certPEM, keyPEM []byte, err error) {
	if c == nil || len(c.Certificate) == 0 {
		return nil, nil, errors.New("encode key pair: no certificate")
	}
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return nil, nil, fmt.Errorf("encode private key: %w", err)
	}
	return encodeCert(c.Certificate[0]), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// EncodePrivateKey writes a private key as PEM (PKCS #8), as a credentials file keeps a device's pending
// renewal key (docs/architecture.md, "Certificate renewal").
func EncodePrivateKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePrivateKey reads a PEM private key written by EncodePrivateKey.
func ParsePrivateKey(keyPEM []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(keyPEM)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PEM private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("parse private key: %T cannot sign", k)
	}
	return s, nil
}

// Signer signs renewals with the fleet CA kept in a directory (ca.pem, ca-key.pem), read on first use so
// that a worker without a CA starts and serves everything else; a CA that fails to load is tried again at
// the next renewal (fleet.CertificateSigner).
type Signer struct {
	dir string
	now func() time.Time

	mu sync.Mutex
	ca *CA
}

// NewSigner returns a Signer of the fleet CA in dir.
func NewSigner(dir string) *Signer { return &Signer{dir: dir, now: time.Now} }

// SignerOf returns a Signer of a CA already loaded (tests).
func SignerOf(ca *CA) *Signer { return &Signer{ca: ca, now: time.Now} }

// SignDeviceCSR signs a device's certificate signing request (CA.SignDeviceCSR).
func (s *Signer) SignDeviceCSR(id string, csrPEM []byte, validity time.Duration) (certPEM, fingerprint []byte, notAfter time.Time, err error) {
	ca, err := s.load()
	if err != nil {
		return nil, nil, time.Time{}, err
	}
	return ca.SignDeviceCSR(id, csrPEM, s.now(), validity)
}

// Check loads the CA, reporting why it cannot be used.
func (s *Signer) Check() error {
	_, err := s.load()
	return err
}

func (s *Signer) load() (*CA, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ca != nil {
		return s.ca, nil
	}
	if s.dir == "" {
		return nil, errors.New("no fleet CA directory is configured (FLEETFLOW_DEVICE_CA_DIR)")
	}
	d := DeviceCAIn(s.dir)
	ca, err := LoadCA(d.Cert, d.Key)
	if err != nil {
		return nil, fmt.Errorf("fleet CA in %s: %w", s.dir, err)
	}
	s.ca = ca
	return ca, nil
}
