package enroll

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// BatchRegistrar registers several devices in one call: the gateway's runs one RegisterDevice workflow.
type BatchRegistrar interface {
	RegisterBatch(ctx context.Context, regs []fleet.Registration) ([]fleet.RegistrationOutcome, error)
}

// Batcher is a Registrar that gathers the first contacts arriving within a short wait into one batch: a
// lone device waits a few milliseconds more, while a shipment powering up registers in a handful of workflow
// runs instead of one per device (docs/architecture.md, "Zero-touch enrollment").
type Batcher struct {
	r       BatchRegistrar
	max     int
	wait    time.Duration
	timeout time.Duration

	mu      sync.Mutex
	pending []*pendingReg
	timer   *time.Timer
}

type pendingReg struct {
	reg  fleet.Registration
	done chan struct{}
	out  fleet.RegistrationOutcome
	err  error
}

// NewBatcher returns a Batcher that sends batches of at most max registrations, waiting at most wait for a
// batch to fill; each batch may take timeout.
func NewBatcher(r BatchRegistrar, max int, wait, timeout time.Duration) *Batcher {
	return &Batcher{r: r, max: max, wait: wait, timeout: timeout}
}

// Register adds reg to the next batch and waits for its outcome, or for ctx.
func (b *Batcher) Register(ctx context.Context, reg fleet.Registration) (fleet.RegistrationOutcome, error) {
	p := &pendingReg{reg: reg, done: make(chan struct{})}
	b.mu.Lock()
	b.pending = append(b.pending, p)
	switch {
	case len(b.pending) >= b.max:
		batch := b.take()
		b.mu.Unlock()
		go b.run(batch)
	case len(b.pending) == 1:
		b.timer = time.AfterFunc(b.wait, b.flush)
		b.mu.Unlock()
	default:
		b.mu.Unlock()
	}
	select {
	case <-p.done:
		return p.out, p.err
	case <-ctx.Done():
		return fleet.RegistrationOutcome{}, ctx.Err()
	}
}

// take empties the pending batch; called with mu held.
func (b *Batcher) take() []*pendingReg {
	batch := b.pending
	b.pending = nil
	if b.timer != nil {
		b.timer.Stop()
		b.timer = nil
	}
	return batch
}

func (b *Batcher) flush() {
	b.mu.Lock()
	batch := b.take()
	b.mu.Unlock()
	if len(batch) > 0 {
		b.run(batch)
	}
}

// run registers a batch and hands each caller its outcome. It does not use a caller's context: the batch
// is shared, and one device giving up must not fail the others.
func (b *Batcher) run(batch []*pendingReg) {
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	regs := make([]fleet.Registration, len(batch))
	for i, p := range batch {
		regs[i] = p.reg
	}
	outs, err := b.r.RegisterBatch(ctx, regs)
	if err == nil && len(outs) != len(regs) {
		err = fmt.Errorf("registration answered %d outcomes for %d devices", len(outs), len(regs))
	}
	for i, p := range batch {
		if err != nil {
			p.err = err
		} else {
			p.out = outs[i]
		}
		close(p.done)
	}
}
