package enroll

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
)

// Registrar registers a device that proved membership of a group: the gateway's implementation starts the
// RegisterDevice workflow and waits for its outcome.
type Registrar interface {
	Register(ctx context.Context, reg fleet.Registration) (fleet.RegistrationOutcome, error)
}

// GroupLister lists the enrollment groups (the registry's fleet.EnrollStore does).
type GroupLister interface {
	EnrollmentGroups(ctx context.Context) ([]fleet.EnrollmentGroup, error)
}

// DefaultRefresh is how often the Enroller re-reads the groups: a group created, disabled or re-enabled is
// seen within this time. Disabling is exact anyway, since the registration itself re-checks the group.
const DefaultRefresh = 5 * time.Second

// minReload is how soon after a load a CONNECT that matched no group may load again: a group created a
// moment ago is found at once, while a flood of ids that match nothing reloads at most this often.
const minReload = time.Second

// Enroller decides, for an id the registry does not know, whether the secret it presented is derived from
// an enabled group's key, and if so has it registered. It is safe for concurrent use.
type Enroller struct {
	groups    GroupLister
	sealer    *Sealer
	registrar Registrar
	log       *slog.Logger
	refresh   time.Duration
	now       func() time.Time

	snap    atomic.Pointer[snapshot]
	loading sync.Mutex

	attempts   atomic.Int64 // unknown ids that presented a secret
	matched    atomic.Int64 // of those, secrets derived from an enabled group's key
	registered atomic.Int64 // registrations that succeeded
	refused    atomic.Int64 // registrations the group refused (disabled, full, pattern, id taken)
	failed     atomic.Int64 // registrations that could not be run (workflow or registry unreachable)
}

// snapshot is the groups as last read, keys opened and CAs parsed.
type snapshot struct {
	at     time.Time
	groups []openGroup
	certs  []certGroup
	err    error
}

type openGroup struct {
	name    string
	key     []byte
	pattern *regexp.Regexp
}

// certGroup is an enabled x509 group: its CA, alone in a pool, to verify device certificates against.
type certGroup struct {
	name    string
	ca      *x509.Certificate
	pool    *x509.CertPool
	pattern *regexp.Regexp
}

// New returns an Enroller over the registry's groups, opening their keys with sealer and registering
// through r.
func New(groups GroupLister, sealer *Sealer, r Registrar, log *slog.Logger) *Enroller {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Enroller{groups: groups, sealer: sealer, registrar: r, log: log, refresh: DefaultRefresh, now: time.Now}
}

// SetRefresh changes how often groups are re-read (tests make it short).
func (e *Enroller) SetRefresh(d time.Duration) { e.refresh = d }

// Stats are the Enroller's counters.
type Stats struct {
	Attempts, Matched, Registered, Refused, Failed int64
}

// Stats returns the counters.
func (e *Enroller) Stats() Stats {
	return Stats{Attempts: e.attempts.Load(), Matched: e.matched.Load(), Registered: e.registered.Load(),
		Refused: e.refused.Load(), Failed: e.failed.Load()}
}

// Enroll registers id if secret is derived from an enabled group's key under which id may register. It
// returns whether the device exists now, and why not when a group matched but refused it; err is for a
// registration that could not be run.
func (e *Enroller) Enroll(ctx context.Context, id, secret string) (ok bool, reason string, err error) {
	if secret == "" {
		return false, "", nil
	}
	e.attempts.Add(1)
	g, found := e.match(ctx, id, secret, false)
	if !found {
		if s := e.snap.Load(); s != nil && e.now().Sub(s.at) >= minReload {
			g, found = e.match(ctx, id, secret, true)
		}
		if !found {
			return false, "", nil
		}
	}
	e.matched.Add(1)
	return e.register(ctx, fleet.Registration{DeviceID: id, Group: g, SecretDigest: creds.Digest(secret)})
}

// register runs a matched registration and counts its outcome.
func (e *Enroller) register(ctx context.Context, reg fleet.Registration) (ok bool, reason string, err error) {
	id, g := reg.DeviceID, reg.Group
	out, err := e.registrar.Register(ctx, reg)
	if err != nil {
		e.failed.Add(1)
		return false, "", fmt.Errorf("register %s through group %s: %w", id, g, err)
	}
	if !out.Registered {
		e.refused.Add(1)
		return false, out.Reason, nil
	}
	e.registered.Add(1)
	if out.Created {
		e.log.Info("device enrolled", "device", id, "group", g)
	}
	return true, "", nil
}

// Invalidate reads the groups again now, in the background: a group was created or changed. Until the read
// ends, callers use the groups read before.
func (e *Enroller) Invalidate() {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		e.reload(ctx)
	}()
}

