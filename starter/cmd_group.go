package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/registry"
)

// groupShowMembers is how many members `group show` lists.
const groupShowMembers = 20

func newGroupCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "group", Short: "Device groups: a named query (dynamic) or a list of devices (static), to target operations with --group",
		Long: `A group names a set of devices once, so that jobs, rollouts and retirement target it with --group NAME
instead of repeating a query. A dynamic group is a twin query, evaluated whenever the group is used (it is
always current: devices that join or are retagged are in it at its next use); a static group is a list of
device ids kept with group add and group remove. In any query, IN_GROUP('name') selects a group's members.`,
		Example: `  fleetflow group create eu-canary --query "SELECT * FROM devices WHERE tags.region = 'eu' AND tags.ring = 'canary'"
  fleetflow group create bench --static && fleetflow group add bench sensor-0001 sensor-0002
  fleetflow job start --group eu-canary --set-desired '{"telemetryInterval": 30}'
  fleetflow devices query "SELECT * FROM devices WHERE IN_GROUP('eu-canary') AND connectionState = 'connected'"`,
	}
	var q string
	var static bool
	var createOut *output
	create := &cobra.Command{
		Use:   "create NAME (--query QUERY | --static)",
		Short: "Create a dynamic group (its members are what QUERY selects) or an empty static group",
		Long: `Create a group. With --query it is dynamic: its members are the devices the query selects whenever the
group is used (the query is a plain SELECT * FROM devices WHERE …, and may name other groups with
IN_GROUP). With --static it starts empty; group add and group remove keep its list. Names are 1-64 of
a-z, 0-9, '.', '_' and '-'.`,
		Example: `  fleetflow group create eu-canary --query "SELECT * FROM devices WHERE tags.region = 'eu' AND tags.ring = 'canary'"
  fleetflow group create bench --static`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (q == "") == !static {
				return usagef("give either --query QUERY (a dynamic group) or --static (a list of devices)")
			}
			if err := fleet.ValidateGroupName(args[0]); err != nil {
				return asUsage(err)
			}
			reg, err := openRegistry(cmd, g)
			if err != nil {
				return err
			}
			defer reg.Close()
			if err := reg.CreateGroup(cmd.Context(), args[0], q); err != nil {
				if errors.Is(err, fleet.ErrGroupExists) {
					return asUsage(err)
				}
				return queryError(err)
			}
			grp, err := reg.Group(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if q != "" {
				if _, warnings, err := reg.PreviewTargets(cmd.Context(), q); err == nil {
					printWarnings(warnings)
				}
			}
			return createOut.print(stdout(cmd), grp, func() error {
				fmt.Printf("group %s created (%s): %s devices\n", grp.Name, groupKind(grp), numfmt.Thousands(grp.Members))
				return nil
			})
		},
	}
	createOut = addOutputFlag(create)
	create.Flags().StringVar(&q, "query", "", "twin query whose devices are the group (SELECT * FROM devices WHERE …)")
	create.Flags().BoolVar(&static, "static", false, "a static group: devices are added and removed by id")
	_ = create.RegisterFlagCompletionFunc("query", completeQueryPaths(g))

	members := func(use, short, long, example string, add bool) *cobra.Command {
		var out *output
		c := &cobra.Command{
			Use: use + " NAME ID...", Short: short, Long: long, Example: example, Args: cobra.MinimumNArgs(2),
			ValidArgsFunction: func(cmd *cobra.Command, args []string, to string) ([]cobra.Completion, cobra.ShellCompDirective) {
				if len(args) == 0 {
					return registryCandidates(cmd.Context(), g, registry.CandidateGroups, to), cobra.ShellCompDirectiveNoFileComp
				}
				return registryCandidates(cmd.Context(), g, registry.CandidateDevices, to), cobra.ShellCompDirectiveNoFileComp
			},
			RunE: func(cmd *cobra.Command, args []string) error {
				if len(args)-1 > maxRetireIDs {
					return usagef("at most %d ids at once", maxRetireIDs)
				}
				reg, err := openRegistry(cmd, g)
				if err != nil {
					return err
				}
				defer reg.Close()
				var n int64
				if add {
					n, err = reg.AddGroupMembers(cmd.Context(), args[0], args[1:])
				} else {
					n, err = reg.RemoveGroupMembers(cmd.Context(), args[0], args[1:])
				}
				if err != nil {
					return groupError(args[0], err)
				}
				verb := "added to"
				if !add {
					verb = "removed from"
				}
				res := groupMembersResult{Group: args[0], Changed: n}
				return out.print(stdout(cmd), res, func() error {
					fmt.Printf("%s devices %s group %s\n", numfmt.Thousands(n), verb, args[0])
					return nil
				})
			},
		}
		out = addOutputFlag(c)
		return c
	}
	add := members("add", "Add devices to a static group",
		"Add devices to a static group. Every id must be a device of the registry that is not retired; otherwise\nnothing is added and the unknown ids are listed. Ids already in the group are left as they are.",
		"  fleetflow group add bench sensor-0001 sensor-0002", true)
	remove := members("remove", "Remove devices from a static group",
		"Remove devices from a static group; ids that are not members are ignored.",
		"  fleetflow group remove bench sensor-0002", false)

	var listOut *output
	list := &cobra.Command{
		Use: "list", Short: "List the groups with their member counts", Args: cobra.NoArgs,
		Long:    "List every group with its kind, its member count now (devices not retired) and, for a dynamic group, its query.",
		Example: "  fleetflow group list\n  fleetflow group list -o json | jq -r '.[] | select(.members == 0) | .name'",
		RunE: func(cmd *cobra.Command, args []string) error {
			reg, err := openRegistry(cmd, g)
			if err != nil {
				return err
			}
			defer reg.Close()
			groups, err := reg.ListGroups(cmd.Context())
			if err != nil {
				return err
			}
			return listOut.print(stdout(cmd), groups, func() error {
				w := tabwriter.NewWriter(stdout(cmd), 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "GROUP\tKIND\tMEMBERS\tQUERY")
				for _, grp := range groups {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", grp.Name, groupKind(grp), numfmt.Thousands(grp.Members), clip(grp.Query, 80))
				}
				return w.Flush()
			})
		},
	}
	listOut = addOutputFlag(list)

	var showOut *output
	show := &cobra.Command{
		Use: "show NAME", Short: "Show a group: its definition, member count, first members and the running operations that use it",
		Long:    "Show a group: its kind and definition, how many devices it holds now, the first of them by id, and the\nrunning jobs and rollouts that selected their targets through it.",
		Example: "  fleetflow group show eu-canary\n  fleetflow group show bench -o yaml",
		Args:    cobra.ExactArgs(1), ValidArgsFunction: completeFrom(g, registry.CandidateGroups, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			reg, err := openRegistry(cmd, g)
			if err != nil {
				return err
			}
			defer reg.Close()
			grp, err := reg.Group(cmd.Context(), args[0])
			if err != nil {
				return groupError(args[0], err)
			}
			ids, err := reg.GroupMembers(cmd.Context(), args[0], groupShowMembers)
			if err != nil {
				return err
			}
			v := groupView{Group: grp, FirstMembers: ids}
			return showOut.print(stdout(cmd), v, func() error {
				fmt.Printf("group %s (%s), created %s\n", grp.Name, groupKind(grp), grp.CreatedAt.Local().Format("2006-01-02 15:04:05"))
				if grp.Query != "" {
					fmt.Printf("query: %s\n", grp.Query)
				}
				fmt.Printf("members: %s\n", numfmt.Thousands(grp.Members))
				if len(ids) > 0 {
					more := ""
					if grp.Members > int64(len(ids)) {
						more = " …"
					}
					fmt.Printf("first: %s%s\n", strings.Join(ids, " "), more)
				}
				if len(grp.UsedBy) > 0 {
					fmt.Printf("used by running: %s\n", strings.Join(grp.UsedBy, ", "))
				}
				return nil
			})
		},
	}
	showOut = addOutputFlag(show)

	var delOut *output
	del := &cobra.Command{
		Use: "delete NAME", Short: "Delete a group (refused while a running job or rollout uses it)",
		Long:    "Delete a group. It is refused (exit 2) while a job or rollout that selected its targets through the group\nis running, or while another group's query names it; the devices themselves are not touched.",
		Example: "  fleetflow group delete eu-canary",
		Args:    cobra.ExactArgs(1), ValidArgsFunction: completeFrom(g, registry.CandidateGroups, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			reg, err := openRegistry(cmd, g)
			if err != nil {
				return err
			}
			defer reg.Close()
			if err := reg.DeleteGroup(cmd.Context(), args[0]); err != nil {
				return groupError(args[0], err)
			}
			return delOut.print(stdout(cmd), groupMembersResult{Group: args[0], Deleted: true}, func() error {
				fmt.Printf("group %s deleted\n", args[0])
				return nil
			})
		},
	}
	delOut = addOutputFlag(del)
	cmd.AddCommand(create, add, remove, list, show, del)
	return cmd
}

