package gateway

import (
	"strconv"
	"strings"

	"github.com/fleetflow/fleetflow/internal/twin"
)

// ServiceUsername is the MQTT username of fleetflow's own services (workers, CLI). It contains ':' so that it
// can never be a device id, which keeps the two kinds of client apart in the auth and ACL hooks.
const ServiceUsername = "svc:fleetflow"

// devicesPrefix is the root of every topic of the device channel (DESIGN §4).
const devicesPrefix = "devices/"

// maxRIDLen bounds request ids, which are echoed in response topics and must stay one short topic level.
const maxRIDLen = 64

// deviceMayUse reports whether device id may publish to, or subscribe with, topic (a topic name or a filter).
// A device is confined to devices/{id}/…: since id is a literal prefix, wildcards can only appear below its
// own level, and $share or $SYS never match.
func deviceMayUse(id, topic string) bool {
	if id == "" || strings.ContainsAny(id, "/+#") {
		return false
	}
	if !strings.HasPrefix(topic, devicesPrefix) {
		return false
	}
	rest := topic[len(devicesPrefix):]
	if !strings.HasPrefix(rest, id) {
		return false
	}
	rest = rest[len(id):]
	return len(rest) >= 2 && rest[0] == '/'
}

// serviceMayUse reports whether a service client may use topic: anything under devices/, optionally through a
// shared subscription, so that workers can fan out to and consume from the whole fleet but not $SYS or
// topics outside the device channel.
func serviceMayUse(topic string) bool {
	const share = "$share/"
	if len(topic) >= len(share) && strings.EqualFold(topic[:len(share)], share) {
		rest := topic[len(share):]
		i := strings.IndexByte(rest, '/')
		if i <= 0 || strings.ContainsAny(rest[:i], "+#") {
			return false
		}
		topic = rest[i+1:]
	}
	return strings.HasPrefix(topic, devicesPrefix) && len(topic) > len(devicesPrefix)
}

// stateTopic is where a device keeps its retained birth/LWT message.
func stateTopic(id string) string { return devicesPrefix + id + "/state" }

// topicKind classifies a device-originated topic.
type topicKind int

const (
	kindInvalid topicKind = iota
	kindTelemetry
	kindState
	kindTwinGet
	kindTwinReported
	kindJobStatus
	kindMethodResponse
)

// deviceTopic is a parsed device-to-cloud topic.
type deviceTopic struct {
	kind   topicKind
	id     string
	rid    string // twin requests and method responses
	jobID  string // job status
	status int    // method responses
}

// parseDeviceTopic parses a topic published by a device. Anything that is not a device-to-cloud topic of the
// DESIGN §4 contract (including cloud-to-device topics a device published itself) is kindInvalid.
func parseDeviceTopic(topic string) deviceTopic {
	if !strings.HasPrefix(topic, devicesPrefix) {
		return deviceTopic{}
	}
	parts := strings.Split(topic[len(devicesPrefix):], "/")
	if len(parts) < 2 || parts[0] == "" {
		return deviceTopic{}
	}
	t := deviceTopic{id: parts[0]}
	switch parts[1] {
	case "telemetry":
		// devices/{id}/telemetry[/{stream}…]
		for _, p := range parts[2:] {
			if p == "" {
				return deviceTopic{}
			}
		}
		t.kind = kindTelemetry
	case "state":
		if len(parts) == 2 {
			t.kind = kindState
		}
	case "twin":
		// devices/{id}/twin/get/{rid}, devices/{id}/twin/reported/{rid}
		if len(parts) != 4 || !validRID(parts[3]) {
			return deviceTopic{}
		}
		switch parts[2] {
		case "get":
			t.kind = kindTwinGet
		case "reported":
			t.kind = kindTwinReported
		default:
			return deviceTopic{}
		}
		t.rid = parts[3]
	case "jobs":
		// devices/{id}/jobs/{jobId}/status
		if len(parts) != 4 || parts[3] != "status" || !validRID(parts[2]) {
			return deviceTopic{}
		}
		t.kind, t.jobID = kindJobStatus, parts[2]
	case "methods":
		// devices/{id}/methods/res/{status}/{rid}
		if len(parts) != 5 || parts[2] != "res" || !validRID(parts[4]) {
			return deviceTopic{}
		}
		st, err := strconv.Atoi(parts[3])
		if err != nil || st < 100 || st > 599 {
			return deviceTopic{}
		}
		t.kind, t.status, t.rid = kindMethodResponse, st, parts[4]
	}
	return t
}

// validRID accepts request and job ids of 1–64 characters from [A-Za-z0-9._-]: one plain topic level that is
// safe to echo back in a response topic.
func validRID(s string) bool {
	if len(s) == 0 || len(s) > maxRIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// methodRequest is a parsed cloud-to-device method request, devices/{id}/methods/req/{method}/{rid}.
type methodRequest struct {
	id, method, rid string
}

// parseMethodRequest recognises a method request whose device id and request id are safe to echo back in a
// response topic; anything else is not answered by the gateway.
func parseMethodRequest(topic string) (methodRequest, bool) {
	if !strings.HasPrefix(topic, devicesPrefix) {
		return methodRequest{}, false
	}
	parts := strings.Split(topic[len(devicesPrefix):], "/")
	if len(parts) != 5 || parts[1] != "methods" || parts[2] != "req" || parts[3] == "" || !validRID(parts[4]) {
		return methodRequest{}, false
	}
	if twin.ValidateID(parts[0]) != nil {
		return methodRequest{}, false
	}
	return methodRequest{id: parts[0], method: parts[3], rid: parts[4]}, true
}

// methodResponseTopic is where a method's answer goes; the gateway uses it to answer for offline devices.
func methodResponseTopic(id string, status int, rid string) string {
	return devicesPrefix + id + "/methods/res/" + strconv.Itoa(status) + "/" + rid
}

// twinResponseTopic is where the gateway answers a device's twin request.
func twinResponseTopic(id string, status int, rid string) string {
	return devicesPrefix + id + "/twin/res/" + strconv.Itoa(status) + "/" + rid
}
