package channel

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/protocol"
)

// PublishDesired publishes desired patches to their devices' desired subjects, all at once (the client
// buffers them and writes them in large chunks), then flushes: published counts the patches the NATS
// server confirmed having received. The whole batch is refused before anything is sent when a message is
// invalid (bad device id, version < 1, patch not a JSON object or over the size limit). Otherwise it stops
// sending at the first failure or when ctx ends, and returns the error with the count so far; re-sending
// the whole batch is safe. Patches of one device arrive in the order they were published (one connection,
// one subject). Confirmation means the bus took the message, not that the device got it: a device that no
// gateway holds gets nothing, and offline devices catch up with twin/get on reconnect (docs/architecture.md,
// "The device protocol"). DesiredPush.Online is not consulted: every patch is published.
func (c *Channel) PublishDesired(ctx context.Context, msgs []fleet.DesiredPush) (published int, err error) {
	for i, m := range msgs {
		if err := validateDesired(m); err != nil {
			return 0, fmt.Errorf("publish desired: message %d: %w", i, err)
		}
	}
	if err := c.usable(); err != nil {
		return 0, fmt.Errorf("publish desired: %w", err)
	}
	sent := 0
	var failed error
	for _, m := range msgs {
		if failed = ctx.Err(); failed != nil {
			break
		}
		msg := &nats.Msg{
			Subject: protocol.DeviceSubject(m.DeviceID, protocol.SubjectDesired),
			Header:  nats.Header{protocol.HeaderVersion: []string{strconv.FormatInt(m.Version, 10)}},
			Data:    m.Patch,
		}
		if err := c.nc.PublishMsg(msg); err != nil {
			failed = fmt.Errorf("publish desired %s v%d: %w", m.DeviceID, m.Version, err)
			break
		}
		sent++
	}
	// The flush's PONG comes after the server has processed everything sent before it.
	if err := c.flush(ctx); err != nil {
		if failed == nil {
			failed = err
		}
		return 0, fmt.Errorf("publish desired: %d of %d sent, not confirmed: %w", sent, len(msgs), failed)
	}
	c.stats.desiredSent.Add(int64(sent))
	if failed != nil {
		return sent, fmt.Errorf("publish desired: stopped after %d of %d: %w", sent, len(msgs), failed)
	}
	return sent, nil
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
