package workflows

import (
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/searchattr"
)

// Updates a FleetConfiguration takes besides pause and resume.
const (
	// UpdateApply replaces a configuration's spec (ConfigSpec) with a new version.
	UpdateApply = "apply"
	// UpdateDelete stops applying a configuration and removes it; devices keep what it wrote.
	UpdateDelete = "delete"
)

// Defaults of ConfigInput.
const (
	// DefaultConfigPassFor is how long one reconcile activity watches for devices behind before it reports
	// its counts (search attributes, the progress query): the workflow's history grows by one activity per
	// pass, about 60 events an hour.
	DefaultConfigPassFor = time.Minute
	// DefaultConfigPollEvery is how often a reconcile activity looks for devices behind when nothing woke
	// it: wake-ups (devices inserted, retagged, connected) are the fast path, this only bounds a missed one.
	DefaultConfigPollEvery = 30 * time.Second
	// DefaultConfigPassesPerRun: passes per run before continue-as-new (about a day at one a minute,
	// some 10,000 events).
	DefaultConfigPassesPerRun = 1000
	// DefaultConfigBatch is how many devices one reconcile transaction handles.
	DefaultConfigBatch = 1000
	// configHeartbeat bounds how long a cancelled pass (an update arrived) keeps running, and how long a
	// crashed worker's pass goes unnoticed.
	configHeartbeat = 10 * time.Second
)

// ConfigWorkflowID is the workflow id of the configuration named name: one workflow per configuration, so
// that applying a name again reaches the running one.
func ConfigWorkflowID(name string) string { return "config-" + name }

// ConfigInput starts FleetConfiguration; it is also the state carried across continue-as-new.
type ConfigInput struct {
	Spec fleet.ConfigSpec `json:"spec"`
	// Version counts the specs applied (1 for the first); devices record the version they have.
	Version int64 `json:"version"`
	Paused  bool  `json:"paused,omitempty"`
	Deleted bool  `json:"deleted,omitempty"`
	// Saved: the registry holds Spec at Version in the current paused or active state.
	Saved  bool               `json:"saved,omitempty"`
	Counts fleet.ConfigCounts `json:"counts"`
	Runs   int                `json:"runs,omitempty"`

	PassFor      time.Duration `json:"passFor,omitempty"`
	PollEvery    time.Duration `json:"pollEvery,omitempty"`
	PassesPerRun int           `json:"passesPerRun,omitempty"`
	BatchSize    int           `json:"batchSize,omitempty"`
}

// ConfigProgress is what the progress query of a FleetConfiguration answers.
type ConfigProgress struct {
	Name      string             `json:"name"`
	State     string             `json:"state"` // active, paused, deleting
	Version   int64              `json:"version"`
	Spec      fleet.ConfigSpec   `json:"spec"`
	Counts    fleet.ConfigCounts `json:"counts"`
	Runs      int                `json:"runs"`
	UpdatedAt time.Time          `json:"updatedAt"`
}

// ConfigResult is how a FleetConfiguration ends: deleted.
type ConfigResult struct {
	Name    string `json:"name"`
	Version int64  `json:"version"`
	Message string `json:"message"`
}

// ConfigSaveInput is ConfigSave's input.
type ConfigSaveInput struct {
	Spec    fleet.ConfigSpec  `json:"spec"`
	Version int64             `json:"version"`
	State   fleet.ConfigState `json:"state"`
}

// ConfigReconcileInput is ConfigReconcile's input.
type ConfigReconcileInput struct {
	Name      string        `json:"name"`
	RunFor    time.Duration `json:"runFor"`
	PollEvery time.Duration `json:"pollEvery"`
	BatchSize int           `json:"batchSize"`
}

// ConfigReconcileResult is what a reconcile pass did and the counts at its end.
type ConfigReconcileResult struct {
	Written int64              `json:"written"`
	Counts  fleet.ConfigCounts `json:"counts"`
}

