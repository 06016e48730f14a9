package stack

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	// The command name may hold spaces and parentheses; fields are counted from the last ')'.
	line := "4242 (we(ird) name)) S 1 4242 4242 0 -1 4194560 123 0 0 0 1 2 0 0 20 0 3 0 987654 1000 100 18446744073709551615\n"
	st, err := parseProcStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if st.state != 'S' || st.pgrp != 4242 || st.start != 987654 {
		t.Fatalf("got %+v, want state S, pgrp 4242, start 987654", st)
	}
	for _, bad := range []string{"", "12 (x", "12 (x) S 1 2"} {
		if _, err := parseProcStat(bad); err == nil {
			t.Errorf("parseProcStat(%q) succeeded", bad)
		}
	}
}

func TestPIDFileRoundTripAndAlive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.pid")
	if p, err := ReadPIDFile(path); p != nil || err != nil {
		t.Fatalf("missing file: got %v, %v; want nil, nil", p, err)
	}
	me := &PIDFile{PID: os.Getpid(), Start: processStart(os.Getpid()), Exe: "/bin/x", Addr: "127.0.0.1:1", Started: time.Now().UTC().Truncate(time.Second)}
	if err := WritePIDFile(path, me); err != nil {
		t.Fatal(err)
	}
	got, err := ReadPIDFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if *got != *me {
		t.Fatalf("round trip: got %+v, want %+v", got, me)
	}
	if !got.Alive() {
		t.Fatal("our own process is not alive")
	}
	// Same pid, other start time: a reused pid must not count as ours.
	reused := *got
	reused.Start++
	if reused.Alive() {
		t.Fatal("a pid with another start time counts as alive")
	}
	var nilFile *PIDFile
	if nilFile.Alive() {
		t.Fatal("nil pid file is alive")
	}

	if err := os.WriteFile(path, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadPIDFile(path); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("damaged file: got %v", err)
	}
}

func TestAliveAfterExit(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	p := &PIDFile{PID: cmd.Process.Pid}
	if p.Alive() {
		t.Fatal("an exited and reaped process is alive")
	}
}

