// Package rollout holds the rules of staged firmware rollouts: how a wave list such as 1%,10%,100% is parsed
// and turned into device counts, when failures stop a rollout, how a device's phase follows from what it
// reports, and how the per-phase tallies and a duration estimate are computed.
//
// The rollout workflow imports this package, so everything here must be deterministic under replay: it
// uses the standard library only, takes the current time as an argument instead of reading a clock, never
// iterates over a map where the order could change a result, and starts no goroutines. Keeping the rules
// here, apart from Temporal, also lets the CLI validate flags and the tests check every rule with tables.
package rollout

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// MaxWaves bounds the wave list: more waves than this is almost certainly a typo, and every wave is a
// workflow step (and possibly an approval) that an operator has to follow.
const MaxWaves = 20

// Wave is one cumulative step: Percent of the target set (0 < Percent <= 100) or an absolute Count of
// devices. Exactly one of the two is set; a Count lets an operator start with a fixed-size canary ("10")
// whatever the size of the fleet, and percents scale with it.
type Wave struct {
	Percent float64 `json:"percent,omitempty"`
	Count   int64   `json:"count,omitempty"`
}

// String formats the wave the way ParseWaves reads it, so that messages and stored specs round-trip:
// "1%", "12.5%" or "100" (a device count).
func (w Wave) String() string {
	if w.Count > 0 {
		return strconv.FormatInt(w.Count, 10)
	}
	return strconv.FormatFloat(w.Percent, 'f', -1, 64) + "%"
}

// isPercent tells the two kinds of wave apart; a wave is a percent unless it has a count.
func (w Wave) isPercent() bool { return w.Count <= 0 }

// ParseWaves parses a comma-separated wave list such as "1%,10%,50%,100%" or "10,100,100%". Waves are
// cumulative, so each must cover more than the one before it of the same kind (counts are compared with
// counts and percents with percents, since how a count compares to a percent depends on the fleet size),
// and the last must be 100% so that no targeted device is left out. Errors name the offending item and its
// 1-based position so that an operator can fix the flag without guessing.
func ParseWaves(s string) ([]Wave, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("%q: give at least one wave, e.g. 1%%,10%%,100%%", s)
	}
	items := strings.Split(s, ",")
	waves := make([]Wave, 0, min(len(items), MaxWaves))
	// The last wave of each kind, to check that the next one of that kind increases.
	var lastPercent, lastCount Wave
	for i, raw := range items {
		item := strings.TrimSpace(raw)
		if i >= MaxWaves {
			return nil, fmt.Errorf("wave %d %q: at most %d waves are allowed, got %d", i+1, item, MaxWaves, len(items))
		}
		w, err := parseWave(item)
		if err != nil {
			return nil, fmt.Errorf("wave %d %q: %s", i+1, item, err)
		}
		prev := &lastCount
		if w.isPercent() {
			prev = &lastPercent
		}
		if *prev != (Wave{}) && !increases(*prev, w) {
			return nil, fmt.Errorf("wave %d %q: waves are cumulative and must increase (after %s)", i+1, item, *prev)
		}
		*prev = w
		waves = append(waves, w)
	}
	last := waves[len(waves)-1]
	if !last.isPercent() || last.Percent != 100 {
		return nil, fmt.Errorf("wave %d %q: the last wave must be 100%% so that the rollout covers every targeted device",
			len(waves), strings.TrimSpace(items[len(items)-1]))
	}
	return waves, nil
}

// increases reports whether next covers more than prev; both are of the same kind.
func increases(prev, next Wave) bool {
	if next.isPercent() {
		return next.Percent > prev.Percent
	}
	return next.Count > prev.Count
}

// parseWave reads one trimmed item. The returned error is only the explanation; the caller adds the item
// and its position.
func parseWave(item string) (Wave, error) {
	if body, ok := strings.CutSuffix(item, "%"); ok {
		body = strings.TrimSpace(body)
		if !isDecimal(body, true) {
			return Wave{}, errWaveSyntax
		}
		p, err := strconv.ParseFloat(body, 64)
		if err != nil || math.IsInf(p, 0) || math.IsNaN(p) {
			return Wave{}, errWaveSyntax
		}
		switch {
		case p <= 0:
			return Wave{}, errors.New("a wave must be above 0%")
		case p > 100:
			return Wave{}, errors.New("a wave cannot be above 100%")
		}
		return Wave{Percent: p}, nil
	}
	if !isDecimal(item, false) {
		return Wave{}, errWaveSyntax
	}
	n, err := strconv.ParseInt(item, 10, 64)
	if err != nil {
		return Wave{}, errors.New("device count is too large")
	}
	if n <= 0 {
		return Wave{}, errors.New("a wave must be at least 1 device")
	}
	return Wave{Count: n}, nil
}

var errWaveSyntax = errors.New("want a percentage like 10% or a device count like 100")

// isDecimal accepts an optional sign, digits and (when dot is true) at most one decimal point. It is
// stricter than strconv on purpose: "1e2", "0x10", "inf" and "1_000" parse there but are surely typos in a
// wave list or a threshold. The sign is accepted so that "-5" gets the clearer "must be above 0" message.
func isDecimal(s string, dot bool) bool {
	if s != "" && (s[0] == '-' || s[0] == '+') {
		s = s[1:]
	}
	digits, dots := 0, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9':
			digits++
		case c == '.' && dot:
			dots++
		default:
			return false
		}
	}
	return digits > 0 && dots <= 1
}

// Cutoffs returns, for total target devices, the cumulative number of devices covered after each wave:
// ceil(Percent*total/100) or min(Count, total). The result never decreases, the last equals total (even for
// a list that ParseWaves would reject, so that no device is ever left out), and the first is at least 1
// when total > 0: a 1% canary of 50 devices is 1 device, not 0, otherwise the canary would be skipped and
// the first real wave would go out untested.
//
// A wave whose cutoff equals the previous one (for example 1% and 2% of 10 devices are both 1) is kept in
// the result with size 0 rather than dropped, so that cutoffs[i] still belongs to waves[i] in messages and
// approvals; the workflow skips such empty waves. A total of 0 gives all zeros.
func Cutoffs(waves []Wave, total int64) []int64 {
	out := make([]int64, len(waves))
	if total < 0 {
		total = 0
	}
	var prev int64
	for i, w := range waves {
		var c int64
		if w.isPercent() {
			c = ceilPercent(w.Percent, total)
		} else {
			c = w.Count
		}
		c = max(min(c, total), prev)
		if i == 0 && total > 0 {
			c = max(c, 1)
		}
		out[i] = c
		prev = c
	}
	if len(out) > 0 {
		out[len(out)-1] = total
	}
	return out
}

// ceilPercent is ceil(p*total/100) with the float noise taken out: 1.1% of 3000 is 33.00000000000001 in
// float64, and a plain Ceil would make it 34 devices.
func ceilPercent(p float64, total int64) int64 {
	if p <= 0 || total <= 0 {
		return 0
	}
	x := p * float64(total) / 100
	if r := math.Round(x); math.Abs(x-r) <= 1e-9*math.Max(1, x) {
		return int64(r)
	}
	return int64(math.Ceil(x))
}
