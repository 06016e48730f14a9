package pki

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultReloadEvery is how often a Reloader looks at its files' modification times at most: often enough
// that a renewed certificate is served within seconds, rarely enough that a reconnect storm costs no stat calls.
const DefaultReloadEvery = 5 * time.Second

// Reloader serves a certificate and key pair read from files and re-reads them when either file's
// modification time changes, so that a renewed certificate is served to new connections without restarting
// the gateway (connections already open keep the certificate they were established with). A new pair that
// does not load (half written, or a key that does not match) is logged and the old pair is kept.
type Reloader struct {
	certFile, keyFile string
	every             time.Duration
	log               *slog.Logger

	cert atomic.Pointer[tls.Certificate]

	mu        sync.Mutex // serialises checks
	checked   time.Time  // last look at the files
	certMod   time.Time  // modification times of the pair last tried
	keyMod    time.Time
	certSize  int64
	keySize   int64
	lastError error
}

// NewReloader loads the pair once (an error here is the caller's to report: there is nothing to serve yet)
// and looks for changes at most every `every` (DefaultReloadEvery when ≤ 0; tests use a tiny value to check on
// every handshake).
func NewReloader(certFile, keyFile string, every time.Duration, log *slog.Logger) (*Reloader, error) {
	if every <= 0 {
		every = DefaultReloadEvery
	}
	if log == nil {
		log = slog.Default()
	}
	r := &Reloader{certFile: certFile, keyFile: keyFile, every: every, log: log}
	cm, cs, km, ks, err := r.stat()
	if err != nil {
		return nil, err
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %s and key %s: %w", certFile, keyFile, err)
	}
	r.cert.Store(&pair)
	r.certMod, r.certSize, r.keyMod, r.keySize = cm, cs, km, ks
	r.checked = time.Now()
	return r, nil
}

// GetCertificate is tls.Config.GetCertificate: the current pair, reloaded first when its files changed.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.maybeReload(time.Now())
	return r.cert.Load(), nil
}

// Certificate returns the pair being served now.
func (r *Reloader) Certificate() *tls.Certificate { return r.cert.Load() }

// ServerConfig is a server tls.Config serving the reloaded pair, TLS 1.2 or newer.
func (r *Reloader) ServerConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.GetCertificate}
}

func (r *Reloader) maybeReload(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Sub(r.checked) < r.every {
		return
	}
	r.checked = now
	cm, cs, km, ks, err := r.stat()
	if err != nil {
		if r.lastError == nil || r.lastError.Error() != err.Error() {
			r.log.Error("TLS certificate files unreadable; serving the previous certificate", "err", err)
		}
		r.lastError = err
		return
	}
	if cm.Equal(r.certMod) && km.Equal(r.keyMod) && cs == r.certSize && ks == r.keySize {
		return
	}
	// Remember what was tried even when it fails, so a bad pair is logged once, not at every handshake; the
	// next write to either file (the missing half of a renewal) triggers another attempt.
	r.certMod, r.certSize, r.keyMod, r.keySize = cm, cs, km, ks
	pair, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		r.lastError = err
		r.log.Error("new TLS certificate does not load; serving the previous certificate",
			"cert", r.certFile, "key", r.keyFile, "err", err)
		return
	}
	r.lastError = nil
	r.cert.Store(&pair)
	r.log.Info("TLS certificate reloaded", "cert", r.certFile)
}

func (r *Reloader) stat() (certMod time.Time, certSize int64, keyMod time.Time, keySize int64, err error) {
	c, err := os.Stat(r.certFile)
	if err != nil {
		return certMod, 0, keyMod, 0, fmt.Errorf("TLS certificate: %w", err)
	}
	k, err := os.Stat(r.keyFile)
	if err != nil {
		return certMod, 0, keyMod, 0, fmt.Errorf("TLS key: %w", err)
	}
	return c.ModTime(), c.Size(), k.ModTime(), k.Size(), nil
}
