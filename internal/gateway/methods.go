package gateway

import (
	"github.com/mochi-mqtt/server/v2/packets"
)

// offlineMethodBody is the answer to a method request for a device without a session. The code is the one
// Azure IoT Hub uses, so callers can tell "offline" from a device's own 404 ("unknown method").
var offlineMethodBody = []byte(`{"error":"device offline","code":"DeviceNotOnline"}`)

// onCloudMessage sees messages that no device session published: the gateway's own responses and what
// services send to devices. Method requests are online-only and QoS 0 (DESIGN §4), so a request for a device
// that is not connected here would vanish and its caller would wait for the whole timeout; the gateway
// answers it at once on the device's response topic instead.
func (g *Gateway) onCloudMessage(pk packets.Packet) {
	req, ok := parseMethodRequest(pk.TopicName)
	if !ok || g.sessions.get(req.id) != nil || !g.fromService(pk.Origin) {
		return
	}
	g.c.methodsOffline.Add(1)
	topic := methodResponseTopic(req.id, 404, req.rid)
	if err := g.server.Publish(topic, offlineMethodBody, false, 1); err != nil {
		g.log.Debug("publishing offline method response failed", "device", req.id, "err", err)
	}
}

// fromService reports whether the client with id origin is a logged-in fleetflow service. Only services'
// requests are answered: the gateway's own publishes (origin "inline") and anything else are not callers.
func (g *Gateway) fromService(origin string) bool {
	cl, ok := g.server.Clients.Get(origin)
	return ok && isService(cl)
}
