package gateway

import (
	"context"
	"fmt"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// sessionNums hands out session numbers from the registry's one sequence (docs/architecture.md, "The device
// protocol"): a number from a gateway's clock could be smaller on the gateway a device moves to than on the
// one it left, and the registry would ignore the newer session. CONNECTs that arrive together share one
// query: the first waiter queries for everyone waiting, and whoever arrives while that query runs is served
// by the next one. Numbers are never reserved ahead of use, so they stay ordered across gateways in the order
// the CONNECTs asked for them.
type sessionNums struct {
	alloc   func(ctx context.Context, n int) ([]int64, error)
	timeout time.Duration // bounds one query, like a CONNECT's registry lookup

	mu      sync.Mutex
	waiting []chan numResult
	running bool
	queries int64 // registry round trips, for tests

	// pending holds the number given to a CONNECT between its authentication and its session, which are
	// separate mochi hooks. A connection that fails in between (its CONNACK cannot be written) never
	// reaches the second hook; sweep drops such entries once they are closed.
	pmu       sync.Mutex
	pending   map[*mqtt.Client]heldNum
	sweepSize int
}

// heldNum is what a CONNECT's authentication hands on to its session: the session number, and the secret
// slot the device authenticated with (1 or 2; 0: a client certificate).
type heldNum struct {
	num  int64
	slot int
}

type numResult struct {
	num int64
	err error
}

func newSessionNums(alloc func(context.Context, int) ([]int64, error), timeout time.Duration) *sessionNums {
	return &sessionNums{alloc: alloc, timeout: timeout, pending: make(map[*mqtt.Client]heldNum), sweepSize: 1024}
}

// next returns a new session number, waiting for at most one registry query besides the one in flight.
func (n *sessionNums) next() (int64, error) {
	ch := make(chan numResult, 1)
	n.mu.Lock()
	n.waiting = append(n.waiting, ch)
	lead := !n.running
	n.running = true
	n.mu.Unlock()
	if lead {
		go n.serve()
	}
	r := <-ch
	return r.num, r.err
}

// serve queries for everyone waiting until no one is.
func (n *sessionNums) serve() {
	for {
		n.mu.Lock()
		batch := n.waiting
		n.waiting = nil
		if len(batch) == 0 {
			n.running = false
			n.mu.Unlock()
			return
		}
		n.queries++
		n.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), n.timeout)
		nums, err := n.alloc(ctx, len(batch))
		cancel()
		if err == nil && len(nums) != len(batch) {
			err = fmt.Errorf("next %d session numbers: got %d", len(batch), len(nums))
		}
		for i, ch := range batch {
			if err != nil {
				ch <- numResult{err: err}
			} else {
				ch <- numResult{num: nums[i]}
			}
		}
	}
}

// hold keeps num and the credential slot for cl until take.
func (n *sessionNums) hold(cl *mqtt.Client, num int64, slot int) {
	n.pmu.Lock()
	defer n.pmu.Unlock()
	n.pending[cl] = heldNum{num: num, slot: slot}
	if len(n.pending) >= n.sweepSize {
		for c := range n.pending {
			if c.Closed() {
				delete(n.pending, c)
			}
		}
		n.sweepSize = max(1024, 2*len(n.pending))
	}
}

// take returns and forgets the number and slot held for cl.
func (n *sessionNums) take(cl *mqtt.Client) (num int64, slot int, ok bool) {
	n.pmu.Lock()
	defer n.pmu.Unlock()
	h, ok := n.pending[cl]
	delete(n.pending, cl)
	return h.num, h.slot, ok
}
