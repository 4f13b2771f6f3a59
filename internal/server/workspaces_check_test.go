package server

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestWorkspaceCheckUnreachableMock: a staleness check whose repository
// cannot be listed (gone from the git server) answers 502 naming the git
// server, not an internal error, and leaves the ready prebuild, its commits
// and its status as they were; once the repository is back the check finds
// the prebuild current.
func TestWorkspaceCheckUnreachableMock(t *testing.T) {
	const token = "chk-token-1d9e"
	gs := startGitServer(t, token)
	commit := gs.repo(t, "app", map[string]string{"README": "v1\n"})
	dir, err := os.MkdirTemp("", "atlck")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	srv, stop := startMockManager(t, dir, nil)
	call := jsonCaller(t, "http://"+srv.Addr(), 60*time.Second)
	t.Cleanup(func() { stop() })
	_, body := call("POST", "/api/git-sources", map[string]any{"name": "local", "url": gs.URL, "token": token})
	var src struct{ ID string }
	_ = json.Unmarshal(body, &src)
	code, body := call("POST", "/api/workspaces", map[string]any{"name": "app", "config": map[string]any{
		"repos": []any{map[string]any{"url": gs.URL + "/app.git", "sourceId": src.ID}}}})
	if code != http.StatusCreated {
		t.Fatalf("workspace: %d %s", code, body)
	}
	var ws struct{ ID string }
	_ = json.Unmarshal(body, &ws)
	pbPath := "/api/workspaces/" + ws.ID + "/prebuild"
	type prebuild struct {
		Status  string
		Ready   bool
		Commits map[string]string
	}
	get := func() prebuild {
		var pb prebuild
		for end := time.Now().Add(60 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			_, b := call("GET", pbPath, nil)
			pb = prebuild{}
			_ = json.Unmarshal(b, &pb)
			if pb.Status != "building" {
				break
			}
		}
		return pb
	}
	if code, b := call("POST", pbPath, nil); code != http.StatusAccepted {
		t.Fatalf("prebuild: %d %s", code, b)
	}
	if pb := get(); pb.Status != "ready" || pb.Commits["app"] != commit {
		t.Fatalf("prebuild: %+v", pb)
	}

	bare := filepath.Join(gs.root, "app.git")
	if err := os.Rename(bare, bare+".away"); err != nil {
		t.Fatal(err)
	}
	code, body = call("POST", pbPath+"/check", nil)
	if code != http.StatusBadGateway || !strings.Contains(string(body), "git server") {
		t.Fatalf("check with the repository gone: %d %s", code, body)
	}
	if pb := get(); pb.Status != "ready" || !pb.Ready || pb.Commits["app"] != commit {
		t.Fatalf("after the failed check: %+v", pb)
	}
	if err := os.Rename(bare+".away", bare); err != nil {
		t.Fatal(err)
	}
	if code, body := call("POST", pbPath+"/check", nil); code != 200 || !strings.Contains(string(body), `"stale":false`) {
		t.Fatalf("check with the repository back: %d %s", code, body)
	}
}
