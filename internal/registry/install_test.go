package registry

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"atelier/internal/config"
)

// TestMigrateLegacyDir: an npm cache kept in {dataDir}/registry by an
// older Atelier moves out of the private data dir, once.
func TestMigrateLegacyDir(t *testing.T) {
	base := t.TempDir()
	cfg := config.Default()
	cfg.Server.DataDir = filepath.Join(base, "data")
	cfg.Advanced.Server.Verdaccio.Dir = filepath.Join(base, "data-registry")
	legacy := LegacyDir(cfg.Server.DataDir)
	for _, f := range []string{"app/node_modules/verdaccio/package.json", "storage/is-number/package.json", "config.yaml"} {
		p := filepath.Join(legacy, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	if err := MigrateLegacyDir(cfg, log); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(legacy); !os.IsNotExist(err) {
		t.Errorf("the old dir is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.Advanced.Server.Verdaccio.Dir, "storage/is-number/package.json")); err != nil {
		t.Errorf("the cached package did not move: %v", err)
	}
	if !strings.Contains(logs.String(), "moved the npm cache") {
		t.Errorf("no log line: %s", logs.String())
	}
	// Nothing to do now; and with both present the old one is left, with a warning.
	if err := MigrateLegacyDir(cfg, log); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(legacy, 0o700); err != nil {
		t.Fatal(err)
	}
	logs.Reset()
	if err := MigrateLegacyDir(cfg, log); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "no longer used") {
		t.Errorf("no warning about the old dir: %s", logs.String())
	}
}

// TestReadableByAll: an install made under umask 077 becomes readable by
// the registry's user.
func TestReadableByAll(t *testing.T) {
	old := syscall.Umask(0o077)
	dir := filepath.Join(t.TempDir(), "app")
	err := os.MkdirAll(filepath.Join(dir, "node_modules", "verdaccio", "bin"), 0o777)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "node_modules", "verdaccio", "bin", "verdaccio"), []byte("#!"), 0o777)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "node_modules", "verdaccio", "package.json"), []byte("{}"), 0o666)
	}
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	if err := readableByAll(dir); err != nil {
		t.Fatal(err)
	}
	for rel, want := range map[string]os.FileMode{
		".": 0o755, "node_modules/verdaccio": 0o755, "node_modules/verdaccio/bin/verdaccio": 0o755,
		"node_modules/verdaccio/package.json": 0o644,
	} {
		fi, err := os.Stat(filepath.Join(dir, rel))
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want %04o", rel, fi.Mode(), err, want)
		}
	}
}

// TestReachable names the directory that locks the registry's user out.
func TestReachable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: checks permissions for another user")
	}
	a := Account{Name: "atlreg-x", UID: 65000, GID: 65000}
	base := t.TempDir() // 0700 parent: nobody but root may enter
	dir := filepath.Join(base, "registry")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Dir(base), 0o700); err != nil {
		t.Fatal(err)
	}
	err := reachable(dir, a)
	if err == nil || !strings.Contains(err.Error(), filepath.Dir(base)) || !strings.Contains(err.Error(), "chmod o+x") {
		t.Fatalf("got %v, want an error naming %s and the fix", err, filepath.Dir(base))
	}
	if err := os.Chmod(filepath.Dir(base), 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := reachable(dir, a); err != nil {
		t.Fatal(err)
	}
	// Group search suffices for the user's own group.
	if err := os.Chmod(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 0, int(a.GID)); err != nil {
		t.Fatal(err)
	}
	if err := reachable(dir, a); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := reachable(dir, a); err == nil {
		t.Fatal("root:root 0750 is reachable by another user?")
	}
}
