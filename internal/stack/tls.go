package stack

import (
	"path/filepath"
	"strings"
	"time"

	"github.com/fleetflow/fleetflow/internal/pki"
)

// tlsDir is where the local stack keeps its CA and the gateway's certificate (docs/architecture.md, "Where
// secrets live"): ca.pem is what clients trust, the keys are 0600.
func (s *Stack) tlsDir() string { return filepath.Join(s.state, "tls") }

// CAFile is the local CA's certificate, for clients of the stack's TLS listener (`dev simulate`, a
// mosquitto_sub --cafile). It exists once `dev up` has started the gateway with its own certificate.
func (s *Stack) CAFile() string { return filepath.Join(s.tlsDir(), pki.CAFile) }

// LocalCAFile is the CA file of the local stack of the checkout at root (it may not exist yet).
func LocalCAFile(root string) string { return filepath.Join(root, ".fleetflow", "tls", pki.CAFile) }

// ownTLS reports whether the stack makes the gateway's certificate itself: it does unless the environment
// names one (FLEETFLOW_TLS_CERT), which the gateway then serves as given.
func (s *Stack) ownTLS() bool { return s.opts.Config.TLSCert == "" }

// gatewayTLS returns the certificate and key files the local gateway serves: the user's, or the stack's own,
// created on the first `dev up` and reused afterwards (re-issued when the server certificate nears its end;
// a running gateway picks the new one up by itself).
func (s *Stack) gatewayTLS() (cert, key string, err error) {
	if !s.ownTLS() {
		return s.opts.Config.TLSCert, s.opts.Config.TLSKey, nil
	}
	l, err := pki.EnsureLocal(s.tlsDir(), pki.LocalHosts, time.Now())
	if err != nil {
		return "", "", partErr(PartGateway, "TLS certificate: %v", err)
	}
	switch {
	case l.CreatedCA:
		s.say("%-9s %-22s created a local CA and a server certificate (valid until %s); clients trust %s",
			"tls", s.rel(l.Dir), l.NotAfter.Format("2006-01-02"), s.rel(l.CA))
	case l.IssuedServer:
		s.say("%-9s %-22s issued a new server certificate (valid until %s)", "tls", s.rel(l.Dir), l.NotAfter.Format("2006-01-02"))
	}
	return l.Cert, l.Key, nil
}

// gatewayTLSListen is where the local gateway listens for MQTT over TLS (FLEETFLOW_GATEWAY_TLS_LISTEN).
func (s *Stack) gatewayTLSListen() string {
	if a := s.opts.Config.GatewayTLSListen; a != "" {
		return a
	}
	return "127.0.0.1:8883"
}

// SimulatorTLS returns the broker URLs (comma-separated) and CA file `dev simulate` gives its devices: the
// TLS listener of every gateway this stack runs, which the simulator spreads its devices over, and the
// stack's ca.pem, so the demo's devices verify the gateways as real ones would. ok is false when the user
// named a broker of their own (FLEETFLOW_MQTT_URL, where none of our gateways listens) or no gateway runs
// with TLS; the simulator then uses FLEETFLOW_MQTT_URL as it is.
func (s *Stack) SimulatorTLS() (urls, caFile string, ok bool) {
	if s.opts.ExplicitMQTT {
		if addr, err := mqttAddr(s.opts.Config.MQTTURL); err != nil || !s.ownsGatewayAt(addr) {
			return "", "", false
		}
	}
	var list []string
	for _, p := range s.runningGateways() {
		if p.TLSAddr != "" {
			list = append(list, "ssl://"+p.TLSAddr)
		}
	}
	if len(list) == 0 {
		return "", "", false
	}
	ca := s.opts.Config.MQTTCA
	if s.ownTLS() {
		ca = s.CAFile()
	}
	return strings.Join(list, ","), ca, true
}
