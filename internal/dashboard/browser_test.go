package dashboard_test

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"atelier/internal/browsertest"
)

// TestBrowserSandboxFlow is a person's first session in mock mode, against
// a real `atelier serve` in Chromium: the page loads with no request to
// another origin, a sandbox is created and seen reaching running with no
// reload, a terminal shows what is typed into it, a dev server is started,
// exposed and opened at its URL, and the sandbox is stopped and deleted.
// Every page passes axe-core without serious violations.
func TestBrowserSandboxFlow(t *testing.T) {
	m := startMock(t)
	devPort := freePort(t)
	var got struct {
		Terminal    string `json:"terminal"`
		Dev         string `json:"dev"`
		Reloads     int    `json:"reloads"`
		Axe         int    `json:"axe"`
		PublicKey   string `json:"publicKey"`
		PrivateKey  string `json:"privateKey"`
		Fingerprint string `json:"fingerprint"`
		Token       string `json:"token"`
	}
	run(t, browsertest.Options{
		MapHosts: nil,
		Args: map[string]any{
			"url": m.URL, "allowed": m.allowed(), "axe": axePath(t),
			"devCmd":  `node -e "require('http').createServer((q,s)=>s.end('hello from the dev server on '+process.env.PORT)).listen(+process.env.PORT)"`,
			"devPort": strconv.Itoa(devPort),
		},
		Script: `
const out = { axe: 0 };
await page.goto(args.url + '/');
await page.getByRole('heading', { name: 'Sandboxes' }).waitFor();
await page.getByText('No sandboxes yet').waitFor();
await page.getByText('Live').waitFor();
out.axe += await axe(page, 'the empty list');
// No reload from here on: a marker on window survives only in the same document.
await page.evaluate(() => { window.__sameDocument = true; });

await page.getByRole('button', { name: 'New sandbox' }).click();
const dialog = page.getByRole('dialog', { name: 'New sandbox' });
await dialog.getByLabel('Name').fill('demo');
await dialog.getByLabel('vCPUs').selectOption('1');
await dialog.getByLabel('Memory').selectOption('1024');
out.axe += await axe(page, 'the create dialog');
await dialog.getByRole('button', { name: 'Create' }).click();
// Created with wait=false: "running" can only come from the event stream.
const creating = page.getByRole('dialog', { name: 'Creating sandbox' });
await creating.getByText('running').waitFor({ timeout: 30000 });
await creating.getByText('total').waitFor();
await creating.getByRole('button', { name: 'Close', exact: true }).click();
const row = page.getByRole('row').filter({ hasText: 'demo' });
await row.getByText('running').waitFor();
await row.getByText('1 vCPU · 1 GiB').waitFor();
out.axe += await axe(page, 'the list');

// The sandbox page, then its terminal: type, see the output.
await row.getByRole('link', { name: 'demo' }).click();
await page.getByRole('heading', { name: /demo/ }).waitFor();
await page.getByText('Resource use').waitFor();
await page.getByText(/processes/).waitFor();
out.axe += await axe(page, 'the sandbox overview');
await page.getByRole('tab', { name: 'Terminal' }).click();
await page.locator('.xterm-rows').waitFor();
await page.waitForFunction(() => !document.querySelector('.term-status') || document.querySelector('.term-status').textContent === '');
await page.locator('.xterm-helper-textarea').first().focus();
await page.keyboard.type('echo "dash$((40+2))board"\n');
await page.locator('.xterm-rows').getByText('dash42board', { exact: true }).waitFor();
out.terminal = await page.locator('.xterm-rows').innerText();

// A dev server: start, expose, open its URL.
await page.getByRole('tab', { name: 'Dev commands' }).click();
const form = page.getByRole('form', { name: 'Start a dev command' });
await form.getByLabel('Name').fill('web');
await form.getByLabel('Command').fill(args.devCmd);
await form.getByLabel('Port').fill(args.devPort);
await form.getByRole('button', { name: 'Start' }).click();
const proc = page.getByRole('listitem').filter({ has: page.getByText('web', { exact: true }) });
await proc.getByText('running').waitFor();
await page.getByRole('button', { name: 'Expose web' }).click();
const expose = page.getByRole('dialog', { name: 'Expose web' });
out.axe += await axe(page, 'the expose dialog');
await expose.getByRole('button', { name: 'Expose' }).click();
const link = page.getByRole('list', { name: 'Addresses of web' }).getByRole('link', { name: /dev-web-/ });
await link.waitFor();
const [popup] = await Promise.all([context.waitForEvent('page'), link.click()]);
await popup.waitForLoadState();
await popup.getByText('hello from the dev server').waitFor({ timeout: 30000 });
out.dev = await popup.innerText('body');
await popup.close();
out.axe += await axe(page, 'the dev commands');

// Stop, then delete, each confirmed.
await page.getByRole('button', { name: 'Stop', exact: true }).click();
await page.getByRole('dialog', { name: 'Stop sandbox?' }).getByRole('button', { name: 'Stop' }).click();
await page.getByRole('heading', { name: /demo/ }).getByText('stopped').waitFor();
await page.getByText('The sandbox is stopped').waitFor();
await page.getByRole('button', { name: 'Delete', exact: true }).click();
await page.getByRole('dialog', { name: 'Delete sandbox?' }).getByRole('button', { name: 'Delete' }).click();
await page.getByText('No sandboxes yet').waitFor();
out.reloads = (await page.evaluate(() => window.__sameDocument === true)) ? 0 : 1;

// Settings: an SSH key pair made in the browser, its private key downloaded
// once; an API token shown once, then revoked.
await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Settings' }).click();
await page.getByRole('button', { name: 'Add SSH key' }).click();
const add = page.getByRole('dialog', { name: 'Add an SSH key' });
await add.getByLabel('Name').fill('laptop');
await add.getByRole('button', { name: 'Generate an ed25519 key pair' }).click();
out.publicKey = await add.getByLabel('Public key').inputValue();
const [dl] = await Promise.all([page.waitForEvent('download'), add.getByRole('button', { name: 'Download private key' }).click()]);
out.privateKey = fs.readFileSync(await dl.path(), 'utf8');
await add.getByRole('button', { name: 'Add key' }).click();
await add.getByRole('button', { name: 'Done' }).click();
out.fingerprint = await page.getByRole('table', { name: 'SSH keys' }).getByRole('row').filter({ hasText: 'laptop' }).innerText();
const tok = page.getByRole('form', { name: 'Create an API token' });
await tok.getByLabel('Token name').fill('ci');
await tok.getByLabel('Scope').selectOption('read');
await tok.getByRole('button', { name: 'Create token' }).click();
out.token = await page.locator('code.secret').innerText();
await page.getByRole('button', { name: 'Revoke token ci' }).click();
await page.getByRole('dialog', { name: 'Revoke token?' }).getByRole('button', { name: 'Revoke' }).click();
await page.getByRole('status').getByText('Revoked ci').waitFor();

// The other pages.
for (const [nav, heading] of [['Settings', 'Settings'], ['System', 'System'], ['Images', 'Images']]) {
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: nav }).click();
  await page.getByRole('heading', { name: heading, level: 1 }).waitFor();
  await page.waitForLoadState('networkidle');
  out.axe += await axe(page, 'the ' + nav + ' page');
}
await page.goto(args.url + '/docs');
await page.getByText('Atelier Manager API').waitFor();
await page.getByText('/api/sandboxes', { exact: true }).first().waitFor();
check();
return out;
`,
	}, &got)
	if !strings.Contains(got.Terminal, "dash42board") {
		t.Errorf("terminal shows %q", got.Terminal)
	}
	if !strings.Contains(got.Dev, "hello from the dev server on "+strconv.Itoa(devPort)) {
		t.Errorf("dev URL shows %q", got.Dev)
	}
	if got.Reloads != 0 {
		t.Errorf("the page reloaded during the flow")
	}
	// The key pair made in the browser is one OpenSSH reads: the private key
	// parses and matches the public key the manager registered.
	signer, err := ssh.ParsePrivateKey([]byte(got.PrivateKey))
	if err != nil {
		t.Fatalf("the downloaded private key does not parse: %v\n%s", err, got.PrivateKey)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(got.PublicKey))
	if err != nil || !bytes.Equal(pub.Marshal(), signer.PublicKey().Marshal()) {
		t.Fatalf("public key %q does not match the private key (%v)", got.PublicKey, err)
	}
	if fp := ssh.FingerprintSHA256(pub); !strings.Contains(got.Fingerprint, fp) {
		t.Errorf("the key list shows %q, want fingerprint %s", got.Fingerprint, fp)
	}
	if len(got.Token) < 20 {
		t.Errorf("token shown once: %q", got.Token)
	}
	t.Logf("axe: %d minor or moderate violations across the pages", got.Axe)
}

