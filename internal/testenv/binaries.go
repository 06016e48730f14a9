package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/fleetflow/fleetflow/internal/stack"
)

// Binaries are the fleetflow CLI and worker built from this checkout for tests that run them as users do.
type Binaries struct {
	CLI, Worker string
}

// BuildBinaries builds bin/fleetflow and bin/fleetflow-worker equivalents into dir (go build caches, so this
// is quick after the first time). It is meant for TestMain, which has no testing.T.
func BuildBinaries(dir string) (Binaries, error) {
	wd, err := os.Getwd()
	if err != nil {
		return Binaries{}, err
	}
	root, err := stack.FindRoot(wd)
	if err != nil {
		return Binaries{}, err
	}
	b := Binaries{CLI: filepath.Join(dir, "fleetflow"), Worker: filepath.Join(dir, "fleetflow-worker")}
	for out, pkg := range map[string]string{b.CLI: "./starter", b.Worker: "./worker"} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Dir = root
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return Binaries{}, fmt.Errorf("build %s: %w", pkg, err)
		}
	}
	return b, nil
}
