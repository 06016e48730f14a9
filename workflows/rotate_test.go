package workflows_test

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleet/fleettest"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/workflows"
)

// rotFleet answers rotateCredentials as devices would: online devices store the secret and reconnect with
// it (the gateway records the digest), offline ones are not reached, silent ones store it and never come
// back.
type rotFleet struct {
	mu      sync.Mutex
	store   *fleettest.Store
	offline map[string]bool
	silent  map[string]bool
	polls   int
	keys    map[string]crypto.Signer // certificate devices' newest keys
}

func (f *rotFleet) PublishDesired(context.Context, []fleet.DesiredPush) (int, error) { return 0, nil }

func (f *rotFleet) InvokeMany(_ context.Context, calls []fleet.MethodCall, _ time.Duration, _ float64) []fleet.MethodResult {
	out := make([]fleet.MethodResult, len(calls))
	for i, c := range calls {
		if f.offline[c.DeviceID] {
			out[i] = fleet.MethodResult{DeviceID: c.DeviceID, Outcome: fleet.MethodOffline, Status: 404}
			continue
		}
		if c.Method != protocol.MethodRotateCredentials {
			out[i] = f.renew(c)
			continue
		}
		r, err := protocol.ParseRotateCredentials(c.Payload)
		if err != nil {
			out[i] = fleet.MethodResult{DeviceID: c.DeviceID, Outcome: fleet.MethodFailed, Status: 400}
			continue
		}
		out[i] = fleet.MethodResult{DeviceID: c.DeviceID, Outcome: fleet.MethodSucceeded, Status: 200}
		if !f.silent[c.DeviceID] {
			f.store.Mu.Lock()
			f.store.Devices[c.DeviceID].AuthDigest = creds.Digest(r.Secret)
			f.store.Mu.Unlock()
		}
	}
	return out
}

// renew answers renewCertificate (a new key and its request) and installCertificate (the certificate stored
// with the key; the device reconnects with it unless silent) as a certificate device would.
func (f *rotFleet) renew(c fleet.MethodCall) fleet.MethodResult {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.keys == nil {
		f.keys = map[string]crypto.Signer{}
	}
	switch c.Method {
	case protocol.MethodRenewCertificate:
		key, csr, err := pki.NewDeviceKey(c.DeviceID)
		if err != nil {
			return fleet.MethodResult{DeviceID: c.DeviceID, Outcome: fleet.MethodFailed, Status: 500}
		}
		f.keys[c.DeviceID] = key
		b, _ := json.Marshal(protocol.RenewCertificateAnswer{CSR: string(csr)})
		return fleet.MethodResult{DeviceID: c.DeviceID, Outcome: fleet.MethodSucceeded, Status: 200, Payload: b}
	case protocol.MethodInstallCertificate:
		r, err := protocol.ParseInstallCertificate(c.Payload)
		if err != nil {
			return fleet.MethodResult{DeviceID: c.DeviceID, Outcome: fleet.MethodFailed, Status: 400}
		}
		pair, err := pki.KeyPair(c.DeviceID, []byte(r.Certificate), f.keys[c.DeviceID])
		if err != nil {
			return fleet.MethodResult{DeviceID: c.DeviceID, Outcome: fleet.MethodFailed, Status: 409}
		}
		if !f.silent[c.DeviceID] {
			f.store.Mu.Lock()
			f.store.Devices[c.DeviceID].AuthDigest = pki.Fingerprint(pair.Leaf)
			f.store.Mu.Unlock()
		}
		return fleet.MethodResult{DeviceID: c.DeviceID, Outcome: fleet.MethodSucceeded, Status: 200}
	}
	return fleet.MethodResult{DeviceID: c.DeviceID, Outcome: fleet.MethodFailed, Status: 404}
}

// collect is JobCollectAcks for a rotation, once (the real activity polls on the wall clock).
func (f *rotFleet) collect(ctx context.Context, r workflows.JobCollectAcksInput) (workflows.JobCollectAcksResult, error) {
	f.mu.Lock()
	f.polls++
	f.mu.Unlock()
	p, err := f.store.CollectRotations(ctx, r.JobID, r.CredentialValidity)
	return workflows.JobCollectAcksResult{Acked: p.Acked, Waiting: p.Waiting, WaitingOnline: p.WaitingOnline}, err
}

