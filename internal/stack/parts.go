package stack

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Numbered parts: the stack runs K NATS nodes (nats-1 … nats-K), N gateways (gateway-1 … gateway-N) and M
// workers (worker-1 … worker-M). `dev up` with other numbers grows or shrinks each kind to them, stopping
// the highest-numbered ones first, so that part i always has the addresses of number i (addresses.go).

// numberedParts lists the pid files present for prefix-1, prefix-2, …, in numeric order (prefix-10 after
// prefix-2).
func (s *Stack) numberedParts(prefix string) []string {
	matches, _ := filepath.Glob(filepath.Join(s.run, prefix+"-*.pid"))
	type part struct {
		n    int
		name string
	}
	var ps []part
	for _, m := range matches {
		name := strings.TrimSuffix(filepath.Base(m), ".pid")
		if n, err := strconv.Atoi(strings.TrimPrefix(name, prefix+"-")); err == nil && n > 0 {
			ps = append(ps, part{n, name})
		}
	}
	slices.SortFunc(ps, func(a, b part) int { return a.n - b.n })
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.name
	}
	return out
}

func partName(prefix string, i int) string { return prefix + "-" + strconv.Itoa(i) }

// partNumber is i of prefix-i, 0 when name is not of that form.
func partNumber(prefix, name string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(name, prefix+"-"))
	if err != nil || !strings.HasPrefix(name, prefix+"-") || n <= 0 {
		return 0
	}
	return n
}

// runningCount counts the live parts of prefix, removing stale pid files, and returns the highest number
// among them.
func (s *Stack) runningCount(prefix string) (running, highest int) {
	for _, name := range s.numberedParts(prefix) {
		p, err := ReadPIDFile(s.pidPath(name))
		if err == nil && p.Alive() {
			running++
			highest = max(highest, partNumber(prefix, name))
		} else if err == nil {
			_ = os.Remove(s.pidPath(name))
		}
	}
	return running, highest
}

// wanted is how many parts of a kind Up keeps: the number asked for, else as many as run now, at least one.
func wanted(asked, running int) int {
	if asked > 0 {
		return asked
	}
	return max(1, running)
}

// shrink stops the parts of prefix numbered above want, highest first, saying why (flag names the option).
func (s *Stack) shrink(prefix string, want, highest int, flag string) error {
	for i := highest; i > want; i-- {
		name := partName(prefix, i)
		p, _ := ReadPIDFile(s.pidPath(name))
		if !p.Alive() {
			continue
		}
		if err := stopProcess(p, syscall.SIGTERM, 30*time.Second); err != nil {
			return partErr(name, "stop: %v", err)
		}
		_ = os.Remove(s.pidPath(name))
		s.say("%-9s stopped (pid %d; %s %d)", name, p.PID, flag, want)
	}
	return nil
}

// adoptLegacyGateway renames the pid file of a gateway started by a fleetflow from before numbered gateways
// (.fleetflow/run/gateway.pid) to gateway-1's, whose addresses it has, so that it is counted, shown and
// stopped like the others. Called with the lock held.
func (s *Stack) adoptLegacyGateway() {
	legacy := s.pidPath(PartGateway)
	if _, err := os.Stat(legacy); err != nil {
		return
	}
	if _, err := os.Stat(s.pidPath(gatewayName(1))); err == nil {
		return
	}
	_ = os.Rename(legacy, s.pidPath(gatewayName(1)))
}
