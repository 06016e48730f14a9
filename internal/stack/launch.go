package stack

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// launched is a part this run of `dev up` started.
type launched struct {
	pid *PIDFile
	// exited is closed when the process ends; err then holds its exit status.
	exited chan struct{}
	err    error
	// logOffset is where this start's output begins in the log, so failures show only this attempt.
	logOffset int64
	log       string
}

// launch starts cmd detached from our terminal (new session and process group), with stdin from /dev/null
// and stdout/stderr appended to the part's log, and records it in the part's pid file. The caller waits for
// readiness.
func (s *Stack) launch(part string, cmd *exec.Cmd, addr, dataDir string) (*launched, error) {
	logPath := s.logPath(part)
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: open log: %w", part, err)
	}
	defer func() { _ = f.Close() }() // the child has its own copy of the descriptor
	off, _ := f.Seek(0, io.SeekEnd)
	fmt.Fprintf(f, "----- %s fleetflow dev up: starting %s: %s\n", time.Now().Format(time.RFC3339), part, strings.Join(cmd.Args, " "))

	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = f, f
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	if err := cmd.Start(); err != nil {
		return nil, &PartError{Part: part, Msg: fmt.Sprintf("cannot start %s: %v", cmd.Path, err)}
	}
	l := &launched{exited: make(chan struct{}), logOffset: off, log: logPath}
	go func() {
		l.err = cmd.Wait()
		close(l.exited)
	}()
	l.pid = &PIDFile{
		PID:     cmd.Process.Pid,
		Start:   processStart(cmd.Process.Pid),
		Exe:     cmd.Path,
		Addr:    addr,
		DataDir: dataDir,
		Started: time.Now().UTC().Truncate(time.Second),
	}
	if err := WritePIDFile(s.pidPath(part), l.pid); err != nil {
		_ = stopProcess(l.pid, syscall.SIGKILL, 0)
		return nil, fmt.Errorf("%s: %w", part, err)
	}
	return l, nil
}

// fail stops a launch that did not become ready, removes its pid file and returns the error to show: the
// one-line reason followed by the last lines of this attempt's log.
func (s *Stack) fail(part string, l *launched, reason string) error {
	select {
	case <-l.exited:
		if l.err != nil {
			reason += " (" + l.err.Error() + ")"
		}
	default:
		_ = stopProcess(l.pid, syscall.SIGTERM, 5*time.Second)
	}
	_ = os.Remove(s.pidPath(part))
	return &PartError{Part: part, Msg: reason + "; last lines of " + s.rel(l.log) + ":", Log: tailFrom(l.log, l.logOffset, 15)}
}

// tailFrom returns the last n lines of the file written after offset, indented for display under an error.
func tailFrom(path string, offset int64, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "    (no log: " + err.Error() + ")"
	}
	defer func() { _ = f.Close() }()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	b, err := io.ReadAll(io.LimitReader(f, 4<<20))
	if err != nil {
		return ""
	}
	return indent(lastLines(b, n))
}

// lastLines returns at most the last n non-empty lines of b.
func lastLines(b []byte, n int) []string {
	var out []string
	for _, line := range bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n")) {
		if len(bytes.TrimSpace(line)) > 0 {
			out = append(out, string(line))
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out
}

func indent(lines []string) string {
	if len(lines) == 0 {
		return "    (log is empty)"
	}
	return "    " + strings.Join(lines, "\n    ")
}

// logHasFatal reports whether this attempt's log shows a crash or fatal error, for parts whose only other
// sign of life is that the process still runs.
func logHasFatal(path string, offset int64) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer func() { _ = f.Close() }()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return false
	}
	b, _ := io.ReadAll(io.LimitReader(f, 4<<20))
	for _, marker := range [][]byte{[]byte("panic: "), []byte("fatal error: "), []byte("level=FATAL"), []byte(`"level":"FATAL"`)} {
		if bytes.Contains(b, marker) {
			return true
		}
	}
	return false
}

// fileExists reports whether path is an existing regular file.
func fileExists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular()
}
