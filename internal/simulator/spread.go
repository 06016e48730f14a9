package simulator

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Devices of one simulation are spread over its gateways as a round-robin TCP load balancer would spread
// them (docs/architecture.md, "Several gateways"): device i connects first to gateway i mod n. When that
// gateway goes away its devices fail over to all the others evenly rather than all to the next one, so that
// a killed gateway's load does not double one neighbour's.

// brokers is the simulation's list of gateways: BrokerURL, then BrokerURLs, without repeats.
func (c *Config) brokers() []string {
	var out []string
	for _, u := range append([]string{c.BrokerURL}, c.BrokerURLs...) {
		if u = strings.TrimSpace(u); u != "" && !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}

// brokersFor is device i's list of gateways, in the order it tries them: its own gateway i mod n first,
// then the others, starting at an offset that also goes round, so that the devices of one gateway fail over
// to every other gateway in equal shares.
func brokersFor(urls []string, i int) []string {
	n := len(urls)
	if n <= 1 {
		return urls
	}
	p := i % n
	others := append(slices.Clone(urls[p+1:]), urls[:p]...)
	k := (i / n) % (n - 1)
	return append([]string{urls[p]}, append(others[k:], others[:k]...)...)
}

// perBroker counts the connected devices by the gateway they are connected to.
func perBroker(devs []*simDevice) map[string]int64 {
	out := map[string]int64{}
	for _, sd := range devs {
		if sd.dev.IsConnected() {
			out[sd.dev.Broker()]++
		}
	}
	return out
}

// formatPerBroker is the per-gateway part of the status line, in URL order: "tcp://a=5 tcp://b=5".
func formatPerBroker(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}
