package device

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/pki"
)

// UseCredentials sets the configuration's credentials to c, as a device stored them (SaveCredentials) before
// it was restarted: both secrets, both certificates, the slot presented first and a renewal's pending key.
func (c *Config) UseCredentials(cr Credentials) {
	c.Secret, c.Secret2, c.Slot = cr.Secret, cr.Secret2, cr.Slot
	c.ClientCertificate, c.ClientCertificate2 = cr.Cert, cr.Cert2
	c.PendingKey = cr.PendingKey
	c.ClientCertFile, c.ClientKeyFile = "", ""
}

// SaveCredentialsFile returns a Config.SaveCredentials that keeps a device's credentials in one file, in the
// credentials file format (one NDJSON line, docs/architecture.md, "Where secrets live"): written to a
// temporary file of mode 0600 beside it, synced, renamed over it and the directory synced, so that when it
// returns nil the new credentials (a rotated secret, a renewed certificate or a renewal's pending key)
// survive a crash or power loss, and a crash before leaves the old file whole.
func SaveCredentialsFile(path, id string) func(context.Context, Credentials) error {
	return func(_ context.Context, c Credentials) error {
		line := creds.Credential{ID: id, Secret: c.Secret, Secret2: c.Secret2, Slot: c.Slot}
		for _, p := range []struct {
			pair      *tls.Certificate
			cert, key *string
		}{{c.Cert, &line.Cert, &line.Key}, {c.Cert2, &line.Cert2, &line.Key2}} {
			if p.pair == nil {
				continue
			}
			cert, key, err := pki.EncodeKeyPair(p.pair)
			if err != nil {
				return err
			}
			*p.cert, *p.key = string(cert), string(key)
		}
		if c.PendingKey != nil {
			key, err := pki.EncodePrivateKey(c.PendingKey)
			if err != nil {
				return err
			}
			line.PendingKey = string(key)
		}
		b, err := json.Marshal(line)
		if err != nil {
			return fmt.Errorf("encode credentials of %s: %w", id, err)
		}
		return writeSynced(path, append(b, '\n'))
	}
}

// LoadCredentialsFile reads credentials SaveCredentialsFile wrote.
func LoadCredentialsFile(path string) (Credentials, error) {
	list, err := creds.ReadFile(path)
	if err != nil {
		return Credentials{}, err
	}
	if len(list) != 1 {
		return Credentials{}, fmt.Errorf("%s holds the credentials of %d devices, not one", path, len(list))
	}
	c := list[0]
	return Credentials{Secret: c.Secret, Secret2: c.Secret2, Cert: c.TLS, Cert2: c.TLS2, Slot: c.Slot, PendingKey: c.Pending}, nil
}

// writeSynced replaces path with data durably: a temporary file (mode 0600) synced, renamed over path, and
// the directory synced.
func writeSynced(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("store credentials: %w", err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		return fmt.Errorf("store credentials: %w", err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("store credentials: %w", err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("store credentials: %w", err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("store credentials: %w", err)
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("store credentials: %w", err)
	}
	// Renamed: nothing left to remove; the rename is durable once the directory is.
	return creds.SyncDir(dir)
}
