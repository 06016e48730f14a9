// Package healthsched keeps fleetflow's recurring health check as a Temporal Schedule (recurring work uses
// Schedules: docs/architecture.md, "Temporal rules"): the fleet-wide check's schedule, ScheduleID, and one per
// health rule (RuleScheduleID; docs/architecture.md, "Health rules"), each of whose actions starts
// FleetHealthCheck. The CLI (`fleetflow health schedule|unschedule|status|rule`) and the tests create them
// through the same functions, so what the tests run against a real server is what operators get.
package healthsched

import (
	"context"
	"errors"
	"fmt"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/workflows"
)

// ScheduleID is the fleet-wide health check's schedule; each health rule has its own (RuleScheduleID).
const ScheduleID = "fleetflow-health-check"

// MinEvery is the shortest period a schedule accepts: a check is a pass over the whole fleet, and more often
// than this would mostly measure the check itself.
const MinEvery = 10 * time.Second

// CatchupWindow is how late a missed check may still start after an outage of the Temporal server: one is
// enough, since a check looks at the fleet as it is now; the server's default (a year) would replay them all.
const CatchupWindow = time.Minute

// ErrNotScheduled is returned (wrapped) when there is no health-check schedule.
var ErrNotScheduled = errors.New("no health check is scheduled")

// ValidateEvery refuses a period the schedule cannot take.
func ValidateEvery(every time.Duration) error {
	if every < MinEvery {
		return fmt.Errorf("--every %s: checks at most every %s (each is a pass over the whole fleet)", numfmt.FormatDuration(every),
			numfmt.FormatDuration(MinEvery))
	}
	return nil
}

// spec is the schedule's timing: every period, from the epoch (so the times are stable across updates).
func spec(every time.Duration) client.ScheduleSpec {
	return client.ScheduleSpec{Intervals: []client.ScheduleIntervalSpec{{Every: every}}}
}

// action starts FleetHealthCheck with in on taskQueue; Temporal appends the scheduled time to the id.
func action(taskQueue string, in workflows.HealthCheckInput) *client.ScheduleWorkflowAction {
	rules := in.Rules()
	id, summary, details := workflows.HealthCheckIDPrefix, "Scheduled fleet health check", rules.String()
	if in.IsRule() {
		id, summary, details = RuleWorkflowIDPrefix(in.Rule), "Scheduled health rule "+in.Rule, "health rule "+in.Rule+" (fleetflow health rule show "+in.Rule+")"
	}
	return &client.ScheduleWorkflowAction{
		ID:        id,
		Workflow:  workflows.FleetHealthCheck,
		Args:      []any{in},
		TaskQueue: taskQueue,
		// A check that has not finished by the next one is stuck; the next takes over.
		WorkflowExecutionTimeout: 30 * time.Minute,
		TypedSearchAttributes: temporal.NewSearchAttributes(searchattr.Op.ValueSet(searchattr.OpHealthCheck),
			searchattr.State.ValueSet(searchattr.StateRunning)),
		StaticSummary: summary,
		StaticDetails: details,
	}
}

func policy() *client.SchedulePolicies {
	return &client.SchedulePolicies{Overlap: enumspb.SCHEDULE_OVERLAP_POLICY_SKIP, CatchupWindow: CatchupWindow}
}

// EnsureHealthSchedule creates the health-check schedule, or updates its period, rules and task queue when it
// exists (keeping its paused state and history): running `health schedule` twice is how an operator changes
// it. Overlapping checks are skipped, not queued.
func EnsureHealthSchedule(ctx context.Context, c client.Client, taskQueue string, every time.Duration, in workflows.HealthCheckInput) error {
	if in.IsRule() {
		return errors.New("health schedule: a rule is scheduled with EnsureRuleSchedule")
	}
	if err := in.Rules().Validate(); err != nil {
		return err
	}
	return ensure(ctx, c, ScheduleID, "fleetflow health schedule", taskQueue, every, in)
}

// RuleScheduleID is the schedule of a health rule (docs/architecture.md, "Health rules").
func RuleScheduleID(rule string) string { return "fleetflow-health-rule-" + rule }

// RuleWorkflowIDPrefix starts the ids of a rule's checks: healthcheck-<rule>, then Temporal's scheduled time
// or `health run --rule`'s time.
func RuleWorkflowIDPrefix(rule string) string { return workflows.HealthCheckIDPrefix + "-" + rule }

// EnsureRuleSchedule creates a health rule's schedule, or updates its period and task queue when it exists.
// Its action starts FleetHealthCheck with the rule's name only: each check reads the rule's target and limits
// from the registry, so that `health rule set` changes them for the next check without touching the
// schedule's input.
func EnsureRuleSchedule(ctx context.Context, c client.Client, taskQueue, rule string, every time.Duration) error {
	if rule == "" {
		return errors.New("health rule schedule: a rule name is required")
	}
	return ensure(ctx, c, RuleScheduleID(rule), "fleetflow health rule set "+rule, taskQueue, every,
		workflows.HealthCheckInput{Rule: rule})
}

