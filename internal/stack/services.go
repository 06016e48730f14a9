package stack

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"time"
)

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
	running, highest := s.runningCount(partWorker)
	want := wanted(s.opts.Workers, running)
	if err := s.shrink(partWorker, want, highest, "--workers"); err != nil {
		return err
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
