package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	netmock "atelier/internal/network/mock"
	"atelier/internal/runtime/process"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
	"atelier/internal/workspace"
)

// homeVolumes are mock volumes whose prebuilds carry files: a prebuild
// saves the build sandbox's home, and a sandbox cloned from it starts with
// a copy, as a disk snapshot would. (Plain mock volumes hold nothing.)
type homeVolumes struct {
	*stmock.Volumes
	rt    *process.Runtime
	saved string
}

func copyTree(src, dst string) error {
	if err := os.RemoveAll(dst); err != nil {
		return err
	}
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return err
	}
	out, err := exec.Command("cp", "-a", src+"/.", dst).CombinedOutput()
	if err != nil {
		return &os.PathError{Op: "cp " + string(out), Path: src, Err: err}
	}
	return nil
}

func (v *homeVolumes) Prebuild(ctx context.Context, workspaceID, sandboxID string) error {
	if err := v.Volumes.Prebuild(ctx, workspaceID, sandboxID); err != nil {
		return err
	}
	return copyTree(v.rt.Home(sandboxID), filepath.Join(v.saved, workspaceID))
}

func (v *homeVolumes) CloneFromPrebuild(ctx context.Context, workspaceID, id string) (string, string, error) {
	p, d, err := v.Volumes.CloneFromPrebuild(ctx, workspaceID, id)
	if err != nil {
		return p, d, err
	}
	return p, d, copyTree(filepath.Join(v.saved, workspaceID), v.rt.Home(id))
}

// gatedProxy forwards to a git server; while held, requests wait until
// it is released, and each waiting request is signalled on arrived.
type gatedProxy struct {
	URL     string
	held    atomic.Bool
	arrived chan struct{}
	open    chan struct{}
	once    sync.Once
}

func startGatedProxy(t *testing.T, target string) *gatedProxy {
	t.Helper()
	u, _ := url.Parse(target)
	g := &gatedProxy{arrived: make(chan struct{}, 64), open: make(chan struct{})}
	rp := httputil.NewSingleHostReverseProxy(u)
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(freePort(t)))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.held.Load() {
			select {
			case g.arrived <- struct{}{}:
			default:
			}
			<-g.open
		}
		rp.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { g.release(); srv.Close() })
	g.URL = "http://" + ln.Addr().String()
	return g
}

func (g *gatedProxy) release() { g.once.Do(func() { close(g.open) }) }

