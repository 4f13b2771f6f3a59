package dashboard_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"atelier/internal/browsertest"
	"atelier/internal/config"
	netmock "atelier/internal/network/mock"
	rtmock "atelier/internal/runtime/mock"
	"atelier/internal/sandbox"
	"atelier/internal/server"
	stmock "atelier/internal/storage/mock"
)

// startMockInProcess is a mock-mode manager (no login: the local user is an
// admin) in this process, with in-memory drivers and no periodic reconciler
// pass during a test: the test decides when a pass runs and what it finds.
func startMockInProcess(t *testing.T) (*server.Server, string) {
	t.Helper()
	browsertest.Require(t)
	requireApp(t)
	cfg := config.Default()
	dir := t.TempDir()
	cfg.Server.Mode = config.ModeMock
	cfg.Server.Host = "127.0.0.1"
	cfg.Server.Port = freePort(t)
	cfg.Domain.HTTPPort, cfg.Domain.HTTPSPort = freePort(t), freePort(t)
	cfg.Domain.SSH.Port = freePort(t)
	cfg.Server.DataDir = dir
	cfg.Advanced.Server.Verdaccio.Dir = dir + "-registry"
	cfg.Server.SocketPath = dir + "/atelier.sock"
	cfg.Sandbox.StateDir = dir + "/state"
	drv := &sandbox.Drivers{Runtime: rtmock.New(), Network: netmock.New(), Volumes: stmock.New(t.TempDir())}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, server.Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Drivers: drv,
		NoUnixSock: true, ReconcileEvery: time.Hour})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := srv.Listen(true); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	url := "http://localhost:" + strconv.Itoa(cfg.Server.Port)
	deadline := time.Now().Add(15 * time.Second)
	for {
		res, err := http.Get(url + "/health/live")
		if err == nil {
			res.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("manager not serving: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return srv, url
}

// orphanLease leaves what a crash between a lease and its row leaves: an
// address leased to a sandbox that does not exist.
func orphanLease(t *testing.T, srv *server.Server, id string) string {
	t.Helper()
	_, first, last, err := srv.Config.GuestRange()
	if err != nil {
		t.Fatal(err)
	}
	l, err := srv.Store.AllocateLease(context.Background(), id, first, last, func(a netip.Addr) string {
		b := a.As4()
		return fmt.Sprintf("06:00:00:00:%02x:%02x", b[2], b[3])
	})
	if err != nil {
		t.Fatal(err)
	}
	return l.IP
}

// TestBrowserSystemPage: an admin (mock mode's local user) sees every
// System card with the host's real numbers, previews a cleanup in its
// confirmation dialog (it names the orphaned address), runs it and sees the
// result; a later reconciler pass shows up on the open page by itself (the
// event stream, no reload); a page on another origin can neither read the
// host reports nor run a cleanup; and the page fits a phone.
func TestBrowserSystemPage(t *testing.T) {
	srv, url := startMockInProcess(t)
	var sb struct {
		ID string `json:"id"`
	}
	if err := apiCall(url, "POST", "/api/sandboxes", `{"name":"sys"}`, &sb); err != nil {
		t.Fatal(err)
	}
	const orphan, later = "orphan000001", "orphan000002"
	orphanIP := orphanLease(t, srv, orphan)

	// The script asks for "a periodic pass" here: an orphan appears and the
	// reconciler runs, as its 30 s timer would.
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		orphanLease(t, srv, later)
		if _, err := srv.Sandboxes.Reconcile(context.Background(), false); err != nil {
			http.Error(w, err.Error(), 500)
		}
	}))
	defer hook.Close()
	// A hostile page: another origin, open in the same browser.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, `<!doctype html><title>evil</title><p>hi</p>`)
	}))
	defer evil.Close()

	gw, _, _, _ := srv.Config.GuestRange()
	subnet := netip.PrefixFrom(gw, srv.Config.Network.BridgePrefix).Masked().String()
	var got struct {
		CardsMs  float64  `json:"cardsMs"`
		Storage  string   `json:"storage"`
		Network  string   `json:"network"`
		Manager  string   `json:"manager"`
		Dialog   string   `json:"dialog"`
		Result   string   `json:"result"`
		Fixes    string   `json:"fixes"`
		Live     string   `json:"live"`
		Reloaded bool     `json:"reloaded"`
		Evil     []string `json:"evil"`
		Overflow int      `json:"overflow"`
		Wide     []string `json:"wide"`
		Axe      int      `json:"axe"`
	}
	run(t, browsertest.Options{
		Args: map[string]any{"url": url, "hook": hook.URL, "evil": evil.URL, "axe": axePath(t), "orphan": orphan, "later": later,
			"allowed": []string{"^" + regexpQuote(url) + "(/|$)", "^" + regexpQuote(evil.URL) + "(/|$)"}},
		Script: `
const out = {};
const card = (name) => page.getByRole('region', { name });
await page.goto(args.url + '/system', { waitUntil: 'commit' });
// Every card rendered with its data, timed from the navigation.
await page.waitForFunction(() => {
  const text = (name) => [...document.querySelectorAll('section.card')].find((s) => s.querySelector('h2')?.textContent === name)?.innerText || '';
  return /CPU/.test(text('Host')) && /Active/.test(text('Sandboxes')) && /Pool fill/.test(text('Storage pool')) &&
    /Subnet/.test(text('Network')) && /Version/.test(text('Manager')) && /passes/.test(text('Reconciler fixes'));
}, null, { polling: 'raf', timeout: 30000 });
out.cardsMs = await page.evaluate(() => performance.now());
await card('Network').getByText('1 (1 up)').waitFor();
out.storage = await card('Storage pool').innerText();
out.network = await card('Network').innerText();
out.manager = await card('Manager').innerText();
await card('Reconciler fixes').getByText('No fixes since the manager started.').waitFor();
out.axe = await axe(page, 'the system page');
await page.evaluate(() => { window.__same = true; });

await card('Cleanup').getByRole('button', { name: 'Run cleanup…' }).click();
const dialog = page.getByRole('dialog', { name: 'Run cleanup?' });
await dialog.getByRole('list', { name: 'To be cleaned' }).waitFor();
out.dialog = await dialog.innerText();
out.axe += await axe(page, 'the cleanup dialog');
await dialog.getByRole('button', { name: 'Run cleanup' }).click();
await dialog.waitFor({ state: 'hidden' });
const result = card('Cleanup').getByRole('status', { name: 'Cleanup result' });
await result.getByText('Cleanup fixed 1').waitFor();
out.result = await result.innerText();
const recent = card('Reconciler fixes').getByRole('list', { name: 'Recent fixes' });
await recent.getByText(args.orphan).waitFor();
out.fixes = await recent.innerText();

// A pass the page did not ask for arrives over the event stream.
const r = await fetch(args.hook);
if (!r.ok) throw new Error('hook: ' + r.status + ' ' + await r.text());
await recent.getByText(args.later).waitFor({ timeout: 10000 });
out.live = await recent.innerText();
out.reloaded = !(await page.evaluate(() => window.__same === true));

// Another origin: the browser sends the requests but never lets the page
// read the answers, and a cross-origin write is refused by the manager.
const hostile = await context.newPage();
await hostile.goto(args.evil + '/');
out.evil = await hostile.evaluate(async (base) => {
  const res = [];
  for (const path of ['/api/system/storage', '/api/system/network', '/api/system/reconciler', '/api/system/cleanup']) {
    try {
      const r = await fetch(base + path, { credentials: 'include' });
      res.push(path + ' read: ' + (await r.text()).slice(0, 80));
    } catch (e) {
      res.push(path + ' blocked');
    }
  }
  try {
    await fetch(base + '/api/system/cleanup', { method: 'POST', mode: 'no-cors', credentials: 'include' });
  } catch (e) {}
  return res;
}, args.url);
await hostile.close();

await page.setViewportSize({ width: 390, height: 844 });
await page.reload();
await card('Storage pool').getByText('Pool fill').waitFor();
await card('Network').getByText('Subnet').waitFor();
out.overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
// Name what sticks out, so a failure says where to look.
out.wide = await page.evaluate(() => [...document.querySelectorAll('main *')]
  .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
  .slice(0, 5).map((e) => e.tagName + '.' + e.className + ': ' + (e.innerText || '').slice(0, 60)));
out.axe += await axe(page, 'the system page on a phone');
check();
return out;
`,
	}, &got)
	t.Logf("all System cards rendered %.0f ms after navigation", got.CardsMs)

	if !strings.Contains(got.Storage, "mock pool") || !regexp.MustCompile(`\d+(\.\d)? (MiB|GiB|TiB) of \d+(\.\d)? (GiB|TiB)`).MatchString(got.Storage) ||
		!strings.Contains(got.Storage, "to 1 sandbox") || !regexp.MustCompile(`\d\.\d\d× of physical`).MatchString(got.Storage) {
		t.Errorf("storage card:\n%s", got.Storage)
	}
	for _, want := range []string{regexp.QuoteMeta(subnet + " via " + gw.String()), srv.Config.Network.BridgeName, "none in mock mode", `Taps\s+1 \(1 up\)`, `Leases\s+2`} {
		if !regexp.MustCompile(want).MatchString(got.Network) {
			t.Errorf("network card lacks %q:\n%s", want, got.Network)
		}
	}
	if !regexp.MustCompile(`Version\s+` + regexp.QuoteMeta(server.Version)).MatchString(got.Manager) {
		t.Errorf("manager card lacks the version %q:\n%s", server.Version, got.Manager)
	}
	if !strings.Contains(got.Dialog, "1 thing to clean up") || !strings.Contains(got.Dialog, orphan) || !strings.Contains(got.Dialog, orphanIP) {
		t.Errorf("cleanup dialog does not say what it will clean:\n%s", got.Dialog)
	}
	if !strings.Contains(got.Result, orphan) || !strings.Contains(got.Fixes, orphan) {
		t.Errorf("cleanup result %q, recent fixes %q", got.Result, got.Fixes)
	}
	if !strings.Contains(got.Live, later) || !strings.Contains(got.Live, orphan) || got.Reloaded {
		t.Errorf("live fixes (reloaded %v):\n%s", got.Reloaded, got.Live)
	}
	for _, e := range got.Evil {
		if !strings.HasSuffix(e, " blocked") {
			t.Errorf("a page on another origin read the manager: %s", e)
		}
	}
	if len(got.Evil) != 4 {
		t.Errorf("hostile page results: %v", got.Evil)
	}
	// The no-cors POST ran no pass: the two passes are the cleanup and the hook's.
	if st := srv.Sandboxes.RecentFixes(); st.Passes != 3 { // start-up, cleanup, hook
		t.Errorf("reconciler passes %d, want 3 (start-up, cleanup, the hook's): a cross-origin POST ran one?", st.Passes)
	}
	if got.Overflow > 1 {
		t.Errorf("system page %d px wider than a phone: %q", got.Overflow, got.Wide)
	}
}

