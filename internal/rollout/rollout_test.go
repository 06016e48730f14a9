package rollout

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func pct(p float64) Wave { return Wave{Percent: p} }
func cnt(n int64) Wave   { return Wave{Count: n} }

func TestParseWavesAcceptsPercentsCountsAndWhitespace(t *testing.T) {
	cases := []struct {
		in   string
		want []Wave
	}{
		{"100%", []Wave{pct(100)}},
		{"1%,10%,50%,100%", []Wave{pct(1), pct(10), pct(50), pct(100)}},
		{"10,100,100%", []Wave{cnt(10), cnt(100), pct(100)}},
		{" 1% , 12.5% ,\t100% ", []Wave{pct(1), pct(12.5), pct(100)}},
		{"0.5%,100.0%", []Wave{pct(0.5), pct(100)}},
		{"10 %,100 %", []Wave{pct(10), pct(100)}},
		{"5,1%,50,10%,100%", []Wave{cnt(5), pct(1), cnt(50), pct(10), pct(100)}}, // kinds are compared separately
		{"90%,5,100%", []Wave{pct(90), cnt(5), pct(100)}},
		{"1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,100%", []Wave{
			cnt(1), cnt(2), cnt(3), cnt(4), cnt(5), cnt(6), cnt(7), cnt(8), cnt(9), cnt(10),
			cnt(11), cnt(12), cnt(13), cnt(14), cnt(15), cnt(16), cnt(17), cnt(18), cnt(19), pct(100),
		}},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseWaves(tc.in)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestParseWavesErrorsNameTheItemAndItsPosition(t *testing.T) {
	cases := []struct{ in, err string }{
		{"", `"": give at least one wave, e.g. 1%,10%,100%`},
		{"  ", `"  ": give at least one wave, e.g. 1%,10%,100%`},
		{"1%,abc,100%", `wave 2 "abc": want a percentage like 10% or a device count like 100`},
		{"1%,,100%", `wave 2 "": want a percentage like 10% or a device count like 100`},
		{"1%,100%,", `wave 3 "": want a percentage like 10% or a device count like 100`},
		{"1e2%", `wave 1 "1e2%": want a percentage like 10% or a device count like 100`},
		{"inf%", `wave 1 "inf%": want a percentage like 10% or a device count like 100`},
		{"1.5,100%", `wave 1 "1.5": want a percentage like 10% or a device count like 100`},
		{"1.2.3%,100%", `wave 1 "1.2.3%": want a percentage like 10% or a device count like 100`},
		{"%,100%", `wave 1 "%": want a percentage like 10% or a device count like 100`},
		{"10%%,100%", `wave 1 "10%%": want a percentage like 10% or a device count like 100`},
		{"0%,100%", `wave 1 "0%": a wave must be above 0%`},
		{"-5%,100%", `wave 1 "-5%": a wave must be above 0%`},
		{"10%,150%", `wave 2 "150%": a wave cannot be above 100%`},
		{"0,100%", `wave 1 "0": a wave must be at least 1 device`},
		{"-5,100%", `wave 1 "-5": a wave must be at least 1 device`},
		{"99999999999999999999,100%", `wave 1 "99999999999999999999": device count is too large`},
		{"10%,60%,50%,100%", `wave 3 "50%": waves are cumulative and must increase (after 60%)`},
		{"10%,10%,100%", `wave 2 "10%": waves are cumulative and must increase (after 10%)`},
		{"10,5,100%", `wave 2 "5": waves are cumulative and must increase (after 10)`},
		{"10,1%,10,100%", `wave 3 "10": waves are cumulative and must increase (after 10)`},
		{"100%,100%", `wave 2 "100%": waves are cumulative and must increase (after 100%)`},
		{"1%,50%", `wave 2 "50%": the last wave must be 100% so that the rollout covers every targeted device`},
		{"10, 100", `wave 2 "100": the last wave must be 100% so that the rollout covers every targeted device`},
		{"100%,200", `wave 2 "200": the last wave must be 100% so that the rollout covers every targeted device`},
		{"1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,100%", `wave 21 "100%": at most 20 waves are allowed, got 21`},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseWaves(tc.in)
			require.EqualError(t, err, tc.err)
			require.Nil(t, got)
		})
	}
}

