// Package healthsched keeps fleetflow's recurring health check as a Temporal Schedule (recurring work uses
// Schedules: docs/architecture.md, "Temporal rules"): one schedule, ScheduleID, whose action starts FleetHealthCheck. The CLI (`fleetflow
// health schedule|unschedule|status`) and the tests create it through the same functions, so what the tests
// run against a real server is what operators get.
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

// ScheduleID is the one health-check schedule of a namespace.
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
	return &client.ScheduleWorkflowAction{
		ID:        workflows.HealthCheckIDPrefix,
		Workflow:  workflows.FleetHealthCheck,
		Args:      []any{in},
		TaskQueue: taskQueue,
		// A check that has not finished by the next one is stuck; the next takes over.
		WorkflowExecutionTimeout: 30 * time.Minute,
		TypedSearchAttributes: temporal.NewSearchAttributes(searchattr.Op.ValueSet(searchattr.OpHealthCheck),
			searchattr.State.ValueSet(searchattr.StateRunning)),
		StaticSummary: "Scheduled fleet health check",
		StaticDetails: rules.String(),
	}
}

func policy() *client.SchedulePolicies {
	return &client.SchedulePolicies{Overlap: enumspb.SCHEDULE_OVERLAP_POLICY_SKIP, CatchupWindow: CatchupWindow}
}

// EnsureHealthSchedule creates the health-check schedule, or updates its period, rules and task queue when it
// exists (keeping its paused state and history): running `health schedule` twice is how an operator changes
// it. Overlapping checks are skipped, not queued.
func EnsureHealthSchedule(ctx context.Context, c client.Client, taskQueue string, every time.Duration, in workflows.HealthCheckInput) error {
	if err := ValidateEvery(every); err != nil {
		return err
	}
	if err := in.Rules().Validate(); err != nil {
		return err
	}
	if taskQueue == "" {
		return errors.New("health schedule: a task queue is required")
	}
	sc := c.ScheduleClient()
	_, err := sc.Create(ctx, client.ScheduleOptions{
		ID:            ScheduleID,
		Spec:          spec(every),
		Action:        action(taskQueue, in),
		Overlap:       enumspb.SCHEDULE_OVERLAP_POLICY_SKIP,
		CatchupWindow: CatchupWindow,
		Note:          "fleetflow health schedule",
	})
	if err == nil {
		return nil
	}
	if !errors.Is(err, temporal.ErrScheduleAlreadyRunning) {
		return fmt.Errorf("create schedule %s: %w", ScheduleID, err)
	}
	err = sc.GetHandle(ctx, ScheduleID).Update(ctx, client.ScheduleUpdateOptions{
		DoUpdate: func(u client.ScheduleUpdateInput) (*client.ScheduleUpdate, error) {
			s := u.Description.Schedule
			sp := spec(every)
			s.Spec, s.Action, s.Policy = &sp, action(taskQueue, in), policy()
			return &client.ScheduleUpdate{Schedule: &s}, nil
		},
	})
	if err != nil {
		return fmt.Errorf("update schedule %s: %w", ScheduleID, err)
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
	d, err := c.ScheduleClient().GetHandle(ctx, ScheduleID).Describe(ctx)
	if isNotFound(err) {
		return nil, ErrNotScheduled
	}
	if err != nil {
		return nil, fmt.Errorf("describe schedule %s: %w", ScheduleID, err)
	}
	return d, nil
}

// DeleteHealthSchedule removes the schedule; checks already running finish. It returns ErrNotScheduled when
// there is none.
func DeleteHealthSchedule(ctx context.Context, c client.Client) error {
	err := c.ScheduleClient().GetHandle(ctx, ScheduleID).Delete(ctx)
	if isNotFound(err) {
		return ErrNotScheduled
	}
	if err != nil {
		return fmt.Errorf("delete schedule %s: %w", ScheduleID, err)
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
