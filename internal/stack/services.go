package stack

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"time"
)

// upGateway makes the MQTT device channel available: ours if running, the broker FLEETFLOW_MQTT_URL names if
// it answers, else `fleetflow gateway` listening on the configured address.
func (s *Stack) upGateway(ctx context.Context) error {
	const part = PartGateway
	listen := s.gatewayListen()
	if s.opts.ExplicitMQTT {
		addr, err := mqttAddr(s.opts.Config.MQTTURL)
		if err != nil {
			return partErr(part, "%v", err)
		}
		if Reachable(addr, 2*time.Second) {
			s.say("%-9s %-22s external (FLEETFLOW_MQTT_URL)", part, addr)
			return nil
		}
		host, _, err := splitPort(addr)
		if err != nil || !IsLoopback(host) {
			return partErr(part, "FLEETFLOW_MQTT_URL points at %s, which does not answer; start that broker or unset FLEETFLOW_MQTT_URL to run the local gateway", addr)
		}
	}
	// Made (or renewed) before the running check, so a gateway left running since an earlier up is handed
	// a renewed certificate too: it reloads the files when they change.
	cert, key, err := s.gatewayTLS()
	if err != nil {
		return err
	}
	if running, err := s.alreadyRunning(part, ""); running || err != nil {
		return err
	}
	tlsListen := s.gatewayTLSListen()
	_, port, err := splitPort(listen)
	if err != nil {
		return partErr(part, "listen address %q is not host:port", listen)
	}
	if PortInUse(listen) {
		return partErr(part, "%s", portInUseMessage(port, "FLEETFLOW_MQTT_URL"))
	}
	_, tlsPort, err := splitPort(tlsListen)
	if err != nil {
		return partErr(part, "TLS listen address %q is not host:port", tlsListen)
	}
	if PortInUse(tlsListen) {
		return partErr(part, "%s", portInUseMessage(tlsPort, "FLEETFLOW_GATEWAY_TLS_LISTEN"))
	}
	if !fileExists(s.opts.GatewayBin) {
		return partErr(part, "%s not found; run `make build` (or pass --gateway-bin)", s.rel(s.opts.GatewayBin))
	}
	env, err := s.childEnv()
	if err != nil {
		return err
	}
	metricsAddr := s.freeMetrics(part, gatewayMetrics())
	cmd := exec.Command(s.opts.GatewayBin, "gateway")
	cmd.Env = append(env, "FLEETFLOW_GATEWAY_METRICS="+metricsAddr,
		"FLEETFLOW_TLS_CERT="+cert, "FLEETFLOW_TLS_KEY="+key)
	l, err := s.launch(part, cmd, listen, "")
	if err != nil {
		return err
	}
	l.pid.TLSAddr = tlsListen
	if err := WritePIDFile(s.pidPath(part), l.pid); err != nil {
		return s.fail(part, l, err.Error())
	}
	s.recordMetrics(part, l, metricsAddr)
	deadline := time.Now().Add(time.Minute)
	for !Reachable(listen, 500*time.Millisecond) || !Reachable(tlsListen, 500*time.Millisecond) {
		select {
		case <-l.exited:
			return s.fail(part, l, "exited during start-up")
		case <-ctx.Done():
			return s.fail(part, l, "interrupted")
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return s.fail(part, l, "did not listen on "+listen+" and "+tlsListen+" (TLS) within a minute")
		}
	}
	s.say("%-9s %-22s started (pid %d), TLS on %s%s", part, listen, l.pid.PID, tlsListen, startedMetrics(metricsAddr))
	return nil
}

// alreadyRunning reports whether part runs from an earlier dev up (saying so with addr, or the address it
// was started with when addr is empty), and removes a stale pid file so the part can be started again.
func (s *Stack) alreadyRunning(part, addr string) (bool, error) {
	p, err := ReadPIDFile(s.pidPath(part))
	if err != nil {
		return false, partErr(part, "%v", err)
	}
	if p.Alive() {
		if addr == "" {
			addr = p.Addr
		}
		s.say("%-9s %-22s already running (pid %d)", part, addr, p.PID)
		return true, nil
	}
	if p != nil {
		_ = os.Remove(s.pidPath(part))
	}
	return false, nil
}

// upWorkers brings the number of workers to opts.Workers (0: keep the running ones, at least one). Workers
// are interchangeable pollers of the same task queue, so adding one needs no coordination.
func (s *Stack) upWorkers(ctx context.Context) error {
	running := 0
	highest := 0
	for _, w := range s.workerParts() {
		p, err := ReadPIDFile(s.pidPath(w))
		if err == nil && p.Alive() {
			running++
			var n int
			_, _ = fmt.Sscanf(w, partWorker+"-%d", &n)
			highest = max(highest, n)
		} else {
			_ = os.Remove(s.pidPath(w))
		}
	}
	want := s.opts.Workers
	if want <= 0 {
		want = max(1, running)
	}
	// Scale down: stop the highest-numbered workers beyond want.
	for i := highest; i > want; i-- {
		p, _ := ReadPIDFile(s.pidPath(workerName(i)))
		if !p.Alive() {
			continue
		}
		if err := stopProcess(p, syscall.SIGTERM, 30*time.Second); err != nil {
			return partErr(workerName(i), "stop: %v", err)
		}
		_ = os.Remove(s.pidPath(workerName(i)))
		s.say("%-9s stopped (pid %d; --workers %d)", workerName(i), p.PID, want)
	}
	if want > 0 && !fileExists(s.opts.WorkerBin) {
		return partErr(partWorker, "%s not found; run `make build` (or pass --worker-bin)", s.rel(s.opts.WorkerBin))
	}
	env, err := s.childEnv()
	if err != nil {
		return err
	}
	// Start the missing ones together, then watch them together: each needs about a second of observation.
	var started []*launched
	var names []string
	for i := 1; i <= want; i++ {
		name := workerName(i)
		if p, _ := ReadPIDFile(s.pidPath(name)); p.Alive() {
			s.say("%-9s %-22s already running (pid %d)", name, "queue "+s.opts.Config.TaskQueue, p.PID)
			continue
		}
		metricsAddr := s.freeMetrics(name, workerMetrics(i))
		cmd := exec.Command(s.opts.WorkerBin)
		cmd.Env = append(slices.Clip(env), "FLEETFLOW_WORKER_METRICS="+metricsAddr)
		l, err := s.launch(name, cmd, "", "")
		if err != nil {
			return err
		}
		s.recordMetrics(name, l, metricsAddr)
		started = append(started, l)
		names = append(names, name)
	}
	if len(started) == 0 {
		return nil
	}
	// A worker has no port to probe; it is healthy when it is still running after its first second (dial
	// and registration errors end the process quickly) and has logged no crash.
	select {
	case <-ctx.Done():
	case <-time.After(1500 * time.Millisecond):
	}
	for i, l := range started {
		select {
		case <-l.exited:
			return s.fail(names[i], l, "exited during start-up")
		default:
		}
		if logHasFatal(l.log, l.logOffset) {
			return s.fail(names[i], l, "logged a fatal error during start-up")
		}
		s.say("%-9s %-22s started (pid %d)%s", names[i], "queue "+s.opts.Config.TaskQueue, l.pid.PID, startedMetrics(l.pid.Metrics))
	}
	return nil
}