// FleetConfiguration keeps one declarative configuration applied to every device its target selects —
// now, and as devices join, are retagged or come back — with the highest priority winning per key where
// configurations overlap (docs/architecture.md, "Declarative configurations"). It runs until deleted: each
// pass is one heartbeating activity that reconciles the devices behind (set-based, woken early by the
// registry) and reports counts; apply, pause, resume and delete are Updates with validators, and an update
// cancels the pass in flight so that it takes effect at once. It continues as new every PassesPerRun passes.
func FleetConfiguration(ctx workflow.Context, in ConfigInput) (ConfigResult, error) {
	in = withConfigDefaults(in)
	if err := in.Spec.CheckShape(); err != nil {
		return ConfigResult{}, temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidInput, nil)
	}
	if in.Version < 1 {
		in.Version = 1
	}
	in.Runs++
	progress := ConfigProgress{Name: in.Spec.Name}
	report := func() {
		progress.State, progress.Version, progress.Spec, progress.Counts, progress.Runs = configState(in), in.Version, in.Spec, in.Counts, in.Runs
		progress.UpdatedAt = workflow.Now(ctx)
		workflow.SetCurrentDetails(ctx, configDetails(progress))
	}
	if err := workflow.SetQueryHandler(ctx, QueryProgress, func() (ConfigProgress, error) { return progress, nil }); err != nil {
		return ConfigResult{}, fmt.Errorf("register progress query: %w", err)
	}
	var cancelPass workflow.CancelFunc
	interrupt := func() {
		if cancelPass != nil {
			cancelPass()
		}
	}
	if err := registerConfigUpdates(ctx, &in, interrupt, report); err != nil {
		return ConfigResult{}, err
	}
	report()
	upsertConfig(ctx, in)

	actOpts := workflow.ActivityOptions{StartToCloseTimeout: 5 * time.Minute,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second}}
	for passes := 0; ; {
		if !in.Saved {
			state := fleet.ConfigActive
			if in.Paused {
				state = fleet.ConfigPaused
			}
			sctx := workflow.WithActivityOptions(ctx, withSummary(actOpts, fmt.Sprintf("save version %d (%s)", in.Version, state)))
			if _, err := executeActivity(sctx, Activities.ConfigSave, ConfigSaveInput{Spec: in.Spec, Version: in.Version, State: state}).Result(ctx); err != nil {
				return ConfigResult{}, fmt.Errorf("save configuration %s: %w", in.Spec.Name, err)
			}
			in.Saved = true
			upsertConfig(ctx, in)
			report()
		}
		if in.Deleted {
			dctx := workflow.WithActivityOptions(ctx, withSummary(actOpts, "delete; devices keep their values"))
			if _, err := executeActivity(dctx, Activities.ConfigDelete, in.Spec.Name).Result(ctx); err != nil {
				return ConfigResult{}, fmt.Errorf("delete configuration %s: %w", in.Spec.Name, err)
			}
			upsertConfig(ctx, in)
			report()
			if err := workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) }); err != nil {
				return ConfigResult{}, err
			}
			return ConfigResult{Name: in.Spec.Name, Version: in.Version,
				Message: fmt.Sprintf("configuration %s deleted: no longer applied; devices keep the values it wrote", in.Spec.Name)}, nil
		}
		if in.Paused {
			if err := workflow.Await(ctx, func() bool { return !in.Paused || in.Deleted || !in.Saved }); err != nil {
				return ConfigResult{}, err
			}
			continue
		}
		if passes >= in.PassesPerRun || workflow.GetInfo(ctx).GetContinueAsNewSuggested() {
			if err := workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) }); err != nil {
				return ConfigResult{}, err
			}
			if in.Saved && !in.Deleted && !in.Paused {
				return ConfigResult{}, workflow.NewContinueAsNewError(ctx, FleetConfiguration, in)
			}
			continue // an update arrived while handlers finished: handle it first
		}
		passes++
		pctx, cancel := workflow.WithCancel(ctx)
		cancelPass = cancel
		pctx = workflow.WithActivityOptions(pctx, workflow.ActivityOptions{StartToCloseTimeout: in.PassFor + 5*time.Minute,
			HeartbeatTimeout: configHeartbeat, RetryPolicy: actOpts.RetryPolicy,
			Summary: fmt.Sprintf("reconcile version %d for %s", in.Version, in.PassFor)})
		res, err := executeActivity(pctx, Activities.ConfigReconcile, ConfigReconcileInput{Name: in.Spec.Name, RunFor: in.PassFor,
			PollEvery: in.PollEvery, BatchSize: in.BatchSize}).Result(ctx)
		cancelPass = nil
		cancel()
		var canceled *temporal.CanceledError
		switch {
		case errors.As(err, &canceled):
			continue // an update interrupted the pass
		case err != nil:
			return ConfigResult{}, fmt.Errorf("reconcile configuration %s: %w", in.Spec.Name, err)
		}
		in.Counts = res.Counts
		upsertConfig(ctx, in)
		report()
	}
}

func withConfigDefaults(in ConfigInput) ConfigInput {
	if in.PassFor <= 0 {
		in.PassFor = DefaultConfigPassFor
	}
	if in.PollEvery <= 0 {
		in.PollEvery = DefaultConfigPollEvery
	}
	if in.PassesPerRun <= 0 {
		in.PassesPerRun = DefaultConfigPassesPerRun
	}
	if in.BatchSize <= 0 {
		in.BatchSize = DefaultConfigBatch
	}
	return in
}

func configState(in ConfigInput) string {
	switch {
	case in.Deleted:
		return "deleting"
	case in.Paused:
		return string(fleet.ConfigPaused)
	}
	return string(fleet.ConfigActive)
}

