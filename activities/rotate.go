package activities

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/workflows"
)

// rotateBatch gives a rotation batch's targets new secrets (docs/architecture.md, "Credential rotation"):
//
//  1. a secret is generated for each target here, in the activity's memory: it never enters a workflow
//     payload, a history, a heartbeat or a log line, and is gone when the attempt ends;
//  2. its digest is written into the device's free slot and the target marked dispatched, in one
//     transaction, before anything is sent (StageRotation), so the registry knows every secret a device
//     may receive;
//  3. the secret is delivered with the rotateCredentials method, over the device's authenticated session;
//  4. the outcomes are recorded, and the slots of secrets that did not reach their device cleared again,
//     in one transaction (FinishRotationSends). A device that stored its secret waits, as running, until
//     JobCollectAcks sees it connect with it.
//
// Certificate devices (docs/architecture.md, "Certificate renewal") take the same steps with a certificate
// instead of a secret: before step 2 each is asked (renewCertificate) for a signing request for a key pair
// it generates and keeps, which is checked and signed here with the fleet CA; step 2 stages the new
// certificate's fingerprint in the free certificate slot, step 3 delivers it (installCertificate). The
// certificate, public as it is, stays in this attempt's memory like a secret.
//
// A retried attempt cannot resend the secret or certificate an earlier one made (it is gone): a target that
// attempt staged gets a new one in the same slot, unless its device has already connected with the first.
// A device that stored the first and then sees it replaced falls back to its other slot, which the rotation
// leaves alone until the new one is confirmed: no step of a retry leaves a device without a credential the
// registry knows, and no two certificates a retry signed stay registered together.
func (a *Activities) rotateBatch(ctx context.Context, req workflows.JobBatchInput, targets []fleet.JobTarget) error {
	if a.Rotate == nil {
		return errNoStore("credential rotation")
	}
	if a.Channel == nil {
		return temporal.NewNonRetryableApplicationError(errNoChannel.Error(), "NoChannel", nil)
	}
	if slices.ContainsFunc(targets, func(t fleet.JobTarget) bool { return t.State == fleet.JobDispatched }) && rotateSettle > 0 {
		// An earlier attempt sent secrets and stopped before recording the answers. Its devices reconnect
		// with them at once, and the gateway records those sessions within a flush interval: waiting that
		// long lets StageRotation see them, instead of replacing a secret a device has just started to use
		// (safe, but the device then has to come back with its old one and may miss the new delivery).
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(rotateSettle):
		}
	}
	ids := make([]string, len(targets))
	for i, t := range targets {
		ids[i] = t.DeviceID
	}
	certDevs, err := a.Rotate.CertificateTargets(ctx, ids)
	if err != nil {
		return err
	}
	var certTargets []fleet.JobTarget
	var writes []fleet.RotationWrite
	secrets := make(map[int64]string, len(targets))
	for _, t := range targets {
		if certDevs[t.DeviceID] {
			certTargets = append(certTargets, t)
			continue
		}
		s, err := creds.NewSecret()
		if err != nil {
			return err
		}
		secrets[t.Seq] = s
		writes = append(writes, fleet.RotationWrite{Target: t, Digest: creds.Digest(s)})
	}
	renewed, early, notSent, why, err := a.renewRequests(ctx, req, certTargets)
	if err != nil {
		return err
	}
	for _, r := range renewed {
		writes = append(writes, r.write)
	}
	certs := make(map[int64][]byte, len(renewed))
	for _, r := range renewed {
		certs[r.write.Target.Seq] = r.certPEM
	}
	if err := a.fault(FaultRequested); err != nil {
		return err
	}
	staged, err := a.Rotate.StageRotation(ctx, req.JobID, writes)
	if err != nil {
		return err
	}
	if err := a.fault(FaultClaimed); err != nil {
		return err
	}
	bySeq := make(map[int64]fleet.RotationWrite, len(writes))
	for _, w := range writes {
		bySeq[w.Target.Seq] = w
	}
	var calls []fleet.MethodCall
	var sent []fleet.RotationStaged
	for _, st := range staged {
		if !st.Send {
			continue
		}
		call := fleet.MethodCall{DeviceID: st.DeviceID, Method: protocol.MethodRotateCredentials,
			Payload: protocol.RotateCredentials{Slot: st.Slot, Secret: secrets[st.Seq]}.Payload()}
		if bySeq[st.Seq].Cert {
			call.Method = protocol.MethodInstallCertificate
			call.Payload = protocol.InstallCertificate{Slot: st.Slot, Certificate: string(certs[st.Seq])}.Payload()
		}
		calls = append(calls, call)
		sent = append(sent, st)
	}
	clear(secrets)
	clear(certs)
	outs := early
	var undos []fleet.RotationUndo
	if len(calls) > 0 {
		results := a.Channel.InvokeMany(ctx, calls, req.Timeout, 0)
		for i := range calls {
			calls[i].Payload = nil // the only other copies of the secrets; the channel is done with them
		}
		if err := a.fault(FaultInvoked); err != nil {
			return err
		}
		for i, res := range results {
			st := sent[i]
			w := bySeq[st.Seq]
			what, method := "secret", protocol.MethodRotateCredentials
			if w.Cert {
				what, method = "certificate", protocol.MethodInstallCertificate
			}
			// The device's answer is recorded as its status only: a rotation's answer carries nothing an
			// operator needs, and a confused device could echo its request.
			o := fleet.JobOutcome{Seq: st.Seq, Status: res.Status}
			undo := false
			switch {
			case res.Outcome == fleet.MethodSucceeded:
				o.State = fleet.JobRunning // stored; its connect with the new credential confirms it
			case res.Outcome == fleet.MethodTimedOut:
				// It may have stored it: wait for its connect like the others, within the grace.
				o.State = fleet.JobRunning
			case res.Outcome == fleet.MethodFailed && res.Status == fleet.StatusNotSent:
				// Nothing reached the device: back to pending, and the retry stages and sends it again.
				if notSent++; why == "" {
					why = string(res.Payload)
				}
				o = fleet.JobOutcome{Seq: st.Seq, State: fleet.JobPending}
			case res.Outcome == fleet.MethodOffline:
				o.State, o.Error, undo = fleet.JobOffline, fleet.RotateOffline, true
			case res.Outcome == fleet.MethodFailed && res.Status == 404:
				o.State, o.Error, undo = fleet.JobFailed, fmt.Sprintf("the device does not support credential rotation (no %s method); it keeps its %s",
					method, what), true
			default:
				o.State, o.Error, undo = fleet.JobFailed, fmt.Sprintf("the device refused the new %s (%d: %s); it keeps its old one", what, res.Status,
					protocol.ParseError(res.Payload).Error), true
			}
			if undo {
				undos = append(undos, fleet.RotationUndo{DeviceID: st.DeviceID, Slot: st.Slot, Digest: w.Digest, Cert: w.Cert})
			}
			outs = append(outs, o)
		}
	}
	if err := a.finishRotationSends(ctx, req.JobID, outs, undos); err != nil {
		return err
	}
	if err := a.fault(FaultRecorded); err != nil {
		return err
	}
	if notSent > 0 {
		return fmt.Errorf("job %s: %d new credentials not sent (%s); the retry sends new ones", req.JobID, notSent, why)
	}
	return nil
}

