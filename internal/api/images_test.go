package api_test

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"atelier/internal/agent"
	"atelier/internal/auth"
	"atelier/internal/config"
	"atelier/internal/image/catalog"
	"atelier/internal/image/ext4img"
	"atelier/internal/image/manifest"
	"atelier/internal/image/progress"
	"atelier/internal/testenv"
)

// writeImage puts a small ext4 image with a manifest at
// {stateDir}/images/<id>.ext4, where the file driver keeps images.
func writeImage(t *testing.T, stateDir, id string) {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := ext4img.Tool(tool); err != nil {
			testenv.Missing(t, "requires e2fsprogs: %v", err)
		}
	}
	root := t.TempDir()
	m := manifest.Manifest{Schema: manifest.Schema, ID: id, User: "dev", Workdir: "/home/dev",
		Versions: map[string]string{"node": "24.11.0", "code-server": "4.139.1"},
		Services: []manifest.Service{{Name: "vscode", Role: manifest.RoleVSCode, Autostart: true,
			Process: agent.ProcessSpec{Argv: []string{"code-server"}, Port: 8080}}}}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "etc", "atelier"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "atelier", "image.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(stateDir, "images"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := ext4img.Make(context.Background(), root, filepath.Join(stateDir, "images", id+".ext4"), 8<<20, ""); err != nil {
		t.Fatal(err)
	}
}

type imageJSON struct {
	ID           string            `json:"id"`
	SizeBytes    int64             `json:"sizeBytes"`
	Versions     map[string]string `json:"versions"`
	User         string            `json:"user"`
	SandboxCount int               `json:"sandboxCount"`
	UsedBy       []string          `json:"usedBy"`
	Services     []struct {
		Name string `json:"name"`
		Role string `json:"role"`
		Port int    `json:"port"`
	} `json:"services"`
}

// TestImagesAPI: any user lists and reads images (seeing only their own
// sandboxes among the users), only an admin removes one, and not while a
// sandbox uses it.
func TestImagesAPI(t *testing.T) {
	h := newHarness(t, config.ModeProduction, nil)
	writeImage(t, h.srv.Config.Sandbox.StateDir, "dev-base")
	if err := h.srv.Images.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	alice := h.tokenOf(t, "alice", 1, auth.ScopeFull)
	mallory := h.tokenOf(t, "mallory", 2, auth.ScopeFull)
	root := h.tokenOf(t, "root", 9, auth.ScopeAdmin)
	a := h.create2(t, alice)
	m := h.create2(t, mallory)

	list := func(hdr map[string]string) []imageJSON {
		t.Helper()
		r := h.do(t, "GET", "/api/images", nil, hdr)
		if r.status != 200 {
			t.Fatalf("list images: %d %s", r.status, r.body)
		}
		var l struct{ Images []imageJSON }
		r.json(t, &l)
		return l.Images
	}
	got := list(alice)
	if len(got) != 1 {
		t.Fatalf("alice lists %+v", got)
	}
	im := got[0]
	if im.ID != "dev-base" || im.SizeBytes != 8<<20 || im.Versions["code-server"] != "4.139.1" || im.User != "dev" ||
		len(im.Services) != 1 || im.Services[0].Role != "vscode" || im.Services[0].Port != 8080 {
		t.Fatalf("dev-base as listed: %+v", im)
	}
	if im.SandboxCount != 2 || !slices.Equal(im.UsedBy, []string{a.ID}) {
		t.Fatalf("alice sees users %v of %d, want only her own %s of 2", im.UsedBy, im.SandboxCount, a.ID)
	}
	want := []string{a.ID, m.ID}
	slices.Sort(want)
	if got := list(root); !slices.Equal(got[0].UsedBy, want) {
		t.Fatalf("admin sees users %v, want %v", got[0].UsedBy, want)
	}

	var one imageJSON
	r := h.do(t, "GET", "/api/images/dev-base", nil, mallory)
	r.json(t, &one)
	if r.status != 200 || one.ID != "dev-base" || !slices.Equal(one.UsedBy, []string{m.ID}) {
		t.Fatalf("get dev-base: %d %s", r.status, r.body)
	}
	var p problem
	for _, c := range []struct {
		method, path string
		hdr          map[string]string
		want         int
		code         string
	}{
		{"GET", "/api/images/nope", alice, 404, "not_found"},
		{"GET", "/api/images/Bad%20Name", alice, 400, "invalid_input"},
		{"GET", "/api/images", nil, 401, "unauthenticated"},
		{"DELETE", "/api/images/dev-base", alice, 403, "forbidden"},
		{"DELETE", "/api/images/dev-base", root, 409, "image_in_use"},
		{"DELETE", "/api/images/nope", root, 404, "not_found"},
	} {
		r := h.do(t, c.method, c.path, nil, c.hdr)
		r.json(t, &p)
		if r.status != c.want || p.Code != c.code {
			t.Errorf("%s %s: %d %s, want %d %s", c.method, c.path, r.status, r.body, c.want, c.code)
		}
	}
	if _, err := os.Stat(filepath.Join(h.srv.Config.Sandbox.StateDir, "images", "dev-base.ext4")); err != nil {
		t.Fatalf("a refused removal touched the image: %v", err)
	}
	for _, id := range []string{a.ID, m.ID} {
		if r := h.do(t, "DELETE", "/api/sandboxes/"+id, nil, root); r.status != 204 {
			t.Fatalf("destroy %s: %d %s", id, r.status, r.body)
		}
	}
	if r := h.do(t, "DELETE", "/api/images/dev-base", nil, root); r.status != 204 {
		t.Fatalf("remove unused image: %d %s", r.status, r.body)
	}
	if got := list(alice); len(got) != 0 {
		t.Fatalf("after removal: %+v", got)
	}
	if _, err := os.Stat(filepath.Join(h.srv.Config.Sandbox.StateDir, "images", "dev-base.ext4")); !os.IsNotExist(err) {
		t.Fatalf("removed image's file: %v", err)
	}
}

