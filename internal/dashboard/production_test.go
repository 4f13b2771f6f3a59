package dashboard_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"atelier/internal/auth/githubtest"
	"atelier/internal/browsertest"
	"atelier/internal/config"
	"atelier/internal/edge/edgetest"
	netmock "atelier/internal/network/mock"
	rtmock "atelier/internal/runtime/mock"
	"atelier/internal/sandbox"
	"atelier/internal/server"
	stmock "atelier/internal/storage/mock"
)

// prodManager is a production manager (GitHub login, HTTPS edge in front of
// the dashboard at https://sandbox.atelier.test:<port>) with in-memory
// sandbox drivers and the local GitHub stand-in.
type prodManager struct {
	URL string
	gh  *githubtest.Server
	srv *server.Server
}

func startProduction(t *testing.T) *prodManager {
	t.Helper()
	browsertest.Require(t)
	requireApp(t)
	gh := githubtest.New(t)
	gh.AddUser(1, "alice")
	gh.AddUser(2, "bob")
	gh.AddUser(3, "eve")

	cfg := config.Default()
	dir := t.TempDir()
	cfg.Server.Mode = config.ModeProduction
	cfg.Server.Host = "127.0.0.1"
	cfg.Server.Port = freePort(t)
	cfg.Domain.HTTPPort, cfg.Domain.HTTPSPort = freePort(t), freePort(t)
	cfg.Domain.SSH.Port = freePort(t)
	cfg.Server.DataDir = dir
	cfg.Advanced.Server.Verdaccio.Dir = dir + "-registry"
	cfg.Server.SocketPath = dir + "/atelier.sock"
	cfg.Sandbox.StateDir = dir + "/state"
	cfg.Domain.BaseDomain = "atelier.test"
	cfg.Domain.Dashboard = "sandbox.atelier.test"
	cfg.Domain.SSH.Hostname = "ssh.atelier.test"
	cfg.Domain.TLS.Email = "ops@atelier.test"
	cfg.Auth.JWTSecret = strings.Repeat("k", 40)
	certPath, keyPath, _ := edgetest.WildcardCert(t, "atelier.test")
	cfg.Domain.TLS.CertPath, cfg.Domain.TLS.KeyPath = certPath, keyPath
	cfg.Auth.GitHub = config.GitHub{ClientID: githubtest.ClientID, ClientSecret: githubtest.ClientSecret, WebURL: gh.URL, APIURL: gh.URL}
	cfg.Auth.AllowedUsers = []string{"alice", "bob"}
	cfg.Auth.AllowedOrg = "acme"

	drv := &sandbox.Drivers{Runtime: rtmock.New(), Network: netmock.New(), Volumes: stmock.New(t.TempDir())}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, server.Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Drivers: drv, NoUnixSock: true})
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
	// The manager port answers once Serve has started the edge.
	deadline := time.Now().Add(15 * time.Second)
	for {
		res, err := http.Get("http://127.0.0.1:" + strconv.Itoa(cfg.Server.Port) + "/health/live")
		if err == nil {
			res.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("manager not serving: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return &prodManager{URL: cfg.DashboardURL(), gh: gh, srv: srv}
}

// allowed: the dashboard and the sandbox hosts over HTTPS, and GitHub (the
// stand-in) for the login's own navigation, nothing else.
func (p *prodManager) allowed() []string {
	port := p.URL[strings.LastIndex(p.URL, ":")+1:]
	return []string{
		`^https://[a-z0-9-]+\.atelier\.test:` + port + "(/|$)",
		`^wss://sandbox\.atelier\.test:` + port + "/",
		"^" + regexp.QuoteMeta(p.gh.URL) + "/login/oauth/authorize",
	}
}

// TestBrowserProductionLogin: in production a visitor gets the login page,
// which says who may sign in; signing in with GitHub (the stand-in) lands on
// the dashboard as that user; each user sees only their own sandboxes, even
// by URL; a GitHub account that is not allowed is told why; signing out
// returns to the login page.
func TestBrowserProductionLogin(t *testing.T) {
	p := startProduction(t)
	script := func(body string) string {
		return `
const signIn = async (who) => {
  await page.goto(args.url + '/sandboxes');
  await page.getByRole('heading', { name: 'Sign in to Atelier' }).waitFor();
  await page.getByText('members of the GitHub organization').waitFor();
  await page.getByRole('link', { name: 'Sign in with GitHub' }).click();
  await page.waitForURL(args.url + '/**');
};
` + body
	}

	// Alice signs in and creates a sandbox.
	p.gh.ActAs("alice")
	var alice struct {
		ID  string `json:"id"`
		Axe int    `json:"axe"`
	}
	run(t, browsertest.Options{
		MapHosts: []string{"*.atelier.test"},
		Args:     map[string]any{"url": p.URL, "allowed": p.allowed(), "axe": axePath(t)},
		Script: script(`
await page.goto(args.url + '/');
await page.getByRole('heading', { name: 'Sign in to Atelier' }).waitFor();
const a = await axe(page, 'the login page');
await signIn('alice');
await page.getByRole('heading', { name: 'Sandboxes' }).waitFor();
await page.getByRole('button', { name: 'Account menu of alice' }).click();
await page.getByRole('menu').getByText('@alice').waitFor();
await page.keyboard.press('Escape');
await page.getByRole('button', { name: 'New sandbox' }).first().click();
const d = page.getByRole('dialog', { name: 'New sandbox' });
await d.getByLabel('Name').fill('alices');
await d.getByRole('button', { name: 'Create' }).click();
await page.getByRole('dialog', { name: 'Creating sandbox' }).getByText('running').waitFor({ timeout: 30000 });
await page.getByRole('dialog', { name: 'Creating sandbox' }).getByRole('button', { name: 'Open sandbox' }).click();
await page.getByRole('heading', { name: /alices/ }).waitFor();
const id = page.url().split('/sandboxes/')[1].split('?')[0];
await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Settings' }).click();
await page.getByRole('heading', { name: 'Sessions' }).waitFor();
await page.getByText('this browser').waitFor();
check();
return { id, axe: a };
`),
	}, &alice)
	if !regexp.MustCompile(`^[a-z0-9]{12}$`).MatchString(alice.ID) {
		t.Fatalf("alice's sandbox id %q", alice.ID)
	}

	// Bob signs in: he sees none of Alice's sandboxes, not even by its URL.
	p.gh.ActAs("bob")
	var bob struct {
		List   string `json:"list"`
		Direct string `json:"direct"`
	}
	run(t, browsertest.Options{
		MapHosts: []string{"*.atelier.test"},
		Args:     map[string]any{"url": p.URL, "allowed": p.allowed(), "id": alice.ID},
		Script: script(`
await signIn('bob');
await page.getByRole('heading', { name: 'Sandboxes' }).waitFor();
await page.getByText('No sandboxes yet').waitFor();
const list = await page.innerText('main');
await page.goto(args.url + '/sandboxes/' + args.id);
await page.getByRole('heading', { name: 'Sandbox not found' }).waitFor();
const direct = await page.innerText('main');
// Signing out ends the session: the dashboard asks to sign in again.
await page.getByRole('link', { name: 'Back to your sandboxes' }).click();
await page.getByRole('button', { name: 'Account menu of bob' }).click();
await page.getByRole('menuitem', { name: 'Sign out' }).click();
await page.getByRole('heading', { name: 'Sign in to Atelier' }).waitFor();
await page.goto(args.url + '/sandboxes');
await page.getByRole('heading', { name: 'Sign in to Atelier' }).waitFor();
check();
return { list, direct };
`),
	}, &bob)
	if strings.Contains(bob.List, "alices") || strings.Contains(bob.List, alice.ID) || strings.Contains(bob.Direct, "alices") {
		t.Fatalf("bob sees alice's sandbox: list %q, direct %q", bob.List, bob.Direct)
	}

	// Eve is a GitHub user this Atelier does not allow: she is told why.
	p.gh.ActAs("eve")
	var eve string
	run(t, browsertest.Options{
		MapHosts: []string{"*.atelier.test"},
		Args:     map[string]any{"url": p.URL, "allowed": p.allowed()},
		Script: script(`
await signIn('eve');
const alert = page.getByRole('alert');
await alert.waitFor();
const text = await alert.innerText();
await page.getByRole('link', { name: 'Sign in with GitHub' }).waitFor();
check();
return text;
`),
	}, &eve)
	if !strings.Contains(eve, "not allowed on this Atelier") {
		t.Fatalf("refused user sees %q", eve)
	}
}
