package dashboard_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"atelier/internal/agent"
	"atelier/internal/browsertest"
	"atelier/internal/image/ext4img"
	"atelier/internal/image/manifest"
	"atelier/internal/testenv"
)

// TestBrowserImagesPage: the Images page shows the host's real images, read
// by the catalog from the state dir (an ext4 file with a manifest, as the
// file driver keeps them), with their size, versions, services and the
// sandboxes using them.
func TestBrowserImagesPage(t *testing.T) {
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := ext4img.Tool(tool); err != nil {
			testenv.Missing(t, "requires e2fsprogs: %v", err)
		}
	}
	state, err := os.MkdirTemp("", "atldimg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	tree := t.TempDir()
	m := manifest.Manifest{Schema: manifest.Schema, ID: "dev-base", User: "dev", Workdir: "/home/dev/workspace",
		Versions: map[string]string{"node": "24.11.0", "code-server": "4.139.1"},
		Services: []manifest.Service{{Name: "code-server", Role: manifest.RoleVSCode, Autostart: true,
			Process: agent.ProcessSpec{Argv: []string{"code-server"}, Port: 8080}}}}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(tree, "etc", "atelier"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "etc", "atelier", "image.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(state, "images"), 0o755); err != nil {
		t.Fatal(err)
	}
	// 24 MiB: the page must show this size, not a made-up one.
	if err := ext4img.Make(context.Background(), tree, filepath.Join(state, "images", "dev-base.ext4"), 24<<20, ""); err != nil {
		t.Fatal(err)
	}
	// The last ATELIER_STATE_DIR wins: the manager starts on this state dir.
	mgr := startMock(t, "ATELIER_STATE_DIR="+state)
	var sb struct{ ID string }
	if err := mgr.api("POST", "/api/sandboxes", map[string]any{"name": "uses-dev-base"}, &sb); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Card string `json:"card"`
		Axe  int    `json:"axe"`
	}
	run(t, browsertest.Options{
		Args: map[string]any{"url": mgr.URL, "allowed": mgr.allowed(), "axe": axePath(t)},
		Script: `
const out = { axe: 0 };
await page.goto(args.url + '/images');
await page.getByRole('heading', { name: 'Images', level: 1 }).waitFor();
const card = page.getByRole('article', { name: 'Image dev-base' });
await card.getByText('24 MiB').waitFor();
await card.getByRole('list', { name: 'Sandboxes using dev-base' }).getByRole('link', { name: 'uses-dev-base' }).waitFor();
await page.waitForLoadState('networkidle');
out.axe += await axe(page, 'the Images page');
out.card = await card.innerText();
await card.getByRole('link', { name: 'uses-dev-base' }).click();
await page.getByRole('heading', { name: /uses-dev-base/ }).waitFor();
check();
return out;
`,
	}, &got)
	for _, want := range []string{"24 MiB", "code-server", "4.139.1", "node", "24.11.0", "dev in /home/dev/workspace", "uses-dev-base"} {
		if !strings.Contains(got.Card, want) {
			t.Errorf("the dev-base card lacks %q:\n%s", want, got.Card)
		}
	}
	if got.Axe != 0 {
		t.Errorf("%d serious accessibility violations", got.Axe)
	}
}
