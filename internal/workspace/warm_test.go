package workspace

import (
	"context"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"atelier/internal/agent"
	"atelier/internal/image/manifest"
)

func TestNpmPlan(t *testing.T) {
	for _, tc := range []struct {
		files []string
		cmd   string // "" skipped
	}{
		{nil, ""},
		{[]string{"README"}, ""},
		{[]string{"package.json"}, "npm install --prefer-offline --no-audit --no-fund --no-package-lock"},
		{[]string{"package.json", "package-lock.json"}, "npm ci --prefer-offline --no-audit --no-fund"},
		{[]string{"package.json", "npm-shrinkwrap.json"}, "npm ci --prefer-offline --no-audit --no-fund"},
		{[]string{"package.json", "yarn.lock"}, ""},
		{[]string{"package.json", "pnpm-lock.yaml"}, ""},
		{[]string{"package.json", "bun.lockb"}, ""},
		{[]string{"package.json", "package-lock.json", "yarn.lock"}, "npm ci --prefer-offline --no-audit --no-fund"},
	} {
		names := map[string]bool{}
		for _, f := range tc.files {
			names[f] = true
		}
		argv, why := npmPlan(names)
		if got := strings.Join(argv, " "); got != tc.cmd || (argv == nil) != (why != "") {
			t.Errorf("%v: %q (%q), want %q", tc.files, got, why, tc.cmd)
		}
	}
}

var (
	agentOnce sync.Once
	agentBin  string
	agentErr  error
)

// startAgent runs a real guest agent whose image manifest declares an
// OpenCode service running bin.
func startAgent(t *testing.T, dir, bin string) *agent.Client {
	t.Helper()
	agentOnce.Do(func() {
		d, err := os.MkdirTemp("", "atlwarmagent")
		if err != nil {
			agentErr = err
			return
		}
		agentBin = filepath.Join(d, "atelier-agent")
		cmd := exec.Command("go", "build", "-o", agentBin, "../../cmd/atelier-agent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			agentErr = err
			t.Logf("%s", out)
		}
	})
	if agentErr != nil {
		t.Fatal(agentErr)
	}
	t.Cleanup(func() { os.RemoveAll(filepath.Dir(agentBin)) })
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{Schema: manifest.Schema, ID: "test", User: u.Username, Workdir: dir,
		Services: []manifest.Service{{Name: "opencode", Role: manifest.RoleOpenCode,
			Process: agent.ProcessSpec{Argv: []string{bin, "serve"}, Port: 1}}}}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "image.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "a.sock")
	cmd := exec.Command(agentBin, "serve", "--unix", sock, "--vsock-port", "0", "--workdir", dir, "--file-root", dir,
		"--log-dir", filepath.Join(dir, "logs"), "--config-path", filepath.Join(dir, "config.json"), "--etc-dir", dir,
		"--image-manifest", filepath.Join(dir, "image.json"), "--state-dir", filepath.Join(dir, "state"))
	// The service is not running, so its binary is found on the PATH.
	cmd.Env = []string{"PATH=" + filepath.Dir(bin) + ":" + os.Getenv("PATH"), "HOME=" + dir}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	c := agent.New(agent.UnixDialer(sock))
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestWarmOpenCode: with a real agent whose image declares an OpenCode
// service, the warm-up runs that binary's `models` once in each
// repository; a failing run is a warning, never an error.
func TestWarmOpenCode(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "runs")
	bin := filepath.Join(dir, "opencode")
	script := "#!/bin/sh\nprintf '%s %s\\n' \"$1\" \"$PWD\" >> " + marker + "\ntest ! -e \"$PWD/fail\" || { echo 'models: boom' >&2; exit 2; }\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(dir, WorkdirName)
	for _, r := range []string{"a", "b"} {
		if err := os.MkdirAll(filepath.Join(work, r), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	c := startAgent(t, dir, bin)
	p := &Provisioner{}
	g := &guest{home: dir, workdir: work}
	repos := []Repo{{Path: "a"}, {Path: "b"}}
	ctx := context.Background()
	got, err := p.warmOpenCode(ctx, c, g, "sbxwarm00001", repos)
	if err != nil || strings.HasPrefix(got, "warning") || !strings.Contains(got, "a: opencode models in") || !strings.Contains(got, "b: opencode models in") {
		t.Fatalf("warm-up: %q %v", got, err)
	}
	runs, _ := os.ReadFile(marker)
	want := []string{"models " + filepath.Join(work, "a"), "models " + filepath.Join(work, "b")}
	if lines := strings.Split(strings.TrimSpace(string(runs)), "\n"); !slices.Equal(lines, want) {
		t.Fatalf("runs %q, want %q", lines, want)
	}

	if err := os.WriteFile(filepath.Join(work, "a", "fail"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err = p.warmOpenCode(ctx, c, g, "sbxwarm00001", repos)
	if err != nil || got != "warning: a: opencode models: exit 2: models: boom; 1 more not tried" {
		t.Fatalf("failing warm-up: %q %v", got, err)
	}
}