func TestWaveStringRoundTrips(t *testing.T) {
	assert.Equal(t, "1%", pct(1).String())
	assert.Equal(t, "12.5%", pct(12.5).String())
	assert.Equal(t, "0.25%", pct(0.25).String())
	assert.Equal(t, "100", cnt(100).String())
	for _, in := range []string{"1%,10%,50%,100%", "10,100,12.5%,100%"} {
		waves, err := ParseWaves(in)
		require.NoError(t, err)
		var s []string
		for _, w := range waves {
			s = append(s, w.String())
		}
		again, err := ParseWaves(strings.Join(s, ","))
		require.NoError(t, err)
		require.Equal(t, waves, again)
	}
	b, err := json.Marshal([]Wave{pct(10), cnt(5)})
	require.NoError(t, err)
	require.JSONEq(t, `[{"percent":10},{"count":5}]`, string(b))
}

func TestCutoffs(t *testing.T) {
	std := []Wave{pct(1), pct(10), pct(50), pct(100)}
	cases := []struct {
		name  string
		waves []Wave
		total int64
		want  []int64
	}{
		{"1000 devices", std, 1000, []int64{10, 100, 500, 1000}},
		{"rounds up", std, 1001, []int64{11, 101, 501, 1001}},
		{"1% canary of 50 is 1 device", std, 50, []int64{1, 5, 25, 50}},
		{"tiny total keeps empty waves", std, 3, []int64{1, 1, 2, 3}},
		{"one device", std, 1, []int64{1, 1, 1, 1}},
		{"zero total", std, 0, []int64{0, 0, 0, 0}},
		{"negative total is zero", std, -4, []int64{0, 0, 0, 0}},
		{"fractional percent", []Wave{pct(12.5), pct(100)}, 8, []int64{1, 8}},
		{"float noise does not round up (1.1% of 3000 is 33)", []Wave{pct(1.1), pct(100)}, 3000, []int64{33, 3000}},
		{"float noise does not round down (0.7% of 11000 is 77)", []Wave{pct(0.7), pct(100)}, 11000, []int64{77, 11000}},
		{"just above an integer rounds up", []Wave{pct(10.01), pct(100)}, 100, []int64{11, 100}},
		{"counts", []Wave{cnt(10), cnt(100), pct(100)}, 1000, []int64{10, 100, 1000}},
		{"counts larger than total", []Wave{cnt(10), cnt(100), pct(100)}, 50, []int64{10, 50, 50}},
		{"first count larger than total", []Wave{cnt(500), pct(100)}, 20, []int64{20, 20}},
		{"count then smaller percent never decreases", []Wave{cnt(50), pct(1), pct(100)}, 1000, []int64{50, 50, 1000}},
		{"last forced to total", []Wave{pct(10), pct(50)}, 10, []int64{1, 10}},
		{"no waves", nil, 10, []int64{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, Cutoffs(tc.waves, tc.total))
		})
	}
}

func TestCutoffsInvariantsHoldForManyTotals(t *testing.T) {
	waves, err := ParseWaves("0.1%,1%,3,7.5%,33.3%,50,99.9%,100%")
	require.NoError(t, err)
	for total := int64(0); total <= 5000; total++ {
		c := Cutoffs(waves, total)
		require.Len(t, c, len(waves))
		require.Equal(t, total, c[len(c)-1], "total %d", total)
		if total > 0 {
			require.GreaterOrEqual(t, c[0], int64(1), "total %d", total)
		}
		for i := 1; i < len(c); i++ {
			require.GreaterOrEqual(t, c[i], c[i-1], "total %d wave %d", total, i)
		}
	}
}

func TestParseThreshold(t *testing.T) {
	good := []struct {
		in   string
		want Threshold
		str  string
	}{
		{"0", Threshold{}, "0"},
		{"12", Threshold{Count: 12}, "12"},
		{" 3 ", Threshold{Count: 3}, "3"},
		{"5%", Threshold{Percent: 5, IsPercent: true}, "5%"},
		{"0.5%", Threshold{Percent: 0.5, IsPercent: true}, "0.5%"},
		{"0%", Threshold{IsPercent: true}, "0%"},
		{"100%", Threshold{Percent: 100, IsPercent: true}, "100%"},
	}
	for _, tc := range good {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseThreshold(tc.in)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
			require.Equal(t, tc.str, got.String())
		})
	}
	bad := []struct{ in, err string }{
		{"", `max failures "": want a device count like 5 or a percentage like 2%`},
		{"x", `max failures "x": want a device count like 5 or a percentage like 2%`},
		{"1.5", `max failures "1.5": want a device count like 5 or a percentage like 2%`},
		{"%", `max failures "%": want a device count like 5 or a percentage like 2%`},
		{"1e1%", `max failures "1e1%": want a device count like 5 or a percentage like 2%`},
		{"-1", `max failures "-1": a device count cannot be negative`},
		{"-1%", `max failures "-1%": a percentage must be between 0% and 100%`},
		{"101%", `max failures "101%": a percentage must be between 0% and 100%`},
		{"99999999999999999999", `max failures "99999999999999999999": device count is too large`},
	}
	for _, tc := range bad {
		t.Run("bad "+tc.in, func(t *testing.T) {
			_, err := ParseThreshold(tc.in)
			require.EqualError(t, err, tc.err)
		})
	}
}

