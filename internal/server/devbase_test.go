package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"atelier/internal/auth"
	"atelier/internal/browsertest"
	"atelier/internal/edge/edgetest"
	"atelier/internal/image/build"
	"atelier/internal/store"
	"atelier/internal/testenv"
)

// EnvDevBase names the dev-base image the end-to-end test boots (.ci/run
// and make dev-base build it with atelier images build).
const EnvDevBase = "ATELIER_TEST_DEVBASE"

// devBaseImage returns the built dev-base image, or skips (fails under
// ATELIER_TEST_STRICT) when there is none.
func devBaseImage(t testing.TB) string {
	t.Helper()
	p := os.Getenv(EnvDevBase)
	if p == "" {
		testenv.Missing(t, "%s is not set (make dev-base builds the image; .ci/run sets it)", EnvDevBase)
	}
	if _, err := os.Stat(p); err != nil {
		testenv.Missing(t, "%s: %v (make dev-base builds it)", EnvDevBase, err)
	}
	return p
}

// useDevBase puts the fixture's state dir on an XFS file system with
// reflinks (as storage/pool sets up a production host) and dev-base there:
// every sandbox's disk is then a reflink of the 3 GB image, made at once,
// rather than a copy.
func (f *fixture) useDevBase(t testing.TB, image string) {
	t.Helper()
	if _, err := exec.LookPath("mkfs.xfs"); err != nil {
		testenv.Missing(t, "requires mkfs.xfs (apt-get install xfsprogs)")
	}
	backing := filepath.Join(f.dir, "pool.xfs")
	sh(t, "truncate", "-s", "24G", backing)
	sh(t, "mkfs.xfs", "-q", "-m", "reflink=1", backing)
	mnt := filepath.Join(f.dir, "x")
	if err := os.Mkdir(mnt, 0o711); err != nil {
		t.Fatal(err)
	}
	sh(t, "mount", "-o", "loop", backing, mnt)
	// After the fixture's sweep, which needs the state dir on this mount to
	// find and stop what a failed test left running; lazy, in case anything
	// still holds it.
	f.afterSweep = append(f.afterSweep, func() { exec.Command("umount", "-l", mnt).Run() })
	if err := os.Chmod(mnt, 0o711); err != nil {
		t.Fatal(err)
	}
	// The state dir is below the mount point, so the leak check (mounts
	// under the state dir) sees the sandboxes' mounts, not the pool's own.
	state := filepath.Join(mnt, "s")
	if err := os.Mkdir(state, 0o711); err != nil {
		t.Fatal(err)
	}
	f.cfg.Sandbox.StateDir = state
	images := filepath.Join(state, "images")
	if err := os.MkdirAll(images, 0o700); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	sh(t, "cp", "--sparse=always", image, filepath.Join(images, "dev-base.ext4"))
	t.Logf("dev-base copied into the pool in %v", time.Since(t0).Round(time.Millisecond))
}

