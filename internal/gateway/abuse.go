package gateway

import (
	"net"
	"sync"
	"time"
)

// failLimiter limits failed CONNECTs per remote address (docs/architecture.md, "Abuse: floods of CONNECTs"):
// every address has a token bucket of burst failures that refills at rate per second; once it is empty, the
// address's CONNECTs are refused before any lookup, until it has refilled a token. Successful CONNECTs cost
// nothing, so a good device is held back only if it shares its address with a source of failures. The key
// is the IP without the port: a client that opens a new connection per attempt gets a new port each time.
type failLimiter struct {
	rate, burst float64
	now         func() time.Time

	mu      sync.Mutex
	buckets map[string]*failBucket
}

// failBucket is one address's tokens as of at.
type failBucket struct {
	tokens float64
	at     time.Time
}

// maxFailBuckets bounds the addresses tracked; beyond it, full (idle) buckets are dropped.
const maxFailBuckets = 100_000

// newFailLimiter returns a limiter, or nil (no limit) when rate or burst is not positive.
func newFailLimiter(rate float64, burst int) *failLimiter {
	if rate <= 0 || burst <= 0 {
		return nil
	}
	return &failLimiter{rate: rate, burst: float64(burst), now: time.Now, buckets: make(map[string]*failBucket)}
}

// refill brings b up to date. Called with mu held.
func (l *failLimiter) refill(b *failBucket, now time.Time) {
	if d := now.Sub(b.at).Seconds(); d > 0 {
		b.tokens = min(l.burst, b.tokens+d*l.rate)
	}
	b.at = now
}

// allowed reports whether addr may try to authenticate: it has a failure left.
func (l *failLimiter) allowed(addr string) bool {
	if l == nil {
		return true
	}
	key := hostOf(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		return true
	}
	l.refill(b, l.now())
	return b.tokens >= 1
}

// failed takes a token from addr's bucket.
func (l *failLimiter) failed(addr string) {
	if l == nil {
		return
	}
	key := hostOf(addr)
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= maxFailBuckets {
			l.prune(now)
		}
		b = &failBucket{tokens: l.burst, at: now}
		l.buckets[key] = b
	}
	l.refill(b, now)
	b.tokens = max(0, b.tokens-1)
}

// prune drops the buckets that have refilled (their addresses have stopped failing), and every bucket if
// that frees nothing. Called with mu held.
func (l *failLimiter) prune(now time.Time) {
	for k, b := range l.buckets {
		l.refill(b, now)
		if b.tokens >= l.burst {
			delete(l.buckets, k)
		}
	}
	if len(l.buckets) >= maxFailBuckets {
		clear(l.buckets)
	}
}

// hostOf is addr's host: the IP of "ip:port", or addr itself when it has no port.
func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
