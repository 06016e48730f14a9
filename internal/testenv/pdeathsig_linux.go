package testenv

import (
	"os/exec"
	"syscall"
)

// setParentDeathSignal makes the kernel send sig to the child when the test binary dies, so a killed test
// run leaves no server behind.
func setParentDeathSignal(cmd *exec.Cmd, sig syscall.Signal) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = sig
}
