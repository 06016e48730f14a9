package fleet

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fleetflow/fleetflow/internal/protocol"
)

// Group is a named set of devices (docs/architecture.md, "Groups"): dynamic (its membership is a twin query
// condition, evaluated whenever the group is used, so it is always current) or static (a list of ids).
type Group struct {
	Name string `json:"name"`
	// Query is the dynamic group's query as the operator gave it; empty for a static group.
	Query     string    `json:"query,omitempty"`
	Static    bool      `json:"static"`
	CreatedAt time.Time `json:"createdAt"`
	// Members is how many devices (not retired) the group holds now.
	Members int64 `json:"members"`
	// UsedBy lists the running operations whose targets came through the group.
	UsedBy []string `json:"usedBy,omitempty"`
}

// Group errors a store reports (wrapped).
var (
	// ErrGroupNotFound: no group has the name.
	ErrGroupNotFound = errors.New("no such group")
	// ErrGroupExists: a group with the name exists already.
	ErrGroupExists = errors.New("group exists")
	// ErrGroupInUse: a running operation selected its targets through the group.
	ErrGroupInUse = errors.New("group in use by a running operation")
	// ErrGroupKind: a static group's operation on a dynamic group, or the reverse.
	ErrGroupKind = errors.New("wrong kind of group")
)

// ValidateGroupName checks a group name: device-id syntax, so that it needs no quoting anywhere it is
// written (a query's IN_GROUP('name'), a workflow id, a file name).
func ValidateGroupName(name string) error {
	if !protocol.ValidDeviceID(name) {
		return fmt.Errorf("group name %q: use 1-64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit", name)
	}
	return nil
}

// GroupQuery is the target query that selects a group's members: what `--group NAME` stands for wherever an
// operation takes a query, resolved where every query is (the registry compiles IN_GROUP with the group's
// definition), so every operation accepts groups alike.
func GroupQuery(name string) string {
	return "SELECT * FROM devices WHERE IN_GROUP('" + name + "')"
}

// TargetQuery is the query an operation selects its targets with, from its --query and --group flags:
// exactly one of them. The group's name is checked (GroupQuery needs no quoting for a valid one).
func TargetQuery(query, group string) (string, error) {
	switch {
	case query != "" && group != "":
		return "", errors.New("give either --query or --group, not both (to narrow a group, use --query \"SELECT * FROM devices WHERE IN_GROUP('" +
			group + "') AND ...\")")
	case group != "":
		if err := ValidateGroupName(group); err != nil {
			return "", err
		}
		return GroupQuery(group), nil
	}
	return query, nil
}

// GroupStore is what operations and the CLI need to read groups.
type GroupStore interface {
	// Group returns a group with its member count, or ErrGroupNotFound.
	Group(ctx context.Context, name string) (Group, error)
	// ResolveGroup returns the target query selecting the group's members, after checking that the group
	// exists (ErrGroupNotFound): the form every operation takes its targets in.
	ResolveGroup(ctx context.Context, name string) (string, error)
}
