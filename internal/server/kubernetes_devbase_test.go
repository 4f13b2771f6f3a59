package server

import (
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"atelier/internal/edge/edgetest"
	"atelier/internal/kubetest"
	"atelier/internal/runtime/kubernetes"
	"atelier/internal/testenv"
)

// TestKubernetesDevBase runs the real dev-base image (code-server,
// OpenCode, node) as a Pod of the test bed through the Atelier API with
// sandbox.runtime kubernetes: the image exported as OCI into the node's
// containerd, one sandbox created from it (its disk filled by copying the
// image's root), exec as the image's user, code-server's workbench through
// the real edge on the sandbox's host after the host login, OpenCode's API
// through its host, the browser stack on demand, SSH as dev through the
// proxy without privilege escalation, stop and start keeping a file in the
// home directory and bringing the services back, destroy leaving no object
// labelled with the id. One create serves every check: the image is 3 GB.
func TestKubernetesDevBase(t *testing.T) {
	image := devBaseImage(t)
	if _, err := exec.LookPath("ssh"); err != nil {
		testenv.Missing(t, "requires the OpenSSH client (apt-get install openssh-client)")
	}
	// The image's root is 2.7 GiB of files; the disk holds it and what a
	// user adds.
	e := newKubeEnvWith(t, kubeEnvOptions{Ext4: image, DiskGB: 8, PodTimeout: 6 * time.Minute})
	f := e.f
	certPath, keyPath, pool := edgetest.WildcardCert(t, "atelier.test")
	f.cfg.Domain.TLS.CertPath, f.cfg.Domain.TLS.KeyPath = certPath, keyPath
	f.cfg.Auth.AllowedUsers = []string{"dev"}
	srv, _ := e.start(t)
	ctx := context.Background()
	u, api := devUser(t, srv)

	e.addVolume(t)
	fillTimes := watchFill(t, e)
	began := time.Now()
	code, b := api.json("POST", "/api/sandboxes", `{"vcpus":2,"memoryMb":4096}`)
	var sb struct {
		ID, Status string
		Timings    map[string]float64
	}
	if json.Unmarshal(b, &sb); code != http.StatusCreated || sb.Status != "running" {
		t.Fatalf("create: %d %s", code, b)
	}
	id := sb.ID
	running := time.Since(began)
	t.Logf("create -> running in %v (steps, ms: %v)", running.Round(time.Millisecond), sb.Timings)
	t.Cleanup(func() { api.json("DELETE", "/api/sandboxes/"+id, "") })

	// exec as the image's user, with its tools on the login PATH (the
	// login profile goes to the image's workdir).
	execAs := func(user, cmd string) (int, string, string) {
		t.Helper()
		req, _ := json.Marshal(map[string]any{"shell": cmd, "login": true, "user": user, "timeoutMs": 60000})
		code, b := api.json("POST", "/api/sandboxes/"+id+"/exec", string(req))
		var r struct {
			ExitCode       int
			Stdout, Stderr string
		}
		if code != 200 || json.Unmarshal(b, &r) != nil {
			t.Fatalf("exec %q as %s: %d %s", cmd, user, code, b)
		}
		return r.ExitCode, r.Stdout, r.Stderr
	}
	// code-server --version may log a line first (a default config
	// written) while the service starts: its version is the last line.
	rc, out, errOut := execAs("dev", "id -un; id -u; pwd; node --version; code-server --version; echo kept-across-stop > ~/kept.txt")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if rc != 0 || len(lines) < 5 || lines[0] != "dev" || lines[1] != "1000" || lines[2] != "/home/dev/workspace" ||
		!strings.HasPrefix(lines[3], "v24.") || !strings.HasPrefix(lines[len(lines)-1], "4.") {
		t.Fatalf("exec as dev: %d %q (stderr %q); want dev (1000) in its workdir with node 24 and code-server 4", rc, out, errOut)
	}
	t.Logf("exec as dev: %q", out)

	// code-server through the real edge: the sandbox's host, the host
	// login through the dashboard's /auth/edge, the workbench page.
	br := newBrowser(t, f.cfg.Domain.HTTPSPort, pool)
	session := edgeSession(t, srv.Store, f.cfg, u.ID)
	vscode := "sandbox-" + id + ".atelier.test"
	cookie := http.Header{"Cookie": {br.login(vscode, session)}}
	workbench(t, br, vscode, cookie, 3*time.Minute)
	editor := time.Since(began)
	// The agent reports the image's services from the Pod as it does from
	// a container: both autostarted, both ready.
	servicesReady := func() {
		t.Helper()
		until(t, 2*time.Minute, "vscode and opencode ready", func() bool {
			code, b := api.json("GET", "/api/sandboxes/"+id, "")
			var v sbView
			if code != 200 || json.Unmarshal(b, &v) != nil {
				t.Fatalf("get %s: %d %s", id, code, b)
			}
			return serviceNamed(v, "vscode").Ready && serviceNamed(v, "opencode").Ready
		})
	}
	servicesReady()
	// OpenCode's API through its host.
	oc := "opencode-" + id + ".atelier.test"
	ocCookie := http.Header{"Cookie": {br.login(oc, session)}}
	if res, doc := br.get(br.url(oc, "/doc"), ocCookie); res.StatusCode != 200 || !strings.Contains(doc, `"openapi"`) {
		t.Fatalf("OpenCode's /doc through the edge: %d %.300q", res.StatusCode, doc)
	}

	// The browser stack (Xvnc, Chromium, noVNC) on demand, its noVNC page
	// through its host.
	browserBegan := time.Now()
	if code, b := api.json("POST", "/api/sandboxes/"+id+"/browser/start", ""); code != 200 {
		t.Fatalf("browser start: %d %s", code, b)
	}
	until(t, 2*time.Minute, "browser running", func() bool {
		_, b := api.json("GET", "/api/sandboxes/"+id+"/browser", "")
		var st browserState
		json.Unmarshal(b, &st)
		if st.State == "failed" {
			t.Fatalf("browser: %s", b)
		}
		return st.State == "running"
	})
	browserTook := time.Since(browserBegan)
	bh := "browser-" + id + ".atelier.test"
	if res, page := br.get(br.url(bh, "/vnc.html"), http.Header{"Cookie": {br.login(bh, session)}}); res.StatusCode != 200 || !strings.Contains(page, "noVNC") {
		t.Fatalf("noVNC through the edge: %d %.300q", res.StatusCode, page)
	}

	// SSH as dev through the proxy, in the image's workdir; no sudo: the
	// Pod runs without privilege escalation.
	key, pub := keygen(t, f.dir, "k")
	kb, _ := json.Marshal(map[string]string{"name": "k", "publicKey": pub})
	if code, b := api.json("POST", "/api/ssh-keys", string(kb)); code != http.StatusCreated {
		t.Fatalf("register key: %d %s", code, b)
	}
	port := strconv.Itoa(f.cfg.Domain.SSH.Port)
	out, stderr, status := runSSH(t, port, key, id, `id -un; pwd; cat ~/kept.txt; node --version; grep NoNewPrivs /proc/self/status; sudo -n true 2>/dev/null || echo no-sudo; exit 4`)
	if l := strings.Split(out, "\n"); status != 4 || len(l) < 6 || l[0] != "dev" || l[1] != "/home/dev/workspace" ||
		l[2] != "kept-across-stop" || !strings.HasPrefix(l[3], "v24.") || strings.Join(strings.Fields(l[4]), " ") != "NoNewPrivs: 1" || l[5] != "no-sudo" {
		t.Fatalf("ssh as dev: %q status %d (stderr %q)", out, status, stderr)
	}

	// Stop, start: the home directory is on the disk.
	if code, b := api.json("POST", "/api/sandboxes/"+id+"/stop", ""); code != 200 {
		t.Fatalf("stop: %d %s", code, b)
	}
	if pods, claims, secrets, _ := e.objects(t, id); pods != 0 || claims != 1 || secrets != 0 {
		t.Fatalf("stopped sandbox: %d pods, %d claims, %d secrets; want 0, 1, 0", pods, claims, secrets)
	}
	restarted := time.Now()
	if code, b := api.json("POST", "/api/sandboxes/"+id+"/start", ""); code != 200 {
		t.Fatalf("start: %d %s", code, b)
	}
	startTook := time.Since(restarted)
	if rc, out, errOut := execAs("dev", "cat ~/kept.txt"); rc != 0 || out != "kept-across-stop\n" {
		t.Fatalf("file in the home directory after stop and start: %d %q %q", rc, out, errOut)
	}
	// The services come back (their desired state is on the disk's /var),
	// and the edge reaches code-server at the new Pod's address.
	servicesReady()
	workbench(t, br, vscode, cookie, 2*time.Minute)
	restartedEditor := time.Since(restarted)
	pod, err := e.c.Clientset().CoreV1().Pods(e.ns).Get(ctx, kubernetes.PodName(id), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sc := pod.Spec.Containers[0].SecurityContext; sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Fatalf("the sandbox's Pod allows privilege escalation: %+v", sc)
	}

	// Destroy: nothing labelled with the id is left.
	if code, b := api.json("DELETE", "/api/sandboxes/"+id, ""); code != http.StatusNoContent {
		t.Fatalf("destroy: %d %s", code, b)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		pods, claims, secrets, policies := e.objects(t, id)
		if pods+claims+secrets+policies == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after destroy: %d pods, %d claims, %d secrets, %d policies", pods, claims, secrets, policies)
		}
	}
	fill := fillTimes()
	t.Logf("dev-base on the cluster: export+import %v, create -> running %v (volume step %.1fs: fill Pod created -> copying %v, the copy %v), create -> code-server through the edge %v, browser start %v, start %v (code-server through the edge %v after it)",
		e.imported.Round(time.Millisecond), running.Round(time.Millisecond), sb.Timings["volume"]/1000,
		fill.toStart, fill.copy, editor.Round(time.Millisecond), browserTook.Round(time.Millisecond), startTook.Round(time.Millisecond), restartedEditor.Round(time.Millisecond))
}

