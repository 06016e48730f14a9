package gateway

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// session is one live device connection.
type session struct {
	id     string
	cl     *mqtt.Client
	num    int64     // session number recorded in the registry
	digest []byte    // SHA-256 of the secret it connected with, to re-check it against a changed record
	will   mqtt.Will // the connection's LWT, in case mochi skips it (see hook.OnDisconnect)

	seen       atomic.Bool // a ConnSeen is pending for this session
	purge      atomic.Bool // the device is gone: its LWT must clear the retained state instead of setting it
	superseded atomic.Bool // a newer connection of the device is taking over this one
}

// sessions indexes live connections by client (every one, since the disconnect of a session that was taken
// over is reported after its successor connected) and device sessions also by id (the current one).
// Connections that ended stay in ending until mochi has removed them from its client list, because a new
// connection with the same id must wait for that (see hook.OnSessionEstablish).
type sessions struct {
	mu       sync.RWMutex
	byID     map[string]*session
	byClient map[*mqtt.Client]*session
	ending   map[*mqtt.Client]*session
}

func newSessions() *sessions {
	return &sessions{
		byID:     make(map[string]*session),
		byClient: make(map[*mqtt.Client]*session),
		ending:   make(map[*mqtt.Client]*session),
	}
}

func (ss *sessions) add(s *session) {
	ss.mu.Lock()
	ss.byID[s.id] = s
	ss.byClient[s.cl] = s
	ss.mu.Unlock()
}

// remove ends cl's session and returns it (nil if cl never had one), and whether it was its device's current
// session (not one already taken over by a newer connection here). A clean session is kept in ending until
// sweep finds mochi has let go of it; a persistent one stays in mochi's list until it expires.
func (ss *sessions) remove(cl *mqtt.Client, clean bool) (s *session, current bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.byClient[cl]
	if !ok {
		return nil, false
	}
	delete(ss.byClient, cl)
	if ss.byID[s.id] == s {
		delete(ss.byID, s.id)
		current = true
	}
	if clean {
		ss.ending[cl] = s
	}
	return s, current
}

// known returns cl's session whether it is live or ending.
func (ss *sessions) known(cl *mqtt.Client) *session {
	ss.mu.RLock()
	defer ss.mu.RUnlock()
	if s, ok := ss.byClient[cl]; ok {
		return s
	}
	return ss.ending[cl]
}

// sweep forgets ended sessions that mochi no longer lists.
func (ss *sessions) sweep(listed func(*session) bool) {
	ss.mu.RLock()
	var gone []*session
	for _, s := range ss.ending {
		if !listed(s) {
			gone = append(gone, s)
		}
	}
	ss.mu.RUnlock()
	if len(gone) == 0 {
		return
	}
	ss.mu.Lock()
	for _, s := range gone {
		delete(ss.ending, s.cl)
	}
	ss.mu.Unlock()
}

func (ss *sessions) get(id string) *session {
	ss.mu.RLock()
	defer ss.mu.RUnlock()
	return ss.byID[id]
}

func (ss *sessions) forClient(cl *mqtt.Client) *session {
	ss.mu.RLock()
	defer ss.mu.RUnlock()
	return ss.byClient[cl]
}

func (ss *sessions) ids() []string {
	ss.mu.RLock()
	defer ss.mu.RUnlock()
	out := make([]string, 0, len(ss.byID))
	for id := range ss.byID {
		out = append(out, id)
	}
	return out
}

// eventBuffer collects connection events between flushes, in order. ConnSeen is coalesced through
// session.seen, so a chatty device costs one event per flush, not one per message.
type eventBuffer struct {
	mu      sync.Mutex
	events  []fleet.ConnEvent
	seen    []*session
	limit   int
	trigger chan struct{} // asks the flusher to run before its tick when limit is reached
}

// maxBacklog bounds the events kept across failed writes, so a registry outage cannot exhaust memory.
const maxBacklog = 200_000

func newEventBuffer(limit int) *eventBuffer {
	return &eventBuffer{limit: limit, trigger: make(chan struct{}, 1)}
}

func (b *eventBuffer) add(e fleet.ConnEvent) {
	b.mu.Lock()
	b.events = append(b.events, e)
	n := len(b.events)
	b.mu.Unlock()
	if n >= b.limit {
		b.poke()
	}
}

func (b *eventBuffer) markSeen(s *session) {
	if s.seen.Load() || !s.seen.CompareAndSwap(false, true) {
		return
	}
	// The event takes its place in order (after the session's ConnUp, before its ConnDown), stamped
	// with the first activity of the interval, which is accurate to one flush interval.
	b.mu.Lock()
	b.seen = append(b.seen, s)
	b.events = append(b.events, fleet.ConnEvent{DeviceID: s.id, Kind: fleet.ConnSeen, Session: s.num, At: time.Now()})
	n := len(b.events)
	b.mu.Unlock()
	if n >= b.limit {
		b.poke()
	}
}

func (b *eventBuffer) poke() {
	select {
	case b.trigger <- struct{}{}:
	default:
	}
}

// take empties the buffer and re-arms the "seen" marks of the sessions it reported.
func (b *eventBuffer) take() []fleet.ConnEvent {
	b.mu.Lock()
	events, seen := b.events, b.seen
	b.events, b.seen = nil, nil
	b.mu.Unlock()
	for _, s := range seen {
		s.seen.Store(false)
	}
	return events
}

// requeue puts back the up/down events of a failed write, in front of newer ones; ConnSeen is dropped
// because the next message sets it again.
func (b *eventBuffer) requeue(failed []fleet.ConnEvent) (dropped int) {
	keep := failed[:0]
	for _, e := range failed {
		if e.Kind != fleet.ConnSeen {
			keep = append(keep, e)
		} else {
			dropped++
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(keep)+len(b.events) > maxBacklog {
		return dropped + len(keep)
	}
	b.events = append(keep, b.events...)
	return dropped
}

// flushLoop writes connection events in batches until the gateway closes, then writes what is left.
func (g *Gateway) flushLoop() {
	t := time.NewTicker(g.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-g.events.trigger:
		case <-g.ctx.Done():
			// Final flush: the broker is closed, so every ConnDown is already queued.
			ctx, cancel := context.WithTimeout(context.Background(), g.cfg.StoreTimeout)
			g.flushEvents(ctx, false)
			cancel()
			return
		}
		ctx, cancel := context.WithTimeout(g.ctx, g.cfg.StoreTimeout)
		g.flushEvents(ctx, true)
		cancel()
		g.sessions.sweep(func(s *session) bool {
			cur, ok := g.server.Clients.Get(s.id)
			return ok && cur == s.cl
		})
	}
}

func (g *Gateway) flushEvents(ctx context.Context, retry bool) {
	events := g.events.take()
	for len(events) > 0 {
		n := min(len(events), g.cfg.FlushEvents*10)
		batch := events[:n]
		start := time.Now()
		err := g.store.RecordConnections(ctx, batch)
		g.m.connSeconds.ObserveDuration(time.Since(start))
		g.m.connSize.Observe(float64(n))
		if err != nil {
			g.c.storeErrors.Add(1)
			dropped := len(events)
			if retry {
				dropped = g.events.requeue(append([]fleet.ConnEvent(nil), events...))
			}
			g.c.connEventsDropped.Add(int64(dropped))
			g.log.Warn("recording connection events failed", "events", len(events), "dropped", dropped, "err", err)
			return
		}
		g.c.connEventsWritten.Add(int64(n))
		events = events[n:]
	}
}
