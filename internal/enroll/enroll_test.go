package enroll

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
)

// The derivation is DPS's: base64 of HMAC-SHA256 over the id under the key. The expected value was computed
// with Python's hmac module, an implementation other than the one under test.
func TestDeriveSecretMatchesAnIndependentHMAC(t *testing.T) {
	key, err := ParseKey("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
	require.NoError(t, err)
	require.Equal(t, "uPrGCZtSCJ9Nt+iY0r7te47dbsu7OCYEU9tz7kQloUs=", DeriveSecret(key, "dev-1"))
	require.NotEqual(t, DeriveSecret(key, "dev-1"), DeriveSecret(key, "dev-2"))
}

func TestParseKey(t *testing.T) {
	for _, tc := range []struct {
		name, in, err string
	}{
		{"valid with a newline", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n", ""},
		{"not base64", "not-base64!", "not base64"},
		{"too short", "AAEC", "3 bytes, want 32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParseKey(tc.in)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Len(t, k, 32)
		})
	}
}

func TestSealOpen(t *testing.T) {
	master, err := NewKey()
	require.NoError(t, err)
	s, err := NewSealer(master)
	require.NoError(t, err)
	key, err := NewKey()
	require.NoError(t, err)
	sealed, err := s.Seal("lab", key)
	require.NoError(t, err)
	require.False(t, bytes.Contains(sealed, key), "the sealed form does not hold the key in clear")
	got, err := s.Open("lab", sealed)
	require.NoError(t, err)
	require.Equal(t, key, got)

	_, err = s.Open("other", sealed)
	require.ErrorIs(t, err, ErrSealedKey, "a sealed key moved to another group does not open")
	other, err := NewKey()
	require.NoError(t, err)
	s2, err := NewSealer(other)
	require.NoError(t, err)
	_, err = s2.Open("lab", sealed)
	require.ErrorIs(t, err, ErrSealedKey, "another master key does not open it")
	_, err = s.Open("lab", sealed[:5])
	require.ErrorIs(t, err, ErrSealedKey)
	_, err = NewSealer([]byte("short"))
	require.Error(t, err)
}

func TestCompilePattern(t *testing.T) {
	for _, tc := range []struct {
		pattern, id string
		match       bool
	}{
		{"", "anything", true},
		{"lab-[0-9]+", "lab-12", true},
		{"lab-[0-9]+", "lab-12x", false}, // anchored at the end
		{"lab-[0-9]+", "xlab-12", false}, // and at the start
		{"a|b", "ab", false},             // alternation is grouped before anchoring
		{"eu-[0-9]{3}", "eu-123", true},
	} {
		re, err := CompilePattern(tc.pattern)
		require.NoError(t, err)
		require.Equal(t, tc.match, re == nil || re.MatchString(tc.id), "%q ~ %q", tc.pattern, tc.id)
	}
	_, err := CompilePattern("lab-[")
	require.ErrorContains(t, err, `id pattern "lab-["`)
}

func TestMasterKeyFromEnv(t *testing.T) {
	t.Setenv(MasterKeyEnv, "")
	t.Setenv(MasterKeyFileEnv, "")
	_, err := MasterKeyFromEnv()
	require.ErrorIs(t, err, ErrNoMasterKey)
	t.Setenv(MasterKeyEnv, "AAEC")
	_, err = MasterKeyFromEnv()
	require.ErrorContains(t, err, MasterKeyEnv)
}

// groupsFake serves enrollment groups from memory (unit tests only).
type groupsFake struct {
	mu     sync.Mutex
	groups []fleet.EnrollmentGroup
	loads  int
	err    error
}

func (f *groupsFake) EnrollmentGroups(context.Context) ([]fleet.EnrollmentGroup, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.loads++
	return append([]fleet.EnrollmentGroup(nil), f.groups...), f.err
}

func (f *groupsFake) set(gs ...fleet.EnrollmentGroup) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.groups = gs
}

