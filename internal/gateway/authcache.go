package gateway

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// errAuthChurn is returned when a device's record kept changing while it was being looked up; failing closed
// is safer than authenticating against a record that may already be revoked.
var errAuthChurn = errors.New("device record changed during lookup")

// errLookupsBusy refuses a CONNECT of an id this gateway has never admitted while the lookups reserved for
// such ids are all taken and many more wait: under a flood of unknown ids, refusing at once is better than
// queueing (docs/architecture.md, "Abuse: floods of CONNECTs").
var errLookupsBusy = errors.New("too many lookups of unknown device ids in flight")

// authCache holds the registry records of active devices so that reconnect storms do not turn into one
// Postgres query per CONNECT. Entries are dropped when the registry announces a change; lookups in flight
// when a change arrives are discarded and repeated, so a stale record is never cached or used.
//
// Against floods of CONNECTs with ids that do not exist (docs/architecture.md, "Abuse: floods of CONNECTs")
// it also remembers, for negTTL, that an id was not found, and it keeps two pools of lookup slots: ids it
// has seen active before (good devices coming back) use sem, every other id uses the smaller coldSem, whose
// queue is bounded, so a flood of unknown ids cannot take the slots good devices need. The registry's
// insert notice (fleet.DevicesInserted) forgets every negative entry, so a device is admitted the moment it
// is provisioned.
type authCache struct {
	load      func(ctx context.Context, id string) (fleet.DeviceAuth, error)
	sem       chan struct{} // bounds concurrent registry lookups of known ids
	coldSem   chan struct{} // bounds concurrent registry lookups of ids never seen active here
	coldQueue int64         // lookups that may wait for coldSem before more are refused at once
	timeout   time.Duration
	cap       int
	negTTL    time.Duration // how long "not found" is remembered; 0 turns the negative cache off
	now       func() time.Time
	lookups   atomic.Int64 // registry queries made
	hits      atomic.Int64 // CONNECTs answered from the cache
	negHits   atomic.Int64 // CONNECTs of unknown ids answered from the negative cache
	coldShed  atomic.Int64 // lookups of unknown ids refused because coldSem's queue was full
	coldWait  atomic.Int64 // lookups waiting for or holding coldSem

	mu       sync.Mutex
	entries  map[string]fleet.DeviceAuth
	inflight map[string]*authCall
	negative map[string]time.Time // id → when "not found" expires
	negGen   uint64               // bumped by forgetUnknown: a lookup begun before must not cache "not found"
	known    map[string]struct{}  // ids seen active here, which use sem
}

// authCall is one registry lookup shared by every CONNECT for the same id that arrives while it runs.
type authCall struct {
	done        chan struct{}
	auth        fleet.DeviceAuth
	err         error
	invalidated bool   // guarded by authCache.mu
	negGen      uint64 // authCache.negGen when the lookup began
}

func newAuthCache(load func(context.Context, string) (fleet.DeviceAuth, error), capacity, concurrency int, timeout time.Duration) *authCache {
	return &authCache{
		load:      load,
		sem:       make(chan struct{}, concurrency),
		coldSem:   make(chan struct{}, max(1, concurrency/4)),
		coldQueue: 1024,
		timeout:   timeout,
		cap:       capacity,
		negTTL:    defaultNegativeTTL,
		now:       time.Now,
		entries:   make(map[string]fleet.DeviceAuth),
		inflight:  make(map[string]*authCall),
		negative:  make(map[string]time.Time),
		known:     make(map[string]struct{}),
	}
}

// defaultNegativeTTL is how long an unknown id is remembered as unknown: short, because the insert notice
// is what admits a new device at once, and this only bounds how stale a missed notice can leave it.
const defaultNegativeTTL = 10 * time.Second

// errLookupSlow is returned by getWithin when the lookup did not finish within the caller's wait; the lookup
// itself goes on (up to the cache's timeout) and fills the cache for the device's next attempt.
var errLookupSlow = errors.New("registry lookup slower than the admission wait")

// get returns the device's record, from the cache when possible. cached says whether no registry query was
// needed.
func (c *authCache) get(id string) (a fleet.DeviceAuth, cached bool, err error) {
	return c.getWithin(id, c.timeout)
}

