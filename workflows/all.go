package workflows

// All lists every workflow fleetflow's workers run, each registered under its function name. The worker
// (internal/fleetworker), the recorded-history replay test and the replay check of a new worker version
// (`fleetflow-worker replay-check`) all take the list from here, so a workflow added to the worker is
// replay-checked too (docs/architecture.md, "Worker versioning").
func All() []any {
	return []any{ProvisionFleet, FleetJob, FirmwareRollout, Decommission, ReplaceDevice, PurgeArchive, FleetHealthCheck, HealthRuleSave, HealthRuleDelete, FleetConfiguration, SchemeCheck, RegisterDevice, RotateCredentials}
}
