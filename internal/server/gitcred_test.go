package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestWorkspaceGitCredentialMock: after create, the guest's git pulls and
// pushes a token-protected repository with credentials its helper gets on
// demand (agent -> host long poll); another host or scheme is refused; a
// guest process cannot reach the host-only routes through the guest
// socket; the token is in no file of the sandbox and no environment.
func TestWorkspaceGitCredentialMock(t *testing.T) {
	const token = "gc-TOKEN-93be1d0a4f"
	gs := startGitServer(t, token)
	gs.repo(t, "web", map[string]string{"README": "v1\n"})
	git(t, filepath.Join(gs.root, "web.git"), "config", "http.receivepack", "true")

	dir, err := os.MkdirTemp("", "atlgc")
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
	code, body := call("POST", "/api/git-sources", map[string]any{"name": "local", "url": gs.URL, "token": token})
	if code != http.StatusCreated {
		t.Fatalf("git source: %d %s", code, body)
	}
	var src struct{ ID string }
	_ = json.Unmarshal(body, &src)
	repoURL := gs.URL + "/web.git"
	code, body = call("POST", "/api/workspaces", map[string]any{"name": "web",
		"config": map[string]any{"repos": []any{map[string]any{"url": repoURL, "sourceId": src.ID}}}})
	if code != http.StatusCreated {
		t.Fatalf("workspace: %d %s", code, body)
	}
	var ws struct{ ID string }
	_ = json.Unmarshal(body, &ws)
	code, body = call("POST", "/api/sandboxes", map[string]any{"workspaceId": ws.ID})
	var sb struct{ ID, Status string }
	_ = json.Unmarshal(body, &sb)
	if sb.ID != "" {
		ids = append(ids, sb.ID)
	}
	if code != http.StatusCreated || sb.Status != "running" {
		t.Fatalf("create from workspace: %d %s", code, body)
	}
	type result struct {
		ExitCode       int
		Stdout, Stderr string
	}
	exec := func(cmd string) result {
		t.Helper()
		code, b := call("POST", "/api/sandboxes/"+sb.ID+"/exec", map[string]any{"argv": []string{"sh", "-c", cmd}, "timeoutMs": 30000})
		var r result
		if code != 200 || json.Unmarshal(b, &r) != nil {
			t.Fatalf("exec %q: %d %s", cmd, code, b)
		}
		return r
	}
	run := func(cmd string) string {
		t.Helper()
		r := exec(cmd)
		if r.ExitCode != 0 {
			t.Fatalf("exec %q: exit %d: %s%s", cmd, r.ExitCode, r.Stdout, r.Stderr)
		}
		return r.Stdout
	}

	// Pull: a commit made on the server after the clone arrives.
	next := gs.commit(t, "web", "NEWS", "pulled\n")
	if got := run(`cd ~/workspace/web && git pull -q --ff-only && git rev-parse HEAD && cat NEWS`); got != next+"\npulled\n" {
		t.Fatalf("pull: %q", got)
	}
	// Push: a commit made in the sandbox reaches the server.
	pushed := strings.TrimSpace(run(`cd ~/workspace/web && echo local > LOCAL && git add LOCAL && ` +
		`git -c user.name=t -c user.email=t@t commit -q -m local && git push -q origin main && git rev-parse HEAD`))
	if got := git(t, filepath.Join(gs.root, "web.git"), "rev-parse", "main"); got != pushed {
		t.Fatalf("push: server main is %s, sandbox pushed %s", got, pushed)
	}

	// The helper through git itself: the source's host and scheme get
	// the token; the same host over https, or another host, get nothing.
	hostPort := strings.TrimPrefix(gs.URL, "http://")
	fill := func(protocol, host string) result {
		return exec(fmt.Sprintf(`printf 'protocol=%s\nhost=%s\n\n' | GIT_TERMINAL_PROMPT=0 git credential fill`, protocol, host))
	}
	if r := fill("http", hostPort); r.ExitCode != 0 || !strings.Contains(r.Stdout, "password="+token) {
		t.Fatalf("credential for the source's host: exit %d %q %q", r.ExitCode, r.Stdout, r.Stderr)
	}
	for _, h := range [][2]string{{"https", hostPort}, {"http", "elsewhere.test"}, {"http", "127.0.0.1"}} {
		if r := fill(h[0], h[1]); r.ExitCode == 0 || strings.Contains(r.Stdout+r.Stderr, token) {
			t.Errorf("credential for %s://%s: exit %d %q %q", h[0], h[1], r.ExitCode, r.Stdout, r.Stderr)
		}
	}

	// Round trip: git credential fill -> helper -> agent -> host poll -> answer.
	var lat []time.Duration
	for range 20 {
		start := time.Now()
		if r := fill("http", hostPort); r.ExitCode != 0 {
			t.Fatalf("fill: %+v", r)
		}
		lat = append(lat, time.Since(start))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("git credential fill via exec API, 20 runs: p50 %v, max %v", lat[len(lat)/2], lat[len(lat)-1])

	// A guest process on the guest-facing socket: only POST
	// /git/credential is there; the host-only routes are not.
	var sock string
	_ = filepath.WalkDir(srv.Config.Sandbox.StateDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "git-credential.sock" && strings.Contains(p, sb.ID) {
			sock = p
		}
		return nil
	})
	if sock == "" {
		t.Fatal("no git-credential.sock in the sandbox's state dir")
	}
	gc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	for _, r := range [][2]string{{"GET", "/git/credential/requests"}, {"POST", "/git/credential/answers"}, {"GET", "/git/credential/helper"}, {"POST", "/exec"}} {
		req, _ := http.NewRequest(r[0], "http://guest"+r[1], strings.NewReader(`{"answers":[{"id":"1","password":"x"}]}`))
		res, err := gc.Do(req)
		if err != nil {
			t.Fatalf("%s %s on the guest socket: %v", r[0], r[1], err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusNotFound {
			t.Errorf("%s %s on the guest socket: %d, want 404", r[0], r[1], res.StatusCode)
		}
	}
	// Nor does the manager's agent proxy forward them: only the
	// documented agent routes are.
	for _, r := range [][2]string{{"GET", "/git/credential/requests"}, {"POST", "/git/credential/answers"}, {"GET", "/git/credential/helper"}} {
		if code, b := call(r[0], "/api/sandboxes/"+sb.ID+r[1], map[string]any{}); code != http.StatusNotFound && code != http.StatusMethodNotAllowed {
			t.Errorf("%s %s through the manager: %d %s", r[0], r[1], code, b)
		}
	}
	// And the guest's git itself: the helper's socket path is what the
	// config names, and it answers from inside the sandbox.
	if got := run(`git config --global --get-all credential.helper`); !strings.Contains(got, sock) {
		t.Errorf("credential.helper %q does not name %s", got, sock)
	}

	// The token: in no file of the sandbox and no process environment.
	_ = filepath.WalkDir(srv.Config.Sandbox.StateDir, func(p string, d fs.DirEntry, err error) error {
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
}