// groupMembersResult is what group add|remove|delete print with -o json|yaml.
type groupMembersResult struct {
	Group   string `json:"group"`
	Changed int64  `json:"changed,omitempty"`
	Deleted bool   `json:"deleted,omitempty"`
}

// groupView is `group show -o json|yaml`.
type groupView struct {
	fleet.Group
	FirstMembers []string `json:"firstMembers"`
}

func groupKind(grp fleet.Group) string {
	if grp.Static {
		return "static"
	}
	return "dynamic"
}

// groupError words a group store error for the operator; an unknown group, a group in use, unknown
// devices and the wrong kind of group are usage errors (exit 2).
func groupError(name string, err error) error {
	switch {
	case errors.Is(err, fleet.ErrGroupNotFound):
		return usagef("no group %q (fleetflow group list shows the groups)", name)
	case errors.Is(err, fleet.ErrGroupInUse), errors.Is(err, fleet.ErrGroupKind):
		return asUsage(err)
	case errors.Is(err, fleet.ErrNotFound):
		return usagef("not in the registry (or retired), nothing added: %w", err)
	}
	return err
}

// printWarnings shows the query compiler's warnings on stderr: they are advice, not output.
func printWarnings(warnings []string) {
	for _, w := range warnings {
		fmt.Fprintf(os.Stderr, "warning: %s\n", w)
	}
}