func TestThresholdExceededOnlyAboveTheThreshold(t *testing.T) {
	cases := []struct {
		name               string
		th                 string
		failed, dispatched int64
		want               bool
	}{
		{"0: no failure", "0", 0, 100, false},
		{"0: first failure stops", "0", 1, 100, true},
		{"count: at", "2", 2, 10, false},
		{"count: above", "2", 3, 10, true},
		{"count ignores dispatched", "2", 3, 1000000, true},
		{"5% of 20 is 1: at", "5%", 1, 20, false},
		{"5% of 20 is 1: above", "5%", 2, 20, true},
		{"5% of 10 is 0.5: one failure is above", "5%", 1, 10, true},
		{"0.5% of 200: at", "0.5%", 1, 200, false},
		{"0.7% of 11000 is 77 despite float noise", "0.7%", 77, 11000, false},
		{"0.7% of 11000: 78 is above", "0.7%", 78, 11000, true},
		{"0%: first failure stops", "0%", 1, 100, true},
		{"0%: no failure", "0%", 0, 100, false},
		{"100% never exceeded", "100%", 10, 10, false},
		{"percent with nothing dispatched", "5%", 0, 0, false},
		{"33.3333% of 3: 1 is above", "33.3333%", 1, 3, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			th, err := ParseThreshold(tc.th)
			require.NoError(t, err)
			require.Equal(t, tc.want, th.Exceeded(tc.failed, tc.dispatched))
		})
	}
	assert.True(t, Threshold{}.Exceeded(1, 1), "the zero value stops at the first failure")
}

func TestPhasePredicates(t *testing.T) {
	require.Equal(t, []Phase{
		"queued", "skipped", "dispatched", "downloading", "installing", "rebooting", "baking",
		"succeeded", "failed", "rolling_back", "rolled_back", "rollback_failed", "cancelled", "outside_window",
	}, Phases())
	terminal := map[Phase]bool{Skipped: true, Succeeded: true, Failed: true, RolledBack: true, RollbackFailed: true, Cancelled: true,
		OutsideWindow: true}
	untouched := map[Phase]bool{Queued: true, Skipped: true, Cancelled: true, OutsideWindow: true}
	for _, p := range Phases() {
		assert.Equal(t, terminal[p], p.Terminal(), "terminal %s", p)
		assert.Equal(t, !untouched[p], p.Touched(), "touched %s", p)
	}
	assert.False(t, Phase("bogus").Terminal())
	assert.False(t, Phase("bogus").Touched())
}

