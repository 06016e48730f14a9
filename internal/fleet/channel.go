package fleet

import (
	"context"
	"encoding/json"
	"time"
)

// DesiredPush is one desired-properties merge patch for one device, as written to the registry and pushed
// to the device. Devices ignore patches whose Version is not newer than theirs, which makes a re-sent push
// harmless.
type DesiredPush struct {
	DeviceID string `json:"deviceId"`
	// Version is the desired version after the patch (≥ 1).
	Version int64 `json:"version"`
	// Patch is the RFC 7386 merge patch, a JSON object.
	Patch json.RawMessage `json:"patch"`
	// Online is the registry's view of the connection when the patch was written. Every written patch is
	// pushed regardless: connection state is recorded in batches, so a device that connected a moment ago
	// may not show as online yet.
	Online bool `json:"online,omitempty"`
}

// MethodOutcome classifies how a direct method call ended.
type MethodOutcome string

// The outcomes of a method call. MethodFailed covers both device answers that are not 2xx and calls the
// channel refused or could not send; MethodResult.Status tells them apart.
const (
	// MethodSucceeded: the device answered with a 2xx status.
	MethodSucceeded MethodOutcome = "succeeded"
	// MethodFailed: the device answered with another status, or the call was refused or not sent.
	MethodFailed MethodOutcome = "failed"
	// MethodTimedOut: no answer within the timeout. The device may or may not have run the method.
	MethodTimedOut MethodOutcome = "timed_out"
	// MethodOffline: no gateway holds a session of the device; nothing was run.
	MethodOffline MethodOutcome = "offline"
)

// Statuses the channel itself puts in a MethodFailed result for a call that reached no device.
const (
	// StatusInvalid: the call was refused before sending (bad device id or method name, payload not JSON
	// or too large). Retrying the same call cannot help.
	StatusInvalid = 400
	// StatusNotSent: the call was not sent (channel closed or disconnected, context ended). The device
	// never saw it, so retrying is safe.
	StatusNotSent = 503
)

// MethodCall is one direct method invocation.
type MethodCall struct {
	DeviceID string `json:"deviceId"`
	// Method is one topic level of [A-Za-z0-9._-], at most 64 characters.
	Method string `json:"method"`
	// Payload is the request body, JSON. Empty means {}.
	Payload json.RawMessage `json:"payload,omitempty"`
}

// MethodResult is how one call ended.
type MethodResult struct {
	DeviceID string        `json:"deviceId"`
	Outcome  MethodOutcome `json:"outcome"`
	// Status is the device's status code (succeeded, failed), 404 for offline, 0 for timed out, or
	// StatusInvalid / StatusNotSent for calls that reached no device.
	Status int `json:"status,omitempty"`
	// Payload is the response body; a device body that is not JSON is kept as a JSON string.
	Payload json.RawMessage `json:"payload,omitempty"`
	// Latency is the time from sending the request to receiving the response (0 when there was none).
	Latency time.Duration `json:"latency,omitempty"`
}

// Channel is the device channel as operations use it: pushes of desired patches and direct methods. The
// MQTT/NATS adapter (internal/channel) implements it; unit tests use a fake.
type Channel interface {
	// PublishDesired pushes patches and returns how many the channel accepted. Re-sending is safe.
	PublishDesired(ctx context.Context, pushes []DesiredPush) (int, error)
	// InvokeMany calls methods, at most rate calls per second (0: no limit), each waiting up to timeout,
	// and returns one result per call, in order.
	InvokeMany(ctx context.Context, calls []MethodCall, timeout time.Duration, rate float64) []MethodResult
}