// A rotation over 2,500 devices in batches: the connected devices are confirmed and their old slot cleared;
// an offline device is reported at once and keeps its secret; a device that stored its new secret but never
// connects with it is waited for until the grace ends (in continued runs: the wait stays bounded) and then
// reported, with both slots kept.
func TestRotateCredentialsWorkflow(t *testing.T) {
	const n = 2500
	store := fleettest.New()
	f := &rotFleet{store: store, offline: map[string]bool{"d7": true}, silent: map[string]bool{"d9": true}}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = devID(i)
		store.AddDevice(ids[i], fleettest.Device{Online: true, Secret1Hash: creds.Digest("s-" + ids[i]), AuthDigest: creds.Digest("s-" + ids[i])})
	}
	acts := &activities.Activities{Jobs: store, Rotate: store, Channel: f}
	in := workflows.JobInput{JobID: "rotate-1", Kind: fleet.JobRotate, IDs: ids, Query: "ids: d0 …", Grace: time.Hour,
		CredentialValidity: 90 * 24 * time.Hour}
	dc := converter.GetDefaultDataConverter()
	now := testStart
	var env *testsuite.TestWorkflowEnvironment
	runs := 0
	for {
		runs++
		require.LessOrEqual(t, runs, 10, "the wait continues as new a bounded number of times")
		var s testsuite.WorkflowTestSuite
		env = s.NewTestWorkflowEnvironment()
		env.SetStartTime(now)
		env.SetTestTimeout(time.Minute)
		env.RegisterWorkflow(workflows.RotateCredentials)
		env.RegisterActivityWithOptions(acts.JobCreate, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.JobCreate)})
		env.RegisterActivityWithOptions(acts.JobBatch, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.JobBatch)})
		env.RegisterActivityWithOptions(acts.JobClose, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.JobClose)})
		env.RegisterActivityWithOptions(f.collect, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.JobCollectAcks)})
		// Each poll takes its 10 s of workflow time, as the real activity waits up to MaxWait.
		env.OnActivity(workflows.ActivityName(workflows.Activities.JobCollectAcks), mock.Anything, mock.Anything).Return(f.collect).After(10 * time.Second)
		env.ExecuteWorkflow(workflows.RotateCredentials, in)
		require.True(t, env.IsWorkflowCompleted())
		now = env.Now()
		var can *workflow.ContinueAsNewError
		if err := env.GetWorkflowError(); !errors.As(err, &can) {
			require.NoError(t, err)
			break
		}
		var next workflows.JobInput
		require.NoError(t, dc.FromPayloads(can.Input, &next))
		require.Empty(t, next.IDs, "a continued run carries no device list")
		in = next
	}
	var res workflows.JobResult
	require.NoError(t, env.GetWorkflowResult(&res))
	assert.Equal(t, string(fleet.JobCompletedWithFailures), res.State)
	assert.Equal(t, fleet.JobCounts{Succeeded: n - 2, Offline: 1, TimedOut: 1}, res.Counts)
	assert.Greater(t, runs, 1, "a one-hour wait continued as new at least once")
	assert.Equal(t, runs, res.Runs)
	assert.GreaterOrEqual(t, now.Sub(testStart), time.Hour, "the silent device got its whole grace")
	assert.Equal(t, fleet.JobTimedOut, store.TargetState("rotate-1", 9))
	assert.Equal(t, fleet.JobOffline, store.TargetState("rotate-1", 7))

	store.Mu.Lock()
	defer store.Mu.Unlock()
	assert.Len(t, store.Rotated, n-2)
	d0 := store.Devices["d0"]
	assert.Nil(t, d0.Secret1Hash, "d0's old slot is cleared")
	assert.Equal(t, d0.AuthDigest, d0.Secret2Hash, "d0's new slot holds what it connected with")
	assert.False(t, d0.CredentialExpiresAt.IsZero(), "the new credential got its validity")
	d7 := store.Devices["d7"]
	assert.Equal(t, creds.Digest("s-d7"), d7.Secret1Hash, "the offline device keeps its secret")
	assert.Nil(t, d7.Secret2Hash)
	d9 := store.Devices["d9"]
	assert.Equal(t, creds.Digest("s-d9"), d9.Secret1Hash, "the silent device keeps both secrets")
	assert.NotNil(t, d9.Secret2Hash)
}