// reload reads the groups, waiting for a read in progress rather than skipping it: that read may have begun
// before the change.
func (e *Enroller) reload(ctx context.Context) {
	e.loading.Lock()
	defer e.loading.Unlock()
	prev := e.snap.Load()
	ns := e.load(ctx)
	if ns.err != nil && prev != nil {
		e.log.Warn("enrollment groups not re-read; using the previous ones", "err", ns.err)
		ns.groups, ns.certs = prev.groups, prev.certs
	}
	e.snap.Store(ns)
}

// EnrollCert registers id if cert — verified by the TLS handshake against ClientCAs, its subject's common
// name the id — was signed by an enabled x509 group's CA under which id may register. Results as Enroll.
func (e *Enroller) EnrollCert(ctx context.Context, id string, cert *x509.Certificate) (ok bool, reason string, err error) {
	e.attempts.Add(1)
	g, found := e.matchCert(ctx, id, cert, false)
	if !found {
		if s := e.snap.Load(); s != nil && e.now().Sub(s.at) >= minReload {
			g, found = e.matchCert(ctx, id, cert, true)
		}
		if !found {
			return false, "", nil
		}
	}
	e.matched.Add(1)
	fp := sha256.Sum256(cert.Raw)
	return e.register(ctx, fleet.Registration{DeviceID: id, Group: g, CertFingerprint: fp[:]})
}

func (e *Enroller) matchCert(ctx context.Context, id string, cert *x509.Certificate, reload bool) (string, bool) {
	if cert.Subject.CommonName != id {
		return "", false
	}
	s := e.current(ctx, reload)
	for _, g := range s.certs {
		if g.pattern != nil && !g.pattern.MatchString(id) {
			continue
		}
		_, err := cert.Verify(x509.VerifyOptions{Roots: g.pool, CurrentTime: e.now(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err == nil {
			return g.name, true
		}
	}
	return "", false
}

// ClientCAs are the CAs of the enabled x509 groups, which the gateway's TLS listener must accept client
// certificates from (besides the fleet CA).
func (e *Enroller) ClientCAs(ctx context.Context) []*x509.Certificate {
	s := e.current(ctx, false)
	out := make([]*x509.Certificate, len(s.certs))
	for i, g := range s.certs {
		out[i] = g.ca
	}
	return out
}

// match finds the enabled group whose derived secret for id is secret.
func (e *Enroller) match(ctx context.Context, id, secret string, reload bool) (string, bool) {
	s := e.current(ctx, reload)
	for _, g := range s.groups {
		if g.pattern != nil && !g.pattern.MatchString(id) {
			continue
		}
		if subtle.ConstantTimeCompare([]byte(DeriveSecret(g.key, id)), []byte(secret)) == 1 {
			return g.name, true
		}
	}
	return "", false
}

// current returns the groups, reading them again when they are older than the refresh interval (or when
// reload asks); while one caller reads, others use the previous snapshot.
func (e *Enroller) current(ctx context.Context, reload bool) *snapshot {
	s := e.snap.Load()
	if s != nil && !reload && e.now().Sub(s.at) < e.refresh {
		return s
	}
	if s != nil {
		if !e.loading.TryLock() {
			return s
		}
	} else {
		e.loading.Lock()
		if s = e.snap.Load(); s != nil { // loaded while this caller waited
			e.loading.Unlock()
			return s
		}
	}
	defer e.loading.Unlock()
	ns := e.load(ctx)
	if ns.err != nil && s != nil {
		// Keep serving the groups last read; try again at the next interval.
		e.log.Warn("enrollment groups not re-read; using the previous ones", "err", ns.err)
		ns.groups, ns.certs = s.groups, s.certs
	}
	e.snap.Store(ns)
	return ns
}

func (e *Enroller) load(ctx context.Context) *snapshot {
	ns := &snapshot{at: e.now()}
	gs, err := e.groups.EnrollmentGroups(ctx)
	if err != nil {
		ns.err = fmt.Errorf("read enrollment groups: %w", err)
		return ns
	}
	for _, g := range gs {
		if g.Disabled {
			continue
		}
		re, err := CompilePattern(g.IDPattern)
		if err != nil {
			e.log.Warn("enrollment group skipped", "group", g.Name, "err", err)
			continue
		}
		switch g.Kind {
		case fleet.EnrollSymmetric:
			key, err := e.sealer.Open(g.Name, g.SealedKey)
			if err != nil {
				e.log.Warn("enrollment group skipped", "group", g.Name, "err", err)
				continue
			}
			ns.groups = append(ns.groups, openGroup{name: g.Name, key: key, pattern: re})
		case fleet.EnrollX509:
			ca, err := ParseCA(g.CACert)
			if err != nil {
				e.log.Warn("enrollment group skipped", "group", g.Name, "err", err)
				continue
			}
			pool := x509.NewCertPool()
			pool.AddCert(ca)
			ns.certs = append(ns.certs, certGroup{name: g.Name, ca: ca, pool: pool, pattern: re})
		}
	}
	return ns
}
