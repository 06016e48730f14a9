// Package fleetworker builds a Temporal worker with every fleetflow workflow and activity registered. The
// worker binary and the integration tests share it so that tests run exactly what production runs.
package fleetworker

import (
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/workflows"
)

// New builds a worker on taskQueue with fleetflow's workflows and acts registered.
func New(c client.Client, taskQueue string, acts *activities.Activities) worker.Worker {
	w := worker.New(c, taskQueue, worker.Options{})
	Register(w, acts)
	return w
}

// Register adds fleetflow's workflows, and the activities when acts is not nil, to a worker or replayer.
// Renamed activities stay registered under their former names too, for workflows started before the rename
// (see workflows.LegacyActReplaceDevice).
func Register(w worker.Registry, acts *activities.Activities) {
	w.RegisterWorkflow(workflows.ProvisionFleet)
	w.RegisterWorkflow(workflows.FleetJob)
	w.RegisterWorkflow(workflows.FirmwareRollout)
	w.RegisterWorkflow(workflows.Decommission)
	w.RegisterWorkflow(workflows.ReplaceDevice)
	w.RegisterWorkflow(workflows.PurgeArchive)
	w.RegisterWorkflow(workflows.FleetHealthCheck)
	if acts != nil {
		w.RegisterActivity(acts)
		w.RegisterActivityWithOptions(acts.ReplaceDeviceRecord, activity.RegisterOptions{Name: workflows.LegacyActReplaceDevice})
		w.RegisterActivityWithOptions(acts.PurgeArchivedDevices, activity.RegisterOptions{Name: workflows.LegacyActPurgeArchive})
	}
}
