package stack

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// FindRoot walks up from dir to the directory holding go.mod, so that `fleetflow dev` and the tests find
// bin/ and .fleetflow/ from any subdirectory of the checkout.
func FindRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for d := dir; ; {
		if st, err := os.Stat(filepath.Join(d, "go.mod")); err == nil && !st.IsDir() {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("no go.mod in %s or any parent; run this inside the fleetflow checkout", dir)
		}
		d = parent
	}
}

// PortInUse reports whether something already listens on addr (host:port). It tries to bind the address
// itself, which also catches a listener on the wildcard address that a connect test to 127.0.0.1 might miss
// on some systems.
func PortInUse(addr string) bool {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return true
	}
	_ = l.Close()
	return false
}

// portInUseMessage words a "port in use" error: by a listener (another server: stop it), or only by a
// client connection that the kernel gave this port from its ephemeral range (wait, or move the port).
func portInUseMessage(port int, envVar string) string {
	if !hasListener(port) && inEphemeralRange(port) {
		return fmt.Sprintf("port %d is taken by a client connection of another process (it lies in the ephemeral port range); retry in a minute or set %s to a port below 32768", port, envVar)
	}
	return fmt.Sprintf("port %d is in use by another process; stop it or set %s", port, envVar)
}

// hasListener reports whether any TCP socket listens on port, from /proc/net/tcp and tcp6 (state 0A).
func hasListener(port int) bool {
	want := fmt.Sprintf(":%04X", port)
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) > 3 && strings.HasSuffix(fields[1], want) && fields[3] == "0A" {
				return true
			}
		}
	}
	return false
}

// inEphemeralRange reports whether the kernel may hand port to outgoing connections.
func inEphemeralRange(port int) bool {
	lo, hi := 32768, 60999
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			lo, _ = strconv.Atoi(f[0])
			hi, _ = strconv.Atoi(f[1])
		}
	}
	return port >= lo && port <= hi
}

// FreePortRun returns the first of n TCP ports on 127.0.0.1, step apart (port, port+step, …), that nothing
// listens on right now and that this process has handed out neither by FreePort nor by an earlier run: a
// stack's gateways and NATS nodes take consecutive ports, and two runs chosen for one test must not overlap
// (one did: gateway 3's TLS port was NATS node 1's).
func FreePortRun(n, step int) (int, error) {
	freePorts.Lock()
	defer freePorts.Unlock()
	lo, hi := freePortRange()
	for range 500 {
		port := lo + rand.IntN(hi-lo)
		if port+(n-1)*step >= hi {
			continue
		}
		free := true
		for i := 0; i < n && free; i++ {
			p := port + i*step
			free = !freePorts.given[p] && !PortInUse(fmt.Sprintf("127.0.0.1:%d", p))
		}
		if !free {
			continue
		}
		for i := 0; i < n; i++ {
			freePorts.given[port+i*step] = true
		}
		return port, nil
	}
	return 0, fmt.Errorf("no run of %d free ports %d apart below %d", n, step, hi)
}

// Reachable reports whether a TCP connection to addr succeeds within timeout.
func Reachable(addr string, timeout time.Duration) bool {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on right now. Another process may take it
// before the caller binds it; callers that can retry on "address in use" should.
//
// The port is chosen below the kernel's ephemeral range, where no client socket and no server that binds
// port 0 (the Temporal dev server's internal services, for one) can take it meanwhile, and a port is never
// handed out twice by one process: tests that pick several ports before starting anything got the same one
// twice when each pick was a bind of port 0 that was closed at once.
func FreePort() (int, error) {
	freePorts.Lock()
	defer freePorts.Unlock()
	lo, hi := freePortRange()
	for range 200 {
		port := lo + rand.IntN(hi-lo)
		if freePorts.given[port] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		_ = l.Close()
		freePorts.given[port] = true
		return port, nil
	}
	// Crowded below the ephemeral range: let the kernel choose.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// freePorts remembers the ports FreePort has handed out in this process.
var freePorts = struct {
	sync.Mutex
	given map[int]bool
}{given: map[int]bool{}}

// freePortRange is where FreePort looks: from 20000 up to the start of the ephemeral range (Linux's
// ip_local_port_range, 32768 when it cannot be read).
func freePortRange() (lo, hi int) {
	lo, hi = 20000, 32768
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	if f := strings.Fields(string(b)); len(f) == 2 {
		if start, err := strconv.Atoi(f[0]); err == nil && start > lo+1000 {
			hi = start
		}
	}
	return lo, hi
}

// IsLoopback reports whether host names this machine only (127.0.0.0/8, ::1, localhost), the only addresses
// the stack ever starts services on.
func IsLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// splitPort splits host:port and checks the port.
func splitPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port <= 0 || port > 65535 {
		return "", 0, errors.New("bad port in " + addr)
	}
	return host, port, nil
}
