package rollout

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Threshold is --max-failures: either a Count of failed devices or a Percent of the devices dispatched so
// far. A percent is measured against the devices dispatched, not the whole target set, so that a bad
// canary stops the rollout before the later waves make the failures look small. The zero value is a count
// of 0: the first failure stops the rollout, the safe default.
type Threshold struct {
	Count     int64   `json:"count,omitempty"`
	Percent   float64 `json:"percent,omitempty"`
	IsPercent bool    `json:"isPercent,omitempty"`
}

// ParseThreshold reads a --max-failures value: a device count such as "0" or "12", or a percentage such as
// "5%" or "0.5%" (0% to 100%). Surrounding whitespace is ignored.
func ParseThreshold(s string) (Threshold, error) {
	item := strings.TrimSpace(s)
	bad := func(why string) (Threshold, error) {
		return Threshold{}, fmt.Errorf("max failures %q: %s", s, why)
	}
	const syntax = "want a device count like 5 or a percentage like 2%"
	if item == "" {
		return bad(syntax)
	}
	if body, ok := strings.CutSuffix(item, "%"); ok {
		body = strings.TrimSpace(body)
		if !isDecimal(body, true) {
			return bad(syntax)
		}
		p, err := strconv.ParseFloat(body, 64)
		if err != nil || math.IsInf(p, 0) || math.IsNaN(p) {
			return bad(syntax)
		}
		if p < 0 || p > 100 {
			return bad("a percentage must be between 0% and 100%")
		}
		return Threshold{Percent: p, IsPercent: true}, nil
	}
	if !isDecimal(item, false) {
		return bad(syntax)
	}
	n, err := strconv.ParseInt(item, 10, 64)
	if err != nil {
		return bad("device count is too large")
	}
	if n < 0 {
		return bad("a device count cannot be negative")
	}
	return Threshold{Count: n}, nil
}

// String formats the threshold the way ParseThreshold reads it: "5%" or "12".
func (t Threshold) String() string {
	if t.IsPercent {
		return strconv.FormatFloat(t.Percent, 'f', -1, 64) + "%"
	}
	return strconv.FormatInt(t.Count, 10)
}

// Exceeded reports whether failed devices exceed the threshold: failed > Count, or
// failed*100 > Percent*dispatched. Being exactly at the threshold is allowed, so "--max-failures 2" means
// two failures are tolerated and a third stops the rollout, and a 0 threshold means the first failure stops
// it. The percent comparison allows for float noise (0.7% of 11000 is not quite 77 in float64) so that
// exactly-at stays not exceeded.
func (t Threshold) Exceeded(failed, dispatched int64) bool {
	if failed <= 0 {
		return false
	}
	if !t.IsPercent {
		return failed > t.Count
	}
	lhs := float64(failed) * 100
	rhs := t.Percent * float64(max(dispatched, 0))
	return lhs-rhs > 1e-9*math.Max(1, rhs)
}
