package validate

import (
	"bytes"
	"context"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// searchAttributes returns fleetflow's custom search attributes as NAME=Type (the form of `temporal server
// start-dev --search-attribute` and of setup.sh), read from the source of internal/searchattr: its Definitions
// function and the name constants it uses. Reading the source, not importing the package, keeps this module
// independent of the product's go.mod.
func searchAttributes(t *testing.T) []string {
	t.Helper()
	path := filepath.Join(repoRoot(t), "internal", "searchattr", "searchattr.go")
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	consts := map[string]string{}
	var defs *ast.FuncDecl
	for _, decl := range f.Decls {
		switch d := decl.(type) {
		case *ast.GenDecl:
			for _, spec := range d.Specs {
				vs, ok := spec.(*ast.ValueSpec)
				if !ok || d.Tok != token.CONST {
					continue
				}
				for i, name := range vs.Names {
					if i < len(vs.Values) {
						if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
							consts[name.Name], _ = strconv.Unquote(lit.Value)
						}
					}
				}
			}
		case *ast.FuncDecl:
			if d.Name.Name == "Definitions" {
				defs = d
			}
		}
	}
	if defs == nil {
		t.Fatalf("%s has no func Definitions", path)
	}
	types := map[string]string{ // enumspb.IndexedValueType constants → their String()
		"INDEXED_VALUE_TYPE_TEXT": "Text", "INDEXED_VALUE_TYPE_KEYWORD": "Keyword", "INDEXED_VALUE_TYPE_INT": "Int",
		"INDEXED_VALUE_TYPE_DOUBLE": "Double", "INDEXED_VALUE_TYPE_BOOL": "Bool", "INDEXED_VALUE_TYPE_DATETIME": "Datetime",
		"INDEXED_VALUE_TYPE_KEYWORD_LIST": "KeywordList",
	}
	var out []string
	ast.Inspect(defs, func(n ast.Node) bool {
		lit, ok := n.(*ast.CompositeLit)
		if !ok || len(lit.Elts) != 2 {
			return true
		}
		name, ok1 := lit.Elts[0].(*ast.Ident)
		typ, ok2 := lit.Elts[1].(*ast.SelectorExpr)
		if !ok1 || !ok2 {
			return true
		}
		value, known := consts[name.Name]
		kind, knownType := types[typ.Sel.Name]
		if !known || !knownType {
			t.Fatalf("Definitions: {%s, %s}: not a string constant and an indexed value type", name.Name, typ.Sel.Name)
		}
		out = append(out, value+"="+kind)
		return false
	})
	if len(out) == 0 {
		t.Fatalf("found no definitions in %s: has Definitions changed shape?", path)
	}
	return out
}

// The namespace setup registers exactly fleetflow's search attributes, and compose runs the chart's script (one
// copy for both).
func TestTemporalSetupScript(t *testing.T) {
	chart := readFile(t, chartDir+"/files/temporal-setup.sh")
	if !strings.Contains(readFile(t, composeDir+"/compose.yaml"), "../helm/fleetflow/files/temporal-setup.sh:/etc/fleetflow/temporal-setup.sh:ro") {
		t.Fatalf("compose.yaml does not mount the chart's files/temporal-setup.sh")
	}
	m := regexp.MustCompile(`(?m)^ATTRS="([^"]*)"$`).FindStringSubmatch(chart)
	if m == nil {
		t.Fatal("setup.sh has no ATTRS=\"...\" line")
	}
	want := searchAttributes(t)
	if got := strings.Fields(m[1]); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("setup.sh registers %v, internal/searchattr defines %v", got, want)
	}
}

// temporalCLI is the temporal binary `make deps` builds: $FLEETFLOW_TEMPORAL_CLI, else bin/temporal.
func temporalCLI(t *testing.T) string {
	t.Helper()
	cli := os.Getenv("FLEETFLOW_TEMPORAL_CLI")
	if cli == "" {
		cli = filepath.Join(repoRoot(t), "bin", "temporal")
	}
	if st, err := os.Stat(cli); err != nil || st.IsDir() {
		t.Fatalf("temporal CLI not found at %s: run `make test` (it builds bin/temporal), or set FLEETFLOW_TEMPORAL_CLI", cli)
	}
	return cli
}

// startDevServer starts `temporal server start-dev` (in memory, no UI) on a free loopback port, waits until it
// serves and stops it when the test ends; it returns the frontend's host:port.
func startDevServer(t *testing.T, cli string) string {
	t.Helper()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port := freePort(t)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		var log bytes.Buffer
		srv := exec.Command(cli, "server", "start-dev", "--ip", "127.0.0.1", "--port", strconv.Itoa(port),
			"--headless", "--log-level", "error")
		srv.Stdout, srv.Stderr = &log, &log
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- srv.Wait() }()
		stop := func() {
			_ = srv.Process.Kill()
			<-exited
		}
		deadline := time.Now().Add(2 * time.Minute)
	wait:
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := exec.CommandContext(ctx, cli, "operator", "cluster", "health", "--address", addr).Run()
			cancel()
			if err == nil {
				t.Cleanup(stop)
				return addr
			}
			select {
			case err := <-exited:
				exited <- err // stop() reads it
				lastErr = fmt.Errorf("dev server exited: %v\n%s", err, log.String())
				break wait
			case <-time.After(200 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				stop()
				t.Fatalf("dev server on %s not serving after 2 minutes:\n%s", addr, log.String())
			}
		}
		if !strings.Contains(lastErr.Error(), "address already in use") {
			break
		}
	}
	t.Fatal(lastErr)
	return ""
}

// The script against a real Temporal server (the dev server of bin/temporal, which is also the temporal CLI
// the script calls): it creates the namespace and the search attributes, and a second run succeeds and finds
// them.
func TestTemporalSetupScriptRuns(t *testing.T) {
	cli := temporalCLI(t)
	addr := startDevServer(t, cli)
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
		cmd := exec.CommandContext(ctx, "/bin/sh", filepath.Join(repoRoot(t), chartDir, "files", "temporal-setup.sh"))
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
	for _, attr := range searchAttributes(t) {
		name, typ, _ := strings.Cut(attr, "=")
		if !regexp.MustCompile(`(?m)^\s*` + name + `\s+` + typ + `\s*$`).Match(list) {
			t.Errorf("%s (%s) not registered in %s:\n%s", name, typ, ns, list)
		}
	}
	second := run()
	if !strings.Contains(second, "namespace "+ns+" exists") || !strings.Contains(second, "temporal-setup: done") {
		t.Errorf("second run:\n%s", second)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
