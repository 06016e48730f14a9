package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// Limits of the contract's payloads (docs/architecture.md, "Data limits"). The gateway refuses packets over
// 256 KiB by dropping the connection, which would fail every call in flight on a service's shared
// connection; services therefore refuse oversized messages before sending them.
const (
	// MaxMethodPayload is the largest method request payload, as in Azure IoT Hub.
	MaxMethodPayload = 128 * 1024
	// MaxDesiredPatch is the largest desired patch a service publishes.
	MaxDesiredPatch = 128 * 1024
	// MaxJobStatusBytes bounds a job status message: a status is a few words, the limit only stops a device
	// from filling the registry with text.
	MaxJobStatusBytes = 4 << 10
	// MaxJobReasonBytes bounds the reason of a job status.
	MaxJobReasonBytes = 1 << 10
)

// DefaultMethodTimeout is how long a method caller waits for the answer unless it says otherwise; it is
// also the deadline a device gives its method handlers.
const DefaultMethodTimeout = 30 * time.Second

// ErrorBody is the body of an error answer on a twin or method response topic.
type ErrorBody struct {
	Error string `json:"error"`
	// Code classifies the error where a caller must tell errors with the same status apart (OfflineCode,
	// SchemeViolationCode).
	Code string `json:"code,omitempty"`
	// Violations (SchemeViolationCode) are the paths and rules the refused patch breaks.
	Violations []PathRule `json:"violations,omitempty"`
}

// PathRule is one violation of the metadata scheme: a path as the query language writes it
// ("properties.reported.telemetryInterval") and the rule it breaks ("got string, want integer").
type PathRule struct {
	Path string `json:"path"`
	Rule string `json:"rule"`
}

// The gateway's answer to a reported patch the metadata scheme's reported-properties schema refuses: status
// StatusSchemeViolation on the device's twin response topic, code SchemeViolationCode, the message naming the
// first path and rule and Violations listing them (at most MaxViolations). Nothing of the patch is written.
const (
	StatusSchemeViolation = 400
	SchemeViolationCode   = "SchemeViolation"
	MaxViolations         = 20
)

// SchemeViolationPayload is the body of the gateway's scheme refusal.
func SchemeViolationPayload(msg string, vs []PathRule) []byte {
	if len(vs) > MaxViolations {
		vs = vs[:MaxViolations]
	}
	b, _ := json.Marshal(ErrorBody{Error: msg, Code: SchemeViolationCode, Violations: vs}) // strings only: always marshals
	return b
}

// ErrorPayload is the JSON of ErrorBody{Error: msg}.
func ErrorPayload(msg string) []byte {
	b, _ := json.Marshal(ErrorBody{Error: msg}) // a struct of strings always marshals
	return b
}

// ParseError reads the message of an error answer; a body that is not an ErrorBody gives "".
func ParseError(body []byte) ErrorBody {
	var e ErrorBody
	_ = json.Unmarshal(body, &e)
	return e
}

// The gateway's answer to a method request for a device that has no session: status StatusOffline on the
// device's method response topic, with code OfflineCode. The code is the one Azure IoT Hub uses, so that
// callers can tell "offline" from a device's own 404 ("unknown method").
const (
	StatusOffline = 404
	OfflineCode   = "DeviceNotOnline"
)

// OfflinePayload is the body of the gateway's offline answer (a new slice on every call).
func OfflinePayload() []byte {
	return []byte(`{"error":"device offline","code":"` + OfflineCode + `"}`)
}

// IsOffline reports whether a method response is the gateway's offline answer rather than the device's.
func IsOffline(status int, body []byte) bool {
	if status != StatusOffline {
		return false
	}
	var e ErrorBody
	return json.Unmarshal(body, &e) == nil && e.Code == OfflineCode
}

// ReportedAck is the body of the gateway's 204 answer to a reported patch: the new reported version.
// (The body of a 200 answer to twin/get is the twin's properties, {"desired": {…, "$version": n},
// "reported": {…}}, as internal/twin encodes them.)
type ReportedAck struct {
	Version int64 `json:"version"`
}

// ReportedAckPayload is the JSON of ReportedAck{Version: v}.
func ReportedAckPayload(v int64) []byte { return fmt.Appendf(nil, `{"version":%d}`, v) }

// The job statuses a device reports on devices/{id}/jobs/{jobId}/status, in the order of a firmware
// update; the last two are final.
const (
	JobDownloading = "downloading"
	JobInstalling  = "installing"
	JobRebooting   = "rebooting"
	JobSucceeded   = "succeeded"
	JobFailed      = "failed"
)

