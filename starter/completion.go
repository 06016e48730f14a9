package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
)

// completionTimeout bounds a completion's registry read: a shell waits for it on every TAB, and an
// unreachable registry must cost a moment, not a hang.
const completionTimeout = 1500 * time.Millisecond

// completionLimit caps the candidates of one completion; the shell narrows them as the operator types.
const completionLimit = 200

// The registry reads of the completions: ids (or versions) that start with what the operator typed, in
// order. Parameterized; LIKE's wildcards in the prefix are escaped so that they match themselves.
const (
	completeDevicesSQL  = `SELECT id FROM devices WHERE status <> 'retired' AND id LIKE $1 ESCAPE '\' ORDER BY id LIMIT $2`
	completeJobsSQL     = `SELECT id FROM jobs WHERE id LIKE $1 ESCAPE '\' ORDER BY created_at DESC LIMIT $2`
	completeRolloutsSQL = `SELECT id FROM rollouts WHERE id LIKE $1 ESCAPE '\' ORDER BY created_at DESC LIMIT $2`
	completeFirmwareSQL = `SELECT version FROM firmware WHERE version LIKE $1 ESCAPE '\' ORDER BY created_at DESC LIMIT $2`
)

// completeFrom returns a completion function that offers the registry values sql selects, for the first
// maxArgs positional arguments (0: any number, e.g. `retire ID...`).
func completeFrom(g *globals, sql string, maxArgs int) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if maxArgs > 0 && len(args) >= maxArgs {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return registryCandidates(cmd.Context(), g, sql, toComplete), cobra.ShellCompDirectiveNoFileComp
	}
}

// completeFlagFrom is completeFrom for a flag's value.
func completeFlagFrom(g *globals, sql string) cobra.CompletionFunc {
	return completeFrom(g, sql, 0)
}

// registryCandidates reads completion candidates from the registry. It connects on its own, read-only
// (default_transaction_read_only) and without the migrations registry.Open runs, with a short timeout; any
// error yields no candidates and no output, since whatever a completion prints lands in the operator's shell.
func registryCandidates(ctx context.Context, g *globals, sql, prefix string) []cobra.Completion {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, completionTimeout)
	defer cancel()
	cfg, err := pgxpool.ParseConfig(g.cfg.DatabaseURL)
	if err != nil {
		return nil
	}
	cfg.MaxConns = 1
	cfg.ConnConfig.ConnectTimeout = completionTimeout
	cfg.ConnConfig.RuntimeParams["default_transaction_read_only"] = "on"
	cfg.ConnConfig.RuntimeParams["application_name"] = "fleetflow-completion"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil
	}
	defer pool.Close()
	rows, err := pool.Query(ctx, sql, likePrefix(prefix), completionLimit)
	if err != nil {
		return nil
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil
	}
	return out
}

// likePrefix is a LIKE pattern matching the strings that start with p.
func likePrefix(p string) string {
	esc := make([]rune, 0, len(p)+1)
	for _, r := range p {
		if r == '\\' || r == '%' || r == '_' {
			esc = append(esc, '\\')
		}
		esc = append(esc, r)
	}
	return string(esc) + "%"
}

// describeCompletion adds the operator's examples to cobra's completion command and its per-shell
// subcommands (cobra gives them a Long description but no examples).
func describeCompletion(c *cobra.Command) {
	c.Example = `  source <(fleetflow completion bash)                               # this shell
  fleetflow completion bash > /etc/bash_completion.d/fleetflow      # every new shell
  fleetflow completion zsh > "${fpath[1]}/_fleetflow"
  fleetflow completion fish > ~/.config/fish/completions/fleetflow.fish
  fleetflow completion powershell | Out-String | Invoke-Expression`
	files := map[string]string{
		"bash":       "source <(fleetflow completion bash)",
		"zsh":        `fleetflow completion zsh > "${fpath[1]}/_fleetflow"`,
		"fish":       "fleetflow completion fish | source",
		"powershell": "fleetflow completion powershell | Out-String | Invoke-Expression",
	}
	for _, sub := range c.Commands() {
		if ex, ok := files[sub.Name()]; ok {
			sub.Example = "  " + ex
		} else {
			sub.Example = fmt.Sprintf("  fleetflow completion %s", sub.Name())
		}
	}
}
