package validate

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

// The namespace setup registers exactly fleetflow's search attributes, and compose and the chart run the same
// script.
func TestTemporalSetupScript(t *testing.T) {
	compose := readFile(t, composeDir+"/temporal/setup.sh")
	chart := readFile(t, chartDir+"/files/temporal-setup.sh")
	if compose != chart {
		t.Fatalf("deploy/compose/temporal/setup.sh and %s/files/temporal-setup.sh differ: copy one over the other", chartDir)
	}
	m := regexp.MustCompile(`(?m)^ATTRS="([^"]*)"$`).FindStringSubmatch(compose)
	if m == nil {
		t.Fatal("setup.sh has no ATTRS=\"...\" line")
	}
	var want []string
	for _, d := range searchattr.Definitions() {
		want = append(want, d.Flag())
	}
	if got := strings.Fields(m[1]); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("setup.sh registers %v, internal/searchattr defines %v", got, want)
	}
}

// The script against a real Temporal server (a dev server of internal/testenv, with bin/temporal as the CLI the
// script calls): it creates the namespace and the search attributes, and a second run succeeds and finds them.
func TestTemporalSetupScriptRuns(t *testing.T) {
	if os.Getenv("FLEETFLOW_TEMPORAL_CLI") == "" {
		// testenv looks for bin/temporal beside the nearest go.mod, which is this module's: name the checkout's.
		t.Setenv("FLEETFLOW_TEMPORAL_CLI", filepath.Join(repoRoot(t), "bin", "temporal"))
	}
	cli, err := testenv.TemporalCLI()
	if err != nil {
		t.Fatal(err)
	}
	addr := testenv.StartTemporal(t)
	dir := t.TempDir()
	// The script calls `temporal`: put the CLI on PATH under that name.
	if err := os.Symlink(cli, filepath.Join(dir, "temporal")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const ns = "fleetflow-setup-test"
	run := func() string {
		t.Helper()
		cmd := exec.CommandContext(ctx, "/bin/sh", filepath.Join(repoRoot(t), composeDir, "temporal", "setup.sh"))
		cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"), "TEMPORAL_ADDRESS="+addr,
			"TEMPORAL_NAMESPACE="+ns, "TEMPORAL_NAMESPACE_RETENTION=48h")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("setup.sh: %v\n%s", err, out)
		}
		return string(out)
	}
	first := run()
	if !strings.Contains(first, "creating namespace "+ns) {
		t.Errorf("first run did not create the namespace:\n%s", first)
	}
	list, err := exec.CommandContext(ctx, cli, "operator", "search-attribute", "list", "--address", addr,
		"--namespace", ns).CombinedOutput()
	if err != nil {
		t.Fatalf("search-attribute list: %v\n%s", err, list)
	}
	for _, d := range searchattr.Definitions() {
		if !regexp.MustCompile(`(?m)^\s*` + d.Name + `\s+` + d.Type.String() + `\s*$`).Match(list) {
			t.Errorf("%s (%s) not registered in %s:\n%s", d.Name, d.Type, ns, list)
		}
	}
	second := run()
	if !strings.Contains(second, "namespace "+ns+" exists") || !strings.Contains(second, "temporal-setup: done") {
		t.Errorf("second run:\n%s", second)
	}
}
