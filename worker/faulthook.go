package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// faultHook is a test hook, not a feature: FLEETFLOW_WORKER_FAULT makes the worker misbehave at a fault point
// of the batch activities (activities.Fault…), so internal/e2e can show what a crash or an outage there
// leaves behind:
//
//	kill:POINT        the first activity to reach POINT kills the process with SIGKILL (a kill -9 inside it)
//	hold:POINT:PATH   the first activity to reach POINT creates PATH.held and waits there until PATH.go
//	                  exists (the test breaks something meanwhile, a database restart, say)
//
// It returns nil when the variable is unset, which leaves activities.Fault nil as production has it.
func faultHook(log *slog.Logger) (func(point string) error, error) {
	spec := os.Getenv("FLEETFLOW_WORKER_FAULT")
	if spec == "" {
		return nil, nil
	}
	mode, rest, _ := strings.Cut(spec, ":")
	point, path, _ := strings.Cut(rest, ":")
	var once sync.Once
	switch {
	case mode == "kill" && point != "":
		return func(p string) error {
			if p == point {
				log.Warn("test hook: killing the worker", "point", p)
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // SIGKILL is not delivered synchronously; never go on past the point
			}
			return nil
		}, nil
	case mode == "hold" && point != "" && path != "":
		return func(p string) error {
			if p != point {
				return nil
			}
			once.Do(func() {
				log.Warn("test hook: holding the activity", "point", p, "until", path+".go")
				_ = os.WriteFile(path+".held", nil, 0o644)
				for {
					if _, err := os.Stat(path + ".go"); err == nil {
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
			})
			return nil
		}, nil
	}
	return nil, fmt.Errorf("FLEETFLOW_WORKER_FAULT=%q: want kill:POINT or hold:POINT:PATH", spec)
}
