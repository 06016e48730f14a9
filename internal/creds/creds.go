// Package creds generates device secrets and reads and writes the credentials file (NDJSON, mode 0600) that
// the CLI writes at provisioning and the simulator reads. Secrets exist only here and on devices; the registry
// keeps their SHA-256 digest. A device provisioned with a certificate has its client certificate and private
// key in the file instead (PEM), and the registry keeps the certificate's fingerprint (docs/architecture.md,
// "Device certificates").
package creds

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
)

// Credential is one device's identity and secret, or client certificate and key, as a device (or the
// simulator) needs them to connect.
type Credential struct {
	ID     string `json:"id"`
	Secret string `json:"secret,omitempty"`
	// Cert and Key are the device's client certificate (its subject's common name is ID) and private key,
	// PEM-encoded, for a device provisioned with --auth x509.
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
	// Line is the manifest line the device came from, so operators can map a credential back to its row
	// (and the CLI can drop the rows that did not create a device).
	Line int64 `json:"line,omitempty"`

	// TLS is Cert and Key parsed, set by Read, ready for a tls.Config's Certificates.
	TLS *tls.Certificate `json:"-"`
}

// NewSecret returns a random 256-bit secret, base64url without padding (43 characters).
func NewSecret() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate secret: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// Digest is what the registry stores for a secret. A plain SHA-256 suffices for 256-bit random secrets,
// and a slow KDF would cap reconnect storms at tens per second (docs/architecture.md, "Where secrets live").
func Digest(secret string) []byte {
	d := sha256.Sum256([]byte(secret))
	return d[:]
}

// Matches reports whether secret hashes to digest, in constant time.
func Matches(secret string, digest []byte) bool {
	if len(digest) != sha256.Size {
		return false
	}
	d := sha256.Sum256([]byte(secret))
	return subtle.ConstantTimeCompare(d[:], digest) == 1
}

// Writer appends credentials to a file created with mode 0600.
type Writer struct {
	f   *os.File
	w   *bufio.Writer
	n   int
	buf []byte
}

// plain reports whether s can be written into a JSON string as it is.
func plain(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			return false
		}
	}
	return true
}

// Create opens path for writing credentials, truncating it. The mode is 0600 because the file holds secrets.
func Create(path string) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create credentials file: %w", err)
	}
	// An existing file keeps its old mode on open; secrets must not stay world-readable.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return nil, fmt.Errorf("chmod credentials file: %w", err)
	}
	return &Writer{f: f, w: bufio.NewWriterSize(f, 1<<16)}, nil
}

// Write appends one credential.
func (w *Writer) Write(c Credential) error {
	var b []byte
	if c.Cert == "" && c.Key == "" && plain(c.ID) && plain(c.Secret) {
		// A million lines through json.Marshal cost seconds; plain ids and secrets need no escaping.
		b = append(w.buf[:0], `{"id":"`...)
		b = append(b, c.ID...)
		b = append(b, `","secret":"`...)
		b = append(b, c.Secret...)
		b = append(b, '"')
		if c.Line != 0 {
			b = append(b, `,"line":`...)
			b = strconv.AppendInt(b, c.Line, 10)
		}
		b = append(b, '}')
		w.buf = b
	} else {
		var err error
		if b, err = json.Marshal(c); err != nil {
			return err
		}
	}
	b = append(b, '\n')
	if _, err := w.w.Write(b); err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	w.n++
	return nil
}

// Count is the number of credentials written so far.
func (w *Writer) Count() int { return w.n }

// Close flushes and closes the file.
func (w *Writer) Close() error {
	if err := w.w.Flush(); err != nil {
		w.f.Close()
		return fmt.Errorf("flush credentials: %w", err)
	}
	return w.f.Close()
}

// Read parses a credentials file written by Writer.
func Read(r io.Reader) ([]Credential, error) {
	var out []Credential
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		if len(sc.Bytes()) == 0 {
			continue
		}
		var c Credential
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			return nil, fmt.Errorf("credentials line %d: %w", line, err)
		}
		if c.ID == "" || c.Secret == "" && (c.Cert == "" || c.Key == "") {
			return nil, fmt.Errorf("credentials line %d: id and a secret or a certificate and key are required", line)
		}
		if c.Cert != "" || c.Key != "" {
			if err := c.parseCertificate(); err != nil {
				return nil, fmt.Errorf("credentials line %d: %w", line, err)
			}
		}
		out = append(out, c)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read credentials: %w", err)
	}
	return out, nil
}

// ReadFile reads a credentials file.
func ReadFile(path string) ([]Credential, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open credentials: %w", err)
	}
	defer f.Close()
	return Read(f)
}

// parseCertificate checks that Cert and Key belong together and name the device, and keeps the pair in TLS.
func (c *Credential) parseCertificate() error {
	pair, err := tls.X509KeyPair([]byte(c.Cert), []byte(c.Key))
	if err != nil {
		return fmt.Errorf("certificate of %s: %w", c.ID, err)
	}
	// X509KeyPair parses the leaf into Leaf (Go 1.23 and later).
	if pair.Leaf == nil || pair.Leaf.Subject.CommonName != c.ID {
		return fmt.Errorf("certificate of %s: its subject is not the device id", c.ID)
	}
	c.TLS = &pair
	return nil
}
