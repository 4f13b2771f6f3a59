package dashboard_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"atelier/internal/agent"
	"atelier/internal/browsertest"
	"atelier/internal/image/ext4img"
	"atelier/internal/image/manifest"
	"atelier/internal/image/progress"
	"atelier/internal/testenv"
)

// TestBrowserImageBuildProgress: while `atelier images build` runs (its
// progress record in the state dir, kept alive by this test's pid), the
// Images page shows the build with its stage and elapsed time; as the build
// moves on the page follows without a reload, and when the build ends the
// finished image appears in its place. A failed build is announced with its
// stage.
func TestBrowserImageBuildProgress(t *testing.T) {
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := ext4img.Tool(tool); err != nil {
			testenv.Missing(t, "requires e2fsprogs: %v", err)
		}
	}
	state, err := os.MkdirTemp("", "atldbuild")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	images := filepath.Join(state, "images")
	// The build's next steps are staged beside the state dir's images and
	// renamed in by the browser script when the page has shown the previous
	// one: each arrives atomically, as the build writes them.
	staged := filepath.Join(state, "staged")
	for _, d := range []string{images, staged, filepath.Join(staged, "setup"), filepath.Join(staged, "failed")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	started := time.Now().Add(-65 * time.Second).UTC()
	root := progress.New("dev-base")
	root.Started, root.Stage, root.StageStarted = started, "dev-base/root", started
	if err := progress.Write(images, root); err != nil {
		t.Fatal(err)
	}
	setup := root
	setup.Done = []progress.Stage{{Name: "dev-base/root", Seconds: 62}}
	setup.Stage, setup.StageStarted = "dev-base/setup", time.Now().UTC()
	if err := progress.Write(filepath.Join(staged, "setup"), setup); err != nil {
		t.Fatal(err)
	}
	failed := progress.New("dev-cloud")
	failed.Stage, failed.Failed, failed.Error, failed.Ended = "dev-cloud/setup", "dev-cloud/setup", "step \"npm install\" failed", time.Now().UTC()
	if err := progress.Write(filepath.Join(staged, "failed"), failed); err != nil {
		t.Fatal(err)
	}
	tree := t.TempDir()
	m := manifest.Manifest{Schema: manifest.Schema, ID: "dev-base", User: "dev", Workdir: "/home/dev/workspace",
		Versions: map[string]string{"node": "24.11.0"},
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
	if err := ext4img.Make(context.Background(), tree, filepath.Join(staged, "dev-base.ext4"), 24<<20, ""); err != nil {
		t.Fatal(err)
	}
	mgr := startMock(t, "ATELIER_STATE_DIR="+state)
	var got struct {
		First, Second, Image, Alert string
		Reloaded                    bool
		Axe                         int
	}
	run(t, browsertest.Options{
		Args: map[string]any{"url": mgr.URL, "allowed": mgr.allowed(), "axe": axePath(t),
			"images": images, "staged": staged, "record": progress.Path(images, "dev-base")},
		Script: `
const path = require('path');
const out = { axe: 0 };
await page.goto(args.url + '/images');
await page.getByRole('heading', { name: 'Images', level: 1 }).waitFor();
const build = page.getByRole('article', { name: 'Build of dev-base' });
await build.getByText('building').waitFor();
await build.getByText(/dev-base\/root for \d/).waitFor();
// Elapsed counts from the build's start (at least 65 s ago: more when the
// manager's binary had to be compiled first), not from the page's load.
await build.getByText(/^\d+m \d\ds$/).waitFor();
await page.waitForLoadState('networkidle');
out.axe += await axe(page, 'the Images page with a build');
out.first = await build.innerText();
await page.evaluate(() => { window.__noReload = true; });

fs.renameSync(path.join(args.staged, 'setup', 'dev-base.building.json'), args.record);
await build.getByText(/dev-base\/setup for \d/).waitFor();
await build.getByRole('list', { name: 'Stages done of dev-base' }).getByText('dev-base/root: 1m 02s').waitFor();
out.second = await build.innerText();

// The build ends as atelier images build ends: the image renamed into place, the record removed.
fs.renameSync(path.join(args.staged, 'dev-base.ext4'), path.join(args.images, 'dev-base.ext4'));
fs.unlinkSync(args.record);
const card = page.getByRole('article', { name: 'Image dev-base' });
await card.getByText('24 MiB').waitFor();
await build.waitFor({ state: 'detached' });
out.image = await card.innerText();

fs.renameSync(path.join(args.staged, 'failed', 'dev-cloud.building.json'), path.join(args.images, 'dev-cloud.building.json'));
const alert = page.getByRole('alert').filter({ hasText: 'dev-cloud' });
await alert.waitFor();
out.alert = await alert.innerText();
out.reloaded = !(await page.evaluate(() => window.__noReload === true));
check();
return out;
`,
	}, &got)
	for _, want := range []string{"building", "dev-base/root", "m "} {
		if !strings.Contains(got.First, want) {
			t.Errorf("the build card lacks %q:\n%s", want, got.First)
		}
	}
	for _, want := range []string{"dev-base/setup", "Stages done", "dev-base/root: 1m 02s"} {
		if !strings.Contains(got.Second, want) {
			t.Errorf("the build card in setup lacks %q:\n%s", want, got.Second)
		}
	}
	for _, want := range []string{"24 MiB", "code-server", "available"} {
		if !strings.Contains(got.Image, want) {
			t.Errorf("the built image's card lacks %q:\n%s", want, got.Image)
		}
	}
	if !strings.Contains(got.Alert, "failed at stage dev-cloud/setup") || strings.Contains(got.Alert, "npm install") {
		t.Errorf("the failure alert: %q", got.Alert)
	}
	if got.Reloaded {
		t.Error("the page reloaded")
	}
	if got.Axe != 0 {
		t.Errorf("%d serious accessibility violations", got.Axe)
	}
	if _, err := os.Stat(filepath.Join(images, "dev-cloud.building.json")); !os.IsNotExist(err) {
		t.Errorf("the reported failure's record stays: %v", err)
	}
}