// ensure creates the schedule id or updates it in place.
func ensure(ctx context.Context, c client.Client, id, note, taskQueue string, every time.Duration, in workflows.HealthCheckInput) error {
	if err := ValidateEvery(every); err != nil {
		return err
	}
	if taskQueue == "" {
		return errors.New("health schedule: a task queue is required")
	}
	sc := c.ScheduleClient()
	_, err := sc.Create(ctx, client.ScheduleOptions{
		ID:            id,
		Spec:          spec(every),
		Action:        action(taskQueue, in),
		Overlap:       enumspb.SCHEDULE_OVERLAP_POLICY_SKIP,
		CatchupWindow: CatchupWindow,
		Note:          note,
	})
	if err == nil {
		return nil
	}
	if !errors.Is(err, temporal.ErrScheduleAlreadyRunning) {
		return fmt.Errorf("create schedule %s: %w", id, err)
	}
	err = sc.GetHandle(ctx, id).Update(ctx, client.ScheduleUpdateOptions{
		DoUpdate: func(u client.ScheduleUpdateInput) (*client.ScheduleUpdate, error) {
			s := u.Description.Schedule
			sp := spec(every)
			s.Spec, s.Action, s.Policy = &sp, action(taskQueue, in), policy()
			return &client.ScheduleUpdate{Schedule: &s}, nil
		},
	})
	if err != nil {
		return fmt.Errorf("update schedule %s: %w", id, err)
	}
	return nil
}

// Exists reports whether the health-check schedule exists.
func Exists(ctx context.Context, c client.Client) (bool, error) {
	_, err := Describe(ctx, c)
	if errors.Is(err, ErrNotScheduled) {
		return false, nil
	}
	return err == nil, err
}

// Describe returns the schedule's description (spec, next and recent runs), or ErrNotScheduled.
func Describe(ctx context.Context, c client.Client) (*client.ScheduleDescription, error) {
	return describe(ctx, c, ScheduleID)
}

// DescribeRule returns a health rule's schedule, or ErrNotScheduled.
func DescribeRule(ctx context.Context, c client.Client, rule string) (*client.ScheduleDescription, error) {
	return describe(ctx, c, RuleScheduleID(rule))
}

func describe(ctx context.Context, c client.Client, id string) (*client.ScheduleDescription, error) {
	d, err := c.ScheduleClient().GetHandle(ctx, id).Describe(ctx)
	if isNotFound(err) {
		return nil, fmt.Errorf("schedule %s: %w", id, ErrNotScheduled)
	}
	if err != nil {
		return nil, fmt.Errorf("describe schedule %s: %w", id, err)
	}
	return d, nil
}

// DeleteHealthSchedule removes the schedule; checks already running finish. It returns ErrNotScheduled when
// there is none.
func DeleteHealthSchedule(ctx context.Context, c client.Client) error {
	return deleteSchedule(ctx, c, ScheduleID)
}

// DeleteRuleSchedule removes a health rule's schedule (ErrNotScheduled when there is none).
func DeleteRuleSchedule(ctx context.Context, c client.Client, rule string) error {
	return deleteSchedule(ctx, c, RuleScheduleID(rule))
}

func deleteSchedule(ctx context.Context, c client.Client, id string) error {
	err := c.ScheduleClient().GetHandle(ctx, id).Delete(ctx)
	if isNotFound(err) {
		return fmt.Errorf("schedule %s: %w", id, ErrNotScheduled)
	}
	if err != nil {
		return fmt.Errorf("delete schedule %s: %w", id, err)
	}
	return nil
}

// Trigger starts a check now through the schedule (it shows in the schedule's recent runs), even if one is
// running: an operator who asks for one wants it.
func Trigger(ctx context.Context, c client.Client) error {
	err := c.ScheduleClient().GetHandle(ctx, ScheduleID).Trigger(ctx, client.ScheduleTriggerOptions{
		Overlap: enumspb.SCHEDULE_OVERLAP_POLICY_ALLOW_ALL})
	if isNotFound(err) {
		return ErrNotScheduled
	}
	if err != nil {
		return fmt.Errorf("trigger schedule %s: %w", ScheduleID, err)
	}
	return nil
}

// Every returns the schedule's period, 0 when its spec is not a single interval (edited by hand).
func Every(d *client.ScheduleDescription) time.Duration {
	if d == nil || d.Schedule.Spec == nil || len(d.Schedule.Spec.Intervals) != 1 {
		return 0
	}
	return d.Schedule.Spec.Intervals[0].Every
}

// Input returns the rules the schedule starts checks with (decoded from its action), and false when the
// action is not a FleetHealthCheck with one argument (edited by hand).
func Input(d *client.ScheduleDescription) (workflows.HealthCheckInput, bool) {
	var in workflows.HealthCheckInput
	if d == nil {
		return in, false
	}
	a, ok := d.Schedule.Action.(*client.ScheduleWorkflowAction)
	if !ok || len(a.Args) != 1 || a.Workflow != workflowName {
		return in, false
	}
	p, ok := a.Args[0].(*commonpb.Payload)
	if !ok || converter.GetDefaultDataConverter().FromPayload(p, &in) != nil {
		return in, false
	}
	return in, true
}

// workflowName is FleetHealthCheck's type name, as a described schedule's action names it (the function's
// name, which is how workers register it).
const workflowName = "FleetHealthCheck"

func isNotFound(err error) bool {
	var nf *serviceerror.NotFound
	return errors.As(err, &nf)
}
