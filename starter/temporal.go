package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"
	"golang.org/x/term"

	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/workflows"
)

// dialTemporal connects to the Temporal frontend with the CLI's logger (quiet unless -v). TLS, mTLS and API
// keys come from the temporal.toml profile and TEMPORAL_* variables, as for the temporal CLI; address and
// namespace from the flags over them (config.TemporalClientOptions).
func dialTemporal(g *globals) (client.Client, error) {
	opts, err := config.TemporalClientOptions(g.cfg.TemporalAddress, g.cfg.Namespace)
	if err != nil {
		return nil, err
	}
	opts.Logger = tlog.NewStructuredLogger(slog.Default())
	c, err := client.Dial(opts)
	if err != nil {
		return nil, fmt.Errorf("connect to temporal at %s: %w (is the stack up? run `make up` or set TEMPORAL_ADDRESS)", g.cfg.TemporalAddress, err)
	}
	return c, nil
}

// workflowURL links to a workflow in the Temporal UI.
func workflowURL(g *globals, id string) string {
	return fmt.Sprintf("%s/namespaces/%s/workflows/%s", strings.TrimRight(g.cfg.TemporalUI, "/"),
		url.PathEscape(g.cfg.Namespace), url.PathEscape(id))
}

// showProgress draws provisioning's progress bar on stderr until stop is called.
func showProgress(ctx context.Context, c client.Client, id string) (stop func()) {
	return pollProgress(ctx, c, id, func(v interface{ Get(any) error }) string {
		var p workflows.ProvisionProgress
		if v.Get(&p) != nil {
			return ""
		}
		return progressLine(p)
	})
}

// liveProgress returns a running operation's progress query result, or nil when the workflow has ended
// (or Temporal is unreachable): status commands then show what the registry recorded.
func liveProgress[T any](ctx context.Context, g *globals, id string) *T {
	c, err := dialTemporal(g)
	if err != nil {
		return nil
	}
	defer c.Close()
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v, err := c.QueryWorkflow(qctx, id, "", workflows.QueryProgress)
	if err != nil {
		return nil
	}
	var p T
	if v.Get(&p) != nil {
		return nil
	}
	return &p
}

func progressLine(p workflows.ProvisionProgress) string {
	const width = 30
	th := numfmt.Thousands
	done, total := p.Counts.Total(), p.Rows
	label := fmt.Sprintf("%s / %s rows", th(done), th(total))
	if p.Phase == "awaiting-connect" && p.Connect != nil {
		done, total = p.Connect.Reported, p.Connect.Created
		label = fmt.Sprintf("%s / %s devices reported", th(done), th(total))
	}
	frac := 1.0
	if total > 0 {
		frac = float64(done) / float64(total)
	}
	n := int(frac * width)
	return fmt.Sprintf("%-16s [%s%s] %3.0f%% %s", p.Phase, strings.Repeat("█", n), strings.Repeat("░", width-n), frac*100, label)
}

// isTerminal reports whether f is a terminal, so progress redraws in place there and prints plain lines in
// logs. It asks the terminal driver (golang.org/x/term): a character device such as /dev/null is not one.
func isTerminal(f *os.File) bool {
	return term.IsTerminal(int(f.Fd()))
}

// pollProgress draws line(progress query result) on stderr until stop is called. On a terminal the line
// redraws in place; otherwise a line is printed every few seconds, when it changed, for logs.
func pollProgress(ctx context.Context, c client.Client, id string, line func(v interface{ Get(any) error }) string) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	tty := isTerminal(os.Stderr)
	go func() {
		defer close(done)
		every := 300 * time.Millisecond
		if !tty {
			every = 3 * time.Second
		}
		t := time.NewTicker(every)
		defer t.Stop()
		last := ""
		for {
			select {
			case <-ctx.Done():
				if tty && last != "" {
					fmt.Fprintln(os.Stderr)
				}
				return
			case <-t.C:
			}
			v, err := c.QueryWorkflow(ctx, id, "", workflows.QueryProgress)
			if err != nil {
				continue
			}
			l := line(v)
			if l == "" {
				continue
			}
			if tty {
				fmt.Fprintf(os.Stderr, "\r%s\x1b[K", l)
			} else if l != last {
				fmt.Fprintln(os.Stderr, l)
			}
			last = l
		}
	}()
	return func() { cancel(); <-done }
}

// bar renders "phase [████░░░] 40% label".
func bar(phase string, done, total int64, label string) string {
	const width = 30
	frac := 1.0
	if total > 0 {
		frac = min(1, float64(done)/float64(total))
	}
	n := int(frac * width)
	return fmt.Sprintf("%-16s [%s%s] %3.0f%% %s", phase, strings.Repeat("█", n), strings.Repeat("░", width-n), frac*100, label)
}
