package simulator

import (
	"encoding/binary"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// VersionFractions maps a firmware version to the fraction (0..1) of the simulated devices a behaviour
// applies to, e.g. {"2.0.0": 0.1}: one device in ten fails to install 2.0.0. It implements pflag.Value, so a
// flag of this type may be repeated: --fail-install 2.0.0=0.1 --fail-install 2.1.0=1.
type VersionFractions map[string]float64

// Set parses one VERSION=FRACTION (the fraction may also be written as a percentage, "10%") and adds it.
func (v *VersionFractions) Set(s string) error {
	version, fraction, err := ParseVersionFraction(s)
	if err != nil {
		return err
	}
	if *v == nil {
		*v = VersionFractions{}
	}
	if _, dup := (*v)[version]; dup {
		return fmt.Errorf("version %s given twice", version)
	}
	(*v)[version] = fraction
	return nil
}

// String lists the entries sorted by version, as they would be written on the command line.
func (v VersionFractions) String() string {
	versions := make([]string, 0, len(v))
	for version := range v {
		versions = append(versions, version)
	}
	sort.Strings(versions)
	parts := make([]string, len(versions))
	for i, version := range versions {
		parts[i] = version + "=" + strconv.FormatFloat(v[version], 'g', -1, 64)
	}
	return strings.Join(parts, ",")
}

// Type names the flag's value in help output.
func (v VersionFractions) Type() string { return "VERSION=FRACTION" }

// validate checks entries that did not come through Set (a Config built in code).
func (v VersionFractions) validate(name string) error {
	for version, f := range v {
		if err := checkVersion(version); err != nil {
			return fmt.Errorf("simulator: %s: %w", name, err)
		}
		if err := checkFraction(f); err != nil {
			return fmt.Errorf("simulator: %s[%s]: %w", name, version, err)
		}
	}
	return nil
}

// ParseVersionFraction parses "VERSION=FRACTION", where FRACTION is a number from 0 to 1 or a percentage
// ("25%").
func ParseVersionFraction(s string) (string, float64, error) {
	version, frac, ok := strings.Cut(strings.TrimSpace(s), "=")
	if !ok {
		return "", 0, fmt.Errorf("%q: want VERSION=FRACTION, e.g. 2.0.0=0.1", s)
	}
	version, frac = strings.TrimSpace(version), strings.TrimSpace(frac)
	if err := checkVersion(version); err != nil {
		return "", 0, fmt.Errorf("%q: %w", s, err)
	}
	scale := 1.0
	if p, ok := strings.CutSuffix(frac, "%"); ok {
		frac, scale = strings.TrimSpace(p), 100
	}
	f, err := strconv.ParseFloat(frac, 64)
	if err != nil || frac == "" {
		return "", 0, fmt.Errorf("%q: fraction %q is not a number", s, frac)
	}
	f /= scale
	if err := checkFraction(f); err != nil {
		return "", 0, fmt.Errorf("%q: %w", s, err)
	}
	return version, f, nil
}

func checkVersion(v string) error {
	if v == "" {
		return fmt.Errorf("empty version")
	}
	if strings.ContainsAny(v, " \t\n,=") {
		return fmt.Errorf("version %q contains a space, ',' or '='", v)
	}
	return nil
}

func checkFraction(f float64) error {
	if math.IsNaN(f) || f < 0 || f > 1 {
		return fmt.Errorf("fraction %v outside 0..1", f)
	}
	return nil
}

// InstallFails reports whether device id of a simulation with seed fails to install version when fraction
// of the fleet is configured to (Config.FailInstall). The choice is a hash of (seed, id, version), so a
// test can predict exactly which devices fail, and the same devices fail again after a restart.
func InstallFails(seed int64, id, version string, fraction float64) bool {
	return inFraction(seed, "install", id, version, fraction)
}

// TurnsUnhealthy reports whether device id reports failing health after updating to version when fraction
// of the fleet is configured to (Config.Unhealthy). It is drawn independently of InstallFails, so the two
// fractions combine as one would expect (a device that failed to install never runs the version).
func TurnsUnhealthy(seed int64, id, version string, fraction float64) bool {
	return inFraction(seed, "health", id, version, fraction)
}

// inFraction maps hash(seed, purpose, id, version) uniformly onto [0, 1) and compares it with fraction.
func inFraction(seed int64, purpose, id, version string, fraction float64) bool {
	switch {
	case fraction <= 0 || math.IsNaN(fraction):
		return false
	case fraction >= 1:
		return true
	}
	h := hash(seed, purpose+"\x00"+id+"\x00"+version)
	x := float64(binary.BigEndian.Uint64(h[:8])>>11) / (1 << 53)
	return x < fraction
}
