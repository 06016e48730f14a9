package stack

import (
	"context"
	"os/exec"
	"slices"
	"time"
)

func gatewayName(i int) string { return partName(PartGateway, i) }

// upGateways makes the MQTT device channel available: the broker FLEETFLOW_MQTT_URL names if it answers,
// else opts.Gateways `fleetflow gateway` processes (0: as many as run, at least one), gateway i on the
// addresses of number i (addresses.go), all on the same registry and NATS cluster. Re-running with another
// number grows or shrinks to it; the devices of a stopped gateway reconnect to the others.
func (s *Stack) upGateways(ctx context.Context) error {
	if s.opts.ExplicitMQTT {
		addr, err := mqttAddr(s.opts.Config.MQTTURL)
		if err != nil {
			return partErr(PartGateway, "%v", err)
		}
		if Reachable(addr, 2*time.Second) && !s.ownsGatewayAt(addr) {
			s.say("%-9s %-22s external (FLEETFLOW_MQTT_URL)%s", PartGateway, addr, ignored("--gateways", s.opts.Gateways))
			return nil
		}
		host, _, err := splitPort(addr)
		if err != nil || !IsLoopback(host) {
			return partErr(PartGateway, "FLEETFLOW_MQTT_URL points at %s, which does not answer; start that broker or unset FLEETFLOW_MQTT_URL to run the local gateway", addr)
		}
	}
	// Made (or renewed) before the running check, so gateways left running since an earlier up are handed a
	// renewed certificate too: they reload the files when they change.
	cert, key, err := s.gatewayTLS()
	if err != nil {
		return err
	}
	running, highest := s.runningCount(PartGateway)
	want := wanted(s.opts.Gateways, running)
	if err := s.shrink(PartGateway, want, highest, "--gateways"); err != nil {
		return err
	}
	var started []*launched
	var names []string
	for i := 1; i <= want; i++ {
		name := gatewayName(i)
		if running, err := s.alreadyRunning(name, ""); running || err != nil {
			if err != nil {
				return err
			}
			continue
		}
		listen, tlsListen, err := s.gatewayAddrs(i)
		if err != nil {
			return err
		}
		for _, a := range []struct{ addr, env string }{{listen, "FLEETFLOW_MQTT_URL"}, {tlsListen, "FLEETFLOW_GATEWAY_TLS_LISTEN"}} {
			_, port, _ := splitPort(a.addr)
			if PortInUse(a.addr) {
				return partErr(name, "%s", portInUseMessage(port, a.env))
			}
		}
		if !fileExists(s.opts.GatewayBin) {
			return partErr(name, "%s not found; run `make build` (or pass --gateway-bin)", s.rel(s.opts.GatewayBin))
		}
		env, err := s.childEnv()
		if err != nil {
			return err
		}
		metricsAddr := s.freeMetrics(name, gatewayMetricsAddr(i))
		cmd := exec.Command(s.opts.GatewayBin, "gateway")
		cmd.Env = append(slices.Clip(env),
			"FLEETFLOW_GATEWAY_LISTEN="+listen, "FLEETFLOW_GATEWAY_TLS_LISTEN="+tlsListen,
			"FLEETFLOW_GATEWAY_METRICS="+metricsAddr, "FLEETFLOW_TLS_CERT="+cert, "FLEETFLOW_TLS_KEY="+key)
		l, err := s.launch(name, cmd, listen, "")
		if err != nil {
			return err
		}
		l.pid.TLSAddr = tlsListen
		if err := WritePIDFile(s.pidPath(name), l.pid); err != nil {
			return s.fail(name, l, err.Error())
		}
		s.recordMetrics(name, l, metricsAddr)
		started = append(started, l)
		names = append(names, name)
	}
	// Started together, watched together: each takes a moment to connect to the registry and listen.
	for i, l := range started {
		if err := s.waitListening(ctx, names[i], l, time.Minute, l.pid.Addr, l.pid.TLSAddr); err != nil {
			return err
		}
		s.say("%-9s %-22s started (pid %d), TLS on %s%s", names[i], l.pid.Addr, l.pid.PID, l.pid.TLSAddr, startedMetrics(l.pid.Metrics))
	}
	return nil
}

// ownsGatewayAt reports whether one of our gateways listens on addr (plaintext or TLS).
func (s *Stack) ownsGatewayAt(addr string) bool {
	for _, name := range s.numberedParts(PartGateway) {
		if p, _ := ReadPIDFile(s.pidPath(name)); p.Alive() && (p.Addr == addr || p.TLSAddr == addr) {
			return true
		}
	}
	return false
}

// runningGateways returns the pid files of the live gateways, in number order.
func (s *Stack) runningGateways() []*PIDFile {
	var out []*PIDFile
	for _, name := range s.numberedParts(PartGateway) {
		if p, _ := ReadPIDFile(s.pidPath(name)); p.Alive() {
			out = append(out, p)
		}
	}
	return out
}
