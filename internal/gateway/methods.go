package gateway

import (
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetflow/fleetflow/internal/protocol"
)

// onCloudMessage sees messages that no device session published: the gateway's own responses and what
// services send to devices. Method requests are online-only and QoS 0 (docs/architecture.md, "The device protocol"), so a request for a device
// that is not connected here would vanish and its caller would wait for the whole timeout; the gateway
// answers it at once on the device's response topic instead, with the contract's offline answer (404,
// DeviceNotOnline). Only requests whose device id and request id are valid are answered: they are echoed
// in the response topic.
func (g *Gateway) onCloudMessage(pk packets.Packet) {
	req, err := protocol.Parse(pk.TopicName)
	if err != nil || req.Kind != protocol.KindMethodRequest || g.sessions.get(req.Device) != nil || !g.fromService(pk.Origin) {
		return
	}
	g.c.methodsOffline.Add(1)
	topic := protocol.MethodResponseTopic(req.Device, protocol.StatusOffline, req.RequestID)
	if err := g.server.Publish(topic, protocol.OfflinePayload(), false, 1); err != nil {
		g.log.Debug("publishing offline method response failed", "device", req.Device, "err", err)
	}
}

// fromService reports whether the client with id origin is a logged-in fleetflow service. Only services'
// requests are answered: the gateway's own publishes (origin "inline") and anything else are not callers.
func (g *Gateway) fromService(origin string) bool {
	cl, ok := g.server.Clients.Get(origin)
	return ok && isService(cl)
}
