// Package fleet is fleetflow's domain: the vocabulary every other package shares (devices and their
// states, operations and their outcomes, what is pushed to devices and what they answer) and the
// interfaces through which activities and the gateway reach the registry and the device channel.
//
// It sits at the centre of the import graph (docs/architecture.md, "Layers and the import rule"): it
// imports no adapter — no pgx, mochi, paho or NATS — so that workflows, activities and pure rules can use
// it without linking a server client, and each adapter (registry, gateway, channel) implements its
// interfaces.
package fleet
