package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	netmock "atelier/internal/network/mock"
	"atelier/internal/runtime/process"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
)

// TestPromoteSandboxMock: a running sandbox of a workspace is stopped, its
// disk saved as the workspace's prebuild (ready, its log saying promoted,
// with the commit the sandbox had), and started again; a failing save keeps
// the previous prebuild and says why; a sandbox without a workspace is a 400
// naming path.id; a stopped sandbox is a 409 that changes nothing.
func TestPromoteSandboxMock(t *testing.T) {
	const token = "promote-token-5e1d"
	gs := startGitServer(t, token)
	first := gs.repo(t, "app", map[string]string{"README": "v1\n"})
	dir, err := os.MkdirTemp("", "atlpr")
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
	code, body := call("POST", "/api/workspaces", map[string]any{"name": "app",
		"config": map[string]any{"repos": []any{map[string]any{"url": gs.URL + "/app.git", "sourceId": src.ID}}}})
	if code != 201 {
		t.Fatalf("workspace: %d %s", code, body)
	}
	var ws struct{ ID string }
	_ = json.Unmarshal(body, &ws)
	type prebuild struct {
		Status          string
		Ready           bool
		Commits         map[string]string
		Error           string
		Log             string
		Source          string
		SourceSandboxID string
	}
	create := func(body map[string]any) string {
		t.Helper()
		code, b := call("POST", "/api/sandboxes", body)
		var sb struct{ ID, Status string }
		_ = json.Unmarshal(b, &sb)
		if code != 201 || sb.Status != "running" {
			t.Fatalf("create %v: %d %s", body, code, b)
		}
		return sb.ID
	}
	status := func(id string) string {
		_, b := call("GET", "/api/sandboxes/"+id, nil)
		var sb struct{ Status string }
		_ = json.Unmarshal(b, &sb)
		return sb.Status
	}

	sb1 := create(map[string]any{"workspaceId": ws.ID})
	begin := time.Now()
	code, body = call("POST", "/api/sandboxes/"+sb1+"/promote", nil)
	took := time.Since(begin)
	var pb prebuild
	_ = json.Unmarshal(body, &pb)
	if code != 200 || pb.Status != "ready" || !pb.Ready || pb.Commits["app"] != first || !strings.Contains(pb.Log, "promoted from sandbox "+sb1) ||
		pb.Source != "promote" || pb.SourceSandboxID != sb1 {
		t.Fatalf("promote: %d %s", code, body)
	}
	t.Logf("promote of a running mock sandbox (stop, save, start): %s", took.Round(time.Millisecond))
	if got := vols.Prebuilds()[ws.ID]; got != sb1 {
		t.Fatalf("prebuild volume from %q, want %s", got, sb1)
	}
	if s := status(sb1); s != "running" {
		t.Fatalf("promoted sandbox is %s, want running again", s)
	}
	_, body = call("GET", "/api/workspaces/"+ws.ID+"/prebuild", nil)
	if !strings.Contains(string(body), `"status":"ready"`) || !strings.Contains(string(body), "promoted from sandbox") {
		t.Fatalf("prebuild status after promote: %s", body)
	}

	// A failing save: the previous prebuild stays ready and in place.
	sb2 := create(map[string]any{"workspaceId": ws.ID})
	vols.FailNext(stmock.OpPrebuild, errors.New("disk on fire"))
	code, body = call("POST", "/api/sandboxes/"+sb2+"/promote", nil)
	if code != http.StatusInternalServerError {
		t.Fatalf("failing promote: %d %s", code, body)
	}
	_, body = call("GET", "/api/workspaces/"+ws.ID+"/prebuild", nil)
	pb = prebuild{}
	_ = json.Unmarshal(body, &pb)
	if pb.Status != "failed" || !pb.Ready || !strings.Contains(pb.Error, "disk on fire") || vols.Prebuilds()[ws.ID] != sb1 ||
		pb.Source != "promote" || pb.SourceSandboxID != sb1 {
		t.Fatalf("after a failed promote: %+v, volume from %q", pb, vols.Prebuilds()[ws.ID])
	}
	if s := status(sb2); s != "running" {
		t.Fatalf("sandbox of a failed promote is %s, want running again", s)
	}

	// A stopped sandbox is refused: its commits cannot be read.
	if code, b := call("POST", "/api/sandboxes/"+sb2+"/stop", nil); code != 200 {
		t.Fatalf("stop: %d %s", code, b)
	}
	if code, body = call("POST", "/api/sandboxes/"+sb2+"/promote", nil); code != http.StatusConflict || !strings.Contains(string(body), "start it first") {
		t.Fatalf("promote stopped: %d %s", code, body)
	}
	if s := status(sb2); s != "stopped" || vols.Prebuilds()[ws.ID] != sb1 {
		t.Fatalf("refused promote of a stopped sandbox: %s, volume from %q", s, vols.Prebuilds()[ws.ID])
	}

	// A sandbox without a workspace has nothing to promote into.
	plain := create(map[string]any{})
	code, body = call("POST", "/api/sandboxes/"+plain+"/promote", nil)
	if code != http.StatusBadRequest || !strings.Contains(string(body), "path.id") {
		t.Fatalf("promote without workspace: %d %s", code, body)
	}
	if _, err := srv.Store.GetPrebuild(context.Background(), ws.ID); err != nil {
		t.Fatal(err)
	}
}