// TestImagesAPIBuilds: a build in progress (its record in the state dir, as
// atelier images build writes it) is in GET /api/images for every user,
// with its stage and stages done but not its pid or any host path; a
// record left by a killed build is not; and a non-admin's event stream
// carries the image.* events.
func TestImagesAPIBuilds(t *testing.T) {
	h := newHarness(t, config.ModeProduction, nil)
	dir := filepath.Join(h.srv.Config.Sandbox.StateDir, "images")
	alice := h.tokenOf(t, "alice", 1, auth.ScopeFull)
	tr := progress.Start(dir, "dev-base", nil)
	tr.Done("dev-base/root", 0, true)
	tr.Stage("dev-base/setup")
	t.Cleanup(func() { tr.Finish(nil) })
	killed := progress.New("dev-cloud")
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	killed.PID = cmd.Process.Pid
	if err := progress.Write(dir, killed); err != nil {
		t.Fatal(err)
	}
	r := h.do(t, "GET", "/api/images", nil, alice)
	if r.status != 200 {
		t.Fatalf("list images: %d %s", r.status, r.body)
	}
	var l struct {
		Builds []struct {
			ID             string  `json:"id"`
			Stage          string  `json:"stage"`
			ElapsedSeconds float64 `json:"elapsedSeconds"`
			Done           []struct {
				Name   string `json:"name"`
				Cached bool   `json:"cached"`
			} `json:"done"`
		} `json:"builds"`
	}
	r.json(t, &l)
	if len(l.Builds) != 1 || l.Builds[0].ID != "dev-base" || l.Builds[0].Stage != "dev-base/setup" ||
		len(l.Builds[0].Done) != 1 || !l.Builds[0].Done[0].Cached || l.Builds[0].ElapsedSeconds < 0 {
		t.Fatalf("builds as listed: %s", r.body)
	}
	if body := string(r.body); strings.Contains(body, "pid") || strings.Contains(body, h.srv.Config.Sandbox.StateDir) {
		t.Fatalf("the listing shows a host detail: %s", body)
	}
	if _, err := os.Stat(progress.Path(dir, "dev-cloud")); !os.IsNotExist(err) {
		t.Fatalf("a killed build's record stays: %v", err)
	}

	req, _ := http.NewRequest("GET", h.ts.URL+"/api/events", nil)
	for k, v := range alice {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if _, err := h.srv.Bus.Publish(context.Background(), catalog.EventBuilt, "", catalog.Build{ID: "dev-base"}); err != nil {
		t.Fatal(err)
	}
	evs := readEvents(t, res.Body, 1, 5*time.Second)
	if evs[0].event != catalog.EventBuilt || !strings.Contains(evs[0].data, `"dev-base"`) {
		t.Fatalf("alice's stream: %+v", evs)
	}
}
