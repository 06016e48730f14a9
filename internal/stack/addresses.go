package stack

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/fleetflow/fleetflow/internal/config"
)

// Addresses of the numbered parts (docs/architecture.md, "Several gateways"). Part i of a kind takes the
// kind's base port + (i−1), so the defaults give:
//
//	NATS node j   clients 127.0.0.1:4222+j−1, routes 127.0.0.1:6222+j−1
//	gateway i     MQTT 127.0.0.1:1883+i−1, MQTT over TLS 127.0.0.1:8883+i−1, metrics 127.0.0.1:9464+100·(i−1)
//	worker n      metrics 127.0.0.1:9465+n−1
//
// Gateway metrics step by 100 because the workers' metrics ports follow the first gateway's. The bases move
// with the variables that name the first part: FLEETFLOW_NATS_URL (or FLEETFLOW_NATS_CLUSTER_LISTEN for the
// routes), FLEETFLOW_MQTT_URL or FLEETFLOW_GATEWAY_LISTEN, FLEETFLOW_GATEWAY_TLS_LISTEN and
// FLEETFLOW_GATEWAY_METRICS.

// Defaults of the NATS nodes' route listener; the first node's client listener is config.DefaultNATSURL, so
// the CLI finds it without configuration.
const (
	DefaultNATSClusterListen = "127.0.0.1:6222"
	gatewayMetricsStep       = 100
)

// offsetPort returns host:(port+n) of addr.
func offsetPort(addr string, n int) (string, error) {
	host, port, err := splitPort(addr)
	if err != nil {
		return "", fmt.Errorf("address %q is not host:port", addr)
	}
	if port+n > 65535 || port+n <= 0 {
		return "", fmt.Errorf("address %q: port %d+%d is out of range", addr, port, n)
	}
	return net.JoinHostPort(host, strconv.Itoa(port+n)), nil
}

// gatewayAddrs are gateway i's plaintext and TLS MQTT listeners.
func (s *Stack) gatewayAddrs(i int) (listen, tlsListen string, err error) {
	if listen, err = offsetPort(s.gatewayListen(), i-1); err != nil {
		return "", "", partErr(gatewayName(i), "listen %v", err)
	}
	if tlsListen, err = offsetPort(s.gatewayTLSListen(), i-1); err != nil {
		return "", "", partErr(gatewayName(i), "TLS listen %v", err)
	}
	return listen, tlsListen, nil
}

// gatewayMetricsAddr is where gateway i serves metrics, "" for none.
func gatewayMetricsAddr(i int) string {
	base := gatewayMetrics()
	if base == "" {
		return ""
	}
	a, err := offsetPort(base, gatewayMetricsStep*(i-1))
	if err != nil {
		return ""
	}
	return a
}

// natsURLs splits a FLEETFLOW_NATS_URL value (comma-separated URLs).
func natsURLs(raw string) []string {
	var out []string
	for _, u := range strings.Split(raw, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// natsHostPort is host:port of a NATS URL (nats://, tls://, with or without user:password@; port 4222 when
// none is given).
func natsHostPort(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("NATS URL %q is not of the form nats://host:port", raw)
	}
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), "4222"), nil
	}
	return u.Host, nil
}

// natsAddrs are node j's client and route listeners.
func (s *Stack) natsAddrs(j int) (client, cluster string, err error) {
	first := config.DefaultNATSURL
	if l := natsURLs(s.opts.NATSURL); len(l) > 0 {
		first = l[0]
	}
	base, err := natsHostPort(first)
	if err != nil {
		return "", "", partErr(natsName(j), "%v", err)
	}
	if client, err = offsetPort(base, j-1); err != nil {
		return "", "", partErr(natsName(j), "listen %v", err)
	}
	clusterBase := s.opts.NATSClusterListen
	if clusterBase == "" {
		clusterBase = DefaultNATSClusterListen
	}
	if cluster, err = offsetPort(clusterBase, j-1); err != nil {
		return "", "", partErr(natsName(j), "cluster listen %v", err)
	}
	return client, cluster, nil
}
