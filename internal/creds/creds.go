// Package creds generates device secrets and reads and writes the credentials file (NDJSON, mode 0600) that
// the CLI writes at provisioning and the simulator reads. Secrets exist only here and on devices; the registry
// keeps their SHA-256 digest. A device provisioned with a certificate has its client certificate and private
// key in the file instead (PEM), and the registry keeps the certificate's fingerprint (docs/architecture.md,
// "Device certificates").
package creds

import (
	"bufio"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"github.com/fleetflow/fleetflow/internal/pki"
)

// Credential is one device's identity and secret, or client certificate and key, as a device (or the
// simulator) needs them to connect.
type Credential struct {
	ID     string `json:"id"`
	Secret string `json:"secret,omitempty"`
	// Secret2 is the secret of the device's second registry slot and Slot the slot it presents first (0 or
	// 1: Secret), both written by a credential rotation (docs/architecture.md, "Credential rotation"),
	// which appends the device's new line to its file: the last line of an id is the one that counts.
	Secret2 string `json:"secret2,omitempty"`
	Slot    int    `json:"slot,omitempty"`
	// Cert and Key are the device's client certificate (its subject's common name is ID) and private key,
	// PEM-encoded, for a device provisioned with --auth x509.
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
	// Cert2 and Key2 are the certificate and key of the second certificate slot, written by a certificate
	// renewal (docs/architecture.md, "Certificate renewal"), which also writes Cert and Key and Slot (the slot
	// presented first) on the device's new line.
	Cert2 string `json:"cert2,omitempty"`
	Key2  string `json:"key2,omitempty"`
	// PendingKey is the private key (PEM) of the newest certificate request the device answered, waiting for
	// its certificate: stored before the answer, so that a device restarted in between can still install the
	// certificate; the device's next line, once the certificate is installed or a newer request made, no
	// longer holds it (docs/architecture.md, "Certificate renewal").
	PendingKey string `json:"pendingKey,omitempty"`
	// Line is the manifest line the device came from, so operators can map a credential back to its row
	// (and the CLI can drop the rows that did not create a device).
	Line int64 `json:"line,omitempty"`

	// TLS is Cert and Key parsed, set by Read, ready for a tls.Config's Certificates; TLS2 is Cert2 and Key2.
	TLS  *tls.Certificate `json:"-"`
	TLS2 *tls.Certificate `json:"-"`
	// Pending is PendingKey parsed, set by Read.
	Pending crypto.Signer `json:"-"`
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
	// dirSynced: the directory entry is durable (Sync did it once).
	dirSynced bool
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

// ErrExists says a credentials file is already there. Credentials files are never overwritten: an earlier
// run's file may be the only copy of its devices' secrets (docs/architecture.md, "Where secrets live").
var ErrExists = errors.New("credentials file exists")

// Create creates path for writing credentials with mode 0600 (the file holds secrets). An existing file is
// refused with ErrExists, never truncated.
func Create(path string) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("%s: %w: it may hold the only copy of earlier devices' secrets; move it away or choose another path", path, ErrExists)
	}
	if err != nil {
		return nil, fmt.Errorf("create credentials file: %w", err)
	}
	// The umask cannot widen 0600, but a restrictive one could leave the owner unable to read it back.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("chmod credentials file: %w", err)
	}
	return &Writer{f: f, w: bufio.NewWriterSize(f, 1<<16)}, nil
}

