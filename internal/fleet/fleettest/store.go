// Package fleettest is the one in-memory fake of fleetflow's registry: it implements the store interfaces of
// internal/fleet (provisioning, jobs, rollouts, retire, monitor) the way the Postgres registry does, for the
// behaviours activities rely on, and records every call for assertions. The contract test (Contract, run
// against this fake and against internal/registry on a throwaway Postgres) keeps the two honest.
//
// Tests set up the fleet through the exported fields and the Add* helpers, may script answers (Acks,
// Fail, OnObserve) and read what was called from the recorded fields. Every method takes the store's lock;
// tests that read or write fields while activities run take Mu themselves.
package fleettest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/health"
	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/internal/rollout"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// Device is one device of the in-memory fleet.
type Device struct {
	Status          fleet.DeviceStatus // fleet.StatusActive unless set
	Tags, Desired   []byte
	TagsVersion     int64
	DesiredVersion  int64
	Reported        []byte // the reported document; ReportedVersion is its firmware.version
	ReportedRev     int64  // the reported section's version, bumped by every applied patch
	Online          bool
	LastSeen        time.Time
	ReportedVersion string
	Health          string
	HealthReason    string
	JobStatus       map[string][2]string // job id -> {status, reason}
	ProvisionedBy   string
	// CredentialExpiresAt is when the device's credentials expire (zero: never).
	CredentialExpiresAt time.Time
	RetiredAt           time.Time
	// CreatedAt is when the device was added (AddDevice and provisioning set it when zero); DesiredAt when
	// its desired section last changed (zero: never since creation). The health rules read both.
	CreatedAt  time.Time
	DesiredAt  time.Time
	Replaces   string
	ReplacedBy string
	// Secret1Hash and Secret2Hash are the digests of the two secret slots, CertFingerprint the client
	// certificate's; AuthDigest is the digest the newest session authenticated with, as the gateway records
	// it (credential rotations only read these).
	Secret1Hash, Secret2Hash []byte
	CertFingerprint          []byte
	AuthDigest               []byte
	// Cert2Fingerprint is the second certificate slot's, CertNotAfter and Cert2NotAfter the slots' ends
	// where a renewal signed them (docs/architecture.md, "Certificate renewal").
	Cert2Fingerprint            []byte
	CertNotAfter, Cert2NotAfter time.Time
}

// RolloutRow is one device of a rollout (rollout_devices).
type RolloutRow struct {
	Rollout      string
	Rank         int64
	DeviceID     string
	Wave         int // -1: not in a wave yet
	Phase        rollout.Phase
	PrevVersion  string
	Reason       string
	DispatchedAt time.Time
	BakeSince    time.Time
	RollbackAt   time.Time
	Active       bool // the claim is held
}

// StagedRow is one staged manifest row; ParseError marks a row the CLI could not parse.
type StagedRow struct {
	Line       int64
	ID         string
	Tags       string // JSON text; "" means {}
	ParseError string
}

// PatchCall is one recorded PatchTwins call.
type PatchCall struct {
	Section twin.Section
	Patches []fleet.DevicePatch
}

// DispatchCall is one recorded DispatchWave call.
type DispatchCall struct {
	Rollout  string
	Wave     int
	Cutoff   int64
	FW       fleet.Firmware
	Limit    int
	After    int64 // DispatchWaveWindowed: the chunk starts after this rank
	Windowed bool  // a DispatchWaveWindowed call
}

// FinishCall is one recorded FinishRollout call.
type FinishCall struct {
	ID     string
	State  fleet.RolloutEnd
	Result json.RawMessage
}

// Store is the in-memory registry.
type Store struct {
	Mu sync.Mutex

	Devices     map[string]*Device
	Targets     map[string][]fleet.JobTarget // job -> targets in seq order
	Rows        []*RolloutRow                // rank order within a rollout, rollouts in creation order
	FirmwareURL map[string]string            // catalogue: version -> url (rollback patches)
	Staged      map[string][]StagedRow       // op -> staged rows in seq order
	Results     map[string][]fleet.RowResult // op -> rows that did not create a device
	Batches     map[string]fleet.ProvisionCounts
	StagedAt    map[string]time.Time // op -> when it was staged (DropStaleStaging)
	// Staging is the staging state of ops staged in chunks ("open" or "abandoned"); an op not in it is done.
	Staging   map[string]string
	Jobs      map[string]int64          // job -> total, for the jobs CreateJob made
	CredSlots map[string]map[int64]int  // rotation job -> seq -> the slot its new digest went into
	CredCerts map[string]map[int64]bool // rotation job -> seq -> the slot is a certificate slot
	Rollouts  map[string]int64          // rollout -> total, for the rollouts CreateRollout made
	// Selects is what a twin query selects, since the fake compiles no queries: query -> device ids.
	// CreateJob and CreateRollout refuse a query they were not taught.
	Selects map[string][]string
	// Now is the store's clock (time.Now when nil).
	Now func() time.Time

	// Scripted answers.
	Acks      []fleet.AckProgress      // when set, CollectAcks answers these in turn, the last repeated
	JobCounts map[fleet.JobState]int64 // when set, JobTotals counts these instead of the targets
	Fail      map[string]error         // method name -> error it returns
	OnObserve func(call int)           // called (under the lock) before the call-th ObserveRollout, from 1
	// OnHealthCheck, when set, is called (without the lock) before RunHealthCheck does anything; an error it
	// returns is the call's. Tests use it to make a check slow or to fail it.
	OnHealthCheck func(ctx context.Context) error

	// The monitor's state: alerts in the order they were opened (ids from 1), the summary of every health
	// run by run id (a retry with the same id replaces it, as health_runs does), and the rollouts the firmware
	// rule reads (CreateRollout records them, FinishRollout completes them).
	Alerts       []*Alert
	Summaries    map[string]fleet.HealthSummary
	RolloutSpecs map[string]*RolloutSpec

	// Recorded calls.
	TargetRanges   [][2]int64
	Recorded       [][]fleet.JobOutcome
	PatchCalls     []PatchCall
	AckCalls       int
	AckArgs        []string // job, then keys, of the last CollectAcks
	Closed         []string // "job=state"
	DispatchCalls  []DispatchCall
	ObserveCalls   int
	ObserveJobs    []string
	ObservePhases  [][]rollout.Phase
	PhaseUpdates   [][]fleet.PhaseUpdate
	RollbackCalls  []string // job ids
	RollbackLimits []int
	Finished       []FinishCall
	DevicesPhases  []rollout.Phase
	DevicesLimit   int
	HealthCalls    []HealthCall
	Rotated        []string // devices whose rotation CollectRotations confirmed, in order
}

