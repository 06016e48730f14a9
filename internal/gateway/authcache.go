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

// authCache holds the registry records of active devices so that reconnect storms do not turn into one
// Postgres query per CONNECT. Entries are dropped when the registry announces a change; lookups in flight
// when a change arrives are discarded and repeated, so a stale record is never cached or used.
type authCache struct {
	load    func(ctx context.Context, id string) (fleet.DeviceAuth, error)
	sem     chan struct{} // bounds concurrent registry lookups
	timeout time.Duration
	cap     int
	lookups atomic.Int64 // registry queries made
	hits    atomic.Int64 // CONNECTs answered from the cache

	mu       sync.Mutex
	entries  map[string]fleet.DeviceAuth
	inflight map[string]*authCall
}

// authCall is one registry lookup shared by every CONNECT for the same id that arrives while it runs.
type authCall struct {
	done        chan struct{}
	auth        fleet.DeviceAuth
	err         error
	invalidated bool // guarded by authCache.mu
}

func newAuthCache(load func(context.Context, string) (fleet.DeviceAuth, error), capacity, concurrency int, timeout time.Duration) *authCache {
	return &authCache{
		load:     load,
		sem:      make(chan struct{}, concurrency),
		timeout:  timeout,
		cap:      capacity,
		entries:  make(map[string]fleet.DeviceAuth),
		inflight: make(map[string]*authCall),
	}
}

// get returns the device's record, from the cache when possible. cached says whether no registry query was
// needed.
func (c *authCache) get(id string) (a fleet.DeviceAuth, cached bool, err error) {
	deadline := time.NewTimer(c.timeout)
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
		call, ok := c.inflight[id]
		if !ok {
			call = &authCall{done: make(chan struct{})}
			c.inflight[id] = call
			// The query runs in its own goroutine so that connection goroutines keep small stacks
			// and a waiter can give up on time.
			go c.fill(id, call)
		}
		c.mu.Unlock()

		select {
		case <-call.done:
		case <-deadline.C:
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

func (c *authCache) fill(id string, call *authCall) {
	c.sem <- struct{}{}
	c.lookups.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	a, err := c.load(ctx, id)
	cancel()
	<-c.sem

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
	}
	c.mu.Unlock()
	close(call.done)
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