// renewal is a certificate signed for a device's request, waiting to be staged and delivered.
type renewal struct {
	write   fleet.RotationWrite
	certPEM []byte
}

// renewRequests asks the certificate targets for signing requests (renewCertificate), checks and signs each
// with the fleet CA, and returns the renewals to stage, the outcomes of the targets that end here, and how
// many requests reached no device (they stay pending: the retry asks again). A target an earlier attempt
// dispatched whose request fails now waits, as running, for a connect with what that attempt may have
// delivered; the registry keeps both of its slots meanwhile.
func (a *Activities) renewRequests(ctx context.Context, req workflows.JobBatchInput, targets []fleet.JobTarget) (
	renewed []renewal, outs []fleet.JobOutcome, notSent int, why string, err error) {
	if len(targets) == 0 {
		return nil, nil, 0, "", nil
	}
	end := func(t fleet.JobTarget, o fleet.JobOutcome) {
		o.Seq = t.Seq
		if t.State == fleet.JobDispatched {
			o = fleet.JobOutcome{Seq: t.Seq, State: fleet.JobRunning}
		}
		outs = append(outs, o)
	}
	if reason := a.signerProblem(); reason != "" {
		for _, t := range targets {
			end(t, fleet.JobOutcome{State: fleet.JobFailed, Error: reason})
		}
		return nil, outs, 0, "", nil
	}
	calls := make([]fleet.MethodCall, len(targets))
	for i, t := range targets {
		calls[i] = fleet.MethodCall{DeviceID: t.DeviceID, Method: protocol.MethodRenewCertificate}
	}
	results := a.Channel.InvokeMany(ctx, calls, req.Timeout, 0)
	for i, res := range results {
		t := targets[i]
		switch {
		case res.Outcome == fleet.MethodSucceeded:
		case res.Outcome == fleet.MethodFailed && res.Status == fleet.StatusNotSent:
			if notSent++; why == "" {
				why = string(res.Payload)
			}
			continue
		case res.Outcome == fleet.MethodOffline:
			end(t, fleet.JobOutcome{State: fleet.JobOffline, Error: "device offline: no certificate request was made; it keeps its certificate"})
			continue
		case res.Outcome == fleet.MethodTimedOut:
			end(t, fleet.JobOutcome{State: fleet.JobTimedOut, Error: "the device did not answer the certificate request in time; it keeps its certificate"})
			continue
		case res.Outcome == fleet.MethodFailed && res.Status == 404:
			end(t, fleet.JobOutcome{State: fleet.JobFailed, Status: 404,
				Error: "the device does not support certificate renewal (no renewCertificate method); it keeps its certificate"})
			continue
		default:
			end(t, fleet.JobOutcome{State: fleet.JobFailed, Status: res.Status, Error: fmt.Sprintf(
				"the device could not make a certificate request (%d: %s); it keeps its certificate", res.Status, protocol.ParseError(res.Payload).Error)})
			continue
		}
		ans, perr := protocol.ParseRenewCertificateAnswer(res.Payload)
		if perr != nil {
			end(t, fleet.JobOutcome{State: fleet.JobFailed, Error: "certificate request refused: " + perr.Error() + "; it keeps its certificate"})
			continue
		}
		certPEM, fp, notAfter, serr := a.CA.SignDeviceCSR(t.DeviceID, []byte(ans.CSR), req.CertValidity)
		switch {
		case errors.Is(serr, pki.ErrCSRRefused):
			end(t, fleet.JobOutcome{State: fleet.JobFailed, Error: serr.Error() + "; it keeps its certificate"})
			continue
		case serr != nil:
			end(t, fleet.JobOutcome{State: fleet.JobFailed, Error: fleet.RotateNoCA + ": " + serr.Error()})
			continue
		}
		renewed = append(renewed, renewal{write: fleet.RotationWrite{Target: t, Digest: fp, Cert: true, NotAfter: notAfter}, certPEM: certPEM})
	}
	return renewed, outs, notSent, why, nil
}

