// Package protocol is fleetflow's device contract in one place: the MQTT topics devices and services use,
// the rules for the ids that appear in them, the subscription filters and access rules of each party, and
// the shapes of the payloads that are part of the contract (twin and method responses, the offline answer,
// job progress, the retained birth/LWT state message) with their size limits.
//
// The gateway (internal/gateway), the service channel (internal/channel), the device SDK (internal/device)
// and the simulator all build and parse topics here, so that the contract is written once
// (docs/architecture.md, "The device protocol"). The package is pure: it imports only the standard
// library, so that the worker can speak the contract without linking the MQTT broker, and a device build
// without linking the registry.
//
// The NATS subjects that carry the channel between gateways, workers and the CLI (subjects.go) are part of
// the contract too (docs/architecture.md, "Scale-out: gateways over NATS").
//
// Builders (TelemetryTopic, TwinGetTopic, …) do not validate their arguments, because they run once per
// message on hot paths whose callers have already checked the ids with the validators (ValidDeviceID,
// ValidRequestID, …). Parse validates everything, and Topic.String inverts it: for every topic Parse
// accepts, Parse(x).String() == x.
package protocol
