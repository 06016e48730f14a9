package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/fleet"
)

var _ fleet.Channel = (*lazyChannel)(nil)

// lazyChannel connects to NATS on first use rather than at start-up, so that a worker started before the
// bus (or while it restarts) still comes up and provisions; a failed connect is retried by the next
// activity that needs the channel, and Temporal retries that activity.
type lazyChannel struct {
	cfg channel.Config
	mu  sync.Mutex
	ch  *channel.Channel
}

func (l *lazyChannel) get(ctx context.Context) (*channel.Channel, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ch != nil {
		return l.ch, nil
	}
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	ch, err := channel.Dial(dctx, l.cfg)
	if err != nil {
		return nil, fmt.Errorf("device channel: %w", err)
	}
	l.ch = ch
	return ch, nil
}

// PublishDesired pushes desired patches (fleet.Channel).
func (l *lazyChannel) PublishDesired(ctx context.Context, msgs []fleet.DesiredPush) (int, error) {
	ch, err := l.get(ctx)
	if err != nil {
		return 0, err
	}
	return ch.PublishDesired(ctx, msgs)
}

// InvokeMany calls methods (fleet.Channel). Without a connection every call fails as not sent, which
// the activity turns into a retry.
func (l *lazyChannel) InvokeMany(ctx context.Context, calls []fleet.MethodCall, timeout time.Duration, rate float64) []fleet.MethodResult {
	ch, err := l.get(ctx)
	if err != nil {
		out := make([]fleet.MethodResult, len(calls))
		for i, c := range calls {
			body := []byte(fmt.Sprintf("%q", err.Error()))
			out[i] = fleet.MethodResult{DeviceID: c.DeviceID, Outcome: fleet.MethodFailed, Status: fleet.StatusNotSent, Payload: body}
		}
		return out
	}
	return ch.InvokeMany(ctx, calls, timeout, rate)
}

// Close disconnects if connected.
func (l *lazyChannel) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ch != nil {
		l.ch.Close()
	}
}