// registerConfigUpdates installs apply, pause, resume and delete. Each handler changes the input (the
// state continue-as-new carries) and interrupts the pass in flight; the loop saves and acts on it.
func registerConfigUpdates(ctx workflow.Context, in *ConfigInput, interrupt, report func()) error {
	notDeleted := func() error {
		if in.Deleted {
			return fmt.Errorf("configuration %s is being deleted", in.Spec.Name)
		}
		return nil
	}
	err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateApply, func(ctx workflow.Context, spec fleet.ConfigSpec) (string, error) {
		in.Spec, in.Version, in.Saved = spec, in.Version+1, false
		interrupt()
		report()
		msg := fmt.Sprintf("configuration %s updated to version %d; devices are brought up to it", spec.Name, in.Version)
		if in.Paused {
			msg = fmt.Sprintf("configuration %s updated to version %d; it is paused: resume to apply it", spec.Name, in.Version)
		}
		return msg, nil
	}, workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context, spec fleet.ConfigSpec) error {
		if err := notDeleted(); err != nil {
			return err
		}
		if spec.Name != in.Spec.Name {
			return fmt.Errorf("this is configuration %s, not %s", in.Spec.Name, spec.Name)
		}
		// The patch itself is decoded by the CLI before it sends the update and by ConfigSave.
		return spec.CheckShape()
	}})
	if err != nil {
		return fmt.Errorf("register apply: %w", err)
	}
	err = workflow.SetUpdateHandlerWithOptions(ctx, UpdatePause, func(ctx workflow.Context) (string, error) {
		in.Paused, in.Saved = true, false
		interrupt()
		report()
		return fmt.Sprintf("configuration %s paused: devices that join or change are not configured until resume", in.Spec.Name), nil
	}, workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context) error {
		if err := notDeleted(); err != nil {
			return err
		}
		if in.Paused {
			return fmt.Errorf("configuration %s is already paused", in.Spec.Name)
		}
		return nil
	}})
	if err != nil {
		return fmt.Errorf("register pause: %w", err)
	}
	err = workflow.SetUpdateHandlerWithOptions(ctx, UpdateResume, func(ctx workflow.Context) (string, error) {
		in.Paused, in.Saved = false, false
		report()
		return fmt.Sprintf("configuration %s resumed at version %d", in.Spec.Name, in.Version), nil
	}, workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context) error {
		if err := notDeleted(); err != nil {
			return err
		}
		if !in.Paused {
			return fmt.Errorf("configuration %s is not paused", in.Spec.Name)
		}
		return nil
	}})
	if err != nil {
		return fmt.Errorf("register resume: %w", err)
	}
	err = workflow.SetUpdateHandlerWithOptions(ctx, UpdateDelete, func(ctx workflow.Context) (string, error) {
		in.Deleted = true
		interrupt()
		report()
		return fmt.Sprintf("configuration %s deleted: it is no longer applied, and devices keep the values it wrote", in.Spec.Name), nil
	}, workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context) error { return notDeleted() }})
	if err != nil {
		return fmt.Errorf("register delete: %w", err)
	}
	return nil
}

// upsertConfig publishes the configuration's state and counts as search attributes (once per pass, never
// per device).
func upsertConfig(ctx workflow.Context, in ConfigInput) {
	state := searchattr.StateRunning
	switch {
	case in.Deleted:
		state = searchattr.StateDeleted
	case in.Paused:
		state = searchattr.StatePaused
	}
	c := in.Counts
	metrics := make([]string, len(c.Metrics))
	for i, m := range c.Metrics {
		metrics[i] = fmt.Sprintf("%s=%d", m.Name, m.Count)
	}
	err := workflow.UpsertTypedSearchAttributes(ctx, searchattr.Op.ValueSet(searchattr.OpConfig), searchattr.State.ValueSet(state),
		searchattr.Total.ValueSet(c.Targeted), searchattr.Done.ValueSet(c.Acked), searchattr.Failed.ValueSet(c.Failed),
		searchattr.Applied.ValueSet(float64(c.Applied)), searchattr.Metrics.ValueSet(metrics),
		searchattr.Stage.ValueSet(fmt.Sprintf("version %d", in.Version)))
	if err != nil {
		workflow.GetLogger(ctx).Warn("upsert search attributes", "err", err)
	}
}

// configDetails renders the markdown the Temporal UI shows as the configuration's current details.
func configDetails(p ConfigProgress) string {
	c := p.Counts
	s := fmt.Sprintf("**configuration %s v%d %s** — targeted %s · applied %s · acknowledged %s · failed %s · superseded %s",
		p.Name, p.Version, p.State, numfmt.Thousands(c.Targeted), numfmt.Thousands(c.Applied), numfmt.Thousands(c.Acked),
		numfmt.Thousands(c.Failed), numfmt.Thousands(c.Superseded))
	for _, m := range c.Metrics {
		s += fmt.Sprintf(" · %s %s", m.Name, numfmt.Thousands(m.Count))
	}
	return s
}