// apiCall is a script's request to the manager (no browser headers).
func apiCall(base, method, path, body string, out any) error {
	req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	res, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %d %s", method, path, res.StatusCode, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// TestBrowserSystemNotForUsers: in production a user who is not an admin
// has no System link, gets a plain refusal at its URL (no host numbers, not
// even a request for them), and the API refuses them the reports.
func TestBrowserSystemNotForUsers(t *testing.T) {
	p := startProduction(t)
	p.gh.ActAs("alice")
	var got struct {
		Nav      string   `json:"nav"`
		Direct   string   `json:"direct"`
		Requests []string `json:"requests"`
		API      []string `json:"api"`
	}
	run(t, browsertest.Options{
		MapHosts: []string{"*.atelier.test"},
		Args:     map[string]any{"url": p.URL, "allowed": p.allowed(), "axe": axePath(t)},
		Script: `
const out = { requests: [] };
await page.goto(args.url + '/sandboxes');
await page.getByRole('link', { name: 'Sign in with GitHub' }).click();
await page.waitForURL(args.url + '/**');
await page.getByRole('heading', { name: 'Sandboxes' }).waitFor();
out.nav = await page.getByRole('navigation', { name: 'Main' }).innerText();
const watch = (r) => { if (r.url().includes('/api/system/')) out.requests.push(r.url()); };
page.on('request', watch);
await page.goto(args.url + '/system');
await page.getByRole('heading', { name: 'Admins only' }).waitFor();
out.direct = await page.innerText('main');
await axe(page, 'the refusal');
page.off('request', watch);
out.api = await page.evaluate(async () => {
  const res = [];
  for (const path of ['/api/system/storage', '/api/system/network', '/api/system/reconciler', '/api/system/cleanup']) {
    const r = await fetch(path);
    res.push(path + ' ' + r.status + ' ' + (await r.json()).detail);
  }
  return res;
});
check();
return out;
`,
	}, &got)
	if strings.Contains(got.Nav, "System") || !strings.Contains(got.Nav, "Sandboxes") {
		t.Errorf("alice's navigation: %q", got.Nav)
	}
	if !strings.Contains(got.Direct, "auth.admins") || strings.Contains(got.Direct, "Storage pool") || strings.Contains(got.Direct, "Subnet") {
		t.Errorf("alice at /system sees:\n%s", got.Direct)
	}
	if len(got.Requests) != 0 {
		t.Errorf("the refusal page asked for host reports: %v", got.Requests)
	}
	if len(got.API) != 4 {
		t.Fatalf("api answers: %v", got.API)
	}
	for _, a := range got.API {
		if !strings.Contains(a, " 403 ") || !strings.Contains(a, "admins only") {
			t.Errorf("alice's session: %s, want 403 admins only", a)
		}
	}
}
