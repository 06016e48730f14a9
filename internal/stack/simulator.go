package stack

import (
	"context"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// PartSimulator is the device simulator `fleetflow dev simulate` runs beside the stack (the demo's devices).
// It is a part like the others so that `dev down` stops it too.
const PartSimulator = "simulator"

// StartSimulator runs `fleetflow simulate args...` detached, replacing a simulator this stack started
// before, and returns once it has stayed up for a moment.
func (s *Stack) StartSimulator(ctx context.Context, args []string) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if p, err := ReadPIDFile(s.pidPath(PartSimulator)); err == nil && p.Alive() {
		if err := stopProcess(p, syscall.SIGTERM, 30*time.Second); err != nil {
			return partErr(PartSimulator, "stop the running simulator (pid %d): %v", p.PID, err)
		}
		s.say("%-9s stopped the previous one (pid %d)", PartSimulator, p.PID)
	}
	_ = os.Remove(s.pidPath(PartSimulator))
	if !fileExists(s.opts.GatewayBin) {
		return partErr(PartSimulator, "%s not found; run `make build`", s.rel(s.opts.GatewayBin))
	}
	env, err := s.childEnv()
	if err != nil {
		return err
	}
	cmd := exec.Command(s.opts.GatewayBin, append([]string{"simulate"}, args...)...)
	via := ""
	if urls, ca, ok := s.SimulatorTLS(); ok {
		// The devices connect as real ones would: over TLS, verifying the gateways against the stack's CA,
		// spread over every gateway of the stack. Flags after -- (--mqtt-url, --ca-file) still override these.
		env = append(env, "FLEETFLOW_MQTT_URL="+urls, "FLEETFLOW_MQTT_CA="+ca)
		via = urls
	}
	cmd.Env = env
	l, err := s.launch(PartSimulator, cmd, "", "")
	if err != nil {
		return err
	}
	select {
	case <-l.exited:
		return s.fail(PartSimulator, l, "exited during start-up")
	case <-ctx.Done():
		return s.fail(PartSimulator, l, "interrupted")
	case <-time.After(time.Second):
	}
	s.say("%-9s %-22s started (pid %d), log %s", PartSimulator, via, l.pid.PID, s.rel(s.logPath(PartSimulator)))
	return nil
}
