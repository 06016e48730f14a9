package gateway_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
	"github.com/fleetflow/fleetflow/internal/protocol"
)

// fakeBus is a Downlinks that records what the gateway asks of the bus and lets a test deliver downlinks.
type fakeBus struct {
	mu       sync.Mutex
	attached map[string]bool
	detaches int
	kicks    []int64 // sessions announced
	answers  []int   // statuses sent back
	deliver  chan func(protocol.Downlink)
}

func newFakeBus() *fakeBus {
	return &fakeBus{attached: map[string]bool{}, deliver: make(chan func(protocol.Downlink), 1)}
}

func (f *fakeBus) Attach(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attached[id] = true
	return nil
}

func (f *fakeBus) Detach(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.attached, id)
	f.detaches++
	return nil
}

func (f *fakeBus) Kick(_ string, session int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kicks = append(f.kicks, session)
	return nil
}

func (f *fakeBus) Respond(_ protocol.Downlink, status int, _ []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answers = append(f.answers, status)
	return nil
}

func (f *fakeBus) Run(ctx context.Context, deliver func(protocol.Downlink)) {
	f.deliver <- deliver
	<-ctx.Done()
}

func (f *fakeBus) snapshot() (attached bool, detaches int, kicks []int64, answers []int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.attached) > 0, f.detaches, append([]int64(nil), f.kicks...), append([]int(nil), f.answers...)
}

// A session that starts attaches the device and announces its number; a kick from another gateway with a
// newer number ends it (an MQTT 3.1.1 connection closed without DISCONNECT, an MQTT 5 one with 0x8E), while a
// kick with an older number leaves it alone and is answered with the newer number.
func TestKickFromAnotherGateway(t *testing.T) {
	for _, version := range []byte{4, 5} {
		store := gatewaytest.New()
		store.Add("dev-k", "s3cret")
		bus := newFakeBus()
		g := gatewaytest.StartGateway(t, store, gateway.Config{FlushInterval: 10 * time.Millisecond, Downlinks: bus})
		deliver := <-bus.deliver

		c, code := dialRaw(t, g.Addr(), version, "dev-k", "s3cret", true)
		require.Equal(t, byte(0), code)
		var num int64
		require.Eventually(t, func() bool {
			for _, e := range store.Events() {
				if e.Kind == fleet.ConnUp {
					num = e.Session
				}
			}
			attached, _, kicks, _ := bus.snapshot()
			return num > 0 && attached && len(kicks) == 1
		}, 5*time.Second, 5*time.Millisecond)
		_, _, kicks, _ := bus.snapshot()
		assert.Equal(t, []int64{num}, kicks, "the new session announced its number")

		got := c.drainAsync()
		// An older session elsewhere (or our own announcement coming back) changes nothing here.
		deliver(protocol.Downlink{Device: "dev-k", Kind: protocol.SubjectKick, Session: num - 1})
		deliver(protocol.Downlink{Device: "dev-k", Kind: protocol.SubjectKick, Session: num})
		_, _, kicks, _ = bus.snapshot()
		assert.Equal(t, []int64{num, num}, kicks, "the older one is told about the newer session")
		assert.Zero(t, g.Stats().Takeovers)
		assert.Equal(t, int64(1), g.Stats().Connected)

		// A method for it is relayed; one for a device not here is answered offline.
		deliver(protocol.Downlink{Device: "dev-nope", Kind: protocol.SubjectMethod, Method: "m", Timeout: time.Second, Reply: "r"})
		_, _, _, answers := bus.snapshot()
		assert.Equal(t, []int{protocol.StatusOffline}, answers)

		deliver(protocol.Downlink{Device: "dev-k", Kind: protocol.SubjectKick, Session: num + 1})
		if version == 4 {
			assertNoDisconnect(t, wait(t, got))
		} else {
			assertDisconnect(t, wait(t, got), codeSessionTakenOver)
		}
		require.Eventually(t, func() bool {
			attached, detaches, _, _ := bus.snapshot()
			return !attached && detaches == 1 && g.Stats().Connected == 0
		}, 5*time.Second, 5*time.Millisecond, "the ended session was detached")
		assert.Equal(t, int64(1), g.Stats().Takeovers)
		assert.Zero(t, g.Stats().Kicks, "a takeover is not a revocation")
	}
}
