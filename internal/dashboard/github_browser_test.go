package dashboard_test

import (
	"strings"
	"testing"

	"atelier/internal/auth/githubtest"
	"atelier/internal/browsertest"
)

// TestBrowserGitHubConnect: in Chromium against a real mock-mode `atelier
// serve` whose GitHub is the local stand-in, a person connects GitHub from
// Settings (through the stand-in's authorize page and back), sees the
// connected account, then in the workspace form picks the connected source,
// a repository and a branch from pickers fed by GitHub (one entry per page,
// so every listing paginates), and creates the workspace with that clone
// URL and branch. No page ever shows the token; disconnecting removes it.
func TestBrowserGitHubConnect(t *testing.T) {
	browsertest.Require(t)
	gh := githubtest.New(t)
	gh.AddUser(9, "octo")
	gh.ActAs("octo")
	gh.SetMaxPerPage(1)
	gh.AddRepo("octo/api", true, map[string]string{"main": "a1", "dev": "a2", "release": "a3"})
	gh.AddRepo("octo/site", false, map[string]string{"main": "s1"})
	gh.AddRepo("someone/else", true, map[string]string{"main": "x"})
	m := startMock(t,
		"ATELIER_GITHUB_CLIENT_ID="+githubtest.ClientID, "ATELIER_GITHUB_CLIENT_SECRET="+githubtest.ClientSecret,
		"ATELIER_GITHUB_WEB_URL="+gh.URL, "ATELIER_GITHUB_API_URL="+gh.URL)
	var got struct {
		Before   string   `json:"before"`
		After    string   `json:"after"`
		Repos    []string `json:"repos"`
		Branches []string `json:"branches"`
		Card     string   `json:"card"`
		HTML     []string `json:"html"`
		Gone     string   `json:"gone"`
		Axe      int      `json:"axe"`
	}
	run(t, browsertest.Options{
		Args: map[string]any{"url": m.URL, "allowed": append(m.allowed(), "^"+regexpQuote(gh.URL)+"/login/oauth/authorize"), "axe": axePath(t)},
		Script: `
const out = { axe: 0, html: [] };
await page.goto(args.url + '/settings');
const card = page.getByRole('region', { name: 'GitHub' });
await card.getByText('GitHub not connected').waitFor();
out.before = await card.innerText();
await card.getByRole('link', { name: 'Connect GitHub' }).click();
await page.waitForURL(/\/settings\?github=connected$/);
await card.getByText('Connected as').waitFor();
out.after = await card.innerText();
out.html.push(await page.content());
out.axe += await axe(page, 'settings with GitHub connected');

await page.goto(args.url + '/workspaces');
await page.getByRole('button', { name: 'New workspace' }).click();
const dialog = page.getByRole('dialog', { name: 'New workspace' });
await dialog.getByLabel('Name', { exact: true }).fill('api');
await dialog.getByLabel('Git source').selectOption({ label: 'github (GitHub: octo)' });
const repo = dialog.getByLabel('Repository', { exact: true });
await repo.locator('option', { hasText: 'octo/site' }).waitFor({ state: 'attached' });
out.repos = await repo.locator('option').allInnerTexts();
await repo.selectOption('octo/api');
const branch = dialog.getByLabel('Branch');
await branch.locator('option', { hasText: 'release' }).waitFor({ state: 'attached' });
out.branches = await branch.locator('option').allInnerTexts();
await branch.selectOption('dev');
out.axe += await axe(page, 'the workspace form with GitHub pickers');
out.html.push(await page.content());
await dialog.getByRole('button', { name: 'Create workspace' }).click();
const ws = page.getByRole('article', { name: 'Workspace api' });
await ws.waitFor();
out.card = await ws.innerText();

await page.goto(args.url + '/settings');
await card.getByRole('button', { name: 'Disconnect' }).click();
await page.getByRole('dialog').getByRole('button', { name: 'Disconnect' }).click();
await card.getByText('GitHub not connected').waitFor();
out.gone = await card.innerText();
check();
return out;
`,
	}, &got)
	if !strings.Contains(got.After, "Connected as octo") {
		t.Errorf("settings after connecting: %q", got.After)
	}
	if strings.Join(got.Repos, "|") != "choose a repository|octo/api (private)|octo/site" {
		t.Errorf("repository picker: %q", got.Repos)
	}
	if strings.Join(got.Branches, "|") != "dev|main|release" {
		t.Errorf("branch picker: %q", got.Branches)
	}
	if !strings.Contains(got.Card, "https://github.com/octo/api.git (dev)") {
		t.Errorf("workspace card: %q", got.Card)
	}
	if !strings.Contains(got.Gone, "GitHub not connected") {
		t.Errorf("after disconnecting: %q", got.Gone)
	}
	_, _, issued := gh.Stats()
	if len(issued) < 2 {
		t.Fatalf("the stand-in issued %d codes and tokens", len(issued))
	}
	for _, h := range got.HTML {
		for _, secret := range issued {
			if strings.Contains(h, secret) {
				t.Fatal("a page shows a GitHub code or token")
			}
		}
	}
	t.Logf("axe: %d minor or moderate violations", got.Axe)
}
