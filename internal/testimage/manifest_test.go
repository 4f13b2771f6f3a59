package testimage

import (
	"context"
	"path/filepath"
	"testing"

	"atelier/internal/image/manifest"
)

func TestInstallManifest(t *testing.T) {
	requireTools(t)
	busybox, _ := findBusybox()
	out := filepath.Join(t.TempDir(), "svc.ext4")
	if err := Build(context.Background(), out, busybox, 32); err != nil {
		t.Fatal(err)
	}
	m := ServicesManifest()
	// Twice: a second install replaces the first.
	for range 2 {
		if err := InstallManifest(context.Background(), out, m); err != nil {
			t.Fatal(err)
		}
	}
	got, err := manifest.Parse([]byte(debugfs(t, out, "cat "+manifest.Path)))
	if err != nil {
		t.Fatalf("installed manifest: %v", err)
	}
	if s, ok := got.ServiceByRole(manifest.RoleBrowser); !ok || s.Autostart || got.User != "dev" {
		t.Fatalf("installed manifest %+v", got)
	}
	if mode, uid, gid := inode(t, out, manifest.Path); mode != "0644" || uid != 0 || gid != 0 {
		t.Fatalf("%s: mode %s owner %d:%d, want 0644 root", manifest.Path, mode, uid, gid)
	}
	if _, uid, _ := inode(t, out, filepath.Dir(manifest.Path)); uid != 0 {
		t.Fatalf("%s owned by %d", filepath.Dir(manifest.Path), uid)
	}
}
