// Command probe is the health check of fleetflow's container images (deploy/docker): the images are
// distroless, with no shell, curl or wget, so Docker's HEALTHCHECK and compose's healthcheck run this static
// binary instead. Kubernetes does not need it: its probes are httpGet and tcpSocket.
//
// Each argument is a target, and every target must answer within the timeout for the exit status to be 0:
// http://host:port/path succeeds on a 2xx status; tcp://host:port on an accepted connection.
//
//	probe http://127.0.0.1:9465/readyz
//	probe http://127.0.0.1:9464/metrics tcp://127.0.0.1:8883
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"
)

func main() {
	timeout := flag.Duration("timeout", 3*time.Second, "how long each target may take to answer")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: probe [-timeout 3s] http://host:port/path|tcp://host:port ...")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	failed := false
	for _, target := range flag.Args() {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		err := check(ctx, target)
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "probe %s: %v\n", target, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

// check probes one target until ctx ends.
func check(ctx context.Context, target string) error {
	u, err := url.Parse(target)
	if err != nil {
		return fmt.Errorf("parse target: %w", err)
	}
	switch u.Scheme {
	case "http":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err != nil {
			return fmt.Errorf("build request: %w", err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("get: %w", err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode < 200 || resp.StatusCode > 299 {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	case "tcp":
		if u.Host == "" {
			return errors.New("tcp target needs host:port")
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		return conn.Close()
	default:
		return fmt.Errorf("scheme %q: want http or tcp", u.Scheme)
	}
}
