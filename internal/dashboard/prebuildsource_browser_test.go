package dashboard_test

import (
	"strings"
	"testing"
	"time"

	"atelier/internal/browsertest"
)

// TestBrowserPrebuildSource: the Workspaces page says where a ready
// prebuild came from: "built" after a prebuild build, "saved from sandbox
// {id}" after that sandbox was promoted.
func TestBrowserPrebuildSource(t *testing.T) {
	m := startMock(t)
	var ws struct{ ID string }
	if err := m.api("POST", "/api/workspaces", map[string]any{"name": "pbsrc",
		"config": map[string]any{"initCommands": []string{"echo built > built.txt"}}}, &ws); err != nil {
		t.Fatal(err)
	}
	if err := m.api("POST", "/api/workspaces/"+ws.ID+"/prebuild", nil, nil); err != nil {
		t.Fatal(err)
	}
	var pb struct{ Status, Source string }
	for end := time.Now().Add(60 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if err := m.api("GET", "/api/workspaces/"+ws.ID+"/prebuild", nil, &pb); err != nil {
			t.Fatal(err)
		}
		if pb.Status != "building" {
			break
		}
	}
	if pb.Status != "ready" || pb.Source != "build" {
		t.Fatalf("prebuild: %+v", pb)
	}
	card := func(want string) string {
		t.Helper()
		var got struct {
			Card string `json:"card"`
		}
		run(t, browsertest.Options{
			Args: map[string]any{"url": m.URL, "allowed": m.allowed(), "want": want},
			Script: `
await page.goto(args.url + '/workspaces');
const card = page.getByRole('article', { name: 'Workspace pbsrc' });
await card.getByText(args.want).waitFor();
check();
return { card: await card.innerText() };
`,
		}, &got)
		return got.Card
	}
	if c := card("built"); !strings.Contains(c, "prebuild ready") {
		t.Errorf("after a build: %q", c)
	}

	var sb struct{ ID, Status string }
	if err := m.api("POST", "/api/sandboxes", map[string]any{"workspaceId": ws.ID}, &sb); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(30 * time.Second); sb.Status == "creating" && time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if err := m.api("GET", "/api/sandboxes/"+sb.ID, nil, &sb); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = m.api("DELETE", "/api/sandboxes/"+sb.ID, nil, nil) })
	if err := m.api("POST", "/api/sandboxes/"+sb.ID+"/promote", nil, nil); err != nil {
		t.Fatal(err)
	}
	if c := card("saved from sandbox " + sb.ID); !strings.Contains(c, "prebuild ready") {
		t.Errorf("after a promote: %q", c)
	}
}
