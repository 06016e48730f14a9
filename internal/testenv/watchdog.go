package testenv

import (
	"os"
	"os/exec"
	"strconv"
)

// watchdogScript waits for the test binary ($0) to exit, then stops the server ($1) with signal $2 (killing it
// if it has not exited after ten seconds) and removes its directory ($3). It ignores the signals a Ctrl-C or a
// CI timeout sends to the whole process group, so it outlives the test binary to do its job.
const watchdogScript = `trap '' INT TERM HUP
while kill -0 "$0" 2>/dev/null; do sleep 1; done
kill -0 "$1" 2>/dev/null && kill -"$2" "$1" 2>/dev/null
i=0; while kill -0 "$1" 2>/dev/null && [ $i -lt 20 ]; do sleep 0.5; i=$((i+1)); done
kill -0 "$1" 2>/dev/null && kill -KILL "$1" 2>/dev/null
rm -rf "$3"`

// startWatchdog makes sure a server we started, and its files, go away even when the test binary dies without
// running its cleanups (a test timeout, a kill, a shared server when the package has no TestMain). The normal
// stop path kills the watchdog first, so it never signals anything after we have stopped the server
// ourselves. It returns nil when the watchdog could not start; the server then relies on its own
// parent-death signal, if any, and its directory on removeOrphanedDirs.
func startWatchdog(server int, signal, dir string) *exec.Cmd {
	cmd := exec.Command("/bin/sh", "-c", watchdogScript, strconv.Itoa(os.Getpid()), strconv.Itoa(server), signal, dir)
	if cmd.Start() != nil {
		return nil
	}
	return cmd
}

// stopWatchdog ends a watchdog before a normal stop.
func stopWatchdog(cmd *exec.Cmd) {
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}
