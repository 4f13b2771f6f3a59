package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigSet: a valid value is written and the answer says whether a
// restart is needed; an invalid one names the key and its variable and
// leaves the file as it was.
func TestConfigSet(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "sandbox.config.json")
	if err := os.WriteFile(file, []byte(`{"server": {"mode": "mock", "dataDir": "`+filepath.Join(dir, "data")+`"}}`), 0o640); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"ATELIER_CONFIG": file}
	out, err := run(t, env, "config", "set", "server.port", "4100")
	if err != nil || !strings.Contains(out, "takes effect when the manager next starts") {
		t.Fatalf("set port: %q %v", out, err)
	}
	out, err = run(t, env, "config", "set", "setup.storage.method", "file")
	if err != nil || !strings.Contains(out, "no restart needed") {
		t.Fatalf("set storage method: %q %v", out, err)
	}
	before, _ := os.ReadFile(file)
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode changed to %v", fi.Mode())
	}
	_, err = run(t, env, "config", "set", "server.logFormat", "xml")
	if err == nil || !strings.Contains(err.Error(), "server.logFormat") || !strings.Contains(err.Error(), "ATELIER_LOG_FORMAT") {
		t.Fatalf("invalid value: %v", err)
	}
	if _, err := run(t, env, "config", "set", "no.such.key", "1"); err == nil || !strings.Contains(err.Error(), "unknown key") {
		t.Fatalf("unknown key: %v", err)
	}
	after, _ := os.ReadFile(file)
	if string(before) != string(after) {
		t.Fatal("a refused change was written")
	}
	if !strings.Contains(string(after), `"port": 4100`) {
		t.Fatalf("file: %s", after)
	}
}

func TestVersionShort(t *testing.T) {
	out, err := run(t, nil, "version", "--short")
	if err != nil || strings.TrimSpace(out) == "" || strings.Contains(strings.TrimSpace(out), " ") {
		t.Fatalf("version --short: %q %v", out, err)
	}
	out, err = run(t, map[string]string{"ATELIER_CONFIG": filepath.Join(t.TempDir(), "none.json")}, "version")
	if err != nil || !strings.Contains(out, "agent") || !strings.Contains(out, "kernel") {
		t.Fatalf("version: %q %v", out, err)
	}
}