// TestDevBaseEndToEnd boots the real dev-base image in a container sandbox
// of a production manager and uses it as a person would, through the edge
// (TLS, the host login round trip via the dashboard's /auth/edge) in
// headless Chromium: the VS Code workbench renders and its explorer shows
// a file made through the agent; OpenCode's UI loads and its API answers;
// the browser, started on demand, shows Chromium's pixels on the noVNC
// canvas. ssh through the SSH proxy lands as dev in the workdir with node
// and git on the PATH.
func TestDevBaseEndToEnd(t *testing.T) {
	image := devBaseImage(t)
	browsertest.Require(t)
	// The build's own trust store, npm config and resolver stayed out of
	// the image (the host's CA bundle was copied in for the build only).
	if out, err := exec.Command("debugfs", "-R", "ls /tmp", image).CombinedOutput(); err != nil || strings.Contains(string(out), "atelier-build") {
		t.Fatalf("the build's files are in the image's /tmp: %v %s", err, out)
	}
	if out, err := exec.Command("debugfs", "-R", "cat /etc/resolv.conf", image).Output(); err != nil || !strings.Contains(string(out), "written by the Atelier runtime") {
		t.Fatalf("the image's resolv.conf is not the runtime's placeholder: %v %q", err, out)
	}
	f := newFixture(t)
	f.useDevBase(t, image)
	certPath, keyPath, _ := edgetest.WildcardCert(t, "atelier.test")
	f.cfg.Domain.TLS.CertPath, f.cfg.Domain.TLS.KeyPath = certPath, keyPath
	srv := f.start(t)
	began := time.Now()

	code, body := f.call(t, "POST", "/api/sandboxes", `{"vcpus":2,"memoryMb":4096}`)
	var created struct{ ID string }
	if json.Unmarshal(body, &created); code != http.StatusCreated || created.ID == "" {
		t.Fatalf("create: %d %s", code, body)
	}
	id := created.ID
	t.Cleanup(func() { f.call(t, "DELETE", "/api/sandboxes/"+id, "") })
	t.Logf("created in %v", time.Since(began).Round(time.Millisecond))
	until(t, 120*time.Second, "vscode and opencode ready", func() bool {
		v := f.sandboxView(t, id)
		return serviceNamed(v, "vscode").Ready && serviceNamed(v, "opencode").Ready
	})
	t.Logf("vscode and opencode ready %v after the create", time.Since(began).Round(time.Millisecond))

	// A file made through the agent, for VS Code's explorer to show.
	const fileName = "hello-from-atelier.txt"
	req, _ := http.NewRequest("PUT", "http://atelier/api/sandboxes/"+id+"/files?path=/home/dev/workspace/"+fileName+"&mode=0644", strings.NewReader("made through the agent\n"))
	res, err := f.client().Do(req)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("write %s: %v %v", fileName, err, res)
	}
	res.Body.Close()

	if code, st := f.browser(t, "POST", id, "start"); code != 200 {
		t.Fatalf("browser start: %d %+v", code, st)
	}
	until(t, 90*time.Second, "browser running", func() bool {
		_, st := f.browser(t, "GET", id, "")
		return st.State == "running"
	})

	// VNC has no password (websockify in the sandbox is its only client):
	// Xvnc must listen on loopback only, and X on no TCP port.
	until(t, 20*time.Second, "Xvnc listening", func() bool {
		_, out := f.exec(t, id, "ss -Hltn")
		return strings.Contains(out, ":5901")
	})
	_, listening := f.exec(t, id, "ss -Hltn")
	for _, l := range strings.Split(listening, "\n") {
		fl := strings.Fields(l)
		if len(fl) < 4 {
			continue
		}
		local := fl[3]
		if (strings.HasSuffix(local, ":5901") && !strings.HasPrefix(local, "127.0.0.1:") && !strings.HasPrefix(local, "[::1]:")) ||
			strings.HasSuffix(local, ":6001") {
			t.Fatalf("Xvnc reachable beyond loopback: %q\n%s", local, listening)
		}
	}

	session := f.session(t, srv.Store)
	port := strconv.Itoa(f.cfg.Domain.HTTPSPort)
	hostURL := func(kind string) string { return "https://" + kind + "-" + id + ".atelier.test:" + port }
	var got struct {
		Workbench, Explorer bool
		OpenCodeTitle       string
		OpenCodeDoc         int
		OpenAPI             bool
		VNCConnected        bool
		Painted, Samples    int
		Log                 []string
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	err = browsertest.Run(t, ctx, browsertest.Options{
		MapHosts: []string{"*.atelier.test"},
		Timeout:  150 * time.Second,
		Args: map[string]any{
			"vscode": hostURL("sandbox"), "opencode": hostURL("opencode"), "browser": hostURL("browser"),
			"session": session, "file": fileName,
			// A directory to save what Chromium saw, for a person to look at.
			"shots": os.Getenv("ATELIER_TEST_SCREENSHOTS"),
		},
		Script: `
const out = {Log: []};
const t0 = Date.now();
const log = (s) => out.Log.push(((Date.now() - t0) / 1000).toFixed(1) + 's ' + s);
// The dashboard's session: the tool hosts send the browser through its
// /auth/edge and back with a code, for a cookie of their own.
await context.addCookies([{name: '__Host-atelier_session', value: args.session, domain: 'sandbox.atelier.test',
  path: '/', secure: true, httpOnly: true, sameSite: 'Lax'}]);

await page.goto(args.vscode + '/', {waitUntil: 'domcontentloaded'});
await page.waitForSelector('.monaco-workbench', {timeout: 60000});
out.Workbench = true;
log('workbench');
await page.waitForSelector('.explorer-folders-view .monaco-list-row[aria-label*="' + args.file + '"], .explorer-folders-view :text("' + args.file + '")', {timeout: 45000});
out.Explorer = true;
log('explorer shows the file');
if (args.shots) await page.screenshot({path: args.shots + '/devbase-vscode.png'});

await page.goto(args.opencode + '/', {waitUntil: 'domcontentloaded'});
await page.waitForFunction(() => document.body && document.body.innerText.trim().length > 0 || document.querySelector('#root *, #app *'), null, {timeout: 30000});
out.OpenCodeTitle = await page.title();
const doc = await page.evaluate(async () => {
  const r = await fetch('/doc');
  const t = await r.text();
  return {status: r.status, openapi: /"openapi"\s*:/.test(t)};
});
out.OpenCodeDoc = doc.status;
out.OpenAPI = doc.openapi;
log('opencode');
if (args.shots) await page.screenshot({path: args.shots + '/devbase-opencode.png'});

await page.goto(args.browser + '/vnc.html?autoconnect=1&resize=scale', {waitUntil: 'domcontentloaded'});
const deadline = Date.now() + 45000;
while (Date.now() < deadline) {
  const s = await page.evaluate(() => {
    const c = document.querySelector('#noVNC_container canvas, canvas');
    if (!c || !c.width || !c.height) return {connected: false, painted: 0, samples: 0};
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let painted = 0, samples = 0;
    for (let i = 0; i < d.length; i += 4 * 97) {
      samples++;
      if (d[i] + d[i + 1] + d[i + 2] > 600) painted++;
    }
    const status = document.querySelector('#noVNC_status');
    return {connected: document.documentElement.classList.contains('noVNC_connected') || !!(status && /connected/i.test(status.textContent) && !/disconnect/i.test(status.textContent)), painted, samples};
  });
  out.VNCConnected = s.connected;
  out.Painted = s.painted;
  out.Samples = s.samples;
  if (s.connected && s.painted * 2 > s.samples) break;
  await page.waitForTimeout(500);
}
log('novnc');
if (args.shots) await page.screenshot({path: args.shots + '/devbase-novnc.png'});
return out;
`,
	}, &got)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("browser: %+v", got)
	if !got.Workbench || !got.Explorer {
		t.Fatalf("VS Code: workbench %v, explorer shows %s %v", got.Workbench, fileName, got.Explorer)
	}
	if got.OpenCodeDoc != 200 || !got.OpenAPI {
		t.Fatalf("OpenCode's /doc through the edge: %d, OpenAPI %v", got.OpenCodeDoc, got.OpenAPI)
	}
	// Xvnc's root window is black; Chromium, maximized on about:blank,
	// paints most of the screen white.
	if !got.VNCConnected || got.Samples == 0 || got.Painted*2 <= got.Samples {
		t.Fatalf("noVNC: connected %v, %d of %d samples white (want Chromium's page over most of the screen)", got.VNCConnected, got.Painted, got.Samples)
	}

	// ssh through the proxy: the image's user, in its workdir, with its tools.
	key, pub := keygen(t, f.dir, "devbase")
	kb, _ := json.Marshal(map[string]string{"name": "devbase", "publicKey": pub})
	if code, b := f.call(t, "POST", "/api/ssh-keys", string(kb)); code != http.StatusCreated {
		t.Fatalf("register key: %d %s", code, b)
	}
	out, stderr, rc := runSSH(t, strconv.Itoa(f.cfg.Domain.SSH.Port), key, id,
		"id -un; pwd; command -v node git; node --version; git --version; sudo -n id -u")
	t.Logf("ssh: rc %d %q %q", rc, out, stderr)
	lines := strings.Fields(out)
	if rc != 0 || len(lines) < 6 || lines[0] != "dev" || lines[1] != "/home/dev/workspace" ||
		lines[2] != "/usr/local/bin/node" || lines[3] != "/usr/bin/git" || !strings.HasPrefix(lines[4], "v24.") {
		t.Fatalf("ssh landed as %q (rc %d, stderr %q); want dev in /home/dev/workspace with node 24 and git", out, rc, stderr)
	}
	if !strings.HasSuffix(strings.TrimSpace(out), "\n0") && lines[len(lines)-1] != "0" {
		t.Fatalf("dev's passwordless sudo: %q", out)
	}
	t.Logf("end to end in %v", time.Since(began).Round(time.Millisecond))

	if code, b := f.call(t, "DELETE", "/api/sandboxes/"+id, ""); code != http.StatusNoContent {
		t.Fatalf("destroy: %d %s", code, b)
	}
	f.assertNoLeaks(t)
}