// Write appends one credential.
func (w *Writer) Write(c Credential) error {
	var b []byte
	if c.Cert == "" && c.Key == "" && c.Secret2 == "" && c.Slot == 0 && c.Cert2 == "" && c.PendingKey == "" && plain(c.ID) && plain(c.Secret) {
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

// Sync makes every credential written so far durable: flushed, the file synced and, the first time, its
// directory too (so that the file's name survives a crash as well). A caller that hands the devices of these
// credentials on for creation before Close syncs first.
func (w *Writer) Sync() error {
	if err := w.w.Flush(); err != nil {
		return fmt.Errorf("flush credentials: %w", err)
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("sync credentials: %w", err)
	}
	if w.dirSynced {
		return nil
	}
	if err := SyncDir(filepath.Dir(w.f.Name())); err != nil {
		return err
	}
	w.dirSynced = true
	return nil
}

// Count is the number of credentials written so far.
func (w *Writer) Count() int { return w.n }

// Close flushes the file, syncs it and its directory to disk and closes it: when Close returns nil the
// credentials survive a crash or power loss, so only then may anyone report them written.
func (w *Writer) Close() error {
	if err := w.w.Flush(); err != nil {
		w.f.Close()
		return fmt.Errorf("flush credentials: %w", err)
	}
	if err := w.f.Sync(); err != nil {
		w.f.Close()
		return fmt.Errorf("sync credentials: %w", err)
	}
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("close credentials: %w", err)
	}
	return SyncDir(filepath.Dir(w.f.Name()))
}

// SyncDir syncs a directory, so that a file created, linked or removed in it stays so after a crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// Publish gives the complete, synced credentials file src its final name dst, atomically and without ever
// replacing an existing dst: a hard link either creates dst with src's content or fails with ErrExists. src
// is then removed. Whoever waits for dst never reads it half-written, and a reused path never destroys an
// earlier run's secrets. On a file system without hard links dst is created exclusively and copied into.
func Publish(src, dst string) error {
	err := os.Link(src, dst)
	switch {
	case errors.Is(err, fs.ErrExist):
		return fmt.Errorf("%s: %w: it may hold the only copy of earlier devices' secrets; the new ones stay in %s", dst, ErrExists, src)
	case err != nil:
		if err := copyExclusive(src, dst); err != nil {
			return err
		}
	}
	if err := SyncDir(filepath.Dir(dst)); err != nil {
		return err
	}
	if err := os.Remove(src); err != nil {
		return fmt.Errorf("remove %s: %w", src, err)
	}
	return SyncDir(filepath.Dir(src))
}

// copyExclusive copies src to a new file dst and syncs it, for file systems without hard links.
func copyExclusive(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("publish %s: %w", dst, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s: %w: it may hold the only copy of earlier devices' secrets; the new ones stay in %s", dst, ErrExists, src)
	}
	if err != nil {
		return fmt.Errorf("publish %s: %w", dst, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(dst)
		return fmt.Errorf("publish %s: %w", dst, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		os.Remove(dst)
		return fmt.Errorf("publish %s: %w", dst, err)
	}
	return out.Close()
}

// Read parses a credentials file written by Writer (and appended to by a Journal): one credential per id, in
// the order the ids first appear, each from the id's last line.
func Read(r io.Reader) ([]Credential, error) {
	var out []Credential
	index := map[string]int{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		if len(sc.Bytes()) == 0 {
			continue
		}
		var c Credential
		var err error
		if err = json.Unmarshal(sc.Bytes(), &c); err != nil {
			return nil, fmt.Errorf("credentials line %d: %w", line, err)
		}
		if c.ID == "" || c.Secret == "" && c.Secret2 == "" && (c.Cert == "" || c.Key == "") && (c.Cert2 == "" || c.Key2 == "") {
			return nil, fmt.Errorf("credentials line %d: id and a secret or a certificate and key are required", line)
		}
		if c.Cert != "" || c.Key != "" {
			if c.TLS, err = parsePair(c.ID, c.Cert, c.Key); err != nil {
				return nil, fmt.Errorf("credentials line %d: %w", line, err)
			}
		}
		if c.Cert2 != "" || c.Key2 != "" {
			if c.TLS2, err = parsePair(c.ID, c.Cert2, c.Key2); err != nil {
				return nil, fmt.Errorf("credentials line %d: %w", line, err)
			}
		}
		if c.PendingKey != "" {
			if c.Pending, err = pki.ParsePrivateKey([]byte(c.PendingKey)); err != nil {
				return nil, fmt.Errorf("credentials line %d: pending key of %s: %w", line, c.ID, err)
			}
		}
		if i, ok := index[c.ID]; ok {
			out[i] = c
			continue
		}
		index[c.ID] = len(out)
		out = append(out, c)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read credentials: %w", err)
	}
	return out, nil
}

// ReadLoose parses a credentials file like Read but skips lines that do not hold a usable credential instead
// of failing, and returns how many it skipped. The CLI reads its pending file this way: a line that names no
// device could never have created one, and must not stand between the operator and every other secret.
func ReadLoose(path string) ([]Credential, int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("open credentials: %w", err)
	}
	defer f.Close()
	var out []Credential
	skipped := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var c Credential
		if json.Unmarshal(sc.Bytes(), &c) != nil || c.ID == "" || c.Secret == "" && (c.Cert == "" || c.Key == "") {
			skipped++
			continue
		}
		out = append(out, c)
	}
	if err := sc.Err(); err != nil {
		return nil, 0, fmt.Errorf("read credentials: %w", err)
	}
	return out, skipped, nil
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

// parsePair checks that a certificate and key belong together and name the device, and returns the pair.
func parsePair(id, cert, key string) (*tls.Certificate, error) {
	pair, err := tls.X509KeyPair([]byte(cert), []byte(key))
	if err != nil {
		return nil, fmt.Errorf("certificate of %s: %w", id, err)
	}
	// X509KeyPair parses the leaf into Leaf (Go 1.23 and later).
	if pair.Leaf == nil || pair.Leaf.Subject.CommonName != id {
		return nil, fmt.Errorf("certificate of %s: its subject is not the device id", id)
	}
	return &pair, nil
}
