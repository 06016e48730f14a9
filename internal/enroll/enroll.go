// Package enroll is zero-touch enrollment (docs/architecture.md, "Zero-touch enrollment"): a device that is
// not registered yet presents a secret derived from an enrollment group's key — the HMAC-SHA256 of its id
// under that key, as Azure DPS symmetric-key group enrollment does — and is registered on first contact.
//
// The package holds the pure parts (key derivation, sealing group keys under the master key, id patterns)
// and the Enroller the gateway asks when an unknown id connects. It imports no adapter: the gateway gives it
// the registry (fleet.EnrollStore) and a Registrar that runs the RegisterDevice workflow.
package enroll

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
)

// MasterKeyEnv names the environment variable that holds the enrollment master key (base64, 32 bytes), under
// which group keys are sealed. It is set on the gateways (which verify derived secrets) and on the CLI that
// creates groups; workers never need it.
const MasterKeyEnv = "FLEETFLOW_ENROLLMENT_KEY"

// MasterKeyFileEnv names the environment variable that holds the path of a file with the master key, the
// way Kubernetes Secrets and the local stack (.fleetflow/enrollment.key) deliver it.
const MasterKeyFileEnv = "FLEETFLOW_ENROLLMENT_KEY_FILE"

// keySize is the size of group keys and of the master key: 256 bits.
const keySize = 32

// ErrNoMasterKey: neither FLEETFLOW_ENROLLMENT_KEY nor FLEETFLOW_ENROLLMENT_KEY_FILE is set.
var ErrNoMasterKey = errors.New("no enrollment master key: set " + MasterKeyEnv + " (base64 of 32 random bytes) or " + MasterKeyFileEnv)

// NewKey returns 32 random bytes: a group key or a master key.
func NewKey() ([]byte, error) {
	k := make([]byte, keySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return k, nil
}

// EncodeKey is how keys are shown and written: standard base64, as Azure DPS shows group keys, so that the
// tools operators already have for DPS derive the same device secrets.
func EncodeKey(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

// ParseKey reads a key written by EncodeKey, surrounding white space ignored.
func ParseKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("key is not base64: %w", err)
	}
	if len(k) != keySize {
		return nil, fmt.Errorf("key is %d bytes, want %d", len(k), keySize)
	}
	return k, nil
}

// DeriveSecret is the secret of device id in a group whose key is groupKey: base64 of HMAC-SHA256(key, id),
// the derivation of DPS symmetric-key group enrollment. A factory burns it into each device; it never needs
// the group key itself.
func DeriveSecret(groupKey []byte, id string) string {
	m := hmac.New(sha256.New, groupKey)
	m.Write([]byte(id))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// MasterKeyFromEnv reads the master key from FLEETFLOW_ENROLLMENT_KEY, else from the file that
// FLEETFLOW_ENROLLMENT_KEY_FILE names; ErrNoMasterKey when neither is set.
func MasterKeyFromEnv() ([]byte, error) {
	if v := os.Getenv(MasterKeyEnv); v != "" {
		k, err := ParseKey(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", MasterKeyEnv, err)
		}
		return k, nil
	}
	if f := os.Getenv(MasterKeyFileEnv); f != "" {
		return MasterKeyFromFile(f)
	}
	return nil, ErrNoMasterKey
}

// MasterKeyFromFile reads a master key written by EncodeKey from path.
func MasterKeyFromFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read enrollment master key: %w", err)
	}
	k, err := ParseKey(string(b))
	if err != nil {
		return nil, fmt.Errorf("enrollment master key %s: %w", path, err)
	}
	return k, nil
}

// Sealer seals group keys under the master key with AES-256-GCM. The group's name is the additional data,
// so a sealed key copied onto another group's row does not open.
type Sealer struct{ aead cipher.AEAD }

// NewSealer returns a Sealer for a 32-byte master key.
func NewSealer(master []byte) (*Sealer, error) {
	if len(master) != keySize {
		return nil, fmt.Errorf("enrollment master key is %d bytes, want %d", len(master), keySize)
	}
	block, err := aes.NewCipher(master)
	if err != nil {
		return nil, fmt.Errorf("enrollment master key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("enrollment master key: %w", err)
	}
	return &Sealer{aead: aead}, nil
}

// Seal encrypts group's key: a random nonce followed by the ciphertext.
func (s *Sealer) Seal(group string, key []byte) ([]byte, error) {
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal group key: %w", err)
	}
	return s.aead.Seal(nonce, nonce, key, []byte(group)), nil
}

// ErrSealedKey: a sealed group key does not open under this master key (another master key, or a damaged
// or moved row).
var ErrSealedKey = errors.New("group key does not open under this enrollment master key")

// Open decrypts group's sealed key.
func (s *Sealer) Open(group string, sealed []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n {
		return nil, ErrSealedKey
	}
	k, err := s.aead.Open(nil, sealed[:n], sealed[n:], []byte(group))
	if err != nil {
		return nil, ErrSealedKey
	}
	return k, nil
}

// CompilePattern compiles an enrollment group's id pattern, anchored so that it must match the whole id
// ("" matches every id).
func CompilePattern(p string) (*regexp.Regexp, error) {
	if p == "" {
		return nil, nil
	}
	re, err := regexp.Compile(`^(?:` + p + `)$`)
	if err != nil {
		return nil, fmt.Errorf("id pattern %q: %w", p, err)
	}
	return re, nil
}

// ParseCA reads an x509 group's CA: one PEM certificate that may sign certificates.
func ParseCA(pemText string) (*x509.Certificate, error) {
	block, rest := pem.Decode([]byte(pemText))
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("CA file holds no PEM certificate")
	}
	if len(strings.TrimSpace(string(rest))) > 0 {
		return nil, errors.New("CA file holds more than one PEM block: give the one CA that signs the group's devices")
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	if !ca.IsCA || !ca.BasicConstraintsValid {
		return nil, errors.New("the certificate is not a CA (basic constraints)")
	}
	return ca, nil
}