// One rotation over a mixed fleet rotates each device by its kind (docs/architecture.md, "Certificate
// renewal"): secret devices get secrets, certificate devices certificates of the requested validity for keys
// of their own; a certificate device that installs its certificate but never connects with it keeps both
// certificates and is reported when the grace ends.
func TestRotateCredentialsWorkflowRenewsCertificates(t *testing.T) {
	store := fleettest.New()
	f := &rotFleet{store: store, silent: map[string]bool{"c3": true}}
	var ids []string
	for i := range 10 {
		s, c := fmt.Sprintf("s%d", i), fmt.Sprintf("c%d", i)
		store.AddDevice(s, fleettest.Device{Online: true, Secret1Hash: creds.Digest("s-" + s), AuthDigest: creds.Digest("s-" + s)})
		store.AddDevice(c, fleettest.Device{Online: true, CertFingerprint: creds.Digest("cert-" + c), AuthDigest: creds.Digest("cert-" + c)})
		ids = append(ids, s, c)
	}
	ca, err := pki.InitDeviceCA(filepath.Join(t.TempDir(), "ca"), "", testStart, 0)
	require.NoError(t, err)
	acts := &activities.Activities{Jobs: store, Rotate: store, Channel: f, CA: pki.SignerOf(ca)}
	in := workflows.JobInput{JobID: "rotate-mixed", Kind: fleet.JobRotate, IDs: ids, Query: "ids: s0 …", Grace: 30 * time.Second,
		CertValidity: 400 * 24 * time.Hour}
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.SetStartTime(testStart)
	env.SetTestTimeout(time.Minute)
	env.RegisterWorkflow(workflows.RotateCredentials)
	env.RegisterActivityWithOptions(acts.JobCreate, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.JobCreate)})
	env.RegisterActivityWithOptions(acts.JobBatch, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.JobBatch)})
	env.RegisterActivityWithOptions(acts.JobClose, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.JobClose)})
	env.RegisterActivityWithOptions(f.collect, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.JobCollectAcks)})
	env.OnActivity(workflows.ActivityName(workflows.Activities.JobCollectAcks), mock.Anything, mock.Anything).Return(f.collect).After(10 * time.Second)
	env.ExecuteWorkflow(workflows.RotateCredentials, in)
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	var res workflows.JobResult
	require.NoError(t, env.GetWorkflowResult(&res))
	assert.Equal(t, fleet.JobCounts{Succeeded: 19, TimedOut: 1}, res.Counts)
	assert.Equal(t, fleet.JobTimedOut, store.TargetState("rotate-mixed", 7))

	store.Mu.Lock()
	defer store.Mu.Unlock()
	s0 := store.Devices["s0"]
	assert.Nil(t, s0.Secret1Hash)
	assert.Equal(t, s0.AuthDigest, s0.Secret2Hash, "a secret device got a secret")
	assert.Nil(t, s0.Cert2Fingerprint)
	c0 := store.Devices["c0"]
	assert.Nil(t, c0.CertFingerprint, "the old certificate is revoked")
	assert.Equal(t, c0.AuthDigest, c0.Cert2Fingerprint, "the new one is what it connected with")
	assert.Nil(t, c0.Secret1Hash, "a certificate device got no secret")
	assert.WithinDuration(t, time.Now().Add(400*24*time.Hour), c0.Cert2NotAfter, time.Hour, "the certificate has the validity asked for")
	c3 := store.Devices["c3"]
	assert.Equal(t, creds.Digest("cert-c3"), c3.CertFingerprint, "the silent device keeps its certificate")
	assert.NotNil(t, c3.Cert2Fingerprint, "and the new one")
}
