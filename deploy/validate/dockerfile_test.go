package validate

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, COPY, ...
	args string
	line int
}

// parseDockerfile splits a Dockerfile into instructions, dropping comments and the parser directive.
func parseDockerfile(t *testing.T, text string) []instruction {
	t.Helper()
	var out []instruction
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSpace(strings.TrimSuffix(trimmed, "\\")) + " ")
			continue
		}
		cur.WriteString(trimmed)
		fields := strings.SplitN(cur.String(), " ", 2)
		in := instruction{cmd: strings.ToUpper(fields[0]), line: start}
		if len(fields) == 2 {
			in.args = strings.TrimSpace(fields[1])
		}
		out = append(out, in)
		cur.Reset()
	}
	if cur.Len() != 0 {
		t.Fatalf("Dockerfile ends inside a continued line: %q", cur.String())
	}
	return out
}

// stage is one FROM ... AS name block.
type stage struct {
	image, name string
	body        []instruction
}

func stages(t *testing.T, ins []instruction) []stage {
	t.Helper()
	var out []stage
	from := regexp.MustCompile(`^(?:--platform=\S+\s+)?(\S+)(?:\s+[aA][sS]\s+(\S+))?$`)
	for _, in := range ins {
		if in.cmd == "FROM" {
			m := from.FindStringSubmatch(in.args)
			if m == nil {
				t.Fatalf("line %d: FROM %q", in.line, in.args)
			}
			out = append(out, stage{image: m[1], name: m[2]})
			continue
		}
		if len(out) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("line %d: %s before the first FROM", in.line, in.cmd)
			}
			continue
		}
		out[len(out)-1].body = append(out[len(out)-1].body, in)
	}
	return out
}

func TestDockerfiles(t *testing.T) {
	root := repoRoot(t)
	binaries := map[string]string{ // Dockerfile → the main package it ships
		"fleetflow.Dockerfile":        "./starter",
		"fleetflow-worker.Dockerfile": "./worker",
	}
	files, err := filepath.Glob(filepath.Join(root, "deploy", "docker", "*Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(binaries) {
		t.Errorf("Dockerfiles %v, want one per binary: %v", files, binaries)
	}
	goVersion := goDirective(t)
	for _, path := range files {
		name := filepath.Base(path)
		t.Run(name, func(t *testing.T) {
			text, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			ins := parseDockerfile(t, string(text))
			st := stages(t, ins)
			if len(st) < 2 {
				t.Fatalf("%d stage(s): want a builder and a final stage", len(st))
			}
			names := map[string]bool{}
			for _, s := range st[:len(st)-1] {
				if s.name == "" {
					t.Errorf("builder stage FROM %s has no name", s.image)
				}
				names[s.name] = true
			}
			builder := st[0]
			if !strings.HasPrefix(builder.image, "golang:"+goVersion) {
				t.Errorf("builder FROM %s, want golang:%s (go.mod's Go)", builder.image, goVersion)
			}
			final := st[len(st)-1]
			if !strings.HasPrefix(final.image, "gcr.io/distroless/static") && final.image != "scratch" {
				t.Errorf("final stage FROM %s, want distroless/static or scratch", final.image)
			}
			var builds []string
			cgoOff := false
			for _, in := range builder.body {
				if in.cmd == "ENV" && regexp.MustCompile(`\bCGO_ENABLED=0\b`).MatchString(in.args) {
					cgoOff = true
				}
				if in.cmd == "RUN" {
					for _, m := range regexp.MustCompile(`go build [^&;]*?(\./\S+)\s*(?:&&|$)`).FindAllStringSubmatch(in.args, -1) {
						builds = append(builds, m[1])
					}
				}
			}
			if !cgoOff {
				t.Error("the builder does not set CGO_ENABLED=0: the binary would need a libc the final image lacks")
			}
			want := binaries[name]
			if !contains(builds, want) || !contains(builds, "./deploy/probe") {
				t.Errorf("builds %v, want %s and ./deploy/probe (the health check)", builds, want)
			}
			for _, pkg := range builds {
				if _, err := os.Stat(filepath.Join(root, pkg, "main.go")); err != nil {
					t.Errorf("go build %s: %v", pkg, err)
				}
			}
			user := ""
			copied := false
			for _, in := range final.body {
				switch in.cmd {
				case "USER":
					user = in.args
				case "RUN":
					t.Errorf("line %d: RUN in the final stage (distroless has no shell)", in.line)
				case "COPY":
					copied = true
					m := regexp.MustCompile(`--from=(\S+)`).FindStringSubmatch(in.args)
					if m == nil || !names[m[1]] {
						t.Errorf("line %d: COPY %s does not copy from a builder stage", in.line, in.args)
					}
				}
			}
			if !copied {
				t.Error("the final stage copies nothing from the builder")
			}
			uid, _, _ := strings.Cut(user, ":")
			if n, err := strconv.Atoi(uid); err != nil || n == 0 {
				// Numeric, so that Kubernetes' runAsNonRoot can check it without resolving names.
				t.Errorf("final USER %q: want a numeric non-root uid", user)
			}
			for _, in := range ins {
				if in.cmd == "ADD" && regexp.MustCompile(`https?://`).MatchString(in.args) {
					t.Errorf("line %d: ADD of a URL (unverified download)", in.line)
				}
				if in.cmd == "FROM" && (strings.HasSuffix(in.args, ":latest") || !strings.Contains(strings.Fields(in.args)[0], ":") && strings.Fields(in.args)[0] != "scratch") {
					t.Errorf("line %d: FROM %s is not pinned", in.line, in.args)
				}
			}
		})
	}
	// The build context is the repository: .dockerignore keeps local state and secrets out of it.
	ignore := readFile(t, ".dockerignore")
	for _, p := range []string{".git", ".fleetflow", "bin", "deploy/compose/.env", "deploy/compose/tls", "deploy/compose/tls-ca"} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(p) + `$`).MatchString(ignore) {
			t.Errorf(".dockerignore lacks %s", p)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// The parser itself: a lint that parses nothing would pass anything.
func TestParseDockerfile(t *testing.T) {
	ins := parseDockerfile(t, "# syntax=docker/dockerfile:1\nARG X=1\nFROM golang:1 AS b\nRUN a && \\\n    b\n\nFROM scratch\nUSER 1:1\n")
	var got []string
	for _, in := range ins {
		got = append(got, in.cmd+" "+in.args)
	}
	want := []string{"ARG X=1", "FROM golang:1 AS b", "RUN a && b", "FROM scratch", "USER 1:1"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("parsed %q, want %q", got, want)
	}
	st := stages(t, ins)
	if len(st) != 2 || st[0].name != "b" || st[1].image != "scratch" || len(st[1].body) != 1 {
		t.Errorf("stages %+v", st)
	}
}
