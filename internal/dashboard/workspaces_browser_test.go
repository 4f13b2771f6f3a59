package dashboard_test

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"atelier/internal/browsertest"
)

// TestBrowserWorkspaces: in Chromium against a real mock-mode `atelier
// serve`, a person creates a workspace with a secret variable, sees it
// listed with the secret's name and never its value, and creates a sandbox
// from it, which runs with the secret in its environment and the init
// command's result in its workdir.
func TestBrowserWorkspaces(t *testing.T) {
	m := startMock(t)
	const secret = "browser-secret-61c0aa"
	var got struct {
		HTML  string `json:"html"`
		URL   string `json:"url"`
		Card  string `json:"card"`
		Axe   int    `json:"axe"`
		Error string `json:"error"`
	}
	run(t, browsertest.Options{
		Args: map[string]any{"url": m.URL, "allowed": m.allowed(), "axe": axePath(t), "secret": secret},
		Script: `
const out = { axe: 0 };
await page.goto(args.url + '/workspaces');
await page.getByRole('heading', { name: 'Workspaces' }).waitFor();
await page.getByText('No workspaces').waitFor();
out.axe += await axe(page, 'the empty workspaces page');
await page.getByRole('button', { name: 'New workspace' }).click();
const dialog = page.getByRole('dialog', { name: 'New workspace' });
await dialog.getByLabel('Name', { exact: true }).fill('web');
await dialog.getByLabel('Init commands').fill('echo built > built.txt');
await dialog.getByLabel('Environment').fill('MODE=dev');
await dialog.getByLabel('Secret variables').fill('API_KEY=' + args.secret);
out.axe += await axe(page, 'the new workspace dialog');
// A bad variable name is refused, naming the field.
await dialog.getByLabel('Environment').fill('1BAD=x');
await dialog.getByRole('button', { name: 'Create workspace' }).click();
await dialog.getByText(/config\.env\.1BAD/).first().waitFor();
out.error = await dialog.getByText(/config\.env\.1BAD/).first().innerText();
await dialog.getByLabel('Environment').fill('MODE=dev');
await dialog.getByRole('button', { name: 'Create workspace' }).click();
const card = page.getByRole('article', { name: 'Workspace web' });
await card.waitFor();
await card.getByText('API_KEY').waitFor();
await card.getByText('no prebuild').waitFor();
out.card = await card.innerText();
out.html = await page.content();
out.axe += await axe(page, 'the workspaces list');
await card.getByRole('button', { name: 'Create sandbox' }).click();
await page.waitForURL(/\/sandboxes\/[a-z0-9]{12}$/);
out.url = page.url();
return out;
`,
	}, &got)
	if strings.Contains(got.HTML, secret) || strings.Contains(got.Card, secret) {
		t.Fatalf("the page shows the secret's value")
	}
	if !strings.Contains(got.Card, "API_KEY") {
		t.Errorf("card: %q", got.Card)
	}
	if !strings.Contains(got.Error, "config.env.1BAD") {
		t.Errorf("bad input error: %q", got.Error)
	}
	id := regexp.MustCompile(`/sandboxes/([a-z0-9]{12})$`).FindStringSubmatch(got.URL)
	if id == nil {
		t.Fatalf("did not land on the sandbox page: %q", got.URL)
	}
	var sb struct{ Status, WorkspaceID, Error string }
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if err := m.api("GET", "/api/sandboxes/"+id[1], nil, &sb); err != nil {
			t.Fatal(err)
		}
		if sb.Status != "creating" {
			break
		}
	}
	if sb.Status != "running" || sb.WorkspaceID == "" {
		t.Fatalf("sandbox from the workspace: %+v", sb)
	}
	var res struct {
		ExitCode int
		Stdout   string
	}
	if err := m.api("POST", "/api/sandboxes/"+id[1]+"/exec", map[string]any{"argv": []string{"sh", "-c", `cat ~/workspace/built.txt; printf '%s %s' "$MODE" "$API_KEY"`}}, &res); err != nil {
		t.Fatal(err)
	}
	if res.Stdout != "built\ndev "+secret {
		t.Errorf("in the sandbox: %q", res.Stdout)
	}
	if err := m.api("DELETE", "/api/sandboxes/"+id[1], nil, nil); err != nil {
		t.Error(err)
	}
	t.Logf("axe: %d minor or moderate violations", got.Axe)
}
