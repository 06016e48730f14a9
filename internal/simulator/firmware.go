package simulator

import (
	"context"
	"maps"

	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/protocol"
)

// Reasons and health the simulated failures report.
const (
	installFailedReason = "install failed: checksum mismatch (simulated)"
	unhealthyReason     = "watchdog resets after update (simulated)"
)

// firmwareSpec is desired.firmware.
type firmwareSpec = protocol.FirmwareRequest

// firmwareUpdate is an update in progress; a newer job cancels it and waits for done before starting, so a
// device never runs two updates at once.
type firmwareUpdate struct {
	job    string
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// abandonUpdate stops the update in progress, for a connection attempt that is given up: its device is
// closed, and the next attempt's device must be free to run the same job.
func (sd *simDevice) abandonUpdate() {
	sd.mu.Lock()
	u := sd.update
	sd.mu.Unlock()
	if u != nil {
		u.cancel()
	}
}

// firmware returns the running version and a copy of the health document.
func (sd *simDevice) firmware() (string, map[string]any) {
	sd.mu.Lock()
	defer sd.mu.Unlock()
	return sd.version, maps.Clone(sd.health)
}

// startUpdate starts the firmware update named by desired.firmware unless the device already finished that
// job or is running it. A newer job supersedes the one in progress: it is cancelled, and the new one starts
// once it has stopped.
func (s *Simulator) startUpdate(sd *simDevice, d *device.Device, fw firmwareSpec) {
	ctx, cancel := context.WithCancel(s.runCtx)
	u := &firmwareUpdate{job: fw.JobID, ctx: ctx, cancel: cancel, done: make(chan struct{})}
	sd.mu.Lock()
	if sd.jobsDone[fw.JobID] || (sd.update != nil && sd.update.job == fw.JobID && sd.update.ctx.Err() == nil) {
		sd.mu.Unlock()
		cancel()
		return
	}
	prev := sd.update
	sd.update = u
	sd.mu.Unlock()
	if prev != nil {
		prev.cancel()
	}
	run := func(context.Context) {
		defer close(u.done)
		defer cancel()
		if prev != nil {
			<-prev.done
		}
		s.runUpdate(ctx, sd, d, fw)
		sd.mu.Lock()
		if sd.update == u {
			sd.update = nil
		}
		sd.mu.Unlock()
	}
	if !s.goBackground(run) {
		// The simulation is stopping; a later update must not wait for this one.
		cancel()
		close(u.done)
	}
}

// runUpdate performs one firmware update: at once if the device already runs the version, otherwise
// download, install and reboot, each taking FirmwareStepDelay, reporting progress on the job's status topic.
func (s *Simulator) runUpdate(ctx context.Context, sd *simDevice, d *device.Device, fw firmwareSpec) {
	if ctx.Err() != nil {
		return // superseded before it started
	}
	version, _ := sd.firmware()
	log := s.log.With("device", sd.id, "job", fw.JobID, "version", fw.Version)
	if fw.Version == version {
		// Nothing to install (a rollback target, or the job was done before a restart): make sure
		// reported says so, then close the job.
		if s.syncReported(ctx, sd, d, true) == nil {
			s.finishJob(ctx, sd, d, fw.JobID, protocol.JobSucceeded, "", 100)
		}
		return
	}
	step := s.cfg.FirmwareStepDelay
	s.progress(ctx, d, fw.JobID, protocol.JobDownloading, 0)
	if step > 0 {
		if !sleep(ctx, step/2) {
			return
		}
		s.progress(ctx, d, fw.JobID, protocol.JobDownloading, 50)
		if !sleep(ctx, step-step/2) {
			return
		}
	}
	s.progress(ctx, d, fw.JobID, protocol.JobInstalling, 0)
	if !sleep(ctx, step) {
		return
	}
	if InstallFails(s.cfg.Seed, sd.id, fw.Version, s.cfg.FailInstall[fw.Version]) {
		log.Debug("firmware install fails (simulated)")
		if s.finishJob(ctx, sd, d, fw.JobID, protocol.JobFailed, installFailedReason, 0) {
			s.firmwareFailed.Add(1)
		}
		return
	}
	s.progress(ctx, d, fw.JobID, protocol.JobRebooting, 0)
	if !sleep(ctx, step) {
		return
	}
	health := map[string]any{"status": "ok"}
	if TurnsUnhealthy(s.cfg.Seed, sd.id, fw.Version, s.cfg.Unhealthy[fw.Version]) {
		health = map[string]any{"status": "failing", "reason": unhealthyReason}
	}
	sd.mu.Lock()
	sd.version, sd.health = fw.Version, health
	sd.mu.Unlock()
	s.firmwareUpdates.Add(1)
	log.Debug("firmware updated", "health", health["status"])
	// The contract: reported.firmware.version after the reboot, then the job's final status.
	if s.syncReported(ctx, sd, d, true) != nil {
		return
	}
	s.finishJob(ctx, sd, d, fw.JobID, protocol.JobSucceeded, "", 100)
}

// progress reports an intermediate job status, once: the next one supersedes it anyway.
func (s *Simulator) progress(ctx context.Context, d *device.Device, job, status string, pct int) {
	if ctx.Err() != nil {
		return // superseded: the newer job's statuses are the ones that count
	}
	if err := d.ReportJobStatus(ctx, job, status, "", pct); err != nil {
		s.log.Debug("job progress not sent", "device", d.ID(), "job", job, "status", status, "err", err)
	}
}

// finishJob reports a job's final status, retrying while the device runs, and remembers the job as done so
// that the desired document of a later reconnect does not start it again.
func (s *Simulator) finishJob(ctx context.Context, sd *simDevice, d *device.Device, job, status, reason string, pct int) bool {
	err := retry(ctx, func() (bool, error) {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		if sd.current.Load() != d {
			return false, errReplaced
		}
		err := d.ReportJobStatus(ctx, job, status, reason, pct)
		return err != nil, err
	})
	if err != nil {
		s.log.Debug("final job status not sent", "device", sd.id, "job", job, "status", status, "err", err)
		return false
	}
	sd.mu.Lock()
	if sd.jobsDone == nil {
		sd.jobsDone = map[string]bool{}
	}
	sd.jobsDone[job] = true
	sd.mu.Unlock()
	return true
}

// parseFirmware reads desired.firmware; a value without a usable jobId and version is not an update.
func parseFirmware(v any) (firmwareSpec, bool) {
	m, ok := v.(map[string]any)
	if !ok {
		return firmwareSpec{}, false
	}
	var fw firmwareSpec
	fw.JobID, _ = m["jobId"].(string)
	fw.Version, _ = m["version"].(string)
	fw.URL, _ = m["url"].(string)
	fw.SHA256, _ = m["sha256"].(string)
	if fw.Version == "" || !protocol.ValidJobID(fw.JobID) {
		return firmwareSpec{}, false
	}
	return fw, true
}

// firmwareVersion is doc.firmware.version, or "".
func firmwareVersion(doc map[string]any) string {
	fw, _ := doc["firmware"].(map[string]any)
	v, _ := fw["version"].(string)
	return v
}