// resolveTargets turns an operation's --query and --group flags into its target query (exactly one of
// them; docs/architecture.md, "Groups"), checks that a named group exists, and shows the query's warnings.
// It returns the query and how many devices it selects now.
func resolveTargets(ctx context.Context, reg *registry.Registry, q, group string) (string, int64, error) {
	text, err := fleet.TargetQuery(q, group)
	if err != nil {
		return "", 0, asUsage(err)
	}
	if text == "" {
		return "", 0, usagef("--query or --group is required, e.g. --query \"SELECT * FROM devices WHERE tags.region = 'eu'\"")
	}
	if group != "" {
		if _, err := reg.ResolveGroup(ctx, group); err != nil {
			return "", 0, groupError(group, err)
		}
	}
	n, warnings, err := reg.PreviewTargets(ctx, text)
	if err != nil {
		return "", 0, queryError(err)
	}
	printWarnings(warnings)
	return text, n, nil
}

// addGroupFlag adds --group to an operation's command, with completion of group names.
func addGroupFlag(g *globals, cmd *cobra.Command, p *string) {
	cmd.Flags().StringVar(p, "group", "", "target the devices of a group (fleetflow group list) instead of --query")
	_ = cmd.RegisterFlagCompletionFunc("group", completeFlagFrom(g, registry.CandidateGroups))
}

// completeQueryPaths completes a --query (or --where) value with the tag paths of the scheme in force: the
// word being typed is matched against them, the text before it kept, so that
// --query "SELECT * FROM devices WHERE tags.re<TAB> offers tags.region.
func completeQueryPaths(g *globals) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, to string) ([]cobra.Completion, cobra.ShellCompDirective) {
		i := strings.LastIndexAny(to, " (,")
		head, word := to[:i+1], to[i+1:]
		if !strings.HasPrefix("tags", word) && !strings.HasPrefix(word, "tags") {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace
		}
		var out []cobra.Completion
		for _, p := range registryCandidates(cmd.Context(), g, registry.CandidateTagPaths, word) {
			out = append(out, head+p)
		}
		return out, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace
	}
}