func TestEvaluate(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	pol := Policy{Version: "2.0.0", Bake: 10 * time.Minute, DeviceTimeout: 10 * time.Minute}
	noBake := pol
	noBake.Bake = 0
	noTimeout := pol
	noTimeout.DeviceTimeout = 0
	silence := pol
	silence.SilenceLimit = 30 * time.Second

	// base is a dispatched device with no news yet; bakeStart is when it was first seen on 2.0.0.
	base := Observation{Phase: Dispatched, DispatchedAt: t0, ReportedVersion: "1.0.0", Online: true, LastSeen: t0}
	bakeStart := at(2 * time.Minute)
	baking := base
	baking.Phase, baking.ReportedVersion, baking.BakeSince, baking.JobStatus = Baking, "2.0.0", bakeStart, "succeeded"
	with := func(o Observation, f func(*Observation)) Observation { f(&o); return o }

	cases := []struct {
		name string
		o    Observation
		p    Policy
		now  time.Time
		want Decision
	}{
		// Rule 1: phases decided elsewhere are kept, with BakeSince.
		{"queued unchanged", with(base, func(o *Observation) { o.Phase = Queued; o.JobStatus = "failed" }), pol, at(time.Hour), Decision{Phase: Queued}},
		{"skipped unchanged", with(base, func(o *Observation) { o.Phase = Skipped; o.ReportedVersion = "2.0.0" }), pol, at(time.Hour), Decision{Phase: Skipped}},
		{"cancelled unchanged", with(base, func(o *Observation) { o.Phase = Cancelled }), pol, at(time.Hour), Decision{Phase: Cancelled}},
		{"outside its window unchanged", with(base, func(o *Observation) { o.Phase = OutsideWindow }), pol, at(time.Hour), Decision{Phase: OutsideWindow}},
		{"rolling back unchanged", with(baking, func(o *Observation) { o.Phase = RollingBack; o.JobStatus = "failed" }), pol, at(time.Hour), Decision{Phase: RollingBack, BakeSince: bakeStart}},
		{"succeeded unchanged", with(baking, func(o *Observation) { o.Phase = Succeeded; o.Health = "failing" }), pol, at(time.Hour), Decision{Phase: Succeeded, BakeSince: bakeStart}},
		{"failed unchanged", with(baking, func(o *Observation) { o.Phase = Failed }), pol, at(time.Hour), Decision{Phase: Failed, BakeSince: bakeStart}},
		{"rolled back unchanged", with(base, func(o *Observation) { o.Phase = RolledBack }), pol, at(time.Hour), Decision{Phase: RolledBack}},
		{"rollback failed unchanged", with(base, func(o *Observation) { o.Phase = RollbackFailed }), pol, at(time.Hour), Decision{Phase: RollbackFailed}},

		// Rule 2: a reported job failure wins, even on the new version.
		{"job failed", with(base, func(o *Observation) { o.JobStatus = "failed"; o.JobReason = "checksum mismatch" }), pol, at(time.Minute),
			Decision{Phase: Failed, Reason: "device reported failure: checksum mismatch"}},
		{"job failed without reason", with(base, func(o *Observation) { o.JobStatus = "failed" }), pol, at(time.Minute),
			Decision{Phase: Failed, Reason: "device reported failure: no reason given"}},
		{"job failed while baking", with(baking, func(o *Observation) { o.JobStatus = "failed"; o.JobReason = "  " }), pol, at(3 * time.Minute),
			Decision{Phase: Failed, Reason: "device reported failure: no reason given", BakeSince: bakeStart}},

		// Rule 3: on the new version.
		{"unhealthy", with(baking, func(o *Observation) { o.Health = "failing"; o.HealthReason = "sensor bus down" }), pol, at(3 * time.Minute),
			Decision{Phase: Failed, Reason: "unhealthy on 2.0.0: sensor bus down", BakeSince: bakeStart}},
		{"unhealthy without reason", with(baking, func(o *Observation) { o.Health = "Critical" }), pol, at(3 * time.Minute),
			Decision{Phase: Failed, Reason: `unhealthy on 2.0.0: health status "Critical", no reason given`, BakeSince: bakeStart}},
		{"unhealthy before the bake starts", with(base, func(o *Observation) {
			o.ReportedVersion = "2.0.0"
			o.Health = "unhealthy"
			o.HealthReason = "boot loop"
		}), pol, at(time.Minute),
			Decision{Phase: Failed, Reason: "unhealthy on 2.0.0: boot loop"}},
		{"degraded counts as healthy", with(baking, func(o *Observation) { o.Health = "degraded" }), pol, at(3 * time.Minute),
			Decision{Phase: Baking, BakeSince: bakeStart}},
		{"first seen on version starts the bake", with(base, func(o *Observation) { o.ReportedVersion = "2.0.0" }), pol, at(2 * time.Minute),
			Decision{Phase: Baking, BakeSince: at(2 * time.Minute)}},
		{"no bake succeeds at once", with(base, func(o *Observation) { o.ReportedVersion = "2.0.0" }), noBake, at(2 * time.Minute),
			Decision{Phase: Succeeded, Reason: "running 2.0.0", BakeSince: at(2 * time.Minute)}},
		{"no bake succeeds even offline", with(base, func(o *Observation) { o.ReportedVersion = "2.0.0"; o.Online = false }), noBake, at(time.Hour),
			Decision{Phase: Succeeded, Reason: "running 2.0.0", BakeSince: at(time.Hour)}},
		{"offline just at the default silence limit", with(baking, func(o *Observation) { o.Online = false; o.LastSeen = at(5 * time.Minute) }), pol, at(7 * time.Minute),
			Decision{Phase: Baking, BakeSince: bakeStart}},
		{"offline past the default silence limit", with(baking, func(o *Observation) { o.Online = false; o.LastSeen = at(4 * time.Minute) }), pol, at(7 * time.Minute),
			Decision{Phase: Failed, Reason: "stopped reporting during the bake (last seen 3m0s ago)", BakeSince: bakeStart}},
		{"offline past a custom silence limit", with(baking, func(o *Observation) { o.Online = false; o.LastSeen = at(5 * time.Minute) }), silence, at(5*time.Minute + 31*time.Second),
			Decision{Phase: Failed, Reason: "stopped reporting during the bake (last seen 31s ago)", BakeSince: bakeStart}},
		{"offline with unknown last seen counts from the bake start", with(baking, func(o *Observation) { o.Online = false; o.LastSeen = time.Time{} }), pol, at(5 * time.Minute),
			Decision{Phase: Failed, Reason: "stopped reporting during the bake (last seen 3m0s ago)", BakeSince: bakeStart}},
		{"offline beats a finished bake", with(baking, func(o *Observation) { o.Online = false; o.LastSeen = at(3 * time.Minute) }), pol, at(12 * time.Minute),
			Decision{Phase: Failed, Reason: "stopped reporting during the bake (last seen 9m0s ago)", BakeSince: bakeStart}},
		{"online with old last seen is fine", with(baking, func(o *Observation) { o.LastSeen = t0 }), pol, at(7 * time.Minute),
			Decision{Phase: Baking, BakeSince: bakeStart}},
		{"bake just short", baking, pol, at(12*time.Minute - time.Nanosecond),
			Decision{Phase: Baking, BakeSince: bakeStart}},
		{"bake exactly done", baking, pol, at(12 * time.Minute),
			Decision{Phase: Succeeded, Reason: "healthy on 2.0.0 for the 10m0s bake", BakeSince: bakeStart}},
		{"bake done ignores the device timeout", baking, pol, at(time.Hour),
			Decision{Phase: Succeeded, Reason: "healthy on 2.0.0 for the 10m0s bake", BakeSince: bakeStart}},
		{"empty version never matches an empty report", with(base, func(o *Observation) { o.ReportedVersion = "" }), Policy{Bake: time.Minute}, at(time.Minute),
			Decision{Phase: Dispatched}},

		// Rule 4: left the version during the bake.
		{"fell back during the bake", with(baking, func(o *Observation) { o.ReportedVersion = "1.0.0" }), noTimeout, at(5 * time.Minute),
			Decision{Phase: Failed, Reason: "left 2.0.0 during the bake: now reports 1.0.0", BakeSince: bakeStart}},

		// Rule 5: device timeout, strictly after.
		{"timeout exactly at the limit", with(base, func(o *Observation) { o.JobStatus = "downloading" }), pol, at(10 * time.Minute),
			Decision{Phase: Downloading}},
		{"timeout past the limit", with(base, func(o *Observation) { o.JobStatus = "downloading" }), pol, at(10*time.Minute + time.Nanosecond),
			Decision{Phase: Failed, Reason: "did not finish within 10m0s (last status: downloading)"}},
		{"timeout with no progress", base, pol, at(11 * time.Minute),
			Decision{Phase: Failed, Reason: "did not finish within 10m0s (no progress reported)"}},
		{"timeout after job success", with(base, func(o *Observation) { o.JobStatus = "succeeded" }), pol, at(11 * time.Minute),
			Decision{Phase: Failed, Reason: "did not finish within 10m0s (the job reported success but the device still reports 1.0.0)"}},
		{"timeout after job success without a version", with(base, func(o *Observation) { o.JobStatus = "succeeded"; o.ReportedVersion = "" }), pol, at(11 * time.Minute),
			Decision{Phase: Failed, Reason: "did not finish within 10m0s (the job reported success but the device reports no version)"}},
		{"no timeout when 0", base, noTimeout, at(1000 * time.Hour), Decision{Phase: Dispatched}},
		{"no timeout with unknown dispatch time", with(base, func(o *Observation) { o.DispatchedAt = time.Time{} }), pol, at(time.Hour), Decision{Phase: Dispatched}},

		// Rule 6: phase from the job status.
		{"no status yet", base, pol, at(time.Minute), Decision{Phase: Dispatched}},
		{"downloading", with(base, func(o *Observation) { o.JobStatus = "downloading" }), pol, at(time.Minute), Decision{Phase: Downloading}},
		{"installing", with(base, func(o *Observation) { o.JobStatus = "installing" }), pol, at(time.Minute), Decision{Phase: Installing}},
		{"rebooting", with(base, func(o *Observation) { o.JobStatus = "rebooting" }), pol, at(time.Minute), Decision{Phase: Rebooting}},
		{"status is case-insensitive", with(base, func(o *Observation) { o.JobStatus = " Installing " }), pol, at(time.Minute), Decision{Phase: Installing}},
		{"job succeeded but version not reported yet", with(base, func(o *Observation) { o.JobStatus = "succeeded" }), pol, at(time.Minute), Decision{Phase: Rebooting}},
		{"unknown status", with(base, func(o *Observation) { o.JobStatus = "accepted" }), pol, at(time.Minute), Decision{Phase: Dispatched}},
		{"phase goes back to what the job says", with(base, func(o *Observation) { o.Phase = Installing; o.JobStatus = "downloading" }), pol, at(time.Minute), Decision{Phase: Downloading}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, Evaluate(tc.o, tc.p, tc.now))
		})
	}
}

