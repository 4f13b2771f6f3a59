package api_test

import (
	"net/http"
	"strings"
	"testing"

	"atelier/internal/auth"
	"atelier/internal/config"
)

type wsView struct {
	ID          string   `json:"id"`
	OwnerID     string   `json:"ownerId"`
	Name        string   `json:"name"`
	SecretEnv   []string `json:"secretEnv"`
	SecretFiles []struct {
		Path string `json:"path"`
		Mode string `json:"mode"`
	} `json:"secretFiles"`
	Config struct {
		Repos []struct {
			URL, Branch, Path string
		} `json:"repos"`
	} `json:"config"`
}

// TestWorkspacesAPI: CRUD by the owner, secrets returned as names only,
// bad input a 400 naming the field, other users told the workspace does
// not exist, admins reading but not changing it.
func TestWorkspacesAPI(t *testing.T) {
	h := newHarness(t, config.ModeProduction, nil)
	alice := h.tokenOf(t, "alice", 2, auth.ScopeFull)
	bob := h.tokenOf(t, "bob", 3, auth.ScopeFull)
	root := h.tokenOf(t, "root", 9, auth.ScopeAdmin)
	const secret = "tok-9d8e7f-never-returned"

	r := h.do(t, "POST", "/api/workspaces", map[string]any{
		"name":        "web",
		"config":      map[string]any{"repos": []any{map[string]any{"url": "https://git.example.test/acme/web.git"}}},
		"secretEnv":   map[string]string{"API_KEY": secret},
		"secretFiles": []any{map[string]any{"path": "~/.npmrc", "content": secret}},
	}, alice)
	if r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	if strings.Contains(string(r.body), secret) {
		t.Fatalf("create answered a secret value: %s", r.body)
	}
	var w wsView
	r.json(t, &w)
	if w.Name != "web" || len(w.SecretEnv) != 1 || w.SecretEnv[0] != "API_KEY" || len(w.SecretFiles) != 1 ||
		w.SecretFiles[0].Mode != "0600" || w.Config.Repos[0].Branch != "main" {
		t.Fatalf("created = %s", r.body)
	}

	for _, c := range []struct {
		body  map[string]any
		field string
	}{
		{map[string]any{"name": "x", "config": map[string]any{"repos": []any{map[string]any{"url": "git@host:x.git"}}}}, "body.config.repos[0].url"},
		{map[string]any{"name": "x", "secretEnv": map[string]string{"NO-DASH": "v"}}, "body.secretEnv.NO-DASH"},
		{map[string]any{"config": map[string]any{}}, "body.name"},
	} {
		r := h.do(t, "POST", "/api/workspaces", c.body, alice)
		if r.status != http.StatusBadRequest || !strings.Contains(string(r.body), `"location":"`+c.field+`"`) {
			t.Errorf("%v: %d %s, want 400 naming %s", c.body, r.status, r.body, c.field)
		}
	}
	if r := h.do(t, "POST", "/api/workspaces", map[string]any{"name": "web"}, alice); r.status != http.StatusConflict {
		t.Fatalf("duplicate name: %d %s", r.status, r.body)
	}

	path := "/api/workspaces/" + w.ID
	for _, c := range []struct {
		who    map[string]string
		method string
		want   int
	}{
		{bob, "GET", 404}, {bob, "PUT", 404}, {bob, "DELETE", 404},
		{root, "GET", 200}, {root, "PUT", 404}, {root, "DELETE", 404},
	} {
		var body any
		if c.method == "PUT" {
			body = map[string]any{"name": "taken"}
		}
		if r := h.do(t, c.method, path, body, c.who); r.status != c.want {
			t.Errorf("%s by other: %d %s, want %d", c.method, r.status, r.body, c.want)
		}
	}
	var list struct{ Workspaces []wsView }
	h.do(t, "GET", "/api/workspaces", nil, bob).json(t, &list)
	if len(list.Workspaces) != 0 {
		t.Fatalf("bob sees %d workspaces", len(list.Workspaces))
	}
	h.do(t, "GET", "/api/workspaces", nil, root).json(t, &list)
	if len(list.Workspaces) != 1 {
		t.Fatalf("admin sees %d workspaces", len(list.Workspaces))
	}

	r = h.do(t, "PUT", path, map[string]any{"name": "web2", "secretEnv": map[string]string{"B": "v"}, "deleteSecrets": []string{"API_KEY", "~/.npmrc"}}, alice)
	if r.status != http.StatusOK {
		t.Fatalf("update: %d %s", r.status, r.body)
	}
	r.json(t, &w)
	if w.Name != "web2" || len(w.SecretEnv) != 1 || w.SecretEnv[0] != "B" || len(w.SecretFiles) != 0 || len(w.Config.Repos) != 1 {
		t.Fatalf("updated = %s", r.body)
	}
	if r := h.do(t, "DELETE", path, nil, alice); r.status != http.StatusNoContent {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	if r := h.do(t, "GET", path, nil, alice); r.status != http.StatusNotFound {
		t.Fatalf("get deleted: %d", r.status)
	}
}
