package numfmt

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ParseDuration reads the value of a duration flag: Go's syntax (90s, 10m, 1h30m) plus whole days (7d),
// which retention and credential lifetimes are counted in. It is the CLI's one duration parser. It must be > 0. Errors name the flag and show an example, e.g.
// `--offline-after "5x": want a duration like 10m`.
func ParseDuration(flag, s string) (time.Duration, error) {
	v := strings.TrimSpace(s)
	d, err := time.ParseDuration(v)
	if err != nil {
		days, ok := strings.CutSuffix(v, "d")
		n, aerr := strconv.Atoi(days)
		if !ok || aerr != nil || n > 100_000 {
			return 0, fmt.Errorf("%s %q: want a duration like 10m", flag, s)
		}
		d = time.Duration(n) * 24 * time.Hour
	}
	if d <= 0 {
		return 0, fmt.Errorf("%s %q: must be > 0", flag, s)
	}
	return d, nil
}

// FormatDuration renders d compactly, in days when it is a whole number of them (168h reads better as 7d).
func FormatDuration(d time.Duration) string {
	const day = 24 * time.Hour
	if d > 0 && d%day == 0 {
		return strconv.FormatInt(int64(d/day), 10) + "d"
	}
	s := d.String()
	// time.Duration prints 10m as "10m0s"; drop the zero tails an operator would not type.
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
