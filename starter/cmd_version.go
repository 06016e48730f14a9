package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/registry"
)

// version is fleetflow's version, set by the Makefile's build from `git describe --always --dirty`
// (-ldflags "-X main.version=..."). Empty in a plain `go build`: the module version or VCS revision that
// the Go toolchain recorded is shown instead.
var version string

// versionInfo is what `fleetflow version` prints.
type versionInfo struct {
	Version     string `json:"version"`
	Commit      string `json:"commit,omitempty"`
	GoVersion   string `json:"goVersion"`
	Platform    string `json:"platform"`
	TemporalSDK string `json:"temporalSdk"`
	// SchemaVersion is the registry schema this binary needs (`fleetflow migrate` brings a database to it).
	SchemaVersion int64 `json:"schemaVersion"`
}

// buildVersion describes this binary from the ldflags version and the build information.
func buildVersion(ldflagsVersion string, bi *debug.BuildInfo, ok bool) versionInfo {
	v := versionInfo{
		Version:       ldflagsVersion,
		GoVersion:     runtime.Version(),
		Platform:      runtime.GOOS + "/" + runtime.GOARCH,
		TemporalSDK:   temporal.SDKVersion,
		SchemaVersion: registry.SchemaVersion(),
	}
	if !ok {
		if v.Version == "" {
			v.Version = "devel"
		}
		return v
	}
	if bi.GoVersion != "" {
		v.GoVersion = bi.GoVersion
	}
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if v.Version == "" {
		switch {
		case bi.Main.Version != "" && bi.Main.Version != "(devel)":
			v.Version = bi.Main.Version // go install github.com/fleetflow/fleetflow/starter@vX.Y.Z
		case v.Commit != "":
			v.Version = "devel-" + v.Commit[:min(12, len(v.Commit))]
			if dirty {
				v.Version += "-dirty"
			}
		default:
			v.Version = "devel"
		}
	}
	return v
}

// newVersionCmd is `fleetflow version [-o json]`.
func newVersionCmd() *cobra.Command {
	var o *output
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print fleetflow's version, its Go and Temporal SDK versions and the schema it needs",
		Long: `Print the version of this fleetflow binary (from "git describe" when built with make, else the
module version or commit the Go toolchain recorded), the Go version it was built with, the Temporal
Go SDK it links, and the registry schema version it needs (see "fleetflow migrate --status").`,
		Example: `  fleetflow version
  fleetflow version -o json
  fleetflow version -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			bi, ok := debug.ReadBuildInfo()
			v := buildVersion(version, bi, ok)
			out := cmd.OutOrStdout()
			return o.print(out, v, func() error {
				printVersion(out, v)
				return nil
			})
		},
	}
	o = addOutputFlag(cmd)
	return cmd
}

// printVersion is version's text form.
func printVersion(out io.Writer, v versionInfo) {
	fmt.Fprintf(out, "fleetflow     %s\n", v.Version)
	if v.Commit != "" {
		fmt.Fprintf(out, "commit        %s\n", v.Commit)
	}
	fmt.Fprintf(out, "go            %s %s\n", v.GoVersion, v.Platform)
	fmt.Fprintf(out, "temporal sdk  %s\n", v.TemporalSDK)
	fmt.Fprintf(out, "schema        %d\n", v.SchemaVersion)
}
