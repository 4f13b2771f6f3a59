package server

import (
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// TestConfigFilesSandboxMock: in mock mode with a real agent, a sandbox of
// a workspace starts with the global and workspace config files merged
// (JSON deep, others the workspace's), a sandbox without one with the
// global files; a file the guest edited survives a sync and is
// overwritten by a forced one, while a file the guest left alone follows
// a changed set.
func TestConfigFilesSandboxMock(t *testing.T) {
	dir, err := os.MkdirTemp("", "atlcfg")
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
	must := func(want int, method, path string, body any) []byte {
		t.Helper()
		code, b := call(method, path, body)
		if code != want {
			t.Fatalf("%s %s: %d %s, want %d", method, path, code, b, want)
		}
		return b
	}
	const oc = "~/.config/opencode/opencode.json"
	must(200, "PUT", "/api/config-files", map[string]any{"files": []any{
		map[string]any{"path": oc, "content": `{"theme":"dark","model":{"id":"global","temperature":1}}`},
		map[string]any{"path": "~/.motd", "content": "global\n"},
	}})
	var ws struct{ ID string }
	_ = json.Unmarshal(must(201, "POST", "/api/workspaces", map[string]any{"name": "cfg"}), &ws)
	wsFiles := func(motd string) {
		t.Helper()
		must(200, "PUT", "/api/workspaces/"+ws.ID+"/config-files", map[string]any{"files": []any{
			map[string]any{"path": oc, "content": `{"model":{"id":"ws"}}`},
			map[string]any{"path": "~/.motd", "content": motd, "mode": "0600"},
		}})
	}
	wsFiles("workspace\n")

	create := func(body map[string]any) string {
		t.Helper()
		var sb struct{ ID, Status string }
		b := must(201, "POST", "/api/sandboxes", body)
		_ = json.Unmarshal(b, &sb)
		ids = append(ids, sb.ID)
		if sb.Status != "running" {
			t.Fatalf("create: %s", b)
		}
		return sb.ID
	}
	id := create(map[string]any{"workspaceId": ws.ID})
	run := func(id, cmd string) string {
		t.Helper()
		b := must(200, "POST", "/api/sandboxes/"+id+"/exec", map[string]any{"argv": []string{"sh", "-c", cmd}, "timeoutMs": 10000})
		var r struct {
			ExitCode       int
			Stdout, Stderr string
		}
		if json.Unmarshal(b, &r) != nil || r.ExitCode != 0 {
			t.Fatalf("exec %q: %s", cmd, b)
		}
		return r.Stdout
	}
	merged := "{\n  \"model\": {\n    \"id\": \"ws\",\n    \"temperature\": 1\n  },\n  \"theme\": \"dark\"\n}\n"
	if got := run(id, `cat ~/.config/opencode/opencode.json`); got != merged {
		t.Errorf("merged opencode.json at create: %q", got)
	}
	if got := run(id, `stat -c %a ~/.motd && cat ~/.motd`); got != "600\nworkspace\n" {
		t.Errorf("workspace motd at create: %q", got)
	}
	plain := create(map[string]any{})
	if got := run(plain, `cat ~/.motd ~/.config/opencode/opencode.json`); got != "global\n"+`{"theme":"dark","model":{"id":"global","temperature":1}}` {
		t.Errorf("global files in a sandbox without a workspace: %q", got)
	}

	sync := func(force bool) map[string]string {
		t.Helper()
		var out struct {
			Files []struct{ Path, Action, Error string }
		}
		start := time.Now()
		_ = json.Unmarshal(must(200, "POST", "/api/sandboxes/"+id+"/config-files/sync", map[string]any{"force": force}), &out)
		t.Logf("sync (force %v) of %d files: %v", force, len(out.Files), time.Since(start).Round(time.Microsecond))
		got := map[string]string{}
		for _, f := range out.Files {
			got[f.Path] = f.Action + f.Error
		}
		return got
	}
	if got := sync(false); got[oc] != "unchanged" || got["~/.motd"] != "unchanged" {
		t.Errorf("sync of an untouched sandbox: %v", got)
	}
	run(id, `printf '{"mine":true}' > ~/.config/opencode/opencode.json`)
	wsFiles("changed\n")
	if got := sync(false); got[oc] != "kept" || got["~/.motd"] != "written" {
		t.Errorf("sync after a guest edit: %v", got)
	}
	if got := run(id, `cat ~/.config/opencode/opencode.json ~/.motd`); got != `{"mine":true}`+"changed\n" {
		t.Errorf("after sync: %q", got)
	}
	if got := sync(false); got[oc] != "kept" {
		t.Errorf("second sync after a guest edit: %v", got)
	}
	if got := sync(true); got[oc] != "written" || got["~/.motd"] != "unchanged" {
		t.Errorf("forced sync: %v", got)
	}
	if got := run(id, `cat ~/.config/opencode/opencode.json`); got != merged {
		t.Errorf("after forced sync: %q", got)
	}
	// A file the guest replaced by a symlink (to a file the agent could
	// write, as root in a real guest) is refused even when forced, the
	// link's target untouched; so is a directory on its path.
	run(id, `echo victim > ~/victim && rm ~/.motd && ln -s victim ~/.motd && mkdir -p ~/elsewhere && rm -r ~/.config/opencode && ln -s ../elsewhere ~/.config/opencode`)
	if got := sync(true); !strings.HasPrefix(got["~/.motd"], "failed") || !strings.HasPrefix(got[oc], "failed") {
		t.Errorf("forced sync through symlinks: %v", got)
	}
	if got := run(id, `cat ~/victim; ls ~/elsewhere`); got != "victim\n" {
		t.Errorf("a symlink's target was written: %q", got)
	}
	run(id, `rm ~/.motd ~/.config/opencode && echo restored > ~/.motd`)

	// A restart pushes again, and keeps the guest's edits.
	must(200, "POST", "/api/sandboxes/"+id+"/stop", nil)
	if code, b := call("POST", "/api/sandboxes/"+id+"/config-files/sync", nil); code != http.StatusConflict {
		t.Errorf("sync of a stopped sandbox: %d %s", code, b)
	}
	must(200, "POST", "/api/sandboxes/"+id+"/start", nil)
	if got := run(id, `cat ~/.motd`); got != "restored\n" {
		t.Errorf("a start overwrote a guest edit: %q", got)
	}
}
