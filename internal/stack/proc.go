package stack

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// PIDFile records a process the stack started. Besides the pid it keeps the process's start time (from
// /proc/<pid>/stat), so that `dev down` never signals an unrelated process that reused the pid after ours
// died.
type PIDFile struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"` // clock ticks after boot, field 22 of /proc/<pid>/stat
	Exe   string `json:"exe"`
	Addr  string `json:"addr,omitempty"`
	// TLSAddr is the gateway's MQTT-over-TLS address.
	TLSAddr string `json:"tls_addr,omitempty"`
	// Cluster is a NATS node's route listener.
	Cluster string `json:"cluster,omitempty"`
	// DataDir is where the part keeps its state (Postgres), so `dev down` can stop it without guessing.
	DataDir string    `json:"data_dir,omitempty"`
	Started time.Time `json:"started"`
	// Metrics is where the part serves Prometheus metrics, shown by `dev status`.
	Metrics string `json:"metrics,omitempty"`
}

// ReadPIDFile reads a pid file; a missing file is (nil, nil).
func ReadPIDFile(path string) (*PIDFile, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pid file: %w", err)
	}
	var p PIDFile
	if err := json.Unmarshal(b, &p); err != nil || p.PID <= 0 {
		return nil, fmt.Errorf("pid file %s is damaged; remove it if the process is gone", path)
	}
	return &p, nil
}

// WritePIDFile writes p atomically (temp file + rename), so a reader never sees half a file.
func WritePIDFile(path string, p *PIDFile) error {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	return nil
}

// Alive reports whether the process recorded in p still runs: the pid exists, is not a zombie, and started
// at the recorded time.
func (p *PIDFile) Alive() bool {
	if p == nil {
		return false
	}
	st, err := readProcStat(p.PID)
	if err != nil || st.state == 'Z' || st.state == 'X' {
		return false
	}
	return p.Start == 0 || st.start == p.Start
}

// procStat is the part of /proc/<pid>/stat the stack uses.
type procStat struct {
	state byte
	pgrp  int
	start uint64
}

func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(string(b))
}

// parseProcStat parses a /proc/<pid>/stat line. The command name (field 2) is in parentheses and may itself
// hold spaces and parentheses, so fields are counted from the last ')'.
func parseProcStat(line string) (procStat, error) {
	i := strings.LastIndexByte(line, ')')
	if i < 0 {
		return procStat{}, errors.New("malformed stat line")
	}
	f := strings.Fields(line[i+1:])
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 20 {
		return procStat{}, errors.New("short stat line")
	}
	pgrp, err := strconv.Atoi(f[5-3])
	if err != nil {
		return procStat{}, fmt.Errorf("stat pgrp: %w", err)
	}
	start, err := strconv.ParseUint(f[22-3], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("stat starttime: %w", err)
	}
	return procStat{state: f[0][0], pgrp: pgrp, start: start}, nil
}

// processStart returns the start time of a process, for its pid file.
func processStart(pid int) uint64 {
	st, err := readProcStat(pid)
	if err != nil {
		return 0
	}
	return st.start
}

// signalGroup signals the process group that p leads (parts are started with setsid, so the group is theirs
// alone), falling back to the process itself if it leads no group.
func signalGroup(p *PIDFile, sig syscall.Signal) error {
	if st, err := readProcStat(p.PID); err == nil && st.pgrp == p.PID {
		return syscall.Kill(-p.PID, sig)
	}
	return syscall.Kill(p.PID, sig)
}

// waitGone polls until p has exited or the timeout passes, and reports whether it exited.
func waitGone(p *PIDFile, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if !p.Alive() {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return !p.Alive()
}

// stopProcess asks p to stop with sig, waits up to grace, then kills its group.
func stopProcess(p *PIDFile, sig syscall.Signal, grace time.Duration) error {
	if !p.Alive() {
		return nil
	}
	st, err := readProcStat(p.PID)
	group := err == nil && st.pgrp == p.PID
	if err := signalGroup(p, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal pid %d: %w", p.PID, err)
	}
	if !waitGone(p, grace) {
		if err := signalGroup(p, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("kill pid %d: %w", p.PID, err)
		}
		if !waitGone(p, 5*time.Second) {
			return fmt.Errorf("pid %d survived SIGKILL", p.PID)
		}
	}
	if group {
		// A child forked while the signal was on its way was not signalled and outlives its leader; the group
		// id stays ours while any member lives, so finishing them off cannot hit an unrelated process.
		for deadline := time.Now().Add(5 * time.Second); syscall.Kill(-p.PID, 0) == nil; {
			_ = syscall.Kill(-p.PID, syscall.SIGKILL)
			if time.Now().After(deadline) {
				return fmt.Errorf("process group %d survived SIGKILL", p.PID)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}
