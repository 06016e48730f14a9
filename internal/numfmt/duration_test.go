package numfmt

import (
	"strings"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	cases := []struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		{"10m", 10 * time.Minute, ""},
		{" 90s ", 90 * time.Second, ""},
		{"1h30m", 90 * time.Minute, ""},
		{"7d", 7 * 24 * time.Hour, ""},
		{"5x", 0, `--offline-after "5x": want a duration like 10m`},
		{"", 0, `--offline-after "": want a duration like 10m`},
		{"d", 0, `want a duration like 10m`},
		{"1.5d", 0, `want a duration like 10m`},
		{"0", 0, `--offline-after "0": must be > 0`},
		{"-5m", 0, `--offline-after "-5m": must be > 0`},
		{"0d", 0, `must be > 0`},
	}
	for _, c := range cases {
		got, err := ParseDuration("--offline-after", c.in)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("ParseDuration(%q) = %v, %v; want error containing %q", c.in, got, err, c.wantErr)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{10 * time.Minute: "10m", 90 * time.Second: "1m30s", time.Hour: "1h",
		36 * time.Hour: "36h", 48 * time.Hour: "2d", 45 * time.Second: "45s"} {
		if got := FormatDuration(d); got != want {
			t.Errorf("FormatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}