// registrarFake records registrations and answers with out (unit tests only).
type registrarFake struct {
	mu   sync.Mutex
	regs []fleet.Registration
	out  fleet.RegistrationOutcome
	err  error
}

func (r *registrarFake) Register(_ context.Context, reg fleet.Registration) (fleet.RegistrationOutcome, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.regs = append(r.regs, reg)
	return r.out, r.err
}

func TestEnroller(t *testing.T) {
	master, _ := NewKey()
	sealer, err := NewSealer(master)
	require.NoError(t, err)
	group := func(name, pattern string, disabled bool) (fleet.EnrollmentGroup, []byte) {
		k, _ := NewKey()
		sealed, err := sealer.Seal(name, k)
		require.NoError(t, err)
		return fleet.EnrollmentGroup{Name: name, Kind: fleet.EnrollSymmetric, SealedKey: sealed, IDPattern: pattern, Disabled: disabled}, k
	}
	lab, labKey := group("lab", "lab-[0-9]+", false)
	off, offKey := group("off", "", true)
	groups := &groupsFake{groups: []fleet.EnrollmentGroup{lab, off}}
	reg := &registrarFake{out: fleet.RegistrationOutcome{Registered: true, Created: true}}
	e := New(groups, sealer, reg, nil)
	now := time.Unix(1000, 0)
	e.now = func() time.Time { return now }
	ctx := context.Background()

	ok, reason, err := e.Enroll(ctx, "lab-1", DeriveSecret(labKey, "lab-1"))
	require.NoError(t, err)
	require.True(t, ok)
	require.Empty(t, reason)
	require.Len(t, reg.regs, 1)
	require.Equal(t, fleet.Registration{DeviceID: "lab-1", Group: "lab", SecretDigest: creds.Digest(DeriveSecret(labKey, "lab-1"))}, reg.regs[0],
		"the registration carries the digest, never the secret")

	for _, tc := range []struct{ name, id, secret string }{
		{"wrong secret", "lab-2", DeriveSecret(labKey, "lab-3")},
		{"outside the pattern", "x-1", DeriveSecret(labKey, "x-1")},
		{"disabled group", "y-1", DeriveSecret(offKey, "y-1")},
		{"no secret", "lab-4", ""},
	} {
		ok, reason, err := e.Enroll(ctx, tc.id, tc.secret)
		require.NoError(t, err, tc.name)
		require.False(t, ok, tc.name)
		require.Empty(t, reason, tc.name)
	}
	require.Len(t, reg.regs, 1, "nothing matched, nothing registered")

	// A group created after the last load is found by the next CONNECT that matches nothing, once the
	// snapshot is a second old; a flood of misses reloads at most that often.
	fresh, freshKey := group("fresh", "", false)
	groups.set(lab, off, fresh)
	loads := groups.loads
	ok, _, _ = e.Enroll(ctx, "f-1", DeriveSecret(freshKey, "f-1"))
	require.False(t, ok, "the snapshot is younger than a second")
	require.Equal(t, loads, groups.loads)
	now = now.Add(minReload)
	ok, _, err = e.Enroll(ctx, "f-1", DeriveSecret(freshKey, "f-1"))
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, loads+1, groups.loads)

	// Invalidate (the registry announced a change) reads the groups again without waiting.
	late, lateKey := group("late", "", false)
	groups.set(lab, off, fresh, late)
	loads = groups.loads
	e.Invalidate()
	require.Eventually(t, func() bool {
		groups.mu.Lock()
		defer groups.mu.Unlock()
		return groups.loads > loads
	}, 10*time.Second, time.Millisecond)
	require.Eventually(t, func() bool { return len(e.snap.Load().groups) == 3 }, 10*time.Second, time.Millisecond)
	ok, _, err = e.Enroll(ctx, "l-1", DeriveSecret(lateKey, "l-1"))
	require.NoError(t, err)
	require.True(t, ok)

	// A group that refuses gives its reason; a registration that cannot run is an error.
	reg.out = fleet.RegistrationOutcome{Reason: "enrollment group is full (3 devices)"}
	ok, reason, err = e.Enroll(ctx, "lab-5", DeriveSecret(labKey, "lab-5"))
	require.NoError(t, err)
	require.False(t, ok)
	require.Equal(t, "enrollment group is full (3 devices)", reason)
	reg.err = errors.New("temporal unreachable")
	_, _, err = e.Enroll(ctx, "lab-6", DeriveSecret(labKey, "lab-6"))
	require.ErrorContains(t, err, "temporal unreachable")

	// A failed reload keeps the groups last read.
	groups.err = errors.New("database down")
	reg.err, reg.out = nil, fleet.RegistrationOutcome{Registered: true}
	now = now.Add(DefaultRefresh)
	ok, _, err = e.Enroll(ctx, "lab-7", DeriveSecret(labKey, "lab-7"))
	require.NoError(t, err)
	require.True(t, ok)

	// Attempts count CONNECTs with a secret: the one without is not an attempt.
	st := e.Stats()
	require.Equal(t, Stats{Attempts: 10, Matched: 6, Registered: 4, Refused: 1, Failed: 1}, st)
}