func TestEvaluateWalksADeviceThroughABake(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	pol := Policy{Version: "2.0.0", Bake: 5 * time.Minute, DeviceTimeout: 10 * time.Minute}
	o := Observation{Phase: Dispatched, DispatchedAt: t0, ReportedVersion: "1.0.0", Online: true, LastSeen: t0}
	step := func(now time.Time, f func(*Observation)) Decision {
		f(&o)
		d := Evaluate(o, pol, now)
		o.Phase, o.BakeSince = d.Phase, d.BakeSince
		return d
	}
	require.Equal(t, Downloading, step(t0.Add(time.Minute), func(o *Observation) { o.JobStatus = "downloading" }).Phase)
	require.Equal(t, Rebooting, step(t0.Add(2*time.Minute), func(o *Observation) { o.JobStatus = "succeeded" }).Phase)
	d := step(t0.Add(3*time.Minute), func(o *Observation) { o.ReportedVersion = "2.0.0" })
	require.Equal(t, Decision{Phase: Baking, BakeSince: t0.Add(3 * time.Minute)}, d)
	// The bake runs past the device timeout: the device already runs the version, so it does not fail.
	require.Equal(t, Baking, step(t0.Add(7*time.Minute), func(*Observation) {}).Phase)
	d = step(t0.Add(8*time.Minute), func(*Observation) {})
	require.Equal(t, Decision{Phase: Succeeded, Reason: "healthy on 2.0.0 for the 5m0s bake", BakeSince: t0.Add(3 * time.Minute)}, d)
	require.Equal(t, Decision{Phase: Succeeded, BakeSince: t0.Add(3 * time.Minute)},
		step(t0.Add(time.Hour), func(o *Observation) { o.Health = "failing" }), "succeeded is final")
}

