//go:build !linux

package testenv

import (
	"os/exec"
	"syscall"
)

// setParentDeathSignal is Linux-only; elsewhere a killed test run may leave its server running.
func setParentDeathSignal(*exec.Cmd, syscall.Signal) {}