// signerProblem says why certificate renewals cannot be signed by this worker ("" when they can), before
// any device is asked to generate a key for nothing.
func (a *Activities) signerProblem() string {
	if a.CA == nil {
		return fleet.RotateNoCA + ": this worker has no fleet CA (FLEETFLOW_DEVICE_CA_DIR)"
	}
	if c, ok := a.CA.(interface{ Check() error }); ok {
		if err := c.Check(); err != nil {
			return fleet.RotateNoCA + ": " + strings.TrimSpace(err.Error())
		}
	}
	return ""
}

// rotateSettle is how long a retried rotation batch waits for the connects of devices an earlier attempt
// delivered to be recorded (ten gateway flush intervals); a variable so that tests need not wait.
var rotateSettle = 2 * time.Second

// finishRotationSends records a batch's delivery outcomes, retrying a failing registry as recordSent does:
// a secret delivered but not recorded is confirmed all the same when its device connects, so the retry is
// only about the report.
func (a *Activities) finishRotationSends(ctx context.Context, job string, outs []fleet.JobOutcome, undos []fleet.RotationUndo) error {
	wait := recordSentBackoff
	for try := 1; ; try++ {
		err := a.Rotate.FinishRotationSends(ctx, job, outs, undos)
		if err == nil || try == recordSentTries {
			return err
		}
		activityLogger(ctx).Warn("recording rotation deliveries failed; trying again", "job", job, "try", try, "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait *= 2
	}
}
