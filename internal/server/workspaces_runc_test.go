package server

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestWorkspacePrebuildRunc: in real runc sandboxes on the file volume
// driver, a workspace's variables, secret variable and secret file (owned
// by the image user, with its mode) and SANDBOX.md reach the guest; its
// prebuild's disk carries the init command's result into a new sandbox that
// does not run it again, and holds none of the workspace's secrets.
// (The test image is busybox without git: clones, dev servers and the
// guest's credential helper in a container guest are TestWorkspaceDevBase's,
// on dev-base.)
func TestWorkspacePrebuildRunc(t *testing.T) {
	f := newFixture(t)
	srv := f.start(t)
	const secretVal = "runc-secret-env-5e1d"
	const fileVal = "runc-secret-file-92ab"
	body, _ := json.Marshal(map[string]any{
		"name": "runc",
		"config": map[string]any{"vcpus": 1, "memoryMb": 512,
			"initCommands": []string{"echo built-by-init > built.txt; date +%s%N > stamp.txt"},
			"env":          map[string]string{"MODE": "dev"}},
		"secretEnv":   map[string]string{"API_KEY": secretVal},
		"secretFiles": []any{map[string]any{"path": "~/.app/key", "content": fileVal, "mode": "0400"}},
	})
	code, b := f.call(t, "POST", "/api/workspaces", string(body))
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
		return v.ID
	}
	check := func(id string) string {
		t.Helper()
		code, out := f.exec(t, id, `cd /home/dev/workspace && cat built.txt stamp.txt && printf '%s %s\n' "$MODE" "$API_KEY" && `+
			`stat -c '%a %u' /home/dev/.app/key && cat /home/dev/.app/key && grep -c 'API_KEY (secret)' SANDBOX.md`)
		if code != 0 {
			t.Fatalf("in %s: %s", id, out)
		}
		lines := strings.Split(out, "\n")
		if len(lines) < 6 || lines[0] != "built-by-init" || lines[2] != "dev "+secretVal || lines[3] != "400 1000" ||
			lines[4] != fileVal+"1" && !(lines[4] == fileVal && lines[5] == "1") {
			t.Fatalf("in %s: %q", id, out)
		}
		return lines[1] // the init command's stamp
	}
	first := create()
	check(first)
	f.call(t, "DELETE", "/api/sandboxes/"+first, "")

	if code, b := f.call(t, "POST", "/api/workspaces/"+ws.ID+"/prebuild", ""); code != 202 {
		t.Fatalf("prebuild: %d %s", code, b)
	}
	var pb struct{ Status, Error, Log string }
	for end := time.Now().Add(2 * time.Minute); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		_, b := f.call(t, "GET", "/api/workspaces/"+ws.ID+"/prebuild", "")
		_ = json.Unmarshal(b, &pb)
		if pb.Status != "building" {
			break
		}
	}
	if pb.Status != "ready" {
		t.Fatalf("prebuild: %+v", pb)
	}
	vols, _ := filepath.Glob(filepath.Join(f.cfg.Sandbox.StateDir, "*", "*"+ws.ID+".ext4"))
	if len(vols) != 1 {
		t.Fatalf("prebuild volume: %v", vols)
	}
	disk, err := os.ReadFile(vols[0])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(disk, []byte("built-by-init")) {
		t.Fatalf("the init command's file is not on the prebuild's disk %s", vols[0])
	}
	for _, s := range []string{secretVal, fileVal} {
		if bytes.Contains(disk, []byte(s)) {
			t.Errorf("the prebuild's disk holds the secret %q", s)
		}
	}

	second := create()
	check(second)
	ops, err := srv.Store.ListOps(t.Context(), second)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range ops {
		if strings.HasPrefix(o.Step, "ws-init") {
			t.Fatalf("a sandbox from the prebuild ran the init command again: %v", o)
		}
	}
	f.call(t, "DELETE", "/api/sandboxes/"+second, "")
}