// Alert is one alert of the fake's monitor (the registry's alerts row); ResolvedAt is zero while it is open.
type Alert struct {
	ID         int64
	DeviceID   string
	Kind       fleet.AlertKind
	Detail     string
	FirstSeen  time.Time
	LastSeen   time.Time
	ResolvedAt time.Time
}

// RolloutSpec is what the firmware rule needs of a rollout: its query (resolved through Selects), its
// version, and when it completed (zero: not completed).
type RolloutSpec struct {
	ID, Query, Version string
	Created, Completed time.Time
}

// HealthCall is one recorded RunHealthCheck call, with the rules as the caller passed them.
type HealthCall struct {
	RunID string
	Rules health.Rules
}

// The fake plays every role of the registry that activities use.
var (
	_ fleet.ProvisionStore = (*Store)(nil)
	_ fleet.JobStore       = (*Store)(nil)
	_ fleet.RolloutStore   = (*Store)(nil)
	_ fleet.RetireStore    = (*Store)(nil)
	_ fleet.MonitorStore   = (*Store)(nil)
	_ fleet.RotateStore    = (*Store)(nil)
)

// New returns an empty store.
func New() *Store {
	return &Store{Devices: map[string]*Device{}, Targets: map[string][]fleet.JobTarget{}, FirmwareURL: map[string]string{},
		Staged: map[string][]StagedRow{}, Results: map[string][]fleet.RowResult{}, Batches: map[string]fleet.ProvisionCounts{},
		StagedAt: map[string]time.Time{}, Staging: map[string]string{}, Jobs: map[string]int64{}, CredSlots: map[string]map[int64]int{}, CredCerts: map[string]map[int64]bool{},
		Rollouts: map[string]int64{}, Selects: map[string][]string{},
		Summaries: map[string]fleet.HealthSummary{}, RolloutSpecs: map[string]*RolloutSpec{}}
}

func (s *Store) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Store) err(method string) error { return s.Fail[method] }

// AddDevice adds (or replaces) a device; an empty status is active, empty documents are {}.
func (s *Store) AddDevice(id string, d Device) *Device {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	return s.addDeviceLocked(id, d)
}

func (s *Store) addDeviceLocked(id string, d Device) *Device {
	if d.Status == "" {
		d.Status = fleet.StatusActive
	}
	if d.CreatedAt.IsZero() {
		d.CreatedAt = s.now()
	}
	if d.JobStatus == nil {
		d.JobStatus = map[string][2]string{}
	}
	for _, doc := range []*[]byte{&d.Tags, &d.Desired, &d.Reported} {
		if len(*doc) == 0 {
			*doc = []byte("{}")
		}
	}
	s.Devices[id] = &d
	return &d
}

// AddJob freezes targets seq 0..len(ids)-1 of job, all pending.
func (s *Store) AddJob(job string, ids ...string) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	for i, id := range ids {
		s.Targets[job] = append(s.Targets[job], fleet.JobTarget{Seq: int64(i), DeviceID: id, State: fleet.JobPending})
	}
}

// AddRow adds a device to a rollout (Rollout may be left empty when a test has one rollout) with the next
// rank, queued unless Phase is set.
func (s *Store) AddRow(r RolloutRow) *RolloutRow {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	var n int64
	for _, x := range s.Rows {
		if x.Rollout == r.Rollout {
			n++
		}
	}
	r.Rank = n
	if r.Phase == "" {
		r.Phase, r.Wave = rollout.Queued, -1
	}
	r.Active = true
	s.Rows = append(s.Rows, &r)
	return &r
}

// TargetState is a job target's state ("" when there is no such target).
func (s *Store) TargetState(job string, seq int64) fleet.JobState {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	for _, t := range s.Targets[job] {
		if t.Seq == seq {
			return t.State
		}
	}
	return ""
}

// Stage stages manifest rows under op, as the CLI does before ProvisionFleet starts.
func (s *Store) Stage(op string, rows []StagedRow) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	s.Staged[op] = append(s.Staged[op], rows...)
	if _, ok := s.StagedAt[op]; !ok {
		s.StagedAt[op] = s.now()
	}
}

// ---- provisioning -----------------------------------------------------------------------------------------

// ProvisionBatch creates the devices of staged rows first..last-1 of op; a batch already committed
// returns its recorded counts.
func (s *Store) ProvisionBatch(_ context.Context, op string, first, last int64, validity time.Duration) (fleet.ProvisionCounts, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	var c fleet.ProvisionCounts
	if err := s.err("ProvisionBatch"); err != nil {
		return c, err
	}
	key := fmt.Sprintf("%s/%d-%d", op, first, last)
	if done, ok := s.Batches[key]; ok {
		return done, nil
	}
	rows, ok := s.Staged[op]
	if !ok {
		return c, fmt.Errorf("provision %s: %w", op, fleet.ErrOperationNotStaged)
	}
	if last > int64(len(rows)) {
		return c, fmt.Errorf("provision %s rows %d..%d: %w", op, first, last, fleet.ErrStagingLost)
	}
	for _, r := range rows[first:last] {
		reason := validateRow(r)
		switch {
		case reason != "":
			c.Invalid++
			s.Results[op] = append(s.Results[op], fleet.RowResult{Line: r.Line, ID: r.ID, Outcome: fleet.RowInvalid, Reason: reason})
		case s.Devices[r.ID] != nil:
			c.Existing++
			s.Results[op] = append(s.Results[op], fleet.RowResult{Line: r.Line, ID: r.ID, Outcome: fleet.RowExists,
				Reason: "a device with this id already exists"})
		default:
			c.Created++
			tags := r.Tags
			if tags == "" {
				tags = "{}"
			}
			d := Device{Tags: []byte(tags), ProvisionedBy: op}
			if validity > 0 {
				d.CredentialExpiresAt = s.now().Add(validity)
			}
			s.addDeviceLocked(r.ID, d)
		}
	}
	s.Batches[key] = c
	return c, nil
}