// BenchmarkDevBase measures the real dev-base image: from the create
// request to the sandbox's VS Code host answering through the edge with
// the workbench page (TLS and the host login included) over several
// sandboxes; idle RSS per service (code-server, OpenCode, then the browser
// stack on); and the image build's stages, as recorded by the build that
// made the image.
func BenchmarkDevBase(b *testing.B) {
	image := devBaseImage(b)
	f := newFixture(b)
	f.useDevBase(b, image)
	certPath, keyPath, pool := edgetest.WildcardCert(b, "atelier.test")
	f.cfg.Domain.TLS.CertPath, f.cfg.Domain.TLS.KeyPath = certPath, keyPath
	// The shape the creates ask for is the pool's.
	f.cfg.Sandbox.DefaultVcpus, f.cfg.Sandbox.DefaultMemoryMB = 2, 4096
	srv, stop := f.startWith(b, nil)
	br := newBrowser(b, f.cfg.Domain.HTTPSPort, pool)
	// The local user (the unix socket's) owns the sandboxes and signs in.
	if _, err := srv.Store.EnsureUser(context.Background(), store.User{ID: auth.LocalUserID, Login: auth.LocalUserID}); err != nil {
		b.Fatal(err)
	}
	f.session(b, srv.Store)

	const n = 5
	var editor, create, poolEditor, poolCreate []time.Duration
	var rss map[string]float64
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		for i := 0; i < n; i++ {
			c, e, id := f.editorOnce(b, srv, br)
			create, editor = append(create, c), append(editor, e)
			if it == b.N-1 && i == n-1 {
				rss = idleRSS(b, f, id)
			}
			if code, body := f.call(b, "DELETE", "/api/sandboxes/"+id, ""); code != 204 {
				b.Fatalf("destroy: %d %s", code, body)
			}
		}
	}
	// The same with a warm pool of one: each create finds a pooled
	// sandbox booted, its editor answering (the keeper refills the pool
	// between creates, as it would between users).
	b.StopTimer()
	stop()
	f.cfg.Sandbox.Pool.Size = 1
	srv, stop = f.startWith(b, nil)
	b.StartTimer()
	for it := 0; it < b.N; it++ {
		for i := 0; i < n; i++ {
			b.StopTimer()
			pooled := f.awaitPooled(b)
			b.StartTimer()
			c, e, id := f.editorOnce(b, srv, br)
			if id != pooled {
				b.Fatalf("create got %s, not the pooled %s", id, pooled)
			}
			poolCreate, poolEditor = append(poolCreate, c), append(poolEditor, e)
			if code, body := f.call(b, "DELETE", "/api/sandboxes/"+id, ""); code != 204 {
				b.Fatalf("destroy: %d %s", code, body)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(msOf(pct(editor, 0.5)), "editor-p50-ms")
	b.ReportMetric(msOf(pct(editor, 0.99)), "editor-p99-ms")
	b.ReportMetric(msOf(pct(create, 0.5)), "create-p50-ms")
	b.ReportMetric(msOf(pct(poolEditor, 0.5)), "pool-editor-p50-ms")
	b.ReportMetric(msOf(pct(poolEditor, 0.99)), "pool-editor-p99-ms")
	b.ReportMetric(msOf(pct(poolCreate, 0.5)), "pool-create-p50-ms")
	// How many times sooner the editor answers with the pool (p50).
	b.ReportMetric(float64(pct(editor, 0.5))/float64(pct(poolEditor, 0.5)), "pool-speedup-x")
	b.Logf("create -> VS Code through the edge, without pool: %v; with a pool of one: %v", editor, poolEditor)
	names := make([]string, 0, len(rss))
	for k := range rss {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		b.ReportMetric(rss[k], "rss-"+k+"-MB")
	}
	// The build that made the image recorded each stage's time; stages it
	// took from the cache are left out (a cold build has all three).
	if m, err := build.ReadMarker(image); err == nil {
		for _, s := range m.Stages {
			if !s.Cached {
				b.ReportMetric(s.Seconds, "build-"+strings.ReplaceAll(s.Name, "/", "-")+"-s")
			}
		}
		b.ReportMetric(float64(m.Size>>20), "image-MB")
	}
	stop()
	f.cfg.Sandbox.Pool.Size = 0
	f.start(b)
	until(b, 60*time.Second, "pool retired", func() bool { return len(f.listAll(b)) == 0 })
	f.assertNoLeaks(b)
}

// editorOnce creates a sandbox and loads VS Code's workbench through the
// edge (TLS and the host login included) until it answers; it returns the
// create's and the workbench's time from the request, and the sandbox.
func (f *fixture) editorOnce(b testing.TB, srv *Server, br *browser) (create, editor time.Duration, id string) {
	b.Helper()
	t0 := time.Now()
	code, body := f.call(b, "POST", "/api/sandboxes", `{"vcpus":2,"memoryMb":4096}`)
	var v struct{ ID string }
	if json.Unmarshal(body, &v); code != 201 {
		b.Fatalf("create: %d %s", code, body)
	}
	id = v.ID
	create = time.Since(t0)
	host := "sandbox-" + id + ".atelier.test"
	cookie := grant(b, srv, br, host)
	for {
		res, page := br.get(br.url(host, "/"), cookie)
		// code-server sends / to /?folder=<workdir>: follow that
		// one redirect of its own (not the edge's login).
		if loc := res.Header.Get("Location"); res.StatusCode == http.StatusFound && !strings.Contains(loc, "/auth/edge") {
			if u, err := res.Request.URL.Parse(loc); err == nil {
				res, page = br.get(u.String(), cookie)
			}
		}
		if res.StatusCode == 200 && strings.Contains(page, "workbench") {
			break
		}
		if time.Since(t0) > 90*time.Second {
			b.Fatalf("vscode host never answered: %d", res.StatusCode)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return create, time.Since(t0), id
}

// idleRSS waits for the services to settle, then sums the resident memory
// of each service's process group (code-server's and Chromium's helpers
// included); then starts the browser and measures its stack the same way.
func idleRSS(b testing.TB, f *fixture, id string) map[string]float64 {
	b.Helper()
	until(b, 60*time.Second, "opencode ready", func() bool { return serviceNamed(f.sandboxView(b, id), "opencode").Ready })
	time.Sleep(5 * time.Second)
	out := map[string]float64{}
	measure := func(name string) {
		code, body := f.call(b, "GET", "/api/sandboxes/"+id+"/services/"+name, "")
		var st struct{ PID int }
		if json.Unmarshal(body, &st); code != 200 || st.PID == 0 {
			b.Fatalf("service %s: %d %s", name, code, body)
		}
		_, ps := f.exec(b, id, "ps -eo pgid=,rss=")
		var kb float64
		for _, line := range strings.Split(ps, "\n") {
			fl := strings.Fields(line)
			if len(fl) == 2 && fl[0] == strconv.Itoa(st.PID) {
				v, _ := strconv.ParseFloat(fl[1], 64)
				kb += v
			}
		}
		out[name] = kb / 1024
	}
	measure("vscode")
	measure("opencode")
	if code, _ := f.browser(b, "POST", id, "start"); code != 200 {
		b.Fatal("browser start")
	}
	until(b, 60*time.Second, "browser running", func() bool {
		_, st := f.browser(b, "GET", id, "")
		return st.State == "running"
	})
	time.Sleep(5 * time.Second)
	measure("browser")
	b.Logf("idle RSS (MB): %s", fmt.Sprint(out))
	return out
}
