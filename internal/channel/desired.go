package channel

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/protocol"
)

// PublishDesired publishes desired patches at QoS 1, many in flight at once, and waits for every PUBACK.
// published counts the patches the broker acknowledged. The whole batch is refused before anything is
// sent when a message is invalid (bad device id, version < 1, patch not a JSON object or over 128 KiB).
// Otherwise it stops sending at the first failure or when ctx ends, and returns the error with the count
// so far; re-sending the whole batch is safe. A PUBACK means the gateway took the message, not that the
// device got it: offline devices catch up with twin/get on reconnect (docs/architecture.md, "The device
// protocol"). DesiredPush.Online is not consulted: every patch is pushed.
func (c *Channel) PublishDesired(ctx context.Context, msgs []fleet.DesiredPush) (published int, err error) {
	for i, m := range msgs {
		if err := validateDesired(m); err != nil {
			return 0, fmt.Errorf("publish desired: message %d: %w", i, err)
		}
	}
	if err := c.usable(nil); err != nil {
		return 0, fmt.Errorf("publish desired: %w", err)
	}
	toks := make([]paho.Token, 0, len(msgs))
	next := 0         // first token not yet waited for
	var failed error  // the first publish that failed, naming its device
	var stopped error // why sending stopped early (ctx, Close), if it did
	waitNext := func() {
		i := next
		next++
		if e := c.waitPublish(ctx, toks[i]); e != nil {
			if failed == nil {
				failed = fmt.Errorf("publish desired %s v%d: %w", msgs[i].DeviceID, msgs[i].Version, e)
			}
			return
		}
		published++
		c.stats.desiredAcked.Add(1)
	}
	// freeOne waits for our own oldest publish when the channel is at its in-flight limit, so a large batch
	// paces itself by its PUBACKs instead of queueing behind other callers.
	freeOne := func() bool {
		if next == len(toks) {
			return false
		}
		waitNext()
		return true
	}
	for _, m := range msgs {
		if stopped = ctx.Err(); stopped != nil {
			break
		}
		if stopped = c.acquirePublish(ctx, freeOne); stopped != nil {
			break
		}
		if failed != nil {
			<-c.inflight
			break
		}
		// paho takes a []byte payload, not a json.RawMessage.
		tok := c.connFor(m.DeviceID).client.Publish(protocol.DesiredTopic(m.DeviceID, m.Version), 1, false, []byte(m.Patch))
		toks = append(toks, tok)
		if isFailed(tok) {
			break // waitNext reports it with the device id
		}
	}
	for next < len(toks) {
		waitNext()
	}
	switch {
	case failed != nil:
		return published, failed
	case stopped != nil:
		return published, fmt.Errorf("publish desired: stopped after %d of %d: %w", len(toks), len(msgs), stopped)
	}
	return published, nil
}

// acquirePublish takes an in-flight slot for a QoS 1 publish, calling freeOne while none is free and it
// can still release one of the caller's own.
func (c *Channel) acquirePublish(ctx context.Context, freeOne func() bool) error {
	for {
		select {
		case c.inflight <- struct{}{}:
			return nil
		default:
		}
		if !freeOne() {
			break
		}
	}
	select {
	case c.inflight <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.closed:
		return ErrClosed
	}
}

// waitPublish waits for a QoS 1 publish's PUBACK and releases its in-flight slot.
func (c *Channel) waitPublish(ctx context.Context, tok paho.Token) error {
	defer func() { <-c.inflight }()
	select {
	case <-tok.Done():
		return tok.Error()
	default:
	}
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-c.closed:
		return ErrClosed
	}
}

func validateDesired(m fleet.DesiredPush) error {
	if err := protocol.ValidateDeviceID(m.DeviceID); err != nil {
		return err
	}
	if m.Version < 1 {
		return fmt.Errorf("device %s: version %d must be ≥ 1", m.DeviceID, m.Version)
	}
	if len(m.Patch) > maxPatchSize {
		return fmt.Errorf("device %s: patch of %d bytes exceeds the %d-byte limit", m.DeviceID, len(m.Patch), maxPatchSize)
	}
	if !isJSONObject(m.Patch) {
		return fmt.Errorf("device %s: patch is not a JSON object", m.DeviceID)
	}
	return nil
}

func isJSONObject(b []byte) bool {
	s := strings.TrimLeft(string(b), " \t\r\n")
	return strings.HasPrefix(s, "{") && json.Valid(b)
}
