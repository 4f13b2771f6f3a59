package guest

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCopyRootfs(t *testing.T) {
	src := t.TempDir()
	dst := filepath.Join(src, "disk") // the volume mounted inside the copied tree
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "usr/bin"), 0o755))
	must(os.WriteFile(filepath.Join(src, "usr/bin/tool"), []byte("#!/bin/sh\n"), 0o755))
	must(os.Chmod(filepath.Join(src, "usr/bin/tool"), 0o755|os.ModeSetuid))
	must(os.Symlink("usr/bin", filepath.Join(src, "bin")))
	must(os.MkdirAll(filepath.Join(src, "home/dev"), 0o700))
	must(os.WriteFile(filepath.Join(src, "home/dev/notes"), []byte("hello"), 0o640))
	must(os.WriteFile(filepath.Join(src, FilledMarker), []byte("stale"), 0o600))
	must(os.Mkdir(dst, 0o755))

	must(CopyRootfs(src, dst))

	b, err := os.ReadFile(filepath.Join(dst, "home/dev/notes"))
	if err != nil || string(b) != "hello" {
		t.Fatalf("notes: %q %v", b, err)
	}
	for path, mode := range map[string]os.FileMode{"usr/bin/tool": 0o755, "home/dev": 0o700, "home/dev/notes": 0o640} {
		fi, err := os.Stat(filepath.Join(dst, path))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode.Perm() {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), mode.Perm())
		}
	}
	if fi, _ := os.Stat(filepath.Join(dst, "usr/bin/tool")); fi.Mode()&os.ModeSetuid == 0 {
		t.Error("setuid bit lost")
	}
	if l, err := os.Readlink(filepath.Join(dst, "bin")); err != nil || l != "usr/bin" {
		t.Errorf("symlink: %q %v", l, err)
	}
	if _, err := os.Stat(filepath.Join(dst, "disk")); !os.IsNotExist(err) {
		t.Errorf("the destination was copied into itself: %v", err)
	}
	if m, err := os.ReadFile(filepath.Join(dst, FilledMarker)); err != nil || string(m) == "stale" {
		t.Errorf("marker %q %v", m, err)
	}
}

// --listen-tls never falls back to plain TCP: without its credentials the
// agent does not start.
func TestListenTLSNeedsCredentials(t *testing.T) {
	if code := Main([]string{"serve", "--listen-tls", "127.0.0.1:0", "--vsock-port", "0"}); code != 2 {
		t.Errorf("--listen-tls without --tls-dir: exit %d, want 2", code)
	}
	if code := Main([]string{"serve", "--listen-tls", "127.0.0.1:0", "--tls-dir", t.TempDir(), "--vsock-port", "0"}); code != 1 {
		t.Errorf("--tls-dir without ca.crt/tls.crt/tls.key: exit %d, want 1", code)
	}
}
