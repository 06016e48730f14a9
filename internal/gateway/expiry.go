package gateway

import (
	"sync"
	"time"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// expiredNoteEvery is how often a device refused for expired credentials gets the refusal on its timeline:
// such a device retries every few seconds, and one entry an hour tells the operator as much as thousands.
const expiredNoteEvery = time.Hour

// expiredNotesMax bounds the devices remembered; past it the oldest notes are forgotten, which only means an
// extra timeline entry.
const expiredNotesMax = 100_000

// expiredNotes remembers when each device's refusal of one kind (expired credentials, a report the scheme
// refused) was last recorded, so that it is recorded at most once every every (expiredNoteEvery when zero).
type expiredNotes struct {
	mu    sync.Mutex
	last  map[string]time.Time
	every time.Duration
}

// due reports whether a refusal of id at now should be recorded, and if so remembers it.
func (n *expiredNotes) due(id string, now time.Time) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.last == nil {
		n.last = make(map[string]time.Time)
	}
	every := n.every
	if every <= 0 {
		every = expiredNoteEvery
	}
	if t, ok := n.last[id]; ok && now.Sub(t) < every {
		return false
	}
	if len(n.last) >= expiredNotesMax {
		for k, t := range n.last {
			if now.Sub(t) >= every {
				delete(n.last, k)
			}
		}
		if len(n.last) >= expiredNotesMax {
			clear(n.last)
		}
	}
	n.last[id] = now
	return true
}

// noteExpired records on the device's timeline (through the connection-event batches) that a CONNECT with
// its right credentials was refused because they expired at expiresAt.
func (g *Gateway) noteExpired(id string, expiresAt, now time.Time) {
	if !g.expired.due(id, now) {
		return
	}
	g.events.add(fleet.ConnEvent{DeviceID: id, Kind: fleet.ConnRefused, At: now,
		Reason: "credentials expired " + expiresAt.UTC().Format(time.RFC3339)})
}
