package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"atelier/internal/edge/edgetest"
	"atelier/internal/testimage"
)

// servicesImage is the test image with testimage.ServicesManifest: busybox
// stand-ins for VS Code and OpenCode at boot and an on-demand browser. It
// is installed beside dev-base as "svc".
const servicesImage = "svc"

func (f *fixture) buildServicesImage(t testing.TB) {
	t.Helper()
	out := filepath.Join(f.cfg.Sandbox.StateDir, "images", servicesImage+".ext4")
	if err := testimage.Build(context.Background(), out, buildAgent(t), 0); err != nil {
		t.Fatal(err)
	}
	if err := testimage.InstallManifest(context.Background(), out, testimage.ServicesManifest()); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) createFrom(t testing.TB, image string) (string, int, []byte) {
	t.Helper()
	code, b := f.call(t, "POST", "/api/sandboxes", `{"vcpus":1,"memoryMb":512,"image":"`+image+`"}`)
	var v struct{ ID string }
	json.Unmarshal(b, &v)
	return v.ID, code, b
}

type svcState struct {
	Name, Role, State, LastError string
	Port                         int
	Ready, Wanted                bool
}

type sbView struct {
	ID, Status, IPAddress string
	Services              []svcState
}

func (f *fixture) sandboxView(t testing.TB, id string) sbView {
	t.Helper()
	code, b := f.call(t, "GET", "/api/sandboxes/"+id, "")
	var v sbView
	if code != 200 || json.Unmarshal(b, &v) != nil {
		t.Fatalf("get %s: %d %s", id, code, b)
	}
	return v
}

func serviceNamed(v sbView, name string) svcState {
	for _, s := range v.Services {
		if s.Name == name {
			return s
		}
	}
	return svcState{}
}

