package fleetworker

import (
	"context"
	"time"

	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/fleet"
)

// LegacyChannel is a device channel that still speaks internal/channel's own message types.
type LegacyChannel interface {
	PublishDesired(ctx context.Context, msgs []channel.DesiredMessage) (int, error)
	InvokeMany(ctx context.Context, calls []channel.MethodCall, timeout time.Duration, rate float64) []channel.MethodResult
}

// AdaptChannel presents a LegacyChannel as the fleet.Channel activities take (nil stays nil).
//
// Deprecated: a bridge for the renovation (issue 8) until internal/channel implements fleet.Channel; then
// pass the channel itself.
func AdaptChannel(c LegacyChannel) fleet.Channel {
	if c == nil {
		return nil
	}
	return legacyChannel{c}
}

type legacyChannel struct{ c LegacyChannel }

func (l legacyChannel) PublishDesired(ctx context.Context, pushes []fleet.DesiredPush) (int, error) {
	msgs := make([]channel.DesiredMessage, len(pushes))
	for i, p := range pushes {
		msgs[i] = channel.DesiredMessage{DeviceID: p.DeviceID, Version: p.Version, Patch: p.Patch}
	}
	return l.c.PublishDesired(ctx, msgs)
}

func (l legacyChannel) InvokeMany(ctx context.Context, calls []fleet.MethodCall, timeout time.Duration, rate float64) []fleet.MethodResult {
	in := make([]channel.MethodCall, len(calls))
	for i, c := range calls {
		in[i] = channel.MethodCall{DeviceID: c.DeviceID, Method: c.Method, Payload: c.Payload}
	}
	res := l.c.InvokeMany(ctx, in, timeout, rate)
	out := make([]fleet.MethodResult, len(res))
	for i, r := range res {
		out[i] = fleet.MethodResult{DeviceID: r.DeviceID, Outcome: fleet.MethodOutcome(r.Outcome), Status: r.Status,
			Payload: r.Payload, Latency: r.Latency}
	}
	return out
}
