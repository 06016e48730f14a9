package registry_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/registry/registrytest"
)

// RegisterEnrolled against a real Postgres: the group's tags and desired properties, its cap, pattern and
// disabling, idempotent repeats, ids already taken or retired, and exact counters under concurrency.
func TestRegisterEnrolled(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	require.NoError(t, reg.CreateEnrollmentGroup(ctx, fleet.EnrollmentGroup{Name: "lab", Kind: fleet.EnrollSymmetric,
		SealedKey: []byte("sealed"), Tags: []byte(`{"site":"lab"}`), Desired: []byte(`{"interval":30}`), MaxDevices: 5,
		IDPattern: "lab-[0-9]+"}))
	err := reg.CreateEnrollmentGroup(ctx, fleet.EnrollmentGroup{Name: "lab", Kind: fleet.EnrollSymmetric, SealedKey: []byte("x")})
	require.ErrorIs(t, err, fleet.ErrEnrollmentGroupExists)
	err = reg.CreateEnrollmentGroup(ctx, fleet.EnrollmentGroup{Name: "bad", Kind: fleet.EnrollSymmetric, SealedKey: []byte("x"), IDPattern: "("})
	require.ErrorContains(t, err, "id pattern")

	r := func(id, secret string) fleet.Registration {
		return fleet.Registration{DeviceID: id, Group: "lab", SecretDigest: creds.Digest(secret)}
	}
	one := func(x fleet.Registration) (fleet.RegistrationOutcome, error) {
		outs, err := reg.RegisterEnrolled(ctx, []fleet.Registration{x})
		if err != nil {
			return fleet.RegistrationOutcome{}, err
		}
		require.Len(t, outs, 1)
		return outs[0], nil
	}
	out, err := one(r("lab-1", "s1"))
	require.NoError(t, err)
	require.Equal(t, fleet.RegistrationOutcome{Registered: true, Created: true}, out)
	tw, err := reg.GetTwin(ctx, "lab-1")
	require.NoError(t, err)
	require.JSONEq(t, `{"site":"lab"}`, string(tw.Tags))
	require.JSONEq(t, `{"interval":30}`, string(tw.Properties.Desired.Doc))
	a, err := reg.DeviceAuth(ctx, "lab-1")
	require.NoError(t, err)
	require.True(t, creds.Matches("s1", a.Secret1Hash))
	hist, err := reg.DeviceHistory(ctx, "lab-1", 10)
	require.NoError(t, err)
	var enrolled *registry.HistoryEntry
	for i := range hist {
		if hist[i].Kind == registry.EventEnrolled {
			enrolled = &hist[i]
		}
	}
	require.NotNil(t, enrolled, "%+v", hist)
	require.Equal(t, registry.StageProvision, enrolled.Stage)
	require.Contains(t, enrolled.Summary, "enrollment group lab")

	// A repeated first contact (a retried activity, a device on two gateways) is registered, not created.
	out, err = one(r("lab-1", "s1"))
	require.NoError(t, err)
	require.Equal(t, fleet.RegistrationOutcome{Registered: true}, out)

	for _, tc := range []struct {
		name   string
		reg    fleet.Registration
		reason string
	}{
		{"another secret for a registered id", r("lab-1", "other"), "registered already"},
		{"outside the pattern", r("x-1", "s"), "does not match the group's pattern"},
		{"no such group", fleet.Registration{DeviceID: "lab-9", Group: "nope", SecretDigest: creds.Digest("s")}, "no enrollment group nope"},
	} {
		out, err := one(tc.reg)
		require.NoError(t, err, tc.name)
		require.False(t, out.Registered, tc.name)
		require.Contains(t, out.Reason, tc.reason, tc.name)
	}
	// An id provisioned by a manifest is not taken over.
	prov := registrytest.Provision(t, reg, "lab-", 1)[0].ID
	out, err = one(r(prov, "s"))
	require.NoError(t, err)
	require.Contains(t, out.Reason, "registered already")

	// In one batch: a device contacting twice is created once; another secret for it is refused.
	outs, err := reg.RegisterEnrolled(ctx, []fleet.Registration{r("lab-50", "a"), r("lab-50", "a"), r("lab-50", "b")})
	require.NoError(t, err)
	require.Equal(t, []fleet.RegistrationOutcome{{Registered: true, Created: true}, {Registered: true},
		{Reason: "id is registered already"}}, outs)

	// Ten devices race for the three places left: exactly three get in, and the counters agree.
	var wg sync.WaitGroup
	outs = make([]fleet.RegistrationOutcome, 10)
	for i := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o, err := one(r(fmt.Sprintf("lab-%d", 100+i), "s"))
			require.NoError(t, err)
			outs[i] = o
		}()
	}
	wg.Wait()
	created := 0
	for _, o := range outs {
		if o.Created {
			created++
		} else {
			require.Contains(t, o.Reason, "full (5 devices)")
		}
	}
	require.Equal(t, 3, created)
	g, err := reg.EnrollmentGroup(ctx, "lab")
	require.NoError(t, err)
	require.EqualValues(t, 5, g.Registered)
	require.EqualValues(t, 2+1+1+7, g.Refused, "two refusals above (the missing group counts nowhere), one for the provisioned id, one in the batch, seven for the full group")

	// Disabling stops registrations; re-enabling resumes them. A retired id stays retired.
	require.NoError(t, reg.CreateEnrollmentGroup(ctx, fleet.EnrollmentGroup{Name: "open", Kind: fleet.EnrollSymmetric, SealedKey: []byte("x")}))
	changed, err := reg.SetEnrollmentGroupDisabled(ctx, "open", true)
	require.NoError(t, err)
	require.True(t, changed)
	changed, err = reg.SetEnrollmentGroupDisabled(ctx, "open", true)
	require.NoError(t, err)
	require.False(t, changed)
	_, err = reg.SetEnrollmentGroupDisabled(ctx, "missing", true)
	require.ErrorIs(t, err, fleet.ErrEnrollmentGroupNotFound)
	o := fleet.Registration{DeviceID: "o-1", Group: "open", SecretDigest: creds.Digest("s")}
	out, err = one(o)
	require.NoError(t, err)
	require.Contains(t, out.Reason, "disabled")
	_, err = reg.SetEnrollmentGroupDisabled(ctx, "open", false)
	require.NoError(t, err)
	out, err = one(o)
	require.NoError(t, err)
	require.True(t, out.Created)
	_, err = reg.RetireDevices(ctx, "retire-o", []string{"o-1"}, "test")
	require.NoError(t, err)
	out, err = one(o)
	require.NoError(t, err)
	require.Contains(t, out.Reason, "retired")

	// An x509 group registers certificate fingerprints and refuses secrets, and the other way round.
	require.NoError(t, reg.CreateEnrollmentGroup(ctx, fleet.EnrollmentGroup{Name: "certs", Kind: fleet.EnrollX509, CACert: "-----BEGIN CERTIFICATE-----"}))
	fp := creds.Digest("a certificate")
	outs, err = reg.RegisterEnrolled(ctx, []fleet.Registration{
		{DeviceID: "c-1", Group: "certs", CertFingerprint: fp},
		{DeviceID: "c-2", Group: "certs", SecretDigest: creds.Digest("s")},
		{DeviceID: "c-3", Group: "open", CertFingerprint: fp},
	})
	require.NoError(t, err)
	require.Equal(t, fleet.RegistrationOutcome{Registered: true, Created: true}, outs[0])
	require.Contains(t, outs[1].Reason, "wrong kind")
	require.Contains(t, outs[2].Reason, "wrong kind")
	a, err = reg.DeviceAuth(ctx, "c-1")
	require.NoError(t, err)
	require.Equal(t, fp, a.CertFingerprint)
	require.Empty(t, a.Secret1Hash)

	// Registrations re-check the group's tags against the metadata scheme in force: a scheme set after the
	// group was created refuses its devices, naming the path and rule.
	require.NoError(t, reg.CreateEnrollmentGroup(ctx, fleet.EnrollmentGroup{Name: "floorless", Kind: fleet.EnrollSymmetric,
		SealedKey: []byte("x"), Tags: []byte(`{"region":"eu","floor":"3"}`)}))
	registrytest.SetScheme(t, reg, "scheme-enroll", []byte(floors), nil, true, 100)
	outs, err = reg.RegisterEnrolled(ctx, []fleet.Registration{{DeviceID: "f-1", Group: "floorless", SecretDigest: creds.Digest("s")}})
	require.NoError(t, err)
	require.False(t, outs[0].Registered)
	require.Contains(t, outs[0].Reason, "tags.floor: got string, want integer")

	gs, err := reg.EnrollmentGroups(ctx)
	require.NoError(t, err)
	require.Len(t, gs, 4)
	require.Equal(t, "-----BEGIN CERTIFICATE-----", gs[0].CACert)
	require.Equal(t, "floorless", gs[1].Name)
	require.Equal(t, "lab", gs[2].Name)
	require.Equal(t, []byte("sealed"), gs[2].SealedKey)
}
