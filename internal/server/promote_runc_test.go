package server

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestPromoteSandboxRunc: in a real runc sandbox of a workspace on the file
// driver, a file the user wrote survives the promote (the sandbox is
// stopped, saved and running again), and a new sandbox of the workspace
// starts from the promoted disk with that file. (A workspace with neither
// repositories nor init commands never starts from a prebuild: it has one
// init command.)
func TestPromoteSandboxRunc(t *testing.T) {
	f := newFixture(t)
	f.start(t)
	code, b := f.call(t, "POST", "/api/workspaces", `{"name":"promote","config":{"vcpus":1,"memoryMb":512,"initCommands":["true"]}}`)
	if code != 201 {
		t.Fatalf("workspace: %d %s", code, b)
	}
	var ws struct{ ID string }
	_ = json.Unmarshal(b, &ws)
	create := func() string {
		t.Helper()
		code, b := f.call(t, "POST", "/api/sandboxes", `{"workspaceId":"`+ws.ID+`"}`)
		var v struct{ ID, Status string }
		_ = json.Unmarshal(b, &v)
		if code != 201 || v.Status != "running" {
			t.Fatalf("create from workspace: %d %s", code, b)
		}
		t.Cleanup(func() { f.call(t, "DELETE", "/api/sandboxes/"+v.ID, "") })
		return v.ID
	}
	first := create()
	if code, out := f.exec(t, first, `echo made-by-hand > /home/dev/workspace/hand.txt`); code != 0 {
		t.Fatalf("write: %s", out)
	}
	begin := time.Now()
	code, b = f.call(t, "POST", "/api/sandboxes/"+first+"/promote", "")
	took := time.Since(begin)
	if code != 200 || !strings.Contains(string(b), `"status":"ready"`) {
		t.Fatalf("promote: %d %s", code, b)
	}
	t.Logf("promote of a running runc sandbox (stop, save, start): %s", took.Round(time.Millisecond))
	if code, out := f.exec(t, first, `cat /home/dev/workspace/hand.txt`); code != 0 || strings.TrimSpace(out) != "made-by-hand" {
		t.Fatalf("promoted sandbox after its restart: %d %q", code, out)
	}
	second := create()
	if code, out := f.exec(t, second, `cat /home/dev/workspace/hand.txt`); code != 0 || strings.TrimSpace(out) != "made-by-hand" {
		t.Fatalf("a sandbox from the promoted prebuild: %d %q", code, out)
	}
}
