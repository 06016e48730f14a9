package main

import (
	"bytes"
	"encoding/json"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/registry"
)

func runVersionCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newVersionCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	cmd.SilenceUsage = true
	err := cmd.Execute()
	return out.String(), err
}

func TestVersionCommand(t *testing.T) {
	old := version
	version = "v1.2.3-4-gabcdef0-dirty" // as the Makefile's -X main.version sets it
	t.Cleanup(func() { version = old })

	out, err := runVersionCmd(t, "-o", "json")
	require.NoError(t, err)
	var v versionInfo
	require.NoError(t, json.Unmarshal([]byte(out), &v), out)
	require.Equal(t, "v1.2.3-4-gabcdef0-dirty", v.Version)
	require.Equal(t, runtime.Version(), v.GoVersion)
	require.Equal(t, runtime.GOOS+"/"+runtime.GOARCH, v.Platform)
	require.Equal(t, temporal.SDKVersion, v.TemporalSDK)
	require.Equal(t, registry.SchemaVersion(), v.SchemaVersion)

	out, err = runVersionCmd(t)
	require.NoError(t, err)
	require.Contains(t, out, "fleetflow     v1.2.3-4-gabcdef0-dirty\n")
	require.Contains(t, out, "temporal sdk  "+temporal.SDKVersion+"\n")
	require.Contains(t, out, "schema        "+strconv.FormatInt(registry.SchemaVersion(), 10)+"\n")
	require.True(t, strings.Contains(out, "go            "+runtime.Version()), out)

	_, err = runVersionCmd(t, "-o", "xml")
	require.ErrorContains(t, err, "want one of text|json|yaml")
	out, err = runVersionCmd(t, "-o", "yaml")
	require.NoError(t, err)
	require.Contains(t, out, "version: ", "YAML has the JSON field names")
}

func TestBuildVersionWithoutLdflags(t *testing.T) {
	// go install …@v1.4.0 records the module version.
	v := buildVersion("", &debug.BuildInfo{GoVersion: "go1.99", Main: debug.Module{Version: "v1.4.0"}}, true)
	require.Equal(t, "v1.4.0", v.Version)
	require.Equal(t, "go1.99", v.GoVersion)

	// go build in a checkout records the commit.
	v = buildVersion("", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "true"}}}, true)
	require.Equal(t, "devel-0123456789ab-dirty", v.Version)
	require.Equal(t, "0123456789abcdef0123", v.Commit)

	// Nothing recorded.
	v = buildVersion("", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, true)
	require.Equal(t, "devel", v.Version)
	v = buildVersion("", nil, false)
	require.Equal(t, "devel", v.Version)

	// The Makefile's version wins.
	v = buildVersion("v2.0.0", &debug.BuildInfo{Main: debug.Module{Version: "v1.4.0"}}, true)
	require.Equal(t, "v2.0.0", v.Version)
}
