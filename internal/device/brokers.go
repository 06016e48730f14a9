package device

import (
	"fmt"
	"net/url"
	"slices"
	"sync"

	"github.com/fleetflow/fleetflow/internal/pki"
)

// A device may be given several gateways of one fleet (docs/architecture.md, "Several gateways"): any of
// them serves it, since the gateways share the registry and relay downlinks to whichever holds
// the session. The device connects to the first of its list that accepts it and, after losing a connection,
// starts its reconnect with the gateway after the one it lost, then goes round the list: the gateway that
// dropped it may be the one going away, and a fleet behind a TCP load balancer behaves the same way.

// brokers is the device's list of gateway URLs: BrokerURL, then BrokerURLs, without repeats.
func (c *Config) brokers() []string {
	var out []string
	for _, u := range append([]string{c.BrokerURL}, c.BrokerURLs...) {
		if u != "" && !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}

// setBrokers checks the list and makes BrokerURL its first URL, so that what New checks of BrokerURL holds
// for a device given BrokerURLs only. A list that mixes plaintext and TLS gets its TLS configuration in
// prepareCredentials, whatever its first URL.
func (c *Config) setBrokers() error {
	list := c.brokers()
	if len(list) == 0 {
		return nil // New says that the broker URL is required
	}
	if err := checkBrokers(list); err != nil {
		return err
	}
	c.BrokerURL = list[0]
	return nil
}

// checkBrokers refuses URLs paho would skip silently (it logs a parse error and goes on).
func checkBrokers(list []string) error {
	for _, raw := range list {
		u, err := url.Parse(raw)
		if err != nil || u.Scheme == "" || u.Host == "" {
			return fmt.Errorf("device: broker URL %q is not of the form tcp://host:port or ssl://host:port", raw)
		}
	}
	return nil
}

// parsedBrokers holds the parsed URL of every gateway URL a device of this process was given, shared by all
// its devices: paho only reads them, and a simulator's 10,000 devices would otherwise each keep a parsed copy
// of every gateway's URL. A process names few gateways; the cap only guards against one that makes up
// URLs without end.
var parsedBrokers struct {
	sync.Mutex
	m map[string]*url.URL
}

const maxParsedBrokers = 1024

// brokerURLs returns the parsed URLs of list (checked by checkBrokers), shared with the other devices.
func brokerURLs(list []string) []*url.URL {
	out := make([]*url.URL, 0, len(list))
	parsedBrokers.Lock()
	defer parsedBrokers.Unlock()
	if parsedBrokers.m == nil {
		parsedBrokers.m = make(map[string]*url.URL)
	}
	for _, raw := range list {
		u, ok := parsedBrokers.m[raw]
		if !ok {
			var err error
			if u, err = url.Parse(raw); err != nil {
				continue // checkBrokers refused it already when the device was made
			}
			if len(parsedBrokers.m) < maxParsedBrokers {
				parsedBrokers.m[raw] = u
			}
		}
		out = append(out, u)
	}
	return out
}

// anyTLS reports whether some URL of the list asks for TLS, so the device needs a TLS configuration.
func anyTLS(list []string) bool {
	return slices.ContainsFunc(list, pki.IsTLSURL)
}

// rotateAfter returns servers starting with the one after last (servers unchanged when last is not among
// them), so a reconnect tries another gateway first and the lost one last.
func rotateAfter(servers []*url.URL, last string) []*url.URL {
	i := slices.IndexFunc(servers, func(u *url.URL) bool { return u.String() == last })
	if i < 0 || len(servers) < 2 {
		return servers
	}
	i = (i + 1) % len(servers)
	return append(slices.Clone(servers[i:]), servers[:i]...)
}

// Broker is the URL of the gateway the device is connected to, or was last connected to ("" before its
// first connection).
func (d *Device) Broker() string {
	if p := d.broker.Load(); p != nil {
		return *p
	}
	return ""
}
