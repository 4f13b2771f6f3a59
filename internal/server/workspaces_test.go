package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	netmock "atelier/internal/network/mock"
	"atelier/internal/runtime/process"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
)

// gitServer serves the bare repositories under root with git http-backend
// on loopback, answering only requests that carry token as the Basic
// password.
type gitServer struct {
	URL  string
	root string
}

func startGitServer(t testing.TB, token string) *gitServer {
	t.Helper()
	backend, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		t.Skipf("git not installed: %v", err)
	}
	root := t.TempDir()
	h := &cgi.Handler{Path: filepath.Join(strings.TrimSpace(string(backend)), "git-http-backend"),
		Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"}}
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(freePort(t)))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pw, ok := r.BasicAuth(); !ok || pw != token {
			w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
			http.Error(w, "token required", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &gitServer{URL: "http://" + ln.Addr().String(), root: root}
}

func git(t testing.TB, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@t", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@t",
		"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// repo creates bare repository name.git with files on branch main and
// returns the commit.
func (g *gitServer) repo(t testing.TB, name string, files map[string]string) string {
	t.Helper()
	work := t.TempDir()
	git(t, work, "init", "-q", "-b", "main")
	for f, c := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(work, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(work, f), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	git(t, work, "add", ".")
	git(t, work, "commit", "-q", "-m", "first")
	bare := filepath.Join(g.root, name+".git")
	git(t, g.root, "clone", "-q", "--bare", work, bare)
	git(t, bare, "update-server-info")
	return git(t, work, "rev-parse", "HEAD")
}

// TestWorkspaceSandboxMock: a sandbox created from a workspace, in mock
// mode with a real agent, has its token-protected repository cloned, the
// init command's effect, its variables and secret variable in every
// process, its secret file with its mode, its dev server answering through
// the edge on dev-web-{id}, and SANDBOX.md; the token is nowhere in the
// sandbox's files or any process environment afterwards.
func TestWorkspaceSandboxMock(t *testing.T) {
	const token = "ghp-TESTTOKEN-5c2e9a1b7d"
	const secretVal = "secret-env-77aa01"
	const fileVal = "secret-file-content-31f0"
	gs := startGitServer(t, token)
	commit := gs.repo(t, "web", map[string]string{"README": "hello from the repo\n"})

	echo := buildEcho(t)
	dir, err := os.MkdirTemp("", "atlws")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	echoPath := filepath.Join(dir, "edgeecho")
	if err := os.WriteFile(echoPath, echo, 0o755); err != nil {
		t.Fatal(err)
	}
	srv, stop := startMockManager(t, dir, nil)
	cfg := srv.Config
	api := "http://" + srv.Addr()
	call := jsonCaller(t, api, 60*time.Second)
	var ids []string
	t.Cleanup(func() {
		for _, id := range ids {
			call("DELETE", "/api/sandboxes/"+id, nil)
		}
		stop()
	})

	code, body := call("POST", "/api/git-sources", map[string]any{"name": "local", "url": gs.URL, "token": token})
	if code != http.StatusCreated || bytes.Contains(body, []byte(token)) {
		t.Fatalf("git source: %d %s", code, body)
	}
	var src struct{ ID string }
	_ = json.Unmarshal(body, &src)
	repoURL := gs.URL + "/web.git"
	if code, body := call("GET", "/api/git-sources/public/branches?url="+repoURL, nil); code != http.StatusBadGateway {
		t.Fatalf("branches without the token: %d %s", code, body)
	}
	code, body = call("GET", "/api/git-sources/"+src.ID+"/branches?url="+repoURL, nil)
	if code != 200 || !strings.Contains(string(body), `"name":"main","commit":"`+commit+`"`) {
		t.Fatalf("branches: %d %s", code, body)
	}
	if code, body := call("GET", "/api/git-sources/"+src.ID+"/branches?url=https://elsewhere.test/x.git", nil); code != 400 {
		t.Fatalf("token for another host: %d %s", code, body)
	}

	port := freePort(t)
	code, body = call("POST", "/api/workspaces", map[string]any{
		"name": "web",
		"config": map[string]any{
			"repos":        []any{map[string]any{"url": repoURL, "sourceId": src.ID}},
			"initCommands": []string{"cat web/README > init-ran.txt"},
			"devCommands": []any{map[string]any{"name": "web", "command": fmt.Sprintf("exec %s -addr 127.0.0.1:%d", echoPath, port),
				"port": port, "default": true, "public": true}},
			"env": map[string]string{"MODE": "dev"},
		},
		"secretEnv":   map[string]string{"API_KEY": secretVal},
		"secretFiles": []any{map[string]any{"path": "~/.config/app/key", "content": fileVal, "mode": "0400"}},
	})
	if code != http.StatusCreated {
		t.Fatalf("workspace: %d %s", code, body)
	}
	var ws struct{ ID string }
	_ = json.Unmarshal(body, &ws)

	code, body = call("POST", "/api/sandboxes", map[string]any{"workspaceId": ws.ID})
	var sb struct{ ID, Status, Error string }
	_ = json.Unmarshal(body, &sb)
	if sb.ID != "" {
		ids = append(ids, sb.ID)
	}
	if code != http.StatusCreated || sb.Status != "running" {
		t.Fatalf("create from workspace: %d %s", code, body)
	}
	run := func(cmd string) string {
		t.Helper()
		code, b := call("POST", "/api/sandboxes/"+sb.ID+"/exec", map[string]any{"argv": []string{"sh", "-c", cmd}, "timeoutMs": 10000})
		var r struct {
			ExitCode       int
			Stdout, Stderr string
		}
		if code != 200 || json.Unmarshal(b, &r) != nil || r.ExitCode != 0 {
			t.Fatalf("exec %q: %d %s", cmd, code, b)
		}
		return r.Stdout
	}
	if got := run(`cd ~/workspace && cat web/README init-ran.txt && git -C web rev-parse HEAD`); got != "hello from the repo\nhello from the repo\n"+commit+"\n" {
		t.Errorf("clone and init: %q", got)
	}
	if got := run(`printf '%s %s' "$MODE" "$API_KEY"`); got != "dev "+secretVal {
		t.Errorf("variables: %q", got)
	}
	if got := run(`stat -c %a ~/.config/app/key && cat ~/.config/app/key`); got != "400\n"+fileVal {
		t.Errorf("secret file: %q", got)
	}
	md := run(`cat ~/workspace/SANDBOX.md`)
	for _, w := range []string{"dev-web-" + sb.ID, repoURL, "API_KEY (secret)", "~/.config/app/key"} {
		if w == "~/.config/app/key" {
			w = "/.config/app/key"
		}
		if !strings.Contains(md, w) {
			t.Errorf("SANDBOX.md lacks %q:\n%s", w, md)
		}
	}
	if strings.Contains(md, secretVal) {
		t.Errorf("SANDBOX.md holds a secret value")
	}
	// The global config names the agent's credential helper, never a token.
	if got := run(`git -C ~/workspace/web remote get-url origin; git -C ~/workspace/web config --local --get-regexp 'credential|url'; cat ~/.gitconfig`); strings.Contains(got, token) ||
		!strings.Contains(got, "'git-credential' '--socket'") || !strings.HasPrefix(got, repoURL+"\nremote.origin.url "+repoURL+"\n") {
		t.Errorf("remote and git config: %q", got)
	}

	// The dev server through the edge's plain-HTTP port, by its host.
	edgeAddr := "127.0.0.1:" + strconv.Itoa(cfg.Domain.HTTPPort)
	ec := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", edgeAddr)
	}}}
	var last string
	for end := time.Now().Add(15 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		res, err := ec.Get("http://dev-web-" + sb.ID + ".localhost:" + strconv.Itoa(cfg.Domain.HTTPPort) + "/x")
		if err == nil {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			last = fmt.Sprintf("%d %s", res.StatusCode, b)
			if res.StatusCode == 200 && strings.Contains(string(b), fmt.Sprintf("port=%d host=dev-web-%s.localhost", port, sb.ID)) {
				last = ""
				break
			}
		} else {
			last = err.Error()
		}
	}
	if last != "" {
		t.Errorf("dev server through the edge: %s", last)
	}

	// The token: in no file of the sandbox (its whole state directory)
	// and in no process's environment.
	_ = filepath.WalkDir(cfg.Sandbox.StateDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(token)) {
			t.Errorf("token found in %s", p)
		}
		return nil
	})
	envs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, p := range envs {
		if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(token)) {
			t.Errorf("token found in %s", p)
		}
	}
	// The secrets are sealed in the store.
	for _, f := range []string{"atelier.db", "atelier.db-wal"} {
		if b, _ := os.ReadFile(filepath.Join(cfg.Server.DataDir, f)); bytes.Contains(b, []byte(token)) || bytes.Contains(b, []byte(secretVal)) || bytes.Contains(b, []byte(fileVal)) {
			t.Errorf("a secret in the clear in %s", f)
		}
	}
}