func TestEvaluateRollback(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	base := RollbackObservation{PrevVersion: "1.0.0", ReportedVersion: "2.0.0", StartedAt: t0}
	with := func(f func(*RollbackObservation)) RollbackObservation { o := base; f(&o); return o }
	cases := []struct {
		name    string
		o       RollbackObservation
		timeout time.Duration
		now     time.Time
		want    Decision
	}{
		{"no previous version", with(func(o *RollbackObservation) { o.PrevVersion = ""; o.JobStatus = "failed" }), time.Minute, t0.Add(time.Hour),
			Decision{Phase: RolledBack, Reason: "no previous version known; left as is"}},
		{"back on the previous version", with(func(o *RollbackObservation) { o.ReportedVersion = "1.0.0" }), time.Minute, t0.Add(time.Hour),
			Decision{Phase: RolledBack, Reason: "back on 1.0.0"}},
		{"back on the previous version despite a failed job", with(func(o *RollbackObservation) { o.ReportedVersion = "1.0.0"; o.JobStatus = "failed" }), 0, t0,
			Decision{Phase: RolledBack, Reason: "back on 1.0.0"}},
		{"job failed", with(func(o *RollbackObservation) { o.JobStatus = "failed"; o.JobReason = "image gone" }), time.Minute, t0,
			Decision{Phase: RollbackFailed, Reason: "device reported failure: image gone"}},
		{"job failed without reason", with(func(o *RollbackObservation) { o.JobStatus = "failed" }), time.Minute, t0,
			Decision{Phase: RollbackFailed, Reason: "device reported failure: no reason given"}},
		{"exactly at the timeout", with(func(o *RollbackObservation) { o.JobStatus = "installing" }), 10 * time.Minute, t0.Add(10 * time.Minute),
			Decision{Phase: RollingBack}},
		{"past the timeout", base, 10 * time.Minute, t0.Add(10*time.Minute + time.Second),
			Decision{Phase: RollbackFailed, Reason: "did not return to 1.0.0 within 10m0s"}},
		{"no timeout when 0", base, 0, t0.Add(1000 * time.Hour), Decision{Phase: RollingBack}},
		{"no timeout with unknown start", with(func(o *RollbackObservation) { o.StartedAt = time.Time{} }), time.Minute, t0, Decision{Phase: RollingBack}},
		{"in progress", base, 10 * time.Minute, t0.Add(time.Minute), Decision{Phase: RollingBack}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, EvaluateRollback(tc.o, tc.timeout, tc.now))
		})
	}
}

