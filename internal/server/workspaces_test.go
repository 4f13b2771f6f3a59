package server

import (
	"bytes"
	"context"
	"encoding/json"
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
)

// gitServer serves the bare repositories under root with git http-backend
// on loopback, answering only requests that carry token as the Basic
// password.
type gitServer struct {
	URL  string
	root string
}

func startGitServer(t *testing.T, token string) *gitServer {
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

func git(t *testing.T, dir string, args ...string) string {
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
func (g *gitServer) repo(t *testing.T, name string, files map[string]string) string {
	t.Helper()
	work := t.TempDir()
	git(t, work, "init", "-q", "-b", "main")
	for f, c := range files {
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
	c := &http.Client{Timeout: 60 * time.Second}
	call := func(method, path string, body any) (int, []byte) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, api+path, rd)
		req.Header.Set("Content-Type", "application/json")
		res, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, b
	}
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
	if got := run(`git -C ~/workspace/web remote get-url origin; git -C ~/workspace/web config --local --get-regexp 'credential|url'; cat ~/.gitconfig`); strings.Contains(got, token) ||
		strings.Contains(got, "credential") || !strings.HasPrefix(got, repoURL+"\nremote.origin.url "+repoURL+"\n") {
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