// commit adds a commit on main of bare repository name.git and returns it.
func (g *gitServer) commit(t *testing.T, name, file, content string) string {
	t.Helper()
	work := t.TempDir()
	bare := filepath.Join(g.root, name+".git")
	git(t, work, "clone", "-q", bare, "w")
	w := filepath.Join(work, "w")
	if err := os.WriteFile(filepath.Join(w, file), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, w, "add", ".")
	git(t, w, "commit", "-q", "-m", "more")
	git(t, w, "push", "-q", "origin", "main")
	git(t, bare, "update-server-info")
	return git(t, w, "rev-parse", "HEAD")
}

// TestWorkspacePrebuildMock: a prebuild is built from a token-protected
// repository and recorded with its commit; a sandbox of the workspace then
// starts from prebuild-{workspaceId} without cloning or running the init
// commands again; moving the branch makes the staleness check rebuild; a
// failed build keeps the previous prebuild; a build a restart interrupted
// is settled as failed, the ready prebuild kept. (Mock volumes hold no
// files: that the files come back from the disk is for the runc test.)
func TestWorkspacePrebuildMock(t *testing.T) {
	const token = "pb-token-0c4f7e"
	gs := startGitServer(t, token)
	first := gs.repo(t, "app", map[string]string{"README": "v1\n"})
	dir, err := os.MkdirTemp("", "atlpb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	rt, err := process.New(process.Options{Command: []string{buildAgent(t)}, StateDir: filepath.Join(dir, "s", "mock"),
		SocketDir: filepath.Join(dir, "k"), StopGrace: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	vols := stmock.New(filepath.Join(dir, "s", "overlays"))
	srv, stop := startMockManagerWith(t, dir, nil, Options{Drivers: &sandbox.Drivers{Runtime: rt, Network: netmock.New(), Volumes: vols}})
	// Mock mode never starts from a prebuild (its files are not on the
	// volume); the flow is what is tested here.
	srv.Provisioner.NoPrebuildStart = false
	api := "http://" + srv.Addr()
	call := jsonCaller(t, api, 60*time.Second)
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
	wsCfg := map[string]any{
		"repos":        []any{map[string]any{"url": gs.URL + "/app.git", "sourceId": src.ID}},
		"initCommands": []string{"cat app/README > built.txt"},
	}
	code, body := call("POST", "/api/workspaces", map[string]any{"name": "app", "config": wsCfg, "secretEnv": map[string]string{"S": "v"}})
	if code != 201 {
		t.Fatalf("workspace: %d %s", code, body)
	}
	var ws struct{ ID string }
	_ = json.Unmarshal(body, &ws)
	pbPath := "/api/workspaces/" + ws.ID + "/prebuild"
	type prebuild struct {
		Status  string
		Ready   bool
		Stale   bool
		Commits map[string]string
		Error   string
		Log     string
		Source  string
	}
	wait := func(want string) prebuild {
		t.Helper()
		var pb prebuild
		for end := time.Now().Add(60 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			_, b := call("GET", pbPath, nil)
			pb = prebuild{}
			_ = json.Unmarshal(b, &pb)
			if pb.Status != "building" {
				break
			}
		}
		if pb.Status != want {
			t.Fatalf("prebuild %s, want %s: %+v", pb.Status, want, pb)
		}
		return pb
	}

	if code, body := call("POST", pbPath, nil); code != http.StatusAccepted || !strings.Contains(string(body), `"status":"building"`) {
		t.Fatalf("start prebuild: %d %s", code, body)
	}
	if code, _ := call("POST", pbPath, nil); code != http.StatusConflict {
		t.Errorf("second build while one runs: %d", code)
	}
	pb := wait("ready")
	if !pb.Ready || pb.Commits["app"] != first || !strings.Contains(pb.Log, "ws-init-0 done") || strings.Contains(pb.Log, "ws-secret") ||
		pb.Source != "build" {
		t.Fatalf("ready prebuild: %+v", pb)
	}
	if len(vols.Prebuilds()) != 1 || vols.Prebuilds()[ws.ID] == "" {
		t.Fatalf("prebuild volumes: %v", vols.Prebuilds())
	}
	_, body = call("GET", "/api/sandboxes", nil)
	if strings.Contains(string(body), `"id"`) {
		t.Fatalf("the build sandbox outlived the build: %s", body)
	}

	code, body = call("POST", "/api/sandboxes", map[string]any{"workspaceId": ws.ID})
	var sb struct{ ID, Status string }
	_ = json.Unmarshal(body, &sb)
	if code != 201 || sb.Status != "running" {
		t.Fatalf("create from prebuild: %d %s", code, body)
	}
	ops, err := srv.Store.ListOps(context.Background(), sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	for _, o := range ops {
		steps = append(steps, o.Step+"="+o.Detail)
	}
	joined := strings.Join(steps, " ")
	if vols.Volumes()[sb.ID].Image != "prebuild-"+ws.ID || strings.Contains(joined, "ws-clone") || strings.Contains(joined, "ws-init") ||
		!strings.Contains(joined, "ws-config") {
		t.Fatalf("sandbox from prebuild ran: %s", joined)
	}
	call("DELETE", "/api/sandboxes/"+sb.ID, nil)

	code, body = call("POST", pbPath+"/check", nil)
	if code != 200 || !strings.Contains(string(body), `"stale":false`) {
		t.Fatalf("check, branch unmoved: %d %s", code, body)
	}
	second := gs.commit(t, "app", "README", "v2\n")
	code, body = call("POST", pbPath+"/check", nil)
	if code != 200 || !strings.Contains(string(body), `"stale":true`) {
		t.Fatalf("check, branch moved: %d %s", code, body)
	}
	if pb = wait("ready"); pb.Commits["app"] != second || pb.Stale {
		t.Fatalf("rebuilt prebuild: %+v", pb)
	}

	wsCfg["initCommands"] = []string{"echo broken >&2; exit 3"}
	if code, body := call("PUT", "/api/workspaces/"+ws.ID, map[string]any{"config": wsCfg}); code != 200 {
		t.Fatalf("update: %d %s", code, body)
	}
	call("POST", pbPath, nil)
	pb = wait("failed")
	if !pb.Ready || pb.Commits["app"] != second || !strings.Contains(pb.Error, "exit 3") {
		t.Fatalf("failed build did not keep the previous prebuild: %+v", pb)
	}

	// A build a restart interrupted.
	ctx := context.Background()
	if err := srv.Store.BeginPrebuild(ctx, ws.ID); err != nil {
		t.Fatal(err)
	}
	if err := srv.Prebuilds.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if pb = wait("failed"); !pb.Ready || !strings.Contains(pb.Error, "restart") {
		t.Fatalf("after recovery: %+v", pb)
	}
	if code, _ := call("DELETE", pbPath, nil); code != http.StatusNoContent {
		t.Fatalf("delete prebuild: %d", code)
	}
	if _, b := call("GET", pbPath, nil); !strings.Contains(string(b), `"ready":false`) || len(vols.Prebuilds()) != 0 {
		t.Fatalf("after delete: %s, volumes %v", b, vols.Prebuilds())
	}
}

// TestWorkspaceFailuresMock: a create whose provisioning fails (a wrong
// token) ends in error with everything undone: no dev route stays, no
// address is held; a build cancelled half-way is destroyed and leaves the
// status as it was; another user cannot create a sandbox from the workspace.
func TestWorkspaceFailuresMock(t *testing.T) {
	gs := startGitServer(t, "right-token")
	gs.repo(t, "app", map[string]string{"README": "x\n"})
	dir, err := os.MkdirTemp("", "atlwf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	srv, stop := startMockManager(t, dir, nil)
	api := "http://" + srv.Addr()
	call := jsonCaller(t, api, 60*time.Second)
	var ids []string
	t.Cleanup(func() {
		for _, id := range ids {
			call("DELETE", "/api/sandboxes/"+id, nil)
		}
		stop()
	})
	_, body := call("POST", "/api/git-sources", map[string]any{"name": "wrong", "url": gs.URL, "token": "wrong-token"})
	var src struct{ ID string }
	_ = json.Unmarshal(body, &src)
	port := freePort(t)
	code, body := call("POST", "/api/workspaces", map[string]any{"name": "bad", "config": map[string]any{
		"repos":       []any{map[string]any{"url": gs.URL + "/app.git", "sourceId": src.ID}},
		"devCommands": []any{map[string]any{"name": "web", "command": "sleep 60", "port": port}},
	}})
	if code != 201 {
		t.Fatalf("workspace: %d %s", code, body)
	}
	var ws struct{ ID string }
	_ = json.Unmarshal(body, &ws)
	code, body = call("POST", "/api/sandboxes", map[string]any{"workspaceId": ws.ID})
	var sb struct{ ID, Status, Error, IPAddress string }
	_ = json.Unmarshal(body, &sb)
	ids = append(ids, sb.ID)
	if code != 201 || sb.Status != "error" || !strings.Contains(sb.Error, "ws-clone-0") || sb.IPAddress != "" {
		t.Fatalf("create with a wrong token: %d %s", code, body)
	}
	if routes, err := srv.Store.ListRoutes(context.Background(), sb.ID); err != nil || len(routes) != 0 {
		t.Fatalf("routes left by the failed create: %v %v", routes, err)
	}

	// Cancel a build half-way: its sandbox goes, the status returns to none.
	code, body = call("POST", "/api/workspaces", map[string]any{"name": "slow", "config": map[string]any{
		"initCommands": []string{"sleep 30"}}})
	if code != 201 {
		t.Fatalf("workspace: %d %s", code, body)
	}
	_ = json.Unmarshal(body, &ws)
	call("POST", "/api/workspaces/"+ws.ID+"/prebuild", nil)
	var pb struct{ Status, BuildID string }
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end) && pb.BuildID == ""; time.Sleep(50 * time.Millisecond) {
		_, b := call("GET", "/api/workspaces/"+ws.ID+"/prebuild", nil)
		_ = json.Unmarshal(b, &pb)
	}
	if pb.BuildID == "" {
		t.Fatalf("no build sandbox: %+v", pb)
	}
	time.Sleep(300 * time.Millisecond)
	if code, body := call("POST", "/api/workspaces/"+ws.ID+"/prebuild/cancel", nil); code != 200 {
		t.Fatalf("cancel: %d %s", code, body)
	}
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end) && pb.Status == "building"; time.Sleep(50 * time.Millisecond) {
		_, b := call("GET", "/api/workspaces/"+ws.ID+"/prebuild", nil)
		_ = json.Unmarshal(b, &pb)
	}
	if pb.Status != "none" {
		t.Fatalf("after cancel: %+v", pb)
	}
	if code, _ := call("GET", "/api/sandboxes/"+pb.BuildID, nil); code != http.StatusNotFound {
		t.Fatalf("the cancelled build's sandbox remains: %d", code)
	}

	// Another user's create naming the workspace is refused before anything starts.
	sbx := srv.Sandboxes
	_, err = sbx.Create(context.Background(), sandbox.CreateRequest{OwnerID: "someone-else", WorkspaceID: ws.ID})
	var fe *sandbox.FieldError
	if !errors.As(err, &fe) || fe.Field != "workspaceId" {
		t.Fatalf("another user's create: %v", err)
	}
}

// jsonCaller calls the manager's API at base with a JSON body (nil for
// none) and returns the status and body; a transport error fails the test.
func jsonCaller(tb testing.TB, base string, timeout time.Duration) func(method, path string, body any) (int, []byte) {
	c := &http.Client{Timeout: timeout}
	return func(method, path string, body any) (int, []byte) {
		tb.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, base+path, rd)
		req.Header.Set("Content-Type", "application/json")
		res, err := c.Do(req)
		if err != nil {
			tb.Fatalf("%s %s: %v", method, path, err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, b
	}
}
