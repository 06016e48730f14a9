package stack

import (
	"context"
	"os/exec"
	"strings"
	"time"
)

// partNATS is the prefix of the NATS nodes' part names: nats-1, nats-2, …
const partNATS = "nats"

func natsName(j int) string { return partName(partNATS, j) }

// upNATS makes the NATS cluster available that gateways, workers and the CLI reach devices through
// (docs/architecture.md, "Several gateways"): the cluster FLEETFLOW_NATS_URL names when it answers, else
// opts.NATSNodes `fleetflow nats-node` processes routed to each other (0: as many as run, at least one). It
// records the client URLs the other parts are given.
func (s *Stack) upNATS(ctx context.Context) error {
	if s.opts.ExplicitNATS {
		if reachable, addr := s.externalNATS(); reachable {
			s.natsClientURLs = natsURLs(s.opts.NATSURL)
			s.say("%-9s %-22s external (FLEETFLOW_NATS_URL)%s", partNATS, addr, ignored("--nats-nodes", s.opts.NATSNodes))
			return nil
		}
		for _, u := range natsURLs(s.opts.NATSURL) {
			hp, err := natsHostPort(u)
			if err != nil {
				return partErr(partNATS, "%v", err)
			}
			if host, _, err := splitPort(hp); err != nil || !IsLoopback(host) {
				return partErr(partNATS, "FLEETFLOW_NATS_URL points at %s, which does not answer; start that cluster or unset FLEETFLOW_NATS_URL to run local NATS nodes", hp)
			}
		}
	}
	running, highest := s.runningCount(partNATS)
	want := wanted(s.opts.NATSNodes, running)
	if err := s.shrink(partNATS, want, highest, "--nats-nodes"); err != nil {
		return err
	}
	// Every node gets the route URLs of all K nodes (a node ignores its own), so nodes may start in any order
	// and a node added later joins the running ones, which need no restart.
	routes := make([]string, want)
	s.natsClientURLs = make([]string, want)
	for j := 1; j <= want; j++ {
		client, cluster, err := s.natsAddrs(j)
		if err != nil {
			return err
		}
		routes[j-1] = "nats://" + cluster
		s.natsClientURLs[j-1] = "nats://" + client
	}
	var started []*launched
	var names []string
	for j := 1; j <= want; j++ {
		name := natsName(j)
		if running, err := s.alreadyRunning(name, ""); running || err != nil {
			if err != nil {
				return err
			}
			continue
		}
		client, cluster, _ := s.natsAddrs(j)
		for _, addr := range []struct{ addr, env string }{{client, "FLEETFLOW_NATS_URL"}, {cluster, "FLEETFLOW_NATS_CLUSTER_LISTEN"}} {
			_, port, _ := splitPort(addr.addr)
			if PortInUse(addr.addr) {
				return partErr(name, "%s", portInUseMessage(port, addr.env))
			}
		}
		if !fileExists(s.opts.NATSBin) {
			return partErr(name, "%s not found; run `make build`", s.rel(s.opts.NATSBin))
		}
		env, err := s.childEnv()
		if err != nil {
			return err
		}
		cmd := exec.Command(s.opts.NATSBin, "nats-node", "--name", name, "--listen", client,
			"--cluster-listen", cluster, "--routes", strings.Join(routes, ","))
		cmd.Env = env
		l, err := s.launch(name, cmd, client, "")
		if err != nil {
			return err
		}
		l.pid.Cluster = cluster
		if err := WritePIDFile(s.pidPath(name), l.pid); err != nil {
			return s.fail(name, l, err.Error())
		}
		started = append(started, l)
		names = append(names, name)
	}
	for i, l := range started {
		if err := s.waitListening(ctx, names[i], l, time.Minute, l.pid.Addr, l.pid.Cluster); err != nil {
			return err
		}
		s.say("%-9s %-22s started (pid %d), routes on %s", names[i], l.pid.Addr, l.pid.PID, l.pid.Cluster)
	}
	return nil
}

// ignored is the note for a count flag that an external service makes moot.
func ignored(flag string, n int) string {
	if n <= 0 {
		return ""
	}
	return "; " + flag + " ignored"
}

// externalNATS reports whether a cluster FLEETFLOW_NATS_URL names answers, and which address did. A node
// of ours that listens there is not external: it is reported as running instead.
func (s *Stack) externalNATS() (bool, string) {
	ours := map[string]bool{}
	for _, name := range s.numberedParts(partNATS) {
		if p, _ := ReadPIDFile(s.pidPath(name)); p.Alive() {
			ours[p.Addr] = true
		}
	}
	for _, u := range natsURLs(s.opts.NATSURL) {
		hp, err := natsHostPort(u)
		if err == nil && !ours[hp] && Reachable(hp, 2*time.Second) {
			return true, hp
		}
	}
	return false, ""
}

// natsURLForChildren is the FLEETFLOW_NATS_URL of the gateways and workers: the cluster the user named, or
// every local node's client URL (a client fails over between them).
func (s *Stack) natsURLForChildren() string {
	if len(s.natsClientURLs) > 0 {
		return strings.Join(s.natsClientURLs, ",")
	}
	// Parts started without upNATS having run in this process (dev simulate): what runs now.
	var urls []string
	for _, name := range s.numberedParts(partNATS) {
		if p, _ := ReadPIDFile(s.pidPath(name)); p.Alive() {
			urls = append(urls, "nats://"+p.Addr)
		}
	}
	if len(urls) == 0 {
		return s.opts.NATSURL
	}
	return strings.Join(urls, ",")
}

// waitListening waits until every address answers, or the part exits, ctx ends or timeout passes.
func (s *Stack) waitListening(ctx context.Context, part string, l *launched, timeout time.Duration, addrs ...string) error {
	deadline := time.Now().Add(timeout)
	for {
		up := true
		for _, a := range addrs {
			if a != "" && !Reachable(a, 500*time.Millisecond) {
				up = false
				break
			}
		}
		if up {
			return nil
		}
		select {
		case <-l.exited:
			return s.fail(part, l, "exited during start-up")
		case <-ctx.Done():
			return s.fail(part, l, "interrupted")
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return s.fail(part, l, "did not listen on "+strings.Join(addrs, " and ")+" within "+timeout.String())
		}
	}
}
