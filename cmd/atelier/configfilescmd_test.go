package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigFilesCLI: set, list and rm global and workspace files; a bad
// path or mode names the file and the key, and changes nothing.
func TestConfigFilesCLI(t *testing.T) {
	url, _ := startMockServer(t)
	ctx := context.Background()
	run := func(args ...string) cliRun { t.Helper(); return cli(t, ctx, url, "", args...) }
	local := filepath.Join(t.TempDir(), "opencode.json")
	if err := os.WriteFile(local, []byte(`{"theme":"dark"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	run("config-files", "set", "~/.config/opencode/opencode.json="+local).ok(t, "set global")
	run("config-files", "set", "--mode", "0600", "/etc/atelier-test.conf="+local).ok(t, "set second global")
	r := run("config-files", "list").ok(t, "list global")
	if !strings.Contains(r.out, "~/.config/opencode/opencode.json") || !strings.Contains(r.out, "/etc/atelier-test.conf            0600") {
		t.Fatalf("list: %s", r.out)
	}
	run("config-files", "set", "~/../x="+local).fails(t, "dotdot", "~/../x", "clean")
	run("config-files", "set", "--mode", "0200", "~/x="+local).fails(t, "bad mode", "mode of ~/x")
	run("config-files", "rm", "/etc/atelier-test.conf").ok(t, "rm")
	run("config-files", "rm", "/etc/atelier-test.conf").fails(t, "rm twice", "no config file")
	r = run("--json", "config-files", "list").ok(t, "list json")
	var out []struct{ Path, Content string }
	if err := json.Unmarshal([]byte(r.out), &out); err != nil || len(out) != 1 || out[0].Content != `{"theme":"dark"}` {
		t.Fatalf("after rm: %v %s", err, r.out)
	}

	run("workspace", "create", "cfg").ok(t, "workspace")
	run("config-files", "--workspace", "cfg", "set", "~/.editorconfig="+local).ok(t, "set workspace")
	r = run("config-files", "--workspace", "cfg", "list").ok(t, "list workspace")
	if !strings.Contains(r.out, "~/.editorconfig") || strings.Contains(r.out, "opencode") {
		t.Fatalf("workspace list: %s", r.out)
	}
	run("config-files", "--workspace", "nope", "list").fails(t, "unknown workspace", "nope")

	// sync-config: a running sandbox received the global file at create;
	// the guest's edit is kept by a plain sync and replaced by --force.
	run("sandbox", "create", "--name", "cfgsb").ok(t, "create")
	cat := func() string {
		t.Helper()
		return run("sandbox", "exec", "cfgsb", "--", "sh", "-c", "cat ~/.config/opencode/opencode.json").ok(t, "cat").out
	}
	if got := cat(); got != `{"theme":"dark"}` {
		t.Fatalf("at create: %q", got)
	}
	r = run("sandbox", "sync-config", "cfgsb").ok(t, "sync")
	if !strings.Contains(r.out, "~/.config/opencode/opencode.json  unchanged") {
		t.Fatalf("sync: %s", r.out)
	}
	run("sandbox", "exec", "cfgsb", "--", "sh", "-c", `echo '{}' > ~/.config/opencode/opencode.json`).ok(t, "edit")
	r = run("sandbox", "sync-config", "cfgsb").ok(t, "sync after edit")
	if !strings.Contains(r.out, "kept (changed in the sandbox)") || !strings.Contains(r.err, "--force") || cat() != "{}\n" {
		t.Fatalf("sync after edit: %s %s", r.out, r.err)
	}
	r = run("sandbox", "sync-config", "cfgsb", "--force").ok(t, "forced sync")
	if !strings.Contains(r.out, "written") || cat() != `{"theme":"dark"}` {
		t.Fatalf("forced sync: %s", r.out)
	}
	run("sandbox", "sync-config", "nosuchsandbox").fails(t, "unknown sandbox", "nosuchsandbox")
}
