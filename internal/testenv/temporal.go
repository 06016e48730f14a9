package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/testsuite"

	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/internal/stack"
)

const temporalTopPrefix = "fleetflow-temporal-"

// temporalServer is one running dev server.
type temporalServer struct {
	srv      *testsuite.DevServer
	hostPort string
	dir      string    // holds the server's log; removed on stop
	watchdog *exec.Cmd // nil when the server process could not be identified
}

// startTemporal starts the dev server through the SDK's testsuite (in memory, headless, search attributes
// registered) on a free port of 127.0.0.1.
func startTemporal() (*temporalServer, error) {
	cli, err := TemporalCLI()
	if err != nil {
		return nil, err
	}
	removeOrphanedDirs(temporalTopPrefix)
	dir, err := newOwnedTempDir(temporalTopPrefix)
	if err != nil {
		return nil, fmt.Errorf("temporal temp dir: %w", err)
	}
	logPath := filepath.Join(dir, "temporal.log")
	logf, err := os.Create(logPath)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("temporal log: %w", err)
	}
	defer func() { _ = logf.Close() }()

	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := stack.FreePort()
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
		hostPort := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		srv, err := testsuite.StartDevServer(ctx, testsuite.DevServerOptions{
			ExistingPath: cli,
			LogLevel:     "error",
			ClientOptions: &client.Options{
				HostPort: hostPort,
				Logger:   tlog.NewStructuredLogger(quietLogger),
			},
			SearchAttributes: searchattr.Registration(),
			EnableUI:         false,
			// Files, not our stdout: a server outliving us must not hold `go test`'s output pipe open.
			Stdout: logf,
			Stderr: logf,
		})
		cancel()
		if err != nil {
			lastErr = fmt.Errorf("temporal dev server did not start: %w; log:\n%s", err, tail(logPath, 20))
			if strings.Contains(tail(logPath, 20), "address already in use") {
				continue
			}
			break
		}
		srv.Client().Close() // tests dial their own clients
		t := &temporalServer{srv: srv, hostPort: hostPort, dir: dir}
		t.watch(port)
		return t, nil
	}
	_ = os.RemoveAll(dir)
	return nil, lastErr
}

// watch starts the watchdog of the server process, which testsuite starts as a plain child: it would
// otherwise outlive a test binary that dies without stopping it.
func (t *temporalServer) watch(port int) {
	pid := childProcess(os.Getpid(), func(argv []string) bool {
		return slices.Contains(argv, "start-dev") && containsRun(argv, []string{"--port", strconv.Itoa(port)})
	})
	if pid != 0 {
		t.watchdog = startWatchdog(pid, "INT", t.dir)
	}
}

func (t *temporalServer) stop() {
	stopWatchdog(t.watchdog)
	_ = t.srv.Stop() // SIGINT and wait; the exit status of an interrupted server is not interesting
	_ = os.RemoveAll(t.dir)
}

// childProcess finds a child of parent whose command line matches, by reading /proc; 0 when there is none.
func childProcess(parent int, match func(argv []string) bool) int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, st := range stats {
		b, err := os.ReadFile(st)
		if err != nil {
			continue
		}
		line := string(b)
		i := strings.LastIndexByte(line, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(line[i+1:])
		if len(f) < 2 || f[1] != strconv.Itoa(parent) { // f[1] is field 4, the parent pid
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join(filepath.Dir(st), "cmdline"))
		if err != nil {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if match(argv) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(st)))
			return pid
		}
	}
	return 0
}

// containsRun reports whether want occurs in argv as a contiguous run.
func containsRun(argv, want []string) bool {
	for i := range argv {
		if i+len(want) <= len(argv) && slices.Equal(argv[i:i+len(want)], want) {
			return true
		}
	}
	return false
}
