package dashboard_test

import (
	"os"
	"testing"

	"atelier/internal/browsertest"
)

// TestScreenshots writes every page at desktop and phone sizes into
// $ATELIER_SCREENSHOTS (make screenshots), for a person to look at.
func TestScreenshots(t *testing.T) {
	dir := os.Getenv("ATELIER_SCREENSHOTS")
	if dir == "" {
		t.Skip("set ATELIER_SCREENSHOTS to a directory (make screenshots)")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m := startMock(t)
	var web, idle struct{ ID string }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(m.api("POST", "/api/sandboxes", map[string]any{"name": "web-app", "vcpus": 4, "memoryMb": 4096}, &web))
	must(m.api("POST", "/api/sandboxes", map[string]any{"name": "experiments"}, &idle))
	must(m.api("POST", "/api/sandboxes/"+idle.ID+"/stop", nil, nil))
	must(m.api("POST", "/api/sandboxes/"+web.ID+"/services/ticker/start", map[string]any{"shell": "while true; do echo tick; sleep 1; done"}, nil))
	must(m.api("POST", "/api/sandboxes/"+web.ID+"/dev/web/start", map[string]any{
		"shell": `node -e "require('http').createServer((q,s)=>s.end('dev')).listen(+process.env.PORT)"`, "port": freePort(t)}, nil))
	must(m.api("POST", "/api/sandboxes/"+web.ID+"/dev/web/expose", map[string]any{"default": true}, nil))
	for _, size := range []struct {
		name string
		w, h int
	}{{"desktop", 1280, 800}, {"phone", 390, 844}} {
		run(t, browsertest.Options{
			Width: size.w, Height: size.h,
			Args: map[string]any{"url": m.URL, "allowed": m.allowed(), "dir": dir, "size": size.name, "id": web.ID},
			Script: `
const shot = async (name) => { await page.waitForTimeout(400); await page.screenshot({ path: args.dir + '/' + name + '-' + args.size + '.png', fullPage: true }); };
await page.goto(args.url + '/sandboxes');
await page.getByRole('link', { name: 'web-app' }).waitFor();
await shot('01-sandboxes');
await page.getByRole('button', { name: 'New sandbox' }).first().click();
await shot('02-create-dialog');
await page.keyboard.press('Escape');
for (const [i, tab] of [['03', 'overview'], ['04', 'terminal'], ['05', 'services'], ['06', 'dev'], ['07', 'git'], ['08', 'files']]) {
  await page.goto(args.url + '/sandboxes/' + args.id + (tab === 'overview' ? '' : '?tab=' + tab));
  await page.getByRole('heading', { name: /web-app/ }).waitFor();
  if (tab === 'terminal') {
    await page.locator('.xterm-rows').waitFor();
    await page.waitForTimeout(500);
    await page.locator('.xterm-helper-textarea').first().focus();
    await page.keyboard.type('echo hello from the sandbox\n');
  }
  if (tab === 'services') {
    await page.getByRole('button', { name: 'Logs of ticker' }).click();
    await page.getByText('tick').first().waitFor();
  }
  await page.waitForTimeout(600);
  await shot(i + '-sandbox-' + tab);
}
for (const [i, p] of [['09', 'settings'], ['10', 'system'], ['11', 'images'], ['12', 'login'], ['13', 'docs']]) {
  await page.goto(args.url + '/' + p);
  await page.waitForTimeout(p === 'docs' ? 1500 : 600);
  await shot(i + '-' + p);
}
check();
return null;
`,
		}, nil)
	}
	t.Logf("screenshots in %s", dir)
}
