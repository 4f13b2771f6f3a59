package api_test

import (
	"net/http"
	"strings"
	"testing"

	"atelier/internal/auth"
	"atelier/internal/config"
)

type cfgFilesView struct {
	Files []struct{ Path, Content, Mode string }
}

// TestConfigFilesAPI: the global set is written by admins only and read by
// every user; a workspace's set by its owner only (an admin reads it, a
// stranger is told it does not exist); bad input is a 400 naming the field
// and changes nothing.
func TestConfigFilesAPI(t *testing.T) {
	h := newHarness(t, config.ModeProduction, nil)
	alice := h.tokenOf(t, "alice", 2, auth.ScopeFull)
	bob := h.tokenOf(t, "bob", 3, auth.ScopeFull)
	root := h.tokenOf(t, "root", 9, auth.ScopeAdmin)

	global := map[string]any{"files": []any{map[string]any{"path": "~/.config/opencode/opencode.json", "content": `{"theme":"dark"}`}}}
	if r := h.do(t, "PUT", "/api/config-files", global, alice); r.status != http.StatusForbidden {
		t.Fatalf("global put by a user: %d %s", r.status, r.body)
	}
	r := h.do(t, "PUT", "/api/config-files", global, root)
	if r.status != http.StatusOK {
		t.Fatalf("global put by an admin: %d %s", r.status, r.body)
	}
	var v cfgFilesView
	h.do(t, "GET", "/api/config-files", nil, bob).json(t, &v)
	if len(v.Files) != 1 || v.Files[0].Mode != "0644" || v.Files[0].Content != `{"theme":"dark"}` {
		t.Fatalf("global read by a user: %+v", v)
	}

	for _, c := range []struct {
		file  map[string]any
		field string
	}{
		{map[string]any{"path": "~/../../root/.ssh/authorized_keys", "content": "k"}, "body.files[0].path"},
		{map[string]any{"path": "/usr/bin/sudo", "content": "k"}, "body.files[0].path"},
		{map[string]any{"path": "~/a.json", "content": "{"}, "body.files[0].content"},
		{map[string]any{"path": "~/a", "content": "x", "mode": "4777"}, "body.files[0].mode"},
	} {
		r := h.do(t, "PUT", "/api/config-files", map[string]any{"files": []any{c.file}}, root)
		if r.status != http.StatusBadRequest || !strings.Contains(string(r.body), `"location":"`+c.field+`"`) {
			t.Errorf("%v: %d %s, want 400 naming %s", c.file, r.status, r.body, c.field)
		}
	}
	h.do(t, "GET", "/api/config-files", nil, root).json(t, &v)
	if len(v.Files) != 1 {
		t.Fatalf("a refused put changed the set: %+v", v)
	}

	r = h.do(t, "POST", "/api/workspaces", map[string]any{"name": "web"}, alice)
	if r.status != http.StatusCreated {
		t.Fatalf("workspace: %d %s", r.status, r.body)
	}
	var w wsView
	r.json(t, &w)
	path := "/api/workspaces/" + w.ID + "/config-files"
	ws := map[string]any{"files": []any{map[string]any{"path": "~/.editorconfig", "content": "root = true\n", "mode": "0600"}}}
	for _, c := range []struct {
		who    map[string]string
		method string
		want   int
	}{
		{bob, "GET", 404}, {bob, "PUT", 404}, {root, "PUT", 404}, {alice, "PUT", 200}, {root, "GET", 200}, {alice, "GET", 200},
	} {
		var body any
		if c.method == "PUT" {
			body = ws
		}
		if r := h.do(t, c.method, path, body, c.who); r.status != c.want {
			t.Errorf("%s %s: %d %s, want %d", c.method, path, r.status, r.body, c.want)
		}
	}
	h.do(t, "GET", path, nil, alice).json(t, &v)
	if len(v.Files) != 1 || v.Files[0].Path != "~/.editorconfig" || v.Files[0].Mode != "0600" {
		t.Fatalf("workspace files: %+v", v)
	}
	// Deleting the workspace takes its files along.
	if r := h.do(t, "DELETE", "/api/workspaces/"+w.ID, nil, alice); r.status != http.StatusNoContent {
		t.Fatalf("delete workspace: %d %s", r.status, r.body)
	}
	if r := h.do(t, "GET", path, nil, alice); r.status != http.StatusNotFound {
		t.Fatalf("files of a deleted workspace: %d %s", r.status, r.body)
	}
	if r := h.do(t, "POST", "/api/sandboxes/abcdefabcdef/config-files/sync", nil, bob); r.status != http.StatusNotFound {
		t.Fatalf("sync of an unknown sandbox: %d %s", r.status, r.body)
	}
}