// workbench loads code-server's page on host through the edge with the
// host's cookie until it is the workbench.
func workbench(t *testing.T, br *browser, host string, cookie http.Header, within time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(within); ; time.Sleep(100 * time.Millisecond) {
		res, page := br.get(br.url(host, "/"), cookie)
		// code-server sends / to /?folder=<workdir>: follow that redirect
		// of its own (not the edge's login).
		if loc := res.Header.Get("Location"); res.StatusCode == http.StatusFound && !strings.Contains(loc, "/auth/edge") {
			if u, err := res.Request.URL.Parse(loc); err == nil {
				res, page = br.get(u.String(), cookie)
			}
		}
		if res.StatusCode == 200 && strings.Contains(page, "workbench") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("code-server through the edge: %d %.300q", res.StatusCode, page)
		}
	}
}

// fillTimes are the fill Pod's: from its creation to its container's start
// (scheduling, the claim's mount, the container), and the copy itself.
// The container's times are in whole seconds.
type fillTimes struct{ toStart, copy time.Duration }

// watchFill follows the namespace's fill Pods until the test ends; the
// function it returns is the last one's times, read before the driver
// deletes it.
func watchFill(t *testing.T, e *kubeEnv) func() fillTimes {
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var got fillTimes
	done := make(chan struct{})
	go func() {
		defer close(done)
		sel := metav1.ListOptions{LabelSelector: kubernetes.LabelRole + "=" + kubernetes.RoleFill}
		for ctx.Err() == nil {
			pods, err := e.c.Clientset().CoreV1().Pods(e.ns).List(ctx, sel)
			if err == nil {
				for _, p := range pods.Items {
					for _, cs := range p.Status.ContainerStatuses {
						if tm := cs.State.Terminated; tm != nil {
							mu.Lock()
							got = fillTimes{toStart: tm.StartedAt.Sub(p.CreationTimestamp.Time), copy: tm.FinishedAt.Sub(tm.StartedAt.Time)}
							mu.Unlock()
						}
					}
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return func() fillTimes {
		mu.Lock()
		defer mu.Unlock()
		return got
	}
}

// exportWithCLI exports the ext4 image as ref into the bed's containerd
// with the operator's command (atelier images export --containerd-import:
// oci.ExportExt4, WriteTar, ctr images import), built without the race
// detector: under -race compressing the dev image's 3 GB in the test
// binary takes ten times as long.
func exportWithCLI(t testing.TB, c *kubetest.Cluster, ext4, ref, dir string) {
	t.Helper()
	bin := filepath.Join(dir, "atelier")
	build := exec.Command("go", "build", "-o", bin, "../../cmd/atelier")
	began := time.Now()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build atelier: %v\n%s", err, out)
	}
	t.Logf("atelier built in %v", time.Since(began).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "images", "export", ext4, "--containerd-import",
		"--containerd-address", c.ContainerdAddress(), "--tag", ref, "--work-dir", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("atelier images export: %v\n%s", err, out)
	}
	t.Logf("atelier images export: %s", strings.TrimSpace(string(out)))
}