// TestWorkspacePullAfterPrebuildMock: a sandbox created from a prebuild
// has its repositories at the prebuild's commits; the create returns
// while the background pull is still fetching (held at the git server);
// then the clean repository is fast-forwarded to the commit pushed
// upstream after the prebuild, while a repository with local changes and
// one with a local commit are left exactly as they were. The result is an
// event for the owner; the token is nowhere in the sandbox's files.
func TestWorkspacePullAfterPrebuildMock(t *testing.T) {
	const token = "pull-token-93b1d2"
	gs := startGitServer(t, token)
	names := []string{"app", "dirty", "ahead"}
	first := map[string]string{}
	for _, n := range names {
		first[n] = gs.repo(t, n, map[string]string{"README": n + " v1\n"})
	}
	gate := startGatedProxy(t, gs.URL)
	dir, err := os.MkdirTemp("", "atlpull")
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
	api := "http://" + srv.Addr()
	call := jsonCaller(t, api, 60*time.Second)
	t.Cleanup(func() {
		gate.release()
		_, b := call("GET", "/api/sandboxes", nil)
		var l struct{ Sandboxes []struct{ ID string } }
		_ = json.Unmarshal(b, &l)
		for _, s := range l.Sandboxes {
			call("DELETE", "/api/sandboxes/"+s.ID, nil)
		}
		stop()
	})
	_, body := call("POST", "/api/git-sources", map[string]any{"name": "local", "url": gate.URL, "token": token})
	var src struct{ ID string }
	_ = json.Unmarshal(body, &src)
	var repos []any
	for _, n := range names {
		repos = append(repos, map[string]any{"url": gate.URL + "/" + n + ".git", "sourceId": src.ID})
	}
	code, body := call("POST", "/api/workspaces", map[string]any{"name": "pull", "config": map[string]any{
		"repos": repos, "initCommands": []string{"cat app/README > built.txt"}}})
	if code != 201 {
		t.Fatalf("workspace: %d %s", code, body)
	}
	var ws struct{ ID string }
	_ = json.Unmarshal(body, &ws)
	call("POST", "/api/workspaces/"+ws.ID+"/prebuild", nil)
	for end := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, b := call("GET", "/api/workspaces/"+ws.ID+"/prebuild", nil)
		var pb struct{ Status string }
		_ = json.Unmarshal(b, &pb)
		if pb.Status == "ready" {
			break
		}
		if pb.Status == "failed" || time.Now().After(end) {
			t.Fatalf("prebuild: %s", b)
		}
	}
	second := map[string]string{}
	for _, n := range names {
		second[n] = gs.commit(t, n, "README", n+" v2\n")
	}

	live, cancel := srv.Bus.Subscribe()
	defer cancel()
	gate.held.Store(true)
	code, body = call("POST", "/api/sandboxes", map[string]any{"workspaceId": ws.ID})
	var sb struct{ ID, Status string }
	_ = json.Unmarshal(body, &sb)
	if code != 201 || sb.Status != "running" {
		t.Fatalf("create from prebuild: %d %s", code, body)
	}
	work := filepath.Join(rt.Home(sb.ID), workspace.WorkdirName)
	head := func(n string) string { return git(t, filepath.Join(work, n), "rev-parse", "HEAD") }
	// The create has returned; the pull's fetch is held at the server.
	select {
	case <-gate.arrived:
	case <-time.After(30 * time.Second):
		t.Fatal("no background fetch reached the git server")
	}
	for _, n := range names {
		if h := head(n); h != first[n] {
			t.Fatalf("%s at %s when the create returned, want the prebuild's %s", n, h, first[n])
		}
	}
	// The user's work, made while the first repository is being fetched.
	if err := os.WriteFile(filepath.Join(work, "dirty", "README"), []byte("mine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "ahead", "NOTES"), []byte("local\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, filepath.Join(work, "ahead"), "add", "NOTES")
	git(t, filepath.Join(work, "ahead"), "commit", "-q", "-m", "local")
	local := head("ahead")
	released := time.Now()
	gate.release()

	var rep workspace.PullReport
	deadline := time.After(60 * time.Second)
	for rep.SandboxID == "" {
		select {
		case ev := <-live:
			if ev.Type == workspace.EventPull && ev.SandboxID == sb.ID {
				if err := json.Unmarshal(ev.Data, &rep); err != nil {
					t.Fatal(err)
				}
			}
		case <-deadline:
			t.Fatal("no workspace.pull event")
		}
	}
	t.Logf("background pull done %s after the fetch was let through", time.Since(released).Round(time.Millisecond))
	want := map[string]string{"app": workspace.PullUpdated, "dirty": workspace.PullSkipped, "ahead": workspace.PullSkipped}
	if len(rep.Repos) != 3 || rep.OwnerID == "" || rep.WorkspaceID != ws.ID {
		t.Fatalf("report: %+v", rep)
	}
	for _, r := range rep.Repos {
		if r.Result != want[r.Path] {
			t.Errorf("%s: %+v, want %s", r.Path, r, want[r.Path])
		}
	}
	if h := head("app"); h != second["app"] {
		t.Errorf("app at %s, want upstream's %s", h, second["app"])
	}
	if b, _ := os.ReadFile(filepath.Join(work, "app", "README")); string(b) != "app v2\n" {
		t.Errorf("app README %q", b)
	}
	if h := head("dirty"); h != first["dirty"] {
		t.Errorf("dirty repository moved to %s", h)
	}
	if b, _ := os.ReadFile(filepath.Join(work, "dirty", "README")); string(b) != "mine\n" {
		t.Errorf("the user's change was lost: %q", b)
	}
	if h := head("ahead"); h != local {
		t.Errorf("repository with a local commit moved to %s", h)
	}
	// The token went to git through its environment only.
	_ = filepath.WalkDir(rt.Home(sb.ID), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(token)) {
			t.Errorf("token written to %s", p)
		}
		return nil
	})
}