// getWithin is get waiting at most wait (at most the cache's timeout) for a registry lookup; past it, it
// returns errLookupSlow.
func (c *authCache) getWithin(id string, wait time.Duration) (a fleet.DeviceAuth, cached bool, err error) {
	slow := wait > 0 && wait < c.timeout
	if !slow {
		wait = c.timeout
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for attempt := 0; attempt < 3; attempt++ {
		c.mu.Lock()
		if a, ok := c.entries[id]; ok {
			c.mu.Unlock()
			if attempt == 0 {
				c.hits.Add(1)
			}
			return a, attempt == 0, nil
		}
		if until, ok := c.negative[id]; ok {
			if c.now().Before(until) {
				c.mu.Unlock()
				c.negHits.Add(1)
				return fleet.DeviceAuth{}, true, fmt.Errorf("look up device %s: %w", id, fleet.ErrNotFound)
			}
			delete(c.negative, id)
		}
		call, ok := c.inflight[id]
		if !ok {
			_, known := c.known[id]
			if !known && c.coldWait.Load() >= c.coldQueue {
				c.mu.Unlock()
				c.coldShed.Add(1)
				return fleet.DeviceAuth{}, false, fmt.Errorf("look up device %s: %w", id, errLookupsBusy)
			}
			call = &authCall{done: make(chan struct{}), negGen: c.negGen}
			c.inflight[id] = call
			sem, waiting := c.sem, (*atomic.Int64)(nil)
			if !known {
				c.coldWait.Add(1)
				sem, waiting = c.coldSem, &c.coldWait
			}
			// The query runs in its own goroutine so that connection goroutines keep small stacks
			// and a waiter can give up on time.
			go c.fill(id, call, sem, waiting)
		}
		c.mu.Unlock()
		select {
		case <-call.done:
		case <-deadline.C:
			if slow {
				return fleet.DeviceAuth{}, false, fmt.Errorf("look up device %s: %w (%s)", id, errLookupSlow, wait)
			}
			return fleet.DeviceAuth{}, false, fmt.Errorf("look up device %s: timed out after %s", id, c.timeout)
		}
		if call.err != nil {
			return fleet.DeviceAuth{}, false, call.err
		}
		c.mu.Lock()
		stale := call.invalidated
		c.mu.Unlock()
		if !stale {
			return call.auth, false, nil
		}
	}
	return fleet.DeviceAuth{}, false, fmt.Errorf("look up device %s: %w", id, errAuthChurn)
}

// fill looks id up holding a slot of sem; waiting, if not nil, counts the lookups queued on or holding it.
func (c *authCache) fill(id string, call *authCall, sem chan struct{}, waiting *atomic.Int64) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	var a fleet.DeviceAuth
	var err error
	select {
	case sem <- struct{}{}:
		c.lookups.Add(1)
		a, err = c.load(ctx, id)
		<-sem
	case <-ctx.Done():
		err = ctx.Err()
	}
	cancel()
	if waiting != nil {
		waiting.Add(-1)
	}

	c.mu.Lock()
	if c.inflight[id] == call {
		delete(c.inflight, id)
	}
	call.auth, call.err = a, err
	if err != nil {
		call.err = fmt.Errorf("look up device %s: %w", id, err)
	}
	// Only active devices are cached: a refused device must be able to connect the moment it is
	// (re)provisioned or enabled, without waiting for an entry to expire.
	if err == nil && !call.invalidated && a.Status == fleet.StatusActive {
		if len(c.entries) >= c.cap {
			for k := range c.entries { // evict an arbitrary entry; a miss only costs one query
				delete(c.entries, k)
				break
			}
		}
		c.entries[id] = a
		if len(c.known) >= 2*c.cap {
			clear(c.known) // crude, but only sends returning devices through the cold slots for a while
		}
		c.known[id] = struct{}{}
	}
	if errors.Is(err, fleet.ErrNotFound) && !call.invalidated && call.negGen == c.negGen && c.negTTL > 0 {
		if len(c.negative) >= c.cap {
			c.pruneNegative()
		}
		c.negative[id] = c.now().Add(c.negTTL)
	}
	c.mu.Unlock()
	close(call.done)
}

// pruneNegative drops expired negative entries, and all of them if none had expired: a flood of distinct
// ids must not grow the map without bound. Called with mu held.
func (c *authCache) pruneNegative() {
	now := c.now()
	for id, until := range c.negative {
		if !now.Before(until) {
			delete(c.negative, id)
		}
	}
	if len(c.negative) >= c.cap {
		clear(c.negative)
	}
}

// forgetUnknown drops every negative entry, and keeps lookups in flight from adding theirs: the registry
// announced new devices (fleet.DevicesInserted), and one of them may be an id remembered as unknown.
func (c *authCache) forgetUnknown() {
	c.mu.Lock()
	clear(c.negative)
	c.negGen++
	c.mu.Unlock()
}

// negativeLen is the number of ids remembered as unknown.
func (c *authCache) negativeLen() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.negative)
}

// has reports whether id is cached.
func (c *authCache) has(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.entries[id]
	return ok
}

// invalidate drops id and poisons a lookup in flight, whose answer may predate the change.
func (c *authCache) invalidate(id string) {
	c.mu.Lock()
	delete(c.entries, id)
	delete(c.negative, id)
	if call, ok := c.inflight[id]; ok {
		call.invalidated = true
		delete(c.inflight, id)
	}
	c.mu.Unlock()
}

// invalidateAll forgets everything, for when change notifications may have been missed.
func (c *authCache) invalidateAll() {
	c.mu.Lock()
	clear(c.entries)
	clear(c.negative)
	c.negGen++
	for id, call := range c.inflight {
		call.invalidated = true
		delete(c.inflight, id)
	}
	c.mu.Unlock()
}

// len is the number of cached records.
func (c *authCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