// TestBrowserPhone: at a phone's size a person reviews a sandbox, reads a
// service's logs and restarts it; nothing is wider than the screen.
func TestBrowserPhone(t *testing.T) {
	m := startMock(t)
	var sb struct{ ID string }
	if err := m.api("POST", "/api/sandboxes", map[string]any{"name": "phone"}, &sb); err != nil {
		t.Fatal(err)
	}
	if err := m.api("POST", "/api/sandboxes/"+sb.ID+"/services/ticker/start",
		map[string]any{"shell": "while true; do echo tick-$$; sleep 1; done", "restart": "always"}, nil); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Overflow []string `json:"overflow"`
		Log      string   `json:"log"`
	}
	run(t, browsertest.Options{
		Width: 390, Height: 844,
		Args: map[string]any{"url": m.URL, "allowed": m.allowed(), "axe": axePath(t)},
		Script: `
const out = { overflow: [] };
const wide = async (where) => {
  const w = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (w > 1) out.overflow.push(where + ': ' + w + 'px too wide');
};
await page.goto(args.url + '/');
await page.getByRole('link', { name: 'phone' }).click();
await page.getByRole('heading', { name: /phone/ }).getByText('running').waitFor();
await wide('sandbox overview');
out.axe = await axe(page, 'the sandbox page on a phone');
await page.getByRole('tab', { name: 'Services' }).click();
const svc = page.getByRole('listitem').filter({ has: page.getByText('ticker', { exact: true }) });
await svc.getByText('running').waitFor();
await page.getByRole('button', { name: 'Logs of ticker' }).click();
const log = page.getByLabel('Log of ticker');
await log.getByText(/tick-\d+/).first().waitFor();
out.log = await log.innerText();
await wide('services with logs');
await page.getByRole('button', { name: 'Restart ticker' }).click();
await page.getByRole('status').getByText('Restarted ticker').waitFor();
await svc.getByText('running').waitFor();
await page.goto(args.url + '/sandboxes');
await page.getByRole('heading', { name: 'Sandboxes' }).waitFor();
await wide('list');
out.axe += await axe(page, 'the list on a phone');
check();
return out;
`,
	}, &got)
	if len(got.Overflow) > 0 {
		t.Errorf("pages wider than a phone: %v", got.Overflow)
	}
	if !strings.Contains(got.Log, "tick-") {
		t.Errorf("service log shows %q", got.Log)
	}
}