func TestStopProcessStopsTheGroup(t *testing.T) {
	// A session leader with a child of its own, like a part started by launch: stopping must end both.
	cmd := exec.Command("/bin/sh", "-c", "sleep 300 & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p := &PIDFile{PID: cmd.Process.Pid, Start: processStart(cmd.Process.Pid)}
	if err := stopProcess(p, syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("process still running after stopProcess")
	}
	// The group is gone: signalling it fails.
	if err := syscall.Kill(-p.PID, 0); err == nil {
		t.Fatal("process group still has members")
	}
}

func TestPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if !PortInUse(addr) {
		t.Fatalf("%s is listened on but not reported in use", addr)
	}
	if !Reachable(addr, time.Second) {
		t.Fatalf("%s is not reachable", addr)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if !hasListener(port) {
		t.Fatalf("no listener found on %d in /proc/net/tcp", port)
	}
	if msg := portInUseMessage(port, "X_URL"); msg != fmt.Sprintf("port %d is in use by another process; stop it or set X_URL", port) {
		t.Fatalf("message for a listener: %s", msg)
	}
	_ = l.Close()
	if PortInUse(addr) {
		t.Fatalf("%s reported in use after close", addr)
	}
	if Reachable(addr, time.Second) {
		t.Fatalf("%s reachable after close", addr)
	}
	if hasListener(port) {
		t.Fatalf("listener on %d after close", port)
	}
	free, err := FreePort()
	if err != nil || free <= 0 {
		t.Fatalf("FreePort: %d, %v", free, err)
	}
}

func TestFindRoot(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "go.mod"), []byte("module x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	deep := filepath.Join(root, "a", "b", "c")
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{root, deep} {
		got, err := FindRoot(dir)
		if err != nil || got != root {
			t.Errorf("FindRoot(%s) = %q, %v; want %q", dir, got, err, root)
		}
	}
	// The real checkout: this package lives two levels below it.
	wd, _ := os.Getwd()
	got, err := FindRoot(wd)
	if err != nil || got != filepath.Dir(filepath.Dir(wd)) {
		t.Errorf("FindRoot(%s) = %q, %v", wd, got, err)
	}
}

func TestFindRootFailsOutsideAModule(t *testing.T) {
	if _, err := FindRoot("/"); err == nil {
		t.Fatal("FindRoot(/) succeeded")
	}
}

func TestAddresses(t *testing.T) {
	for in, want := range map[string]string{
		"tcp://127.0.0.1:1883": "127.0.0.1:1883",
		"mqtt://localhost":     "localhost:1883",
		"tcp://[::1]:11883":    "[::1]:11883",
	} {
		if got, err := mqttAddr(in); err != nil || got != want {
			t.Errorf("mqttAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := mqttAddr("127.0.0.1:1883"); err == nil {
		t.Error("mqttAddr accepted a URL without scheme")
	}
	for in, want := range map[string]string{
		"postgres://fleetflow@127.0.0.1:55432/fleetflow?sslmode=disable": "127.0.0.1:55432",
		"postgres://u:p@db.example.com/x":                                "db.example.com:5432",
	} {
		if got, err := dbAddr(in); err != nil || got != want {
			t.Errorf("dbAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for host, want := range map[string]bool{"127.0.0.1": true, "127.0.0.2": true, "::1": true, "localhost": true, "10.0.0.1": false, "db.example.com": false} {
		if IsLoopback(host) != want {
			t.Errorf("IsLoopback(%q) = %v", host, !want)
		}
	}
}

func TestWorkerPartsNumericOrder(t *testing.T) {
	s, err := New(Options{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(s.run, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"worker-10", "worker-2", "worker-1", "worker-x", "gateway"} {
		if err := os.WriteFile(s.pidPath(name), []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got := strings.Join(s.workerParts(), ",")
	if got != "worker-1,worker-2,worker-10" {
		t.Fatalf("workerParts = %s", got)
	}
}

func TestLastLines(t *testing.T) {
	got := lastLines([]byte("a\n\nb\nc\n\n"), 2)
	if strings.Join(got, "|") != "b|c" {
		t.Fatalf("lastLines = %q", got)
	}
	if indent(nil) == "" {
		t.Fatal("indent of nothing should say the log is empty")
	}
}

func TestFallbackBaseIsPerCheckout(t *testing.T) {
	a, b := fallbackBase("/src/one"), fallbackBase("/src/two")
	if a == b || fallbackBase("/src/one") != a {
		t.Fatalf("fallbackBase not a stable function of the checkout: %s %s", a, b)
	}
}

func TestMetricsAddresses(t *testing.T) {
	t.Setenv("FLEETFLOW_WORKER_METRICS", "127.0.0.1:1") // one address cannot serve several workers
	if got := workerMetrics(2); got != "127.0.0.1:9466" {
		t.Errorf("workerMetrics(2) = %q", got)
	}
	t.Setenv("FLEETFLOW_WORKER_METRICS", "")
	if got := workerMetrics(1); got != "" {
		t.Errorf("workerMetrics(1) with FLEETFLOW_WORKER_METRICS= is %q, want off", got)
	}
	t.Setenv("FLEETFLOW_GATEWAY_METRICS", "127.0.0.1:19464")
	if got := gatewayMetrics(); got != "127.0.0.1:19464" {
		t.Errorf("gatewayMetrics() = %q", got)
	}
	t.Setenv("FLEETFLOW_GATEWAY_METRICS", "")
	if got := gatewayMetrics(); got != "" {
		t.Errorf("gatewayMetrics() with FLEETFLOW_GATEWAY_METRICS= is %q, want off", got)
	}
	if got := startedMetrics("127.0.0.1:9465"); got != ", metrics http://127.0.0.1:9465/metrics" {
		t.Errorf("startedMetrics = %q", got)
	}
}
