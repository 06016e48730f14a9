package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/fleetflow/fleetflow/internal/query"
)

// The CLI's exit codes, in one place; the README's "Exit codes" table documents them. Scripts and CI jobs
// branch on them, so a code never changes meaning.
const (
	exitOK          = 0   // done
	exitFailed      = 1   // failed: the operation (or the command) did not do what was asked
	exitUsage       = 2   // usage or invalid input: bad flags or arguments, a bad query, a manifest with invalid rows
	exitPartial     = 3   // finished, but some devices failed (job, rollout, retire, provision)
	exitPending     = 4   // an operator action reached Temporal but waits for a worker: not refused, not applied yet
	exitInterrupted = 130 // interrupted by SIGINT (128 + 2, as shells report it) or SIGTERM; a started operation goes on
)

// usageError is a usage mistake or invalid input (exit 2). Work that could be done may have been done
// first: a manifest's good rows are provisioned, then the invalid ones make the exit code 2.
type usageError struct {
	err     error
	cmdLine bool // a mistake in the command line itself (flags, arguments): main points at --help
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usagef builds a usageError like fmt.Errorf (with %w support).
func usagef(format string, a ...any) error { return &usageError{err: fmt.Errorf(format, a...)} }

// asUsage marks err (when not nil) as a usage error.
func asUsage(err error) error {
	if err == nil {
		return nil
	}
	return &usageError{err: err}
}

// partialError says the operation finished but some devices failed (exit 3); the command has printed
// which ones, or how to list them.
type partialError struct{ err error }

func (e *partialError) Error() string { return e.err.Error() }
func (e *partialError) Unwrap() error { return e.err }

// partialf builds a partialError like fmt.Errorf.
func partialf(format string, a ...any) error { return &partialError{fmt.Errorf(format, a...)} }

// interruptedError says the operator interrupted the CLI (exit 130). The operation it started goes on in
// Temporal; the message says how to follow it.
type interruptedError struct{ msg string }

func (e *interruptedError) Error() string { return e.msg }

// exitCode maps the error a command returned to the process's exit code. Classification is by type
// (errors.As), never by message, so rewording an error cannot change what a script sees.
func exitCode(err error) int {
	var (
		ue  *usageError
		pe  *partialError
		pde *pendingError
		ie  *interruptedError
		qse *query.SyntaxError
		qme *query.SemanticError
	)
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ie):
		return exitInterrupted
	case errors.As(err, &ue), errors.As(err, &qse), errors.As(err, &qme):
		return exitUsage
	case errors.As(err, &pe):
		return exitPartial
	case errors.As(err, &pde):
		return exitPending
	}
	return exitFailed
}

// markUsageErrors makes cobra's own usage errors (bad flags, wrong argument counts, unknown subcommands)
// usageErrors, on cmd and every command under it, so that they exit 2 like the commands' own.
func markUsageErrors(cmd *cobra.Command) {
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err, true} })
	if cmd.HasSubCommands() && !cmd.Runnable() {
		// A group command (or the root) given an unknown subcommand: cobra would print the help and
		// exit 0, which hides a typo in a script.
		cmd.RunE = func(c *cobra.Command, a []string) error {
			if len(a) > 0 {
				return &usageError{fmt.Errorf("unknown command %q for %q", a[0], c.CommandPath()), true}
			}
			return c.Help()
		}
		if cmd.Args == nil {
			cmd.Args = cobra.ArbitraryArgs // or cobra's own check answers first, with an unmarked error
		}
	}
	if args := cmd.Args; args != nil {
		cmd.Args = func(c *cobra.Command, a []string) error {
			if err := args(c, a); err != nil {
				return &usageError{err, true}
			}
			return nil
		}
	}
	for _, sub := range cmd.Commands() {
		markUsageErrors(sub)
	}
}