// ValidJobStatus reports whether s is one of the contract's job statuses.
func ValidJobStatus(s string) bool {
	switch s {
	case JobDownloading, JobInstalling, JobRebooting, JobSucceeded, JobFailed:
		return true
	}
	return false
}

// JobProgress is the body of a job status message: {"status": …, "reason": …, "progress": …}.
type JobProgress struct {
	Status   string `json:"status"`
	Reason   string `json:"reason,omitempty"`   // why a job failed, free text, may be empty
	Progress int    `json:"progress,omitempty"` // percent 0..100, 0 when not given
}

// Payload validates p and encodes it.
func (p JobProgress) Payload() ([]byte, error) {
	switch {
	case !ValidJobStatus(p.Status):
		return nil, fmt.Errorf("job status %q must be one of downloading, installing, rebooting, succeeded, failed", p.Status)
	case p.Progress < 0 || p.Progress > 100:
		return nil, fmt.Errorf("progress %d outside 0..100", p.Progress)
	case len(p.Reason) > MaxJobReasonBytes || !utf8.ValidString(p.Reason):
		return nil, fmt.Errorf("reason must be valid UTF-8 of at most %d bytes", MaxJobReasonBytes)
	}
	return json.Marshal(p)
}

// ParseJobProgress decodes and validates a job status message. Only status is required; progress may be
// fractional (it is rounded); unknown fields are ignored, so devices may send more than a gateway
// understands.
func ParseJobProgress(payload []byte) (JobProgress, error) {
	if len(payload) > MaxJobStatusBytes {
		return JobProgress{}, fmt.Errorf("payload of %d bytes exceeds %d", len(payload), MaxJobStatusBytes)
	}
	var body struct {
		Status   *string  `json:"status"`
		Reason   *string  `json:"reason"`
		Progress *float64 `json:"progress"`
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(payload, &obj); err != nil || obj == nil {
		return JobProgress{}, errors.New("not a JSON object")
	}
	if err := json.Unmarshal(payload, &body); err != nil {
		return JobProgress{}, fmt.Errorf("decode: %w", err)
	}
	var p JobProgress
	if body.Status == nil || !ValidJobStatus(*body.Status) {
		return JobProgress{}, errors.New(`"status" must be one of downloading, installing, rebooting, succeeded, failed`)
	}
	p.Status = *body.Status
	if body.Reason != nil {
		if len(*body.Reason) > MaxJobReasonBytes || !utf8.ValidString(*body.Reason) {
			return JobProgress{}, fmt.Errorf(`"reason" must be valid UTF-8 of at most %d bytes`, MaxJobReasonBytes)
		}
		p.Reason = *body.Reason
	}
	if body.Progress != nil {
		v := *body.Progress
		if math.IsNaN(v) || v < 0 || v > 100 {
			return JobProgress{}, errors.New(`"progress" must be a percentage between 0 and 100`)
		}
		p.Progress = int(math.Round(v))
	}
	return p, nil
}

// State is the retained message on devices/{id}/state: the birth (online) a device publishes after every
// connect and its last will (offline). Session numbers grow with every connection of a device, so that a
// consumer can discard the late LWT of an older connection arriving after the newer one's birth.
type State struct {
	Online  bool  `json:"online"`
	Session int64 `json:"session"`
}

// Payload encodes s. It is written by hand, as {"online":…,"session":…}, because a device builds one for
// every (re)connect of thousands of simulated devices.
func (s State) Payload() []byte {
	b := append([]byte(`{"online":`), strconv.FormatBool(s.Online)...)
	b = append(b, `,"session":`...)
	b = strconv.AppendInt(b, s.Session, 10)
	return append(b, '}')
}

// ParseState decodes a state message. An empty payload (the gateway clears the state of a retired
// device with one) is an error.
func ParseState(payload []byte) (State, error) {
	var body struct {
		Online  *bool  `json:"online"`
		Session *int64 `json:"session"`
	}
	if err := json.Unmarshal(payload, &body); err != nil {
		return State{}, fmt.Errorf("state: %w", err)
	}
	if body.Online == nil || body.Session == nil {
		return State{}, errors.New(`state: "online" and "session" are required`)
	}
	return State{Online: *body.Online, Session: *body.Session}, nil
}

// FirmwareKey is the desired property that asks a device to install firmware.
const FirmwareKey = "firmware"

// FirmwareRequest is desired.firmware: install Version (from URL, checked against SHA256) under JobID, and
// report progress on devices/{id}/jobs/{JobID}/status. URL and SHA256 are left out when empty.
type FirmwareRequest struct {
	JobID   string `json:"jobId"`
	Version string `json:"version"`
	URL     string `json:"url,omitempty"`
	SHA256  string `json:"sha256,omitempty"`
}

// DesiredPatch is the desired merge patch {"firmware": {…}} that carries r.
func (r FirmwareRequest) DesiredPatch() []byte {
	b, err := json.Marshal(map[string]FirmwareRequest{FirmwareKey: r})
	if err != nil {
		panic(fmt.Sprintf("encode a firmware request: %v", err)) // four strings always encode
	}
	return b
}

// MethodRotateCredentials is the direct method that delivers a device its new secret during a credential
// rotation (docs/architecture.md, "Credential rotation"). The device stores Secret in Slot, durably, before
// it answers 2xx, keeps its other slot's secret, and then reconnects presenting the new one first.
const MethodRotateCredentials = "rotateCredentials"

// RotateCredentials is the payload of MethodRotateCredentials.
type RotateCredentials struct {
	// Slot is the registry slot the secret's digest was written into: 1 or 2.
	Slot   int    `json:"slot"`
	Secret string `json:"secret"`
}

// Payload encodes the request.
func (r RotateCredentials) Payload() []byte {
	b, _ := json.Marshal(r) // two plain fields: cannot fail
	return b
}

// ParseRotateCredentials decodes and checks a MethodRotateCredentials payload.
func ParseRotateCredentials(payload []byte) (RotateCredentials, error) {
	var r RotateCredentials
	if err := json.Unmarshal(payload, &r); err != nil {
		return r, fmt.Errorf("rotateCredentials payload: %w", err)
	}
	if r.Slot != 1 && r.Slot != 2 {
		return r, fmt.Errorf("rotateCredentials payload: slot %d: must be 1 or 2", r.Slot)
	}
	if r.Secret == "" {
		return r, errors.New("rotateCredentials payload: no secret")
	}
	return r, nil
}

// Certificate renewal (docs/architecture.md, "Certificate renewal"): two direct methods. A device that
// authenticates with a client certificate is asked with MethodRenewCertificate to generate a new key pair and
// answer a certificate signing request for it (subject: its id); the key stays on the device. The fleet CA
// signs the request, and MethodInstallCertificate delivers the certificate, which the device stores with
// its key in the slot named, durably, before it answers 2xx; it then reconnects presenting it.
const (
	MethodRenewCertificate   = "renewCertificate"
	MethodInstallCertificate = "installCertificate"
)

// RenewCertificateAnswer is a device's answer to MethodRenewCertificate.
type RenewCertificateAnswer struct {
	// CSR is the PEM certificate signing request for the device's new key.
	CSR string `json:"csr"`
}

// ParseRenewCertificateAnswer decodes a MethodRenewCertificate answer.
func ParseRenewCertificateAnswer(payload []byte) (RenewCertificateAnswer, error) {
	var a RenewCertificateAnswer
	if err := json.Unmarshal(payload, &a); err != nil {
		return a, fmt.Errorf("renewCertificate answer: %w", err)
	}
	if a.CSR == "" {
		return a, errors.New("renewCertificate answer: no csr")
	}
	return a, nil
}

// InstallCertificate is the payload of MethodInstallCertificate.
type InstallCertificate struct {
	// Slot is the registry certificate slot the certificate's fingerprint was written into: 1 or 2.
	Slot int `json:"slot"`
	// Certificate is the PEM client certificate the fleet CA signed for the device's new key.
	Certificate string `json:"certificate"`
}

// Payload encodes the request.
func (r InstallCertificate) Payload() []byte {
	b, _ := json.Marshal(r) // two plain fields: cannot fail
	return b
}

// ParseInstallCertificate decodes and checks a MethodInstallCertificate payload.
func ParseInstallCertificate(payload []byte) (InstallCertificate, error) {
	var r InstallCertificate
	if err := json.Unmarshal(payload, &r); err != nil {
		return r, fmt.Errorf("installCertificate payload: %w", err)
	}
	if r.Slot != 1 && r.Slot != 2 {
		return r, fmt.Errorf("installCertificate payload: slot %d: must be 1 or 2", r.Slot)
	}
	if r.Certificate == "" {
		return r, errors.New("installCertificate payload: no certificate")
	}
	return r, nil
}
