package device

import (
	"fmt"

	"github.com/fleetflow/fleetflow/internal/protocol"
)

// PublishTelemetry sends one telemetry message at QoS 0 on devices/{id}/telemetry[/stream] without waiting.
func (d *Device) PublishTelemetry(stream string, payload any) error {
	body, err := encode(payload)
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	c := d.paho()
	if c == nil || !c.IsConnectionOpen() {
		return ErrNotConnected
	}
	tok := c.Publish(protocol.TelemetryTopic(d.cfg.ID, stream), 0, false, body)
	select {
	case <-tok.Done():
		return tok.Error()
	default:
		return nil
	}
}
