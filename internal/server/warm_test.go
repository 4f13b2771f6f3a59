package server

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	netmock "atelier/internal/network/mock"
	"atelier/internal/runtime/process"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
	"atelier/internal/testenv"
	"atelier/internal/workspace"
)

// TestWorkspacePrebuildWarmMock: a prebuild of a workspace using the npm
// cache installs each repository's npm dependencies after the init
// commands (npm install without writing a lockfile when there is none),
// so the prebuild holds node_modules; a repository whose install fails is
// a warning in the prebuild's log and the prebuild is still saved; a
// repository without package.json is skipped; OpenCode's warm-up is
// skipped with a reason in an image without an OpenCode service (mock
// guests have none). A sandbox from the prebuild has node_modules, and the
// warmed tree still counts as clean for the background pull.
func TestWorkspacePrebuildWarmMock(t *testing.T) {
	if _, err := exec.LookPath("npm"); err != nil {
		testenv.Missing(t, "the npm warm-up test runs npm (Debian: apt-get install npm): %v", err)
	}
	const token = "warm-token-5e0a"
	gs := startGitServer(t, token)
	// The dependency is a tarball in the repository: the install needs no
	// registry, so the test runs offline.
	gs.repo(t, "app", map[string]string{
		"package.json":  `{"name":"app","version":"1.0.0","dependencies":{"dep":"file:dep-1.0.0.tgz"}}`,
		"dep-1.0.0.tgz": npmTarball(t, `{"name":"dep","version":"1.0.0"}`),
		".gitignore":    "node_modules/\n",
	})
	gs.repo(t, "bad", map[string]string{"package.json": `{"name": broken`})
	gs.repo(t, "plain", map[string]string{"README": "no node here\n"})
	dir, err := os.MkdirTemp("", "atlwarm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	rt, err := process.New(process.Options{Command: []string{buildAgent(t)}, StateDir: filepath.Join(dir, "s", "mock"),
		SocketDir: filepath.Join(dir, "k"), StopGrace: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	vols := &homeVolumes{Volumes: stmock.New(filepath.Join(dir, "s", "overlays")), rt: rt, saved: filepath.Join(dir, "saved")}
	srv, stop := startMockManagerWith(t, dir, nil, Options{Drivers: &sandbox.Drivers{Runtime: rt, Network: netmock.New(), Volumes: vols}})
	srv.Provisioner.NoPrebuildStart = false
	call := jsonCaller(t, "http://"+srv.Addr(), 120*time.Second)
	t.Cleanup(func() {
		_, b := call("GET", "/api/sandboxes", nil)
		var l struct{ Sandboxes []struct{ ID string } }
		_ = json.Unmarshal(b, &l)
		for _, s := range l.Sandboxes {
			call("DELETE", "/api/sandboxes/"+s.ID, nil)
		}
		stop()
	})
	_, body := call("POST", "/api/git-sources", map[string]any{"name": "local", "url": gs.URL, "token": token})
	var src struct{ ID string }
	_ = json.Unmarshal(body, &src)
	var repos []any
	for _, n := range []string{"app", "bad", "plain"} {
		repos = append(repos, map[string]any{"url": gs.URL + "/" + n + ".git", "sourceId": src.ID})
	}
	code, body := call("POST", "/api/workspaces", map[string]any{"name": "warm", "config": map[string]any{
		"repos": repos, "initCommands": []string{"true"}, "useNpmCache": true}})
	if code != 201 {
		t.Fatalf("workspace: %d %s", code, body)
	}
	var ws struct{ ID string }
	_ = json.Unmarshal(body, &ws)
	call("POST", "/api/workspaces/"+ws.ID+"/prebuild", nil)
	var pb struct{ Status, Log, Source string }
	for end := time.Now().Add(2 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
		_, b := call("GET", "/api/workspaces/"+ws.ID+"/prebuild", nil)
		_ = json.Unmarshal(b, &pb)
		if pb.Status != "building" || time.Now().After(end) {
			break
		}
	}
	if pb.Status != "ready" {
		t.Fatalf("prebuild %s, want ready despite the failing install:\n%s", pb.Status, pb.Log)
	}
	t.Logf("prebuild log:\n%s", pb.Log)
	for _, want := range []string{
		"ws-warm-npm done: warning: ",
		"app: npm install via npm's configured registry",
		"bad: npm install: exit ",
		"plain: skipped, no package.json",
		"ws-warm-opencode done: skipped: the image has no OpenCode service",
	} {
		if !strings.Contains(pb.Log, want) {
			t.Errorf("prebuild log lacks %q", want)
		}
	}
	if i, j := strings.Index(pb.Log, "ws-init-0"), strings.Index(pb.Log, "ws-warm-npm"); i < 0 || j < i {
		t.Errorf("the npm warm-up did not run after the init commands")
	}

	code, body = call("POST", "/api/sandboxes", map[string]any{"workspaceId": ws.ID})
	var sb struct{ ID, Status string }
	_ = json.Unmarshal(body, &sb)
	if code != 201 || sb.Status != "running" {
		t.Fatalf("create from prebuild: %d %s", code, body)
	}
	app := filepath.Join(rt.Home(sb.ID), workspace.WorkdirName, "app")
	if _, err := os.Stat(filepath.Join(app, "node_modules", "dep", "package.json")); err != nil {
		t.Errorf("the sandbox from the prebuild has no warmed node_modules: %v", err)
	}
	if _, err := os.Stat(filepath.Join(app, "package-lock.json")); err == nil {
		t.Errorf("the warm-up wrote a lockfile into the repository")
	}
	if st := git(t, app, "status", "--porcelain"); st != "" {
		t.Errorf("warmed repository is not clean: %q", st)
	}
}

// npmTarball is an npm package tarball holding only package.json.
func npmTarball(t *testing.T, pkg string) string {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Name: "package/package.json", Mode: 0o644, Size: int64(len(pkg)), ModTime: time.Unix(0, 0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(pkg)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
