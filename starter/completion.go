package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/fleetflow/fleetflow/internal/registry"
)

// completionTimeout bounds a completion's registry read: a shell waits for it on every TAB, and an
// unreachable registry must cost a moment, not a hang.
const completionTimeout = 1500 * time.Millisecond

// completionLimit caps the candidates of one completion; the shell narrows them as the operator types.
const completionLimit = 200

// completeFrom returns a completion function that offers the registry values of kind, for the first
// maxArgs positional arguments (0: any number, e.g. `retire ID...`).
func completeFrom(g *globals, kind registry.Candidates, maxArgs int) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if maxArgs > 0 && len(args) >= maxArgs {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return registryCandidates(cmd.Context(), g, kind, toComplete), cobra.ShellCompDirectiveNoFileComp
	}
}

// completeFlagFrom is completeFrom for a flag's value.
func completeFlagFrom(g *globals, kind registry.Candidates) cobra.CompletionFunc {
	return completeFrom(g, kind, 0)
}

// registryCandidates reads completion candidates from the registry (read-only, with a short timeout). Any
// error yields no candidates and no output, since whatever a completion prints lands in the operator's shell.
func registryCandidates(ctx context.Context, g *globals, kind registry.Candidates, prefix string) []cobra.Completion {
	if ctx == nil {
		ctx = context.Background()
	}
	out, err := registry.Complete(ctx, g.cfg.DatabaseURL, kind, prefix, completionLimit, completionTimeout)
	if err != nil {
		return nil
	}
	return out
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