func validateRow(r StagedRow) string {
	if r.ParseError != "" {
		return r.ParseError
	}
	if r.ID == "" {
		return "missing id"
	}
	if err := twin.ValidateID(r.ID); err != nil {
		return err.Error()
	}
	tags := r.Tags
	if tags == "" {
		tags = "{}"
	}
	if err := twin.Validate(twin.Tags, []byte(tags)); err != nil {
		return err.Error()
	}
	return ""
}

// ConnectProgress counts op's devices that have connected (or reported) and reported.
func (s *Store) ConnectProgress(_ context.Context, op string, sample int) (fleet.ConnectProgress, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	var p fleet.ConnectProgress
	if err := s.err("ConnectProgress"); err != nil {
		return p, err
	}
	var ids []string
	for id, d := range s.Devices {
		if d.ProvisionedBy != op {
			continue
		}
		p.Created++
		reported := string(d.Reported) != "{}"
		if reported {
			p.Reported++
		}
		if reported || d.Online || !d.LastSeen.IsZero() {
			p.Connected++
		}
		if !reported {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	if sample > 0 && len(ids) > 0 {
		p.Missing = ids[:min(sample, len(ids))]
	}
	return p, nil
}

// ProvisionResults lists up to limit rows of op with the outcome ("" for all), in line order.
func (s *Store) ProvisionResults(_ context.Context, op string, outcome fleet.RowOutcome, limit int) ([]fleet.RowResult, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("ProvisionResults"); err != nil {
		return nil, err
	}
	out := []fleet.RowResult{}
	for _, r := range s.Results[op] {
		if (outcome == "" || r.Outcome == outcome) && len(out) < limit {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Line < out[j].Line })
	return out, nil
}

// StagedRows returns how many rows of op are staged and whether staging is done (Staging); the fake never
// finds a staging stalled: tests set "abandoned" themselves.
func (s *Store) StagedRows(_ context.Context, op string, _ time.Duration) (fleet.Staged, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("StagedRows"); err != nil {
		return fleet.Staged{}, err
	}
	rows, ok := s.Staged[op]
	if !ok {
		return fleet.Staged{}, fmt.Errorf("%s: %w", op, fleet.ErrOperationNotStaged)
	}
	st := fleet.Staged{Rows: int64(len(rows))}
	switch s.Staging[op] {
	case "abandoned":
		return st, fmt.Errorf("%s after %d rows: %w", op, st.Rows, fleet.ErrStagingAbandoned)
	case "open":
	default:
		st.Done = true
	}
	return st, nil
}

// DropStaging deletes op's staged rows; results and counts stay.
func (s *Store) DropStaging(_ context.Context, op string) error {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("DropStaging"); err != nil {
		return err
	}
	delete(s.Staged, op)
	return nil
}

// DropStaleStaging deletes the staged rows of operations staged more than olderThan ago; the operation
// stays known (a batch then reports fleet.ErrStagingLost, as the registry does).
func (s *Store) DropStaleStaging(_ context.Context, olderThan time.Duration) (int64, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("DropStaleStaging"); err != nil {
		return 0, err
	}
	if olderThan <= 0 {
		return 0, errors.New("drop stale staging: the age must be positive")
	}
	var n int64
	for op, at := range s.StagedAt {
		if at.Before(s.now().Add(-olderThan)) && len(s.Staged[op]) > 0 {
			n += int64(len(s.Staged[op]))
			s.Staged[op] = []StagedRow{}
		}
	}
	return n, nil
}

// ---- device ingest ----------------------------------------------------------------------------------------

// ApplyReported merges devices' reported patches, each on its own: an unknown device is ErrNotFound, a
// disabled or retired one ErrNotActive, and an invalid or oversized document a twin error; the others get
// their reported section's new version.
func (s *Store) ApplyReported(_ context.Context, patches []fleet.ReportedPatch) ([]fleet.ReportedResult, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("ApplyReported"); err != nil {
		return nil, err
	}
	out := make([]fleet.ReportedResult, len(patches))
	for i, p := range patches {
		out[i] = fleet.ReportedResult{DeviceID: p.DeviceID, RequestID: p.RequestID}
		d, ok := s.Devices[p.DeviceID]
		switch {
		case !ok:
			out[i].Err = fmt.Errorf("device %s: %w", p.DeviceID, fleet.ErrNotFound)
		case d.Status != fleet.StatusActive:
			out[i].Err = fmt.Errorf("device %s: %w", p.DeviceID, fleet.ErrNotActive)
		default:
			if err := s.reportLocked(d, p.Patch); err != nil {
				out[i].Err = fmt.Errorf("device %s: %w", p.DeviceID, err)
				continue
			}
			out[i].Version = d.ReportedRev
		}
	}
	return out, nil
}

// reportLocked merges a reported patch into d and keeps ReportedVersion (firmware.version) in step.
func (s *Store) reportLocked(d *Device, patch []byte) error {
	merged, err := twin.Apply(twin.Reported, d.Reported, patch)
	if err != nil {
		return err
	}
	d.Reported = merged
	d.ReportedRev++
	var doc struct {
		Firmware struct {
			Version string `json:"version"`
		} `json:"firmware"`
	}
	_ = json.Unmarshal(merged, &doc)
	d.ReportedVersion = doc.Firmware.Version
	return nil
}

// ---- jobs -------------------------------------------------------------------------------------------------

// JobTargets returns the unfinished (pending or dispatched) targets with seq in first..last.
func (s *Store) JobTargets(_ context.Context, job string, first, last int64) ([]fleet.JobTarget, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	s.TargetRanges = append(s.TargetRanges, [2]int64{first, last})
	if err := s.err("JobTargets"); err != nil {
		return nil, err
	}
	var out []fleet.JobTarget
	for _, t := range s.Targets[job] {
		if t.Seq >= first && t.Seq <= last && (t.State == fleet.JobPending || t.State == fleet.JobDispatched) {
			out = append(out, t)
		}
	}
	return out, nil
}

// TargetTags returns the named tags' text values of the devices among ids.
func (s *Store) TargetTags(_ context.Context, ids []string, names []string) (map[string]map[string]string, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("TargetTags"); err != nil {
		return nil, err
	}
	out := map[string]map[string]string{}
	for _, id := range ids {
		d := s.Devices[id]
		if d == nil || len(d.Tags) == 0 {
			continue
		}
		var tags map[string]any
		if err := json.Unmarshal(d.Tags, &tags); err != nil {
			return nil, err
		}
		for _, n := range names {
			v, ok := tags[n]
			if !ok {
				continue
			}
			if out[id] == nil {
				out[id] = map[string]string{}
			}
			if str, isStr := v.(string); isStr {
				out[id][n] = str
			} else {
				b, _ := json.Marshal(v)
				out[id][n] = string(b)
			}
		}
	}
	return out, nil
}

// RecordJobOutcomes records per-target outcomes of targets still pending or dispatched.
func (s *Store) RecordJobOutcomes(_ context.Context, job string, outs []fleet.JobOutcome) error {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("RecordJobOutcomes"); err != nil {
		return err
	}
	s.recordLocked(job, outs)
	return nil
}

// recordLocked records outs on unfinished targets and returns how many it updated.
func (s *Store) recordLocked(job string, outs []fleet.JobOutcome) int {
	if len(outs) == 0 {
		return 0
	}
	s.Recorded = append(s.Recorded, slices.Clone(outs))
	n := 0
	for _, o := range outs {
		for i := range s.Targets[job] {
			t := &s.Targets[job][i]
			if t.Seq == o.Seq && (t.State == fleet.JobPending || t.State == fleet.JobDispatched) {
				t.State = o.State
				n++
			}
		}
	}
	return n
}

// ClaimJobTargets marks the pending targets among seqs dispatched and returns their seqs in order.
func (s *Store) ClaimJobTargets(_ context.Context, job string, seqs []int64) ([]int64, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("ClaimJobTargets"); err != nil {
		return nil, err
	}
	var out []int64
	for i := range s.Targets[job] {
		t := &s.Targets[job][i]
		if t.State == fleet.JobPending && slices.Contains(seqs, t.Seq) {
			t.State = fleet.JobDispatched
			out = append(out, t.Seq)
		}
	}
	slices.Sort(out)
	return out, nil
}

// PatchJobTargets patches the pending targets' devices and records their outcomes, all or nothing.
func (s *Store) PatchJobTargets(_ context.Context, job string, section twin.Section, targets []fleet.JobTarget, patch []byte,
	outcomes fleet.JobOutcomesFunc[fleet.PatchResult]) error {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	var todo []fleet.JobTarget
	var ids []string
	patches := []fleet.DevicePatch{}
	for _, t := range targets {
		if t.State == fleet.JobPending {
			todo = append(todo, t)
			ids = append(ids, t.DeviceID)
			patches = append(patches, fleet.DevicePatch{DeviceID: t.DeviceID, Patch: patch})
		}
	}
	if len(todo) == 0 {
		return nil
	}
	s.PatchCalls = append(s.PatchCalls, PatchCall{Section: section, Patches: patches})
	if err := s.err("PatchJobTargets"); err != nil {
		return err
	}
	undo := s.snapshotLocked(ids)
	outs, err := outcomes(todo, s.patchLocked(section, patches))
	if err == nil {
		err = s.recordAllLocked(job, outs)
	}
	if err != nil {
		undo()
		return err
	}
	return nil
}

// JobRangeTotals counts the targets with seq in first..last per state.
func (s *Store) JobRangeTotals(_ context.Context, job string, first, last int64) (fleet.JobCounts, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	var c fleet.JobCounts
	if err := s.err("JobRangeTotals"); err != nil {
		return c, err
	}
	for _, t := range s.Targets[job] {
		if t.Seq >= first && t.Seq <= last {
			c.AddState(t.State, 1)
		}
	}
	return c, nil
}

// PatchTwins merges per-device patches; a refused device does not fail the others.
func (s *Store) PatchTwins(_ context.Context, section twin.Section, patches []fleet.DevicePatch) ([]fleet.PatchResult, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	s.PatchCalls = append(s.PatchCalls, PatchCall{Section: section, Patches: slices.Clone(patches)})
	if err := s.err("PatchTwins"); err != nil {
		return nil, err
	}
	return s.patchLocked(section, patches), nil
}

func (s *Store) patchLocked(section twin.Section, patches []fleet.DevicePatch) []fleet.PatchResult {
	out := make([]fleet.PatchResult, len(patches))
	for i, p := range patches {
		out[i].DeviceID = p.DeviceID
		d, ok := s.Devices[p.DeviceID]
		if !ok {
			out[i].Err = fmt.Errorf("device %s: %w", p.DeviceID, fleet.ErrNotFound)
			continue
		}
		out[i].Online = d.Online
		if d.Status == fleet.StatusRetired {
			out[i].Err = fmt.Errorf("device %s is retired: %w", p.DeviceID, fleet.ErrNotActive)
			continue
		}
		doc, ver := &d.Tags, &d.TagsVersion
		if section == twin.Desired {
			doc, ver = &d.Desired, &d.DesiredVersion
		}
		merged, err := twin.Apply(section, *doc, p.Patch)
		if err != nil {
			out[i].Err = fmt.Errorf("device %s: %w", p.DeviceID, err)
			continue
		}
		*doc = merged
		*ver++
		if section == twin.Desired {
			d.DesiredAt = s.now()
		}
		out[i].Version = *ver
	}
	return out
}

// CollectAcks marks running targets whose reported document holds desired's value for every key as
// succeeded (scripted answers in Acks take precedence) and returns what is still waiting.
func (s *Store) CollectAcks(_ context.Context, job string, keys []string) (fleet.AckProgress, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	s.AckCalls++
	s.AckArgs = append([]string{job}, keys...)
	var p fleet.AckProgress
	if err := s.err("CollectAcks"); err != nil {
		return p, err
	}
	if len(s.Acks) > 0 {
		return s.Acks[min(s.AckCalls-1, len(s.Acks)-1)], nil
	}
	for i := range s.Targets[job] {
		t := &s.Targets[job][i]
		if t.State != fleet.JobRunning {
			continue
		}
		d := s.Devices[t.DeviceID]
		if d != nil && acked(d, keys) {
			t.State = fleet.JobSucceeded
			p.Acked++
			continue
		}
		p.Waiting++
		if d != nil && d.Online {
			p.WaitingOnline++
		}
	}
	return p, nil
}

// acked: for every key, reported holds what desired holds (both absent counts).
func acked(d *Device, keys []string) bool {
	var desired, reported map[string]json.RawMessage
	_ = json.Unmarshal(d.Desired, &desired)
	_ = json.Unmarshal(d.Reported, &reported)
	for _, k := range keys {
		w, wok := desired[k]
		r, rok := reported[k]
		if wok != rok || (wok && !jsonEqual(w, r)) {
			return false
		}
	}
	return true
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}

// selected returns the ids a taught query selects: existing devices that are not retired, as the
// registry's target queries leave retired devices out unless they ask for them.
func (s *Store) selected(q string) ([]string, error) {
	ids, ok := s.Selects[q]
	if !ok {
		return nil, fmt.Errorf("fleettest: the fake was not taught what %q selects (set Selects)", q)
	}
	var out []string
	for _, id := range ids {
		if d := s.Devices[id]; d != nil && d.Status != fleet.StatusRetired && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out, nil
}

// CreateJob records a job and freezes its targets (the ids given, duplicates dropped, or what the query
// selects, in id order); a job that exists already returns its total.
func (s *Store) CreateJob(_ context.Context, job fleet.NewJob) (int64, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("CreateJob"); err != nil {
		return 0, err
	}
	if total, ok := s.Jobs[job.ID]; ok {
		return total, nil
	}
	var ids []string
	if job.IDs != nil {
		for _, id := range job.IDs {
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	} else {
		var err error
		if ids, err = s.selected(job.Query); err != nil {
			return 0, err
		}
	}
	if len(ids) == 0 {
		return 0, fmt.Errorf("job %s: %w", job.ID, fleet.ErrEmptyTarget)
	}
	for i, id := range ids {
		s.Targets[job.ID] = append(s.Targets[job.ID], fleet.JobTarget{Seq: int64(i), DeviceID: id, State: fleet.JobPending})
	}
	s.Jobs[job.ID] = int64(len(ids))
	return int64(len(ids)), nil
}

// CloseJob ends a job: running targets become timed out (online) or offline, pending ones cancelled.
func (s *Store) CloseJob(_ context.Context, job string, state fleet.JobEnd) error {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("CloseJob"); err != nil {
		return err
	}
	s.Closed = append(s.Closed, job+"="+string(state))
	for i := range s.Targets[job] {
		t := &s.Targets[job][i]
		switch t.State {
		case fleet.JobRunning:
			t.State = fleet.JobOffline
			// A rotation's running targets missed it, whatever their connection (as the registry's CloseJob).
			if d := s.Devices[t.DeviceID]; (d != nil && d.Online) || s.CredSlots[job] != nil {
				t.State = fleet.JobTimedOut
			}
		case fleet.JobDispatched:
			t.State = fleet.JobTimedOut
		case fleet.JobPending:
			t.State = fleet.JobCancelled
		}
	}
	return nil
}

// JobTotals counts the job's targets per state.
func (s *Store) JobTotals(_ context.Context, job string) (fleet.JobCounts, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	var c fleet.JobCounts
	if err := s.err("JobTotals"); err != nil {
		return c, err
	}
	if s.JobCounts != nil {
		for st, n := range s.JobCounts {
			c.AddState(st, n)
		}
		return c, nil
	}
	for _, t := range s.Targets[job] {
		c.AddState(t.State, 1)
	}
	return c, nil
}

// ---- rollouts ---------------------------------------------------------------------------------------------

// FirmwarePatch is the desired patch that asks a device to install fw under job, as the registry writes it.
func FirmwarePatch(job string, fw fleet.Firmware) []byte {
	return protocol.FirmwareRequest{JobID: job, Version: fw.Version, URL: fw.URL, SHA256: fw.SHA256}.DesiredPatch()
}

// rows are the rows of rollout ro; rows added without a rollout id belong to every rollout (single-rollout
// tests).
func (s *Store) rows(ro string) []*RolloutRow {
	var out []*RolloutRow
	for _, r := range s.Rows {
		if r.Rollout == "" || r.Rollout == ro {
			out = append(out, r)
		}
	}
	return out
}

// DispatchWave moves up to limit queued devices ranked below cutoff into wave.
func (s *Store) DispatchWave(_ context.Context, ro string, wave int, cutoff int64, fw fleet.Firmware, limit int) ([]fleet.DesiredPush, int64, bool, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	s.DispatchCalls = append(s.DispatchCalls, DispatchCall{Rollout: ro, Wave: wave, Cutoff: cutoff, FW: fw, Limit: limit})
	if err := s.err("DispatchWave"); err != nil {
		return nil, 0, false, err
	}
	c, err := s.dispatchLocked(ro, wave, -1, cutoff, fw, limit, nil, nil)
	return c.Pushes, c.Skipped, c.More, err
}

// DispatchWaveWindowed is DispatchWave under maintenance windows (see fleet.RolloutStore).
func (s *Store) DispatchWaveWindowed(_ context.Context, ro string, wave int, after, cutoff int64, fw fleet.Firmware, limit int,
	tagNames []string, decide fleet.WaveDecider) (fleet.WaveChunk, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	s.DispatchCalls = append(s.DispatchCalls, DispatchCall{Rollout: ro, Wave: wave, Cutoff: cutoff, FW: fw, Limit: limit, After: after, Windowed: true})
	if err := s.err("DispatchWave"); err != nil {
		return fleet.WaveChunk{}, err
	}
	return s.dispatchLocked(ro, wave, after, cutoff, fw, limit, tagNames, decide)
}

func (s *Store) dispatchLocked(ro string, wave int, after, cutoff int64, fw fleet.Firmware, limit int, tagNames []string,
	decide fleet.WaveDecider) (fleet.WaveChunk, error) {
	var cands []*RolloutRow
	for _, r := range s.rows(ro) {
		if r.Phase == rollout.Queued && r.Rank > after && r.Rank < cutoff && len(cands) <= limit {
			cands = append(cands, r)
		}
	}
	// s.Rows holds a rollout's rows in rank order (CreateRollout, AddRow).
	var c fleet.WaveChunk
	c.More = len(cands) > limit
	if c.More {
		cands = cands[:limit]
	}
	if len(cands) > 0 {
		c.Last = cands[len(cands)-1].Rank
	}
	patch := FirmwarePatch(ro, fw)
	now := s.now()
	for _, r := range cands {
		d := s.Devices[r.DeviceID]
		switch {
		case d == nil:
			r.Wave, r.DispatchedAt = wave, now
			r.Phase, r.Reason = rollout.Skipped, "device no longer exists"
			c.Skipped++
			continue
		case d.ReportedVersion == fw.Version:
			r.Wave, r.DispatchedAt = wave, now
			r.PrevVersion = d.ReportedVersion
			r.Phase, r.Reason = rollout.Skipped, "already runs "+fw.Version
			c.Skipped++
			continue
		case d.Status != fleet.StatusActive:
			r.Wave, r.DispatchedAt = wave, now
			r.PrevVersion = d.ReportedVersion
			r.Phase, r.Reason = rollout.Skipped, "device is "+string(d.Status)
			c.Skipped++
			continue
		}
		if decide != nil {
			tags, err := tagValues(d.Tags, tagNames)
			if err != nil {
				return c, err
			}
			dispatch, phase, reason := decide(r.DeviceID, tags)
			if !dispatch {
				if phase != "" {
					r.Wave, r.PrevVersion = wave, d.ReportedVersion
					r.Phase, r.Reason = phase, reason
				}
				continue
			}
		}
		r.Wave, r.DispatchedAt = wave, now
		r.PrevVersion = d.ReportedVersion
		res := s.patchLocked(twin.Desired, []fleet.DevicePatch{{DeviceID: r.DeviceID, Patch: patch}})[0]
		if res.Err != nil {
			r.Phase, r.Reason = rollout.Failed, "desired firmware could not be written: "+res.Err.Error()
			continue
		}
		r.Phase, r.Reason = rollout.Dispatched, ""
		c.Pushes = append(c.Pushes, fleet.DesiredPush{DeviceID: res.DeviceID, Version: res.Version, Online: res.Online, Patch: patch})
	}
	return c, nil
}

// tagValues is the text of the named tags of a device's tags document (TargetTags' rule for one device).
func tagValues(doc []byte, names []string) (map[string]string, error) {
	out := map[string]string{}
	if len(doc) == 0 || len(names) == 0 {
		return out, nil
	}
	var tags map[string]any
	if err := json.Unmarshal(doc, &tags); err != nil {
		return nil, err
	}
	for _, n := range names {
		v, ok := tags[n]
		if !ok {
			continue
		}
		if str, isStr := v.(string); isStr {
			out[n] = str
		} else {
			b, _ := json.Marshal(v)
			out[n] = string(b)
		}
	}
	return out, nil
}

// ObserveRollout returns the rollout's devices in phases with what they report under job.
func (s *Store) ObserveRollout(_ context.Context, ro, job string, phases []rollout.Phase) ([]fleet.RolloutObservation, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	s.ObserveCalls++
	s.ObserveJobs = append(s.ObserveJobs, job)
	s.ObservePhases = append(s.ObservePhases, slices.Clone(phases))
	if s.OnObserve != nil {
		s.OnObserve(s.ObserveCalls)
	}
	if err := s.err("ObserveRollout"); err != nil {
		return nil, err
	}
	var out []fleet.RolloutObservation
	for _, r := range s.rows(ro) {
		if !slices.Contains(phases, r.Phase) {
			continue
		}
		d := s.Devices[r.DeviceID]
		if d == nil {
			continue
		}
		js := d.JobStatus[job]
		out = append(out, fleet.RolloutObservation{Rank: r.Rank, DeviceID: r.DeviceID, Wave: r.Wave, Phase: r.Phase,
			PrevVersion: r.PrevVersion, DispatchedAt: r.DispatchedAt, BakeSince: r.BakeSince, RollbackAt: r.RollbackAt,
			JobStatus: js[0], JobReason: js[1], ReportedVersion: d.ReportedVersion, Health: d.Health,
			HealthReason: d.HealthReason, Online: d.Online, LastSeen: d.LastSeen})
	}
	return out, nil
}

// UpdateRolloutPhases records phase changes; a rollback phase without a reason keeps the forward one.
func (s *Store) UpdateRolloutPhases(_ context.Context, ro string, ups []fleet.PhaseUpdate) error {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	s.PhaseUpdates = append(s.PhaseUpdates, slices.Clone(ups))
	if err := s.err("UpdateRolloutPhases"); err != nil {
		return err
	}
	rows := s.rows(ro)
	for _, u := range ups {
		for _, r := range rows {
			if r.Rank != u.Rank {
				continue
			}
			switch {
			case u.Reason != "":
				r.Reason = u.Reason
			case !strings.HasPrefix(string(u.Phase), "roll"):
				r.Reason = ""
			}
			r.Phase = u.Phase
			if !u.BakeSince.IsZero() {
				r.BakeSince = u.BakeSince
			}
		}
	}
	return nil
}

// RolloutCounts counts the rollout's devices per wave and phase, in wave then phase order.
func (s *Store) RolloutCounts(_ context.Context, ro string) ([]fleet.PhaseCount, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("RolloutCounts"); err != nil {
		return nil, err
	}
	type key struct {
		wave  int
		phase rollout.Phase
	}
	m := map[key]int64{}
	for _, r := range s.rows(ro) {
		m[key{r.Wave, r.Phase}]++
	}
	var out []fleet.PhaseCount
	for k, n := range m {
		out = append(out, fleet.PhaseCount{Wave: k.wave, Phase: k.phase, N: n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Wave != out[j].Wave {
			return out[i].Wave < out[j].Wave
		}
		return out[i].Phase < out[j].Phase
	})
	return out, nil
}

// TouchedPhases are the phases of devices that were sent the new firmware: what a rollback sends back.
var TouchedPhases = []rollout.Phase{rollout.Dispatched, rollout.Downloading, rollout.Installing, rollout.Rebooting,
	rollout.Baking, rollout.Succeeded, rollout.Failed}

// StartRollback sends up to limit touched devices back to their previous firmware under job.
func (s *Store) StartRollback(_ context.Context, ro, job string, limit int) ([]fleet.DesiredPush, bool, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	s.RollbackCalls = append(s.RollbackCalls, job)
	s.RollbackLimits = append(s.RollbackLimits, limit)
	if err := s.err("StartRollback"); err != nil {
		return nil, false, err
	}
	var cands []*RolloutRow
	for _, r := range s.rows(ro) {
		if slices.Contains(TouchedPhases, r.Phase) && len(cands) <= limit {
			cands = append(cands, r)
		}
	}
	more := len(cands) > limit
	if more {
		cands = cands[:limit]
	}
	var pushes []fleet.DesiredPush
	now := s.now()
	for _, r := range cands {
		r.RollbackAt = now
		if r.PrevVersion == "" {
			r.Phase, r.Reason = rollout.RolledBack, "no previous version known; left as is"
			continue
		}
		patch := FirmwarePatch(job, fleet.Firmware{Version: r.PrevVersion, URL: s.FirmwareURL[r.PrevVersion]})
		res := s.patchLocked(twin.Desired, []fleet.DevicePatch{{DeviceID: r.DeviceID, Patch: patch}})[0]
		if res.Err != nil {
			r.Phase, r.Reason = rollout.RollbackFailed, "desired firmware could not be written: "+res.Err.Error()
			continue
		}
		r.Phase = rollout.RollingBack
		pushes = append(pushes, fleet.DesiredPush{DeviceID: res.DeviceID, Version: res.Version, Online: res.Online, Patch: patch})
	}
	return pushes, more, nil
}

// DesiredDocs returns each known device's whole desired document and version.
func (s *Store) DesiredDocs(_ context.Context, ids []string) ([]fleet.DesiredPush, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("DesiredDocs"); err != nil {
		return nil, err
	}
	var out []fleet.DesiredPush
	for _, id := range ids {
		if d, ok := s.Devices[id]; ok {
			out = append(out, fleet.DesiredPush{DeviceID: id, Version: d.DesiredVersion, Online: d.Online, Patch: d.Desired})
		}
	}
	return out, nil
}

// CreateRollout claims the active devices the query selects that do not report the version, refusing
// an unknown firmware, an empty set or devices another rollout holds; a rollout that exists already
// returns its total.
func (s *Store) CreateRollout(_ context.Context, ro fleet.NewRollout) (int64, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("CreateRollout"); err != nil {
		return 0, err
	}
	if total, ok := s.Rollouts[ro.ID]; ok {
		return total, nil
	}
	if _, ok := s.FirmwareURL[ro.Version]; !ok {
		return 0, fmt.Errorf("firmware %s: %w", ro.Version, fleet.ErrUnknownFirmware)
	}
	ids, err := s.selected(ro.Query)
	if err != nil {
		return 0, err
	}
	held := map[string]int64{}
	for _, r := range s.Rows {
		if r.Active && slices.Contains(ids, r.DeviceID) {
			held[r.Rollout]++
		}
	}
	var conflict *fleet.RolloutConflictError
	for other, n := range held {
		if conflict == nil || n > conflict.Devices || (n == conflict.Devices && other < conflict.Rollout) {
			conflict = &fleet.RolloutConflictError{Rollout: other, Devices: n}
		}
	}
	if conflict != nil {
		return 0, conflict
	}
	var rank int64
	for _, id := range ids {
		if d := s.Devices[id]; d.Status == fleet.StatusActive && d.ReportedVersion != ro.Version {
			s.Rows = append(s.Rows, &RolloutRow{Rollout: ro.ID, Rank: rank, DeviceID: id, Wave: -1, Phase: rollout.Queued, Active: true})
			rank++
		}
	}
	if rank == 0 {
		return 0, fmt.Errorf("rollout of %s: %w that need it", ro.Version, fleet.ErrEmptyTarget)
	}
	s.Rollouts[ro.ID] = rank
	s.RolloutSpecs[ro.ID] = &RolloutSpec{ID: ro.ID, Query: ro.Query, Version: ro.Version, Created: s.now()}
	return rank, nil
}

// FinishRollout cancels the devices never dispatched, releases every claim and records the end.
func (s *Store) FinishRollout(_ context.Context, id string, state fleet.RolloutEnd, result json.RawMessage) error {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("FinishRollout"); err != nil {
		return err
	}
	s.Finished = append(s.Finished, FinishCall{ID: id, State: state, Result: result})
	if spec := s.RolloutSpecs[id]; spec != nil && state == fleet.RolloutCompleted && spec.Completed.IsZero() {
		spec.Completed = s.now()
	}
	for _, r := range s.rows(id) {
		if r.Phase == rollout.Queued {
			r.Phase, r.Reason = rollout.Cancelled, "the rollout ended before this device was dispatched"
		}
		r.Active = false
	}
	return nil
}

// RolloutDevices lists the rollout's devices in phases (all when none), in rank order, at most limit.
func (s *Store) RolloutDevices(_ context.Context, ro string, phases []rollout.Phase, limit int) ([]fleet.RolloutDevice, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	s.DevicesPhases, s.DevicesLimit = slices.Clone(phases), limit
	if err := s.err("RolloutDevices"); err != nil {
		return nil, err
	}
	var out []fleet.RolloutDevice
	for _, r := range s.rows(ro) {
		if len(out) >= limit {
			break
		}
		if len(phases) == 0 || slices.Contains(phases, r.Phase) {
			out = append(out, fleet.RolloutDevice{DeviceID: r.DeviceID, Wave: r.Wave, Phase: r.Phase,
				PrevVersion: r.PrevVersion, Reason: r.Reason})
		}
	}
	return out, nil
}

// ---- retire -----------------------------------------------------------------------------------------------

// RetireDevices retires devices: status retired, their pending and running job targets cancelled, their
// rollout claims released. Retiring twice is harmless; unknown ids are reported.
func (s *Store) RetireDevices(_ context.Context, op string, ids []string, _ string) ([]fleet.RetireResult, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("RetireDevices"); err != nil {
		return nil, err
	}
	return s.retireDevicesLocked(op, ids), nil
}

func (s *Store) retireDevicesLocked(op string, ids []string) []fleet.RetireResult {
	out := make([]fleet.RetireResult, len(ids))
	for i, id := range ids {
		out[i].DeviceID = id
		d := s.Devices[id]
		switch {
		case d == nil:
			out[i].Outcome = fleet.RetireUnknown
		case d.Status == fleet.StatusRetired:
			out[i].Outcome = fleet.RetireAlreadyRetired
		default:
			out[i].Outcome = fleet.RetireDone
			s.retireLocked(op, id, d)
		}
	}
	return out
}

// RetireJobTargets retires the devices of the targets still pending or dispatched and records their outcomes,
// all or nothing (an error from outcomes or a target finished meanwhile leaves the store as it was).
func (s *Store) RetireJobTargets(_ context.Context, job string, targets []fleet.JobTarget, _ string,
	outcomes fleet.JobOutcomesFunc[fleet.RetireResult]) error {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("RetireJobTargets"); err != nil {
		return err
	}
	var todo []fleet.JobTarget
	var ids []string
	for _, t := range targets {
		if t.State == fleet.JobPending || t.State == fleet.JobDispatched {
			todo = append(todo, t)
			ids = append(ids, t.DeviceID)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	undo := s.snapshotLocked(ids)
	results := s.retireDevicesLocked(job, ids)
	outs, err := outcomes(todo, results)
	if err == nil {
		err = s.recordAllLocked(job, outs)
	}
	if err != nil {
		undo()
		return err
	}
	return nil
}

// snapshotLocked saves what a batch transaction may change (the devices ids, every job's targets, the
// rollout rows) and returns the rollback.
func (s *Store) snapshotLocked(ids []string) (undo func()) {
	devs := map[string]*Device{}
	for _, id := range ids {
		if d := s.Devices[id]; d != nil {
			c := *d
			devs[id] = &c
		}
	}
	targets := make(map[string][]fleet.JobTarget, len(s.Targets))
	for job, ts := range s.Targets {
		targets[job] = slices.Clone(ts)
	}
	rows := make([]RolloutRow, len(s.Rows))
	for i, r := range s.Rows {
		rows[i] = *r
	}
	return func() {
		for id, d := range devs {
			*s.Devices[id] = *d
		}
		s.Targets = targets
		for i := range rows {
			*s.Rows[i] = rows[i]
		}
	}
}

// recordAllLocked records outs and fails unless every target was still pending or dispatched.
func (s *Store) recordAllLocked(job string, outs []fleet.JobOutcome) error {
	if n := s.recordLocked(job, outs); n != len(outs) {
		return fmt.Errorf("job %s: %d of %d targets were finished by another attempt of the batch meanwhile; retrying", job, len(outs)-n, len(outs))
	}
	return nil
}

func (s *Store) retireLocked(op, id string, d *Device) {
	d.Status, d.Online, d.RetiredAt = fleet.StatusRetired, false, s.now()
	for job, ts := range s.Targets {
		if job == op {
			continue // the retiring job records its own outcome
		}
		for i := range ts {
			if ts[i].DeviceID == id && (ts[i].State == fleet.JobPending || ts[i].State == fleet.JobRunning) {
				ts[i].State = fleet.JobCancelled
			}
		}
	}
	for _, r := range s.Rows {
		if r.DeviceID == id && r.Active {
			r.Active = false
			switch r.Phase {
			case rollout.Succeeded, rollout.Failed, rollout.Skipped, rollout.RolledBack, rollout.RollbackFailed:
			default:
				r.Phase, r.Reason = rollout.Cancelled, "device retired"
			}
		}
	}
}

// ReplaceDevice gives nw old's tags (nw's own win on a shared key) and old's whole desired document,
// records the lineage and retires old. Repeating it after it succeeded reports the state as it is.
func (s *Store) ReplaceDevice(_ context.Context, op string, old, nw string) (fleet.ReplaceResult, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	res := fleet.ReplaceResult{Old: old, New: nw}
	if err := s.err("ReplaceDevice"); err != nil {
		return res, err
	}
	if old == nw {
		return res, fmt.Errorf("replace %s: a device cannot replace itself", old)
	}
	o, n := s.Devices[old], s.Devices[nw]
	switch {
	case o == nil:
		return res, fmt.Errorf("device %s: %w", old, fleet.ErrNotFound)
	case n == nil:
		return res, fmt.Errorf("device %s: %w", nw, fleet.ErrNotFound)
	case n.Status == fleet.StatusRetired:
		return res, fmt.Errorf("replacement %s: %w; give a new device id", nw, fleet.ErrRetired)
	case o.Status == fleet.StatusRetired && o.ReplacedBy == nw:
	case o.Status == fleet.StatusRetired:
		return res, fmt.Errorf("device %s: %w (retired at its own decommission); nothing to replace", old, fleet.ErrRetired)
	default:
		var ot, nt map[string]json.RawMessage
		if err := json.Unmarshal(o.Tags, &ot); err != nil {
			return res, fmt.Errorf("tags of %s: %w", old, err)
		}
		if err := json.Unmarshal(n.Tags, &nt); err != nil {
			return res, fmt.Errorf("tags of %s: %w", nw, err)
		}
		for k, v := range nt {
			ot[k] = v
		}
		n.Tags, _ = json.Marshal(ot)
		n.TagsVersion++
		n.Desired = slices.Clone(o.Desired)
		n.DesiredVersion++
		n.DesiredAt = s.now()
		o.ReplacedBy, n.Replaces = nw, old
		s.retireLocked(op, old, o)
	}
	res.DesiredVersion, res.Online, res.Desired = n.DesiredVersion, n.Online, slices.Clone(n.Desired)
	return res, nil
}

// PurgeArchive deletes devices retired more than olderThan ago.
func (s *Store) PurgeArchive(_ context.Context, olderThan time.Duration) (int64, error) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if err := s.err("PurgeArchive"); err != nil {
		return 0, err
	}
	if olderThan <= 0 {
		return 0, errors.New("purge: the retention must be positive")
	}
	var n int64
	cutoff := s.now().Add(-olderThan)
	for id, d := range s.Devices {
		if d.Status == fleet.StatusRetired && d.RetiredAt.Before(cutoff) {
			delete(s.Devices, id)
			n++
		}
	}
	return n, nil
}
