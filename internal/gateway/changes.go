package gateway

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/protocol"
)

// listenLoop follows the registry's change notifications for as long as the gateway runs, re-subscribing
// after a failure. Notifications may have been missed while it was down, so on every re-subscription the
// cache is emptied and every live session re-checked.
func (g *Gateway) listenLoop() {
	backoff := 100 * time.Millisecond
	for first := true; ; first = false {
		if !first {
			g.resync()
			// The listener is not confirmed until it delivers; resync once more shortly after
			// so that a change made while LISTEN was being re-established is not missed.
			time.AfterFunc(time.Second, func() {
				if g.ctx.Err() == nil {
					g.resync()
				}
			})
		}
		started := time.Now()
		err := g.store.ListenDeviceChanges(g.ctx, g.onDeviceChange)
		if g.ctx.Err() != nil {
			return
		}
		if time.Since(started) > time.Minute {
			backoff = 100 * time.Millisecond
		}
		g.c.storeErrors.Add(1)
		g.log.Warn("device change listener stopped; retrying", "err", err, "retry_in", backoff)
		select {
		case <-time.After(backoff):
		case <-g.ctx.Done():
			return
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// resync empties the auth cache and queues a re-check of every live session.
func (g *Gateway) resync() {
	g.auth.invalidateAll()
	for _, id := range g.sessions.ids() {
		g.recheck.add(id)
	}
}

// onDeviceChange runs on the listener's goroutine for every changed device, so it must not block: it only
// drops the cached record and queues a re-check when the device has a live session or retained state.
func (g *Gateway) onDeviceChange(id string) {
	if id == "" {
		// The store re-established its listener and may have missed notifications.
		g.log.Info("device change listener resumed; re-checking every session")
		g.resync()
		if g.cfg.Enroller != nil {
			g.cfg.Enroller.Invalidate()
		}
		g.reloadScheme()
		return
	}
	if id == fleet.SchemeChanged {
		// Another scheme version is in force: reports must be checked against it from now on.
		g.reloadScheme()
		return
	}
	if id == fleet.DevicesInserted {
		// New devices: one of them may be an id remembered as unknown, and must be admitted at once.
		g.auth.forgetUnknown()
		return
	}
	if id == fleet.EnrollmentGroupsChanged {
		// A group was created, disabled or enabled: first contacts through it must see it at once, and
		// the TLS listener must trust a new group's CA before its devices' handshakes.
		if g.cfg.Enroller != nil {
			g.cfg.Enroller.Invalidate()
		}
		return
	}
	g.auth.invalidate(id)
	if g.sessions.get(id) != nil || g.hasRetainedState(id) {
		g.recheck.add(id)
	}
}

func (g *Gateway) hasRetainedState(id string) bool {
	if g.server == nil {
		return false
	}
	_, ok := g.server.Topics.Retained.Get(protocol.StateTopic(id))
	return ok
}

// recheckQueue is a set of device ids waiting to be re-checked. A set, not a channel: a burst of changes
// (a bulk decommission) must neither block the listener nor be dropped, and duplicates collapse.
type recheckQueue struct {
	mu      sync.Mutex
	pending map[string]struct{}
	order   []string
	signal  chan struct{}
}

func newRecheckQueue() *recheckQueue {
	return &recheckQueue{pending: make(map[string]struct{}), signal: make(chan struct{}, 1)}
}

func (q *recheckQueue) add(id string) {
	q.mu.Lock()
	if _, ok := q.pending[id]; !ok {
		q.pending[id] = struct{}{}
		q.order = append(q.order, id)
	}
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

func (q *recheckQueue) next() (string, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.order) == 0 {
		return "", false
	}
	id := q.order[0]
	q.order[0] = ""
	q.order = q.order[1:]
	delete(q.pending, id)
	if len(q.order) > 0 {
		select { // wake another worker for the rest
		case q.signal <- struct{}{}:
		default:
		}
	}
	return id, true
}

func (g *Gateway) recheckLoop() {
	for {
		select {
		case <-g.recheck.signal:
		case <-g.ctx.Done():
			return
		}
		for {
			id, ok := g.recheck.next()
			if !ok {
				break
			}
			g.recheckDevice(id, 0)
			if g.ctx.Err() != nil {
				return
			}
		}
	}
}

// recheckDevice compares a device's live session with its current registry record and drops the session
// if it is no longer entitled to it. A registry error keeps the session (failing open for an established
// connection) and retries, because dropping every device during a database blip would cause a storm.
func (g *Gateway) recheckDevice(id string, attempt int) {
	ctx, cancel := context.WithTimeout(g.ctx, g.cfg.AuthTimeout)
	a, err := g.store.DeviceAuth(ctx, id)
	cancel()
	gone := errors.Is(err, fleet.ErrNotFound)
	if err != nil && !gone {
		if g.ctx.Err() != nil {
			return
		}
		g.c.storeErrors.Add(1)
		g.log.Warn("re-checking device failed", "device", id, "attempt", attempt+1, "err", err)
		if attempt < 5 {
			time.AfterFunc(time.Duration(attempt+1)*time.Second, func() {
				if g.ctx.Err() == nil {
					g.recheckDevice(id, attempt+1)
				}
			})
		}
		return
	}
	purge := gone || a.Status == fleet.StatusRetired
	if s := g.sessions.get(id); s != nil {
		if gone || !sessionValid(s, a) {
			if purge {
				s.purge.Store(true)
			}
			// An operator's decision about the device (disabled, retired, deleted) is an
			// administrative action; a secret that no longer matches is a refused authorization.
			reason, code := "device not found", packets.ErrAdministrativeAction
			switch {
			case gone:
			case a.Status != fleet.StatusActive:
				reason = "device " + string(a.Status)
			default:
				reason, code = "credentials changed", packets.ErrNotAuthorized
			}
			g.kick(s, reason, code)
		}
		return
	}
	if purge && g.hasRetainedState(id) {
		// A retired device's last state would otherwise stay retained forever.
		if err := g.server.Publish(protocol.StateTopic(id), nil, true, 1); err != nil {
			g.log.Warn("clearing retained state failed", "device", id, "err", err)
		}
	}
}