func TestCounts(t *testing.T) {
	var c Counts
	require.Equal(t, "no devices", c.String())
	for i, p := range Phases() {
		c.Add(p, int64(i+1))
	}
	c.Add("bogus", 1000)
	require.Equal(t, Counts{
		Queued: 1, Skipped: 2, Dispatched: 3, InProgress: 4 + 5 + 6, Baking: 7, Succeeded: 8, Failed: 9,
		RollingBack: 10, RolledBack: 11, RollbackFailed: 12, Cancelled: 13, OutsideWindow: 14,
	}, c)
	require.Equal(t, int64(3+15+7+8+9+10+11+12), c.Touched())
	require.Equal(t, int64(3+15+7), c.Pending())
	require.Equal(t, int64(14*15/2), c.Total())
	require.Equal(t, "8 succeeded, 9 failed, 11 rolled back, 12 rollback failed, 10 rolling back, 7 baking, "+
		"15 in progress, 3 dispatched, 1 queued, 2 skipped, 13 cancelled, 14 outside their window", c.String())

	// Moving a device is a -1 and a +1.
	c = Counts{}
	c.Add(Queued, 16)
	c.Add(Queued, -16)
	c.Add(Succeeded, 3)
	c.Add(Failed, 1)
	c.Add(Downloading, 5)
	c.Add(Rebooting, 7)
	require.Equal(t, "3 succeeded, 1 failed, 12 in progress", c.String())
	require.Equal(t, int64(16), c.Touched())
	require.Equal(t, int64(12), c.Pending())

	b, err := json.Marshal(Counts{InProgress: 2, RollbackFailed: 1})
	require.NoError(t, err)
	require.JSONEq(t, `{"queued":0,"skipped":0,"dispatched":0,"inProgress":2,"baking":0,"succeeded":0,"failed":0,
		"rollingBack":0,"rolledBack":0,"rollbackFailed":1,"cancelled":0}`, string(b))
}

func TestCountsTouchedAgreesWithPhaseTouched(t *testing.T) {
	for _, p := range Phases() {
		var c Counts
		c.Add(p, 1)
		want := int64(0)
		if p.Touched() {
			want = 1
		}
		assert.Equal(t, want, c.Touched(), "%s", p)
		assert.Equal(t, int64(1), c.Total(), "%s", p)
	}
}

func TestEstimate(t *testing.T) {
	const bake, install = 30 * time.Minute, 5 * time.Minute
	cases := []struct {
		name    string
		cutoffs []int64
		want    time.Duration
	}{
		{"no waves", nil, 0},
		{"zero devices", []int64{0, 0, 0}, 0},
		{"four waves", []int64{10, 100, 500, 1000}, 4 * (bake + install)},
		{"empty waves are skipped", []int64{1, 1, 2, 3}, 3 * (bake + install)},
		{"one device", []int64{1, 1, 1, 1}, bake + install},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, Estimate(tc.cutoffs, bake, install))
		})
	}
	require.Equal(t, 2*install, Estimate([]int64{1, 2}, 0, install))
	// From parsed waves end to end.
	waves, err := ParseWaves("1%,10%,50%,100%")
	require.NoError(t, err)
	require.Equal(t, 3*(bake+install), Estimate(Cutoffs(waves, 10), bake, install), "1% and 10% of 10 are both 1 device")
}