// until polls cond every 50 ms for up to d.
func until(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type browserState struct {
	State, URL string
	Service    svcState
}

func (f *fixture) browser(t testing.TB, method, id, action string) (int, browserState) {
	t.Helper()
	path := "/api/sandboxes/" + id + "/browser"
	if action != "" {
		path += "/" + action
	}
	code, b := f.call(t, method, path, "")
	var st browserState
	json.Unmarshal(b, &st)
	if code != 200 {
		t.Logf("%s %s: %d %s", method, path, code, b)
	}
	return code, st
}

// TestImageServicesEndToEnd: a container sandbox of an image with a
// manifest runs its services at boot as the image's user, shows them in
// its status and events, restarts them by policy, keeps them across an
// agent restart and a sandbox stop/start, starts and stops the browser on
// demand through the API, and the edge's starting page says which service
// a tool host waits for.
func TestImageServicesEndToEnd(t *testing.T) {
	f := newFixture(t)
	certPath, keyPath, pool := edgetest.WildcardCert(t, "atelier.test")
	f.cfg.Domain.TLS.CertPath, f.cfg.Domain.TLS.KeyPath = certPath, keyPath
	f.buildServicesImage(t)
	srv, stopManager := f.startWith(t, nil)
	b := newBrowser(t, f.cfg.Domain.HTTPSPort, pool)

	id, code, body := f.createFrom(t, servicesImage)
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, body)
	}
	// The create's answer already lists the image's services.
	var created sbView
	json.Unmarshal(body, &created)
	if s := serviceNamed(created, "vscode"); s.Role != "vscode" || !s.Wanted || s.Port != 8080 || s.State != "running" {
		t.Fatalf("vscode in the create's answer: %+v (%s)", s, body)
	}
	if s := serviceNamed(created, "browser"); s.Role != "browser" || s.Wanted || s.State != "stopped" {
		t.Fatalf("browser in the create's answer: %+v", s)
	}
	until(t, 15*time.Second, "vscode and opencode ready", func() bool {
		v := f.sandboxView(t, id)
		return serviceNamed(v, "vscode").Ready && serviceNamed(v, "opencode").Ready
	})
	// Events carry the states too: the update that says vscode is ready.
	if !eventWith(t, f, id, `"name":"vscode","role":"vscode","state":"running","port":8080,"ready":true`) {
		t.Fatal("no sandbox.updated event showed vscode ready")
	}

	// The services run as the image's user, not root.
	code, b2 := f.call(t, "GET", "/api/sandboxes/"+id+"/services/vscode", "")
	var vs struct{ PID int }
	if json.Unmarshal(b2, &vs); code != 200 || vs.PID == 0 {
		t.Fatalf("vscode status: %d %s", code, b2)
	}
	if _, out := f.exec(t, id, fmt.Sprintf("grep ^Uid: /proc/%d/status", vs.PID)); !strings.Contains(out, "\t1000\t") {
		t.Fatalf("vscode's uid: %q, want dev (1000)", out)
	}

	session := f.session(t, srv.Store)
	host := func(kind string) string { return kind + "-" + id + ".atelier.test" }
	vscode, opencode, browser := host("sandbox"), host("opencode"), host("browser")
	cookies := map[string]http.Header{}
	for _, h := range []string{vscode, opencode, browser} {
		cookies[h] = http.Header{"Cookie": {b.login(h, session)}}
	}
	answers := func(h, want string) bool {
		res, body := b.get(b.url(h, "/"), cookies[h])
		return res.StatusCode == 200 && strings.TrimSpace(body) == want
	}
	if !answers(vscode, "vscode") || !answers(opencode, "opencode") {
		t.Fatal("the tool hosts do not reach their services")
	}
	// The browser is off: its host says so at once, with a link to the
	// dashboard (no form: that would be a cross-origin write).
	begin := time.Now()
	res, page := b.get(b.url(browser, "/"), cookies[browser])
	if res.StatusCode != 503 || !strings.Contains(page, "The browser is off") || !strings.Contains(page, "/sandboxes/"+id+"#browser") || strings.Contains(page, "<form") {
		t.Fatalf("browser host while off: %d %q", res.StatusCode, page)
	}
	if took := time.Since(begin); took > 1500*time.Millisecond {
		t.Fatalf("the off page waited %v", took)
	}
	if code, st := f.browser(t, "GET", id, ""); code != 200 || st.State != "off" || st.URL != b.url(browser, "") {
		t.Fatalf("browser before start: %d %+v", code, st)
	}

	// Restart policy: a killed service comes back.
	f.exec(t, id, fmt.Sprintf("kill -9 %d", vs.PID))
	until(t, 15*time.Second, "vscode restarted", func() bool {
		code, b := f.call(t, "GET", "/api/sandboxes/"+id+"/services/vscode", "")
		var st struct {
			Restarts int
			Ready    bool
		}
		return code == 200 && json.Unmarshal(b, &st) == nil && st.Restarts == 1 && st.Ready
	})
	if !answers(vscode, "vscode") {
		t.Fatal("vscode does not answer after its restart")
	}

	// The browser on demand.
	if code, st := f.browser(t, "POST", id, "start"); code != 200 || (st.State != "starting" && st.State != "running") || !st.Service.Wanted {
		t.Fatalf("browser start: %d %+v", code, st)
	}
	until(t, 15*time.Second, "browser running", func() bool {
		_, st := f.browser(t, "GET", id, "")
		return st.State == "running"
	})
	until(t, 10*time.Second, "browser host answering", func() bool { return answers(browser, "browser") })

	// An agent restart (the agent killed; init starts it again) restores
	// what is wanted, after ending what the dead agent left running.
	killAgent(t, f, id)
	until(t, 20*time.Second, "agent and services back", func() bool {
		code, _ := f.call(t, "GET", "/api/sandboxes/"+id+"/health", "")
		if code != 200 {
			return false
		}
		v := f.sandboxView(t, id)
		return serviceNamed(v, "browser").Ready && serviceNamed(v, "vscode").Ready
	})
	if !answers(browser, "browser") || !answers(vscode, "vscode") {
		t.Fatal("services do not answer after the agent's restart")
	}
	// What the dead agent left running was ended, not left holding the
	// port while the new browser fails to bind it.
	time.Sleep(time.Second)
	code, b3 := f.call(t, "GET", "/api/sandboxes/"+id+"/services/browser", "")
	var bs struct{ Restarts int }
	if json.Unmarshal(b3, &bs); code != 200 || bs.Restarts != 0 {
		t.Fatalf("browser after the agent's restart: %d %s", code, b3)
	}
	if _, out := f.exec(t, id, "ps | grep -c 'dev  *sleep 86400'"); strings.TrimSpace(out) != "1" {
		_, ps := f.exec(t, id, "ps")
		t.Fatalf("browser stacks after the agent's restart: %q, want 1\n%s", out, ps)
	}

	// A stop and start of the sandbox restores them too.
	stopStart(t, f, id)
	until(t, 20*time.Second, "services back after stop/start", func() bool {
		v := f.sandboxView(t, id)
		return serviceNamed(v, "browser").Ready && serviceNamed(v, "vscode").Ready && serviceNamed(v, "opencode").Ready
	})
	until(t, 10*time.Second, "browser host answering after stop/start", func() bool { return answers(browser, "browser") })

	// Stopped: off, and its host says so.
	if code, st := f.browser(t, "POST", id, "stop"); code != 200 || st.State != "off" || st.Service.Wanted {
		t.Fatalf("browser stop: %d %+v", code, st)
	}
	until(t, 10*time.Second, "browser host off", func() bool {
		res, page := b.get(b.url(browser, "/"), cookies[browser])
		return res.StatusCode == 503 && strings.Contains(page, "The browser is off")
	})
	// ...and stays off across a stop and start. A stopped sandbox has no
	// browser to look at: 409.
	if code, b := f.call(t, "POST", "/api/sandboxes/"+id+"/stop", ""); code != 200 {
		t.Fatalf("stop: %d %s", code, b)
	}
	if code, b := f.call(t, "GET", "/api/sandboxes/"+id+"/browser", ""); code != 409 || !strings.Contains(string(b), "stopped") {
		t.Fatalf("browser of a stopped sandbox: %d %s", code, b)
	}
	if code, b := f.call(t, "POST", "/api/sandboxes/"+id+"/start", ""); code != 200 {
		t.Fatalf("start: %d %s", code, b)
	}
	until(t, 20*time.Second, "vscode back", func() bool { return serviceNamed(f.sandboxView(t, id), "vscode").Ready })
	if s := serviceNamed(f.sandboxView(t, id), "browser"); s.State != "stopped" || s.Wanted {
		t.Fatalf("browser after stop/start: %+v", s)
	}

	// While VS Code is stopped its host names it.
	if code, b := f.call(t, "POST", "/api/sandboxes/"+id+"/services/vscode/stop", ""); code != 200 {
		t.Fatalf("stop vscode: %d %s", code, b)
	}
	until(t, 10*time.Second, "vscode host says stopped", func() bool {
		res, page := b.get(b.url(vscode, "/"), cookies[vscode])
		return res.StatusCode == 503 && strings.Contains(page, "VS Code is stopped")
	})
	if code, b := f.call(t, "POST", "/api/sandboxes/"+id+"/services/vscode/start", ""); code != 200 {
		t.Fatalf("start vscode: %d %s", code, b)
	}
	until(t, 10*time.Second, "vscode answering again", func() bool { return answers(vscode, "vscode") })

	// A changed advanced.vm.vscode.port takes effect at the manager's
	// restart: the edge routes the host to the new port and the running
	// guest's service moves there.
	stopManager()
	f.cfg.Advanced.VM.VSCode.Port = 8081
	srv, _ = f.startWith(t, nil)
	until(t, 15*time.Second, "vscode on the new port", func() bool {
		s := serviceNamed(f.sandboxView(t, id), "vscode")
		return s.Port == 8081 && s.Ready && answers(vscode, "vscode")
	})

	// The tools' own auth is off because the edge authenticates; a
	// co-tenant's guest cannot go around the edge to the port.
	other, code, body := f.create(t)
	if code != http.StatusCreated {
		t.Fatalf("create a second sandbox: %d %s", code, body)
	}
	ip := f.sandboxView(t, id).IPAddress
	get := func(ip string) string { return `printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 ` + ip + ` 8081` }
	if rc, out := f.exec(t, id, get("127.0.0.1")+"; "+get(ip)); strings.Count(out, "vscode") != 2 {
		t.Fatalf("vscode inside its own sandbox: %d %q", rc, out)
	}
	if rc, out := f.exec(t, other, get(ip)); rc == 0 || strings.Contains(out, "vscode") {
		t.Fatalf("a neighbour guest reached vscode directly: %d %q", rc, out)
	}
	for _, x := range []string{id, other} {
		if code, b := f.call(t, "DELETE", "/api/sandboxes/"+x, ""); code != http.StatusNoContent {
			t.Fatalf("destroy: %d %s", code, b)
		}
	}
	f.assertNoLeaks(t)
}

func stopStart(t testing.TB, f *fixture, id string) {
	t.Helper()
	for _, a := range []string{"stop", "start"} {
		if code, b := f.call(t, "POST", "/api/sandboxes/"+id+"/"+a, ""); code != 200 {
			t.Fatalf("%s: %d %s", a, code, b)
		}
	}
}

// killAgent SIGKILLs the sandbox's agent (the exec's parent); its init
// starts a new one.
func killAgent(t testing.TB, f *fixture, id string) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://atelier/api/sandboxes/"+id+"/exec", strings.NewReader(`{"argv":["sh","-c","kill -9 $PPID"]}`))
	req.Header.Set("Content-Type", "application/json")
	if res, err := f.client().Do(req); err == nil {
		res.Body.Close()
	}
}

// eventWith reads the event stream from the start for up to 5 s and
// reports whether an event of sandbox id contains want.
func eventWith(t testing.TB, f *fixture, id, want string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://atelier/api/events?since=0", nil)
	res, err := f.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "data:") && strings.Contains(line, id) && strings.Contains(line, want) {
			return true
		}
	}
	return false
}
