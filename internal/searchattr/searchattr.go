// Package searchattr names the custom Temporal search attributes of fleetflow in one place, because three
// parties must agree on them exactly: the dev server registers them at start-up (`fleetflow dev up`, and the
// test servers of internal/testenv), workflows upsert them as they advance, and operators filter the Temporal
// UI's operations list with them (`FleetOp = 'rollout' AND FleetOpState = 'running'`).
//
// The SQL/SQLite visibility store of the dev server has fixed slots per type (10 Keyword, 3 Int, ...); the
// three Int attributes below use all of the Int slots, so a new counter must be a Keyword, Double or another
// type with free slots, or replace one of these.
package searchattr

import (
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
)

// Names of the attributes as they appear in the Temporal UI and in list filters.
const (
	OpName     = "FleetOp"
	StateName  = "FleetOpState"
	TotalName  = "FleetDevicesTotal"
	DoneName   = "FleetDevicesDone"
	FailedName = "FleetDevicesFailed"
	StageName  = "FleetStage"
	// AppliedName and MetricsName are a declarative configuration's applied count and custom metrics.
	AppliedName = "FleetDevicesApplied"
	MetricsName = "FleetMetrics"
)

// Typed keys for workflow code: set them in client.StartWorkflowOptions.TypedSearchAttributes and update them
// with workflow.UpsertTypedSearchAttributes once per batch or wave, never per device (each upsert is a history
// event and a visibility write).
var (
	// Op (FleetOp) is the kind of fleet operation (OpProvision, OpRollout, ...), so the UI can list one kind.
	Op = temporal.NewSearchAttributeKeyKeyword(OpName)
	// State (FleetOpState) is where the operation stands (StateRunning, StateCompleted, ...), finer than the
	// workflow status: a rollout waiting for approval is Running to Temporal but StatePaused to an operator.
	State = temporal.NewSearchAttributeKeyKeyword(StateName)
	// Total (FleetDevicesTotal) is how many devices the operation covers.
	Total = temporal.NewSearchAttributeKeyInt64(TotalName)
	// Done (FleetDevicesDone) is how many devices the operation has finished successfully so far.
	Done = temporal.NewSearchAttributeKeyInt64(DoneName)
	// Failed (FleetDevicesFailed) is how many devices the operation has given up on so far.
	Failed = temporal.NewSearchAttributeKeyInt64(FailedName)
	// Stage (FleetStage) says where inside its plan an operation is ("wave 2/4", "rolling back"), so the
	// UI's list shows how far each rollout got without opening it.
	Stage = temporal.NewSearchAttributeKeyKeyword(StageName)
	// Applied (FleetDevicesApplied) is how many targeted devices a configuration is applied to at its
	// current version. A Double because the dev server's three Int slots are taken (see the package
	// comment); counts are exact in a float64 far beyond any fleet.
	Applied = temporal.NewSearchAttributeKeyFloat64(AppliedName)
	// Metrics (FleetMetrics) holds a configuration's custom metrics as "name=count" keywords, so the UI can
	// filter on one (FleetMetrics = 'online=812').
	Metrics = temporal.NewSearchAttributeKeyKeywordList(MetricsName)
)

// Values of FleetOp.
const (
	OpProvision    = "provision"
	OpRollout      = "rollout"
	OpJob          = "job"
	OpHealthCheck  = "healthcheck"
	OpDecommission = "decommission"
	OpConfig       = "configuration"
	// OpSchemeCheck: a SchemeCheck, of `scheme set` or `scheme check` (docs/architecture.md, "Metadata scheme").
	OpSchemeCheck = "scheme-check"
	OpEnroll      = "enroll"
	// OpRotateCredentials: a credential rotation (workflow RotateCredentials).
	OpRotateCredentials = "rotate-credentials"
	// OpHealthRule: a HealthRuleSave or HealthRuleDelete (docs/architecture.md, "Health rules"); the rule's
	// checks are OpHealthCheck like the fleet-wide one.
	OpHealthRule = "healthrule"
)

// Values of FleetOpState.
const (
	StateRunning   = "running"
	StatePaused    = "paused"
	StateCompleted = "completed"
	StateFailed    = "failed"
	StateAborted   = "aborted"
	// StateAwaitingApproval: a rollout run with --approve-each-wave waits for `rollout approve`.
	StateAwaitingApproval = "awaiting_approval"
	// StateRollingBack and StateRolledBack: a rollout stopped and sends devices back to their firmware.
	StateRollingBack = "rolling_back"
	StateRolledBack  = "rolled_back"
	StateCancelled   = "cancelled"
	// StateDeleted: a configuration was deleted (devices keep its values).
	StateDeleted = "deleted"
)

// Definition is one attribute's name and index type, the form the server's registration APIs take.
type Definition struct {
	Name string
	Type enumspb.IndexedValueType
}

// Flag is the `--search-attribute` value of `temporal server start-dev` for this attribute, e.g.
// "FleetOp=Keyword".
func (d Definition) Flag() string { return d.Name + "=" + d.Type.String() }

// Definitions lists every custom attribute fleetflow uses, in a stable order.
func Definitions() []Definition {
	return []Definition{
		{OpName, enumspb.INDEXED_VALUE_TYPE_KEYWORD},
		{StateName, enumspb.INDEXED_VALUE_TYPE_KEYWORD},
		{TotalName, enumspb.INDEXED_VALUE_TYPE_INT},
		{DoneName, enumspb.INDEXED_VALUE_TYPE_INT},
		{FailedName, enumspb.INDEXED_VALUE_TYPE_INT},
		{StageName, enumspb.INDEXED_VALUE_TYPE_KEYWORD},
		{AppliedName, enumspb.INDEXED_VALUE_TYPE_DOUBLE},
		{MetricsName, enumspb.INDEXED_VALUE_TYPE_KEYWORD_LIST},
	}
}

// Registration returns every attribute with a zero value, the form testsuite.DevServerOptions takes to
// register them on a test server.
func Registration() temporal.SearchAttributes {
	return temporal.NewSearchAttributes(
		Op.ValueSet(""),
		State.ValueSet(""),
		Total.ValueSet(0),
		Done.ValueSet(0),
		Failed.ValueSet(0),
		Stage.ValueSet(""),
		Applied.ValueSet(0),
		Metrics.ValueSet(nil),
	)
}