// batchFake records the batches it was given and registers every device (unit tests only).
type batchFake struct {
	mu      sync.Mutex
	batches [][]fleet.Registration
	err     error
	release chan struct{} // when not nil, each batch waits for it
}

func (f *batchFake) RegisterBatch(_ context.Context, regs []fleet.Registration) ([]fleet.RegistrationOutcome, error) {
	if f.release != nil {
		<-f.release
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.batches = append(f.batches, regs)
	outs := make([]fleet.RegistrationOutcome, len(regs))
	for i, r := range regs {
		outs[i] = fleet.RegistrationOutcome{Registered: true, Reason: r.DeviceID}
	}
	return outs, f.err
}

func TestBatcherGathersConcurrentRegistrations(t *testing.T) {
	f := &batchFake{}
	b := NewBatcher(f, 10, time.Hour, time.Minute) // batches leave only when full
	var wg sync.WaitGroup
	outs := make([]fleet.RegistrationOutcome, 25)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o, err := b.Register(context.Background(), fleet.Registration{DeviceID: fmt.Sprint("d-", i), Group: "g"})
			require.NoError(t, err)
			outs[i] = o
		}()
	}
	wg.Wait()
	require.Len(t, f.batches, 2, "twenty registrations, two full batches")
	for i := range 20 {
		require.Equal(t, fmt.Sprint("d-", i), outs[i].Reason, "each caller gets its own device's outcome")
	}

	// A lone registration leaves after the wait.
	b = NewBatcher(f, 10, 10*time.Millisecond, time.Minute)
	o, err := b.Register(context.Background(), fleet.Registration{DeviceID: "alone", Group: "g"})
	require.NoError(t, err)
	require.True(t, o.Registered)
	require.Len(t, f.batches, 3)
	require.Len(t, f.batches[2], 1)

	// A failed batch fails each of its callers; a caller that gives up does not fail the others.
	f.err = errors.New("temporal unreachable")
	_, err = b.Register(context.Background(), fleet.Registration{DeviceID: "x", Group: "g"})
	require.ErrorContains(t, err, "temporal unreachable")
	f.err = nil
	f.release = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() {
		_, err := b.Register(ctx, fleet.Registration{DeviceID: "impatient", Group: "g"})
		gaveUp <- err
	}()
	patient := make(chan fleet.RegistrationOutcome, 1)
	go func() {
		o, _ := b.Register(context.Background(), fleet.Registration{DeviceID: "patient", Group: "g"})
		patient <- o
	}()
	cancel()
	require.ErrorIs(t, <-gaveUp, context.Canceled)
	close(f.release)
	require.Equal(t, "patient", (<-patient).Reason)
}
