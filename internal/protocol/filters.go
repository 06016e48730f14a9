package protocol

import "strings"

// Subscription filters of the parties. Method requests are subscribed at QoS 0 (they are online-only);
// twin responses and desired patches at QoS 1.
const (
	// AllDevicesFilter is the gateway's own subscription: everything under devices/, so that it can
	// ingest what devices send and answer method requests for devices that are offline.
	AllDevicesFilter = Root + "#"
	// MethodResponseFilter is the service channel's subscription to every device's method responses. It
	// subscribes at QoS 0 so that the broker never waits for its acknowledgements.
	MethodResponseFilter = Root + "+/methods/res/+/+"
)

// TwinResponseFilter is a device's subscription to the gateway's answers to its twin requests.
func TwinResponseFilter(id string) string { return Root + id + "/twin/res/#" }

// DesiredFilter is a device's subscription to its desired patches.
func DesiredFilter(id string) string { return Root + id + "/twin/desired/#" }

// MethodRequestFilter is a device's subscription to the direct methods called on it.
func MethodRequestFilter(id string) string { return Root + id + "/methods/req/#" }

// SharedFilter is filter as a shared subscription of group: the broker hands each message to one
// subscriber of the group. group must be one topic level without wildcards.
func SharedFilter(group, filter string) string { return "$share/" + group + "/" + filter }

// DeviceMayUse reports whether device id may publish to, or subscribe with, topic (a topic name or a
// filter). A device is confined to devices/{id}/…: since id is a literal prefix, wildcards can only appear
// below its own level, and $share or $SYS never match.
func DeviceMayUse(id, topic string) bool {
	if id == "" || strings.ContainsAny(id, "/+#") {
		return false
	}
	rest, ok := strings.CutPrefix(topic, Root)
	if !ok {
		return false
	}
	rest, ok = strings.CutPrefix(rest, id)
	if !ok {
		return false
	}
	return len(rest) >= 2 && rest[0] == '/'
}

// ServiceMayUse reports whether a service client may use topic: anything under devices/, optionally
// through a shared subscription, so that workers can fan out to and consume from the whole fleet but not
// $SYS or topics outside the device channel.
func ServiceMayUse(topic string) bool {
	const share = "$share/"
	if len(topic) >= len(share) && strings.EqualFold(topic[:len(share)], share) {
		rest := topic[len(share):]
		i := strings.IndexByte(rest, '/')
		if i <= 0 || strings.ContainsAny(rest[:i], "+#") {
			return false
		}
		topic = rest[i+1:]
	}
	return strings.HasPrefix(topic, Root) && len(topic) > len(Root)
}
