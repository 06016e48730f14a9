package gateway

import (
	"context"
	"crypto/x509"
	"strings"
	"sync"
	"time"

	"github.com/fleetflow/fleetflow/internal/pki"
)

// clientCAs is the pool of CAs the TLS listener verifies client certificates against: the fleet CA file
// (docs/architecture.md, "Device certificates") and the CAs of enabled x509 enrollment groups
// (docs/architecture.md, "Zero-touch enrollment"). It returns the same pool while neither changed, so that
// the listener derives one TLS config per pool, and nil while there is no CA at all (no client certificate is
// asked for).
type clientCAs struct {
	file     *pki.PoolReloader // nil without a fleet CA file
	enroller Enroller

	mu       sync.Mutex
	filePool *x509.CertPool
	key      string // the enrollment CAs' raw certificates, concatenated
	current  *x509.CertPool
	empty    bool
}

func newClientCAs(file *pki.PoolReloader, e Enroller) *clientCAs {
	return &clientCAs{file: file, enroller: e}
}

// poolTimeout bounds how long a handshake may wait for the enrollment groups to be read the first time.
const poolTimeout = 5 * time.Second

func (c *clientCAs) pool() *x509.CertPool {
	var fp *x509.CertPool
	if c.file != nil {
		fp = c.file.Pool()
	}
	ctx, cancel := context.WithTimeout(context.Background(), poolTimeout)
	defer cancel()
	extra := c.enroller.ClientCAs(ctx)
	var b strings.Builder
	for _, ca := range extra {
		b.Write(ca.Raw)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.current != nil || c.empty {
		if fp == c.filePool && b.String() == c.key {
			return c.current
		}
	}
	c.filePool, c.key = fp, b.String()
	switch {
	case fp == nil && len(extra) == 0:
		c.current, c.empty = nil, true
	case fp == nil:
		c.current, c.empty = x509.NewCertPool(), false
	default:
		c.current, c.empty = fp.Clone(), false
	}
	for _, ca := range extra {
		c.current.AddCert(ca)
	}
	return c.current
}
