package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"atelier/internal/auth"
	"atelier/internal/config"
	"atelier/internal/edge/edgetest"
	"atelier/internal/image/oci"
	"atelier/internal/kubetest"
	"atelier/internal/runtime/kubernetes"
	"atelier/internal/store"
	"atelier/internal/testimage"
)

// kubeStorageClass names the bed's static PersistentVolumes: the bed has no
// dynamic provisioner, so each sandbox's claim binds one the test made.
const kubeStorageClass = "atelier-e2e-static"

// kubeEnv is a production manager with sandbox.runtime kubernetes on a
// private test bed, its sandboxes in a namespace of their own, the test
// image imported into the node's containerd as OCI.
type kubeEnv struct {
	c   *kubetest.Cluster
	ns  string
	f   *fixture // config, state dir and the unix-socket client
	pvs []string
	mu  sync.Mutex
	o   kubeEnvOptions
	// imported is how long the image's export and import took.
	imported time.Duration
}

// kubeEnvOptions choose the image a kubeEnv runs and the size of its disks.
type kubeEnvOptions struct {
	// Ext4 is an Atelier image file to export as dev-base; empty: the test
	// image, built here.
	Ext4 string
	// DiskGB is every sandbox's disk and every volume addVolume makes
	// (default 1).
	DiskGB int
	// PodTimeout bounds a Pod's run, the fill Pod's copy included
	// (default 2 min).
	PodTimeout time.Duration
}

func newKubeEnv(t testing.TB) *kubeEnv { return newKubeEnvWith(t, kubeEnvOptions{}) }

func newKubeEnvWith(t testing.TB, o kubeEnvOptions) *kubeEnv {
	t.Helper()
	o.DiskGB = max(o.DiskGB, 1)
	if o.PodTimeout <= 0 {
		o.PodTimeout = 2 * time.Minute
	}
	begin := time.Now()
	c := kubetest.Start(t)
	t.Logf("test bed up in %v", time.Since(begin).Round(time.Millisecond))
	e := &kubeEnv{c: c, ns: c.Namespace(t), o: o}
	// Registered after the namespace: runs before its deletion, and the
	// volumes outlive their claims (Retain), so they go by name.
	t.Cleanup(func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		for _, pv := range e.pvs {
			err := c.Clientset().CoreV1().PersistentVolumes().Delete(context.Background(), pv, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("delete %s: %v", pv, err)
			}
		}
	})
	dir, err := os.MkdirTemp("", "atlk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	begin = time.Now()
	ctx := context.Background()
	ref := "localhost/atelier-e2e/dev-base:" + strconv.FormatInt(time.Now().UnixNano(), 10)
	if o.Ext4 != "" {
		exportWithCLI(t, c, o.Ext4, ref, dir)
	} else {
		ext4 := filepath.Join(dir, "dev-base.ext4")
		if err := testimage.Build(ctx, ext4, buildAgent(t), 64); err != nil {
			t.Fatal(err)
		}
		exp, err := oci.ExportExt4(ctx, ext4, oci.ExportOptions{ID: "dev-base", WorkDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		tar := filepath.Join(dir, "dev-base.tar")
		err = exp.WriteTar(tar, ref)
		exp.Close()
		if err != nil {
			t.Fatal(err)
		}
		c.ImportImage(t, tar)
		os.Remove(tar)
		os.Remove(ext4)
	}
	e.imported = time.Since(begin)
	t.Logf("image exported and imported as %s in %v", ref, e.imported.Round(time.Millisecond))

	cfg := config.Default()
	cfg.Server.Mode = config.ModeProduction
	cfg.Server.Host = "127.0.0.1"
	cfg.Server.Port = freePort(t)
	cfg.Domain.HTTPPort, cfg.Domain.HTTPSPort = freePort(t), freePort(t)
	cfg.Domain.SSH.Port = freePort(t)
	cfg.Server.DataDir = filepath.Join(dir, "data")
	cfg.Advanced.Server.Verdaccio.Dir = filepath.Join(dir, "registry")
	cfg.Server.SocketPath = filepath.Join(dir, "atelier.sock")
	cfg.Sandbox.Runtime = "kubernetes"
	cfg.Sandbox.StateDir = filepath.Join(dir, "s")
	cfg.Sandbox.LogDir = filepath.Join(dir, "log")
	cfg.Sandbox.Kubernetes.Kubeconfig = c.Kubeconfig()
	cfg.Sandbox.Kubernetes.Namespace = e.ns
	cfg.Sandbox.Kubernetes.StorageClass = kubeStorageClass
	cfg.Sandbox.Kubernetes.DiskGB = o.DiskGB
	cfg.Sandbox.Kubernetes.Images = []string{"dev-base=" + ref}
	cfg.Sandbox.Kubernetes.AllowUnenforcedPolicies = true // the bed's bridge CNI ignores NetworkPolicies
	cfg.Domain.BaseDomain = "atelier.test"
	cfg.Domain.Dashboard = "sandbox.atelier.test"
	cfg.Domain.SSH.Hostname = "ssh.atelier.test"
	cfg.Domain.TLS.Email = "ops@atelier.test"
	cfg.Auth.JWTSecret = strings.Repeat("k", 40)
	cfg.Auth.GitHub.ClientID, cfg.Auth.GitHub.ClientSecret = "id", "secret"
	cfg.Auth.AllowedOrg = "acme"
	cfg.Quotas = config.Quotas{}
	e.f = &fixture{dir: dir, cfg: cfg, uc: unixClient(cfg.Server.SocketPath)}
	return e
}

// start runs the manager in process until the test ends; its driver and
// edge reach Pod IPs through the bed's network namespace.
func (e *kubeEnv) start(t testing.TB) (*Server, func()) {
	t.Helper()
	return e.f.startWith(t, func(o *Options) {
		*o = Options{Log: o.Log, Kubernetes: e.dialInBed}
	})
}

// dialInBed points an in-process manager's driver at Pod IPs in the bed's
// network namespace.
func (e *kubeEnv) dialInBed(o *kubernetes.Options) {
	o.Dial = e.c.DialContext
	o.PodTimeout = e.o.PodTimeout
	o.Poll = 20 * time.Millisecond
}

// addVolume makes one unclaimed hostPath PersistentVolume of the manager's
// storage class, which the next sandbox's claim binds.
func (e *kubeEnv) addVolume(t testing.TB) {
	t.Helper()
	hp := corev1.HostPathDirectoryOrCreate
	name := fmt.Sprintf("pv-%s-%d", e.ns, time.Now().UnixNano())
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{
			StorageClassName:              e.f.cfg.Sandbox.Kubernetes.StorageClass,
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(int64(max(e.o.DiskGB, 1))<<30, resource.BinarySI)},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: t.TempDir(), Type: &hp}},
		},
	}
	if _, err := e.c.Clientset().CoreV1().PersistentVolumes().Create(context.Background(), pv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	e.pvs = append(e.pvs, name)
	e.mu.Unlock()
}

// objects counts the cluster objects labelled with the sandbox's id.
func (e *kubeEnv) objects(t testing.TB, id string) (pods, claims, secrets, policies int) {
	t.Helper()
	ctx := context.Background()
	cs := e.c.Clientset()
	sel := metav1.ListOptions{LabelSelector: kubernetes.Selector(id)}
	p, err1 := cs.CoreV1().Pods(e.ns).List(ctx, sel)
	v, err2 := cs.CoreV1().PersistentVolumeClaims(e.ns).List(ctx, sel)
	s, err3 := cs.CoreV1().Secrets(e.ns).List(ctx, sel)
	n, err4 := cs.NetworkingV1().NetworkPolicies(e.ns).List(ctx, sel)
	for _, err := range []error{err1, err2, err3, err4} {
		if err != nil {
			t.Fatalf("list objects of %s: %v", id, err)
		}
	}
	return len(p.Items), len(v.Items), len(s.Items), len(n.Items)
}

// devUser makes the GitHub user dev (id 11; tests put it on the allow-list)
// with a full-scope API token, and a client of the manager's TCP API acting
// as it.
func devUser(t testing.TB, srv *Server) (store.User, userAPI) {
	t.Helper()
	ctx := context.Background()
	u, err := srv.Store.UpsertGitHubUser(ctx, store.User{GitHubID: 11, Login: "dev"})
	if err != nil {
		t.Fatal(err)
	}
	secret, _, err := srv.Auth.CreateToken(ctx, auth.Principal{User: u, Method: auth.MethodCookie, Scope: auth.ScopeFull}, auth.TokenRequest{Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	return u, userAPI{t: t, base: "http://" + srv.Addr(), secret: secret}
}

// userAPI calls the manager's TCP API with a user's token.
type userAPI struct {
	t      testing.TB
	base   string
	secret string
}

func (u userAPI) call(method, path string, body io.Reader) (int, []byte) {
	u.t.Helper()
	req, _ := http.NewRequest(method, u.base+path, body)
	req.Header.Set("Authorization", "Bearer "+u.secret)
	if method != "GET" && method != "DELETE" && !strings.Contains(path, "/files?") {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		u.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b
}

func (u userAPI) json(method, path, body string) (int, []byte) {
	u.t.Helper()
	return u.call(method, path, strings.NewReader(body))
}

func (u userAPI) exec(id, cmd string) (int, string) {
	u.t.Helper()
	code, b := u.json("POST", "/api/sandboxes/"+id+"/exec", fmt.Sprintf(`{"argv":["sh","-c",%q],"timeoutMs":20000}`, cmd))
	var r struct {
		ExitCode       int
		Stdout, Stderr string
	}
	if code != 200 || json.Unmarshal(b, &r) != nil {
		u.t.Fatalf("exec %q in %s: %d %s", cmd, id, code, b)
	}
	return r.ExitCode, r.Stdout + r.Stderr
}

// TestKubernetesEndToEnd runs the product on a real single-node cluster
// through the Atelier API with sandbox.runtime kubernetes: create from the
// test image (an OCI image in the node's containerd), exec, a terminal, a
// dev server through the edge, SSH through the proxy, stop keeping the disk,
// start finding it, destroy leaving no object labelled with the id.
func TestKubernetesEndToEnd(t *testing.T) {
	e := newKubeEnv(t)
	f := e.f
	certPath, keyPath, pool := edgetest.WildcardCert(t, "atelier.test")
	f.cfg.Domain.TLS.CertPath, f.cfg.Domain.TLS.KeyPath = certPath, keyPath
	// A GitHub user on the allow-list owns the sandbox and the SSH key.
	f.cfg.Auth.AllowedUsers = []string{"dev"}
	echo := buildEcho(t)
	srv, _ := e.start(t)
	ctx := context.Background()
	u, api := devUser(t, srv)

	e.addVolume(t)
	begin := time.Now()
	code, b := api.json("POST", "/api/sandboxes", `{"vcpus":1,"memoryMb":512}`)
	var sb struct {
		ID, Status, IPAddress string
		Timings               map[string]float64
	}
	if json.Unmarshal(b, &sb); code != http.StatusCreated || sb.Status != "running" {
		t.Fatalf("create: %d %s", code, b)
	}
	id := sb.ID
	t.Logf("create -> running on the cluster in %v (steps, ms: %v)", time.Since(begin).Round(time.Millisecond), sb.Timings)
	// The start-up check found the bed's bridge CNI ignoring policies;
	// sandbox.kubernetes.allowUnenforcedPolicies let the create through.
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(time.Second) {
		state, detail := srv.policy.report()
		if state == policyNotEnforced {
			break
		}
		if state != policyChecking || time.Now().After(deadline) {
			t.Fatalf("policy check: %s %s, want %s", state, detail, policyNotEnforced)
		}
	}
	pods, claims, secrets, policies := e.objects(t, id)
	if pods != 1 || claims != 1 || secrets != 1 || policies != 1 {
		t.Fatalf("running sandbox: %d pods, %d claims, %d secrets, %d policies; want one each", pods, claims, secrets, policies)
	}
	pod, err := e.c.Clientset().CoreV1().Pods(e.ns).Get(ctx, kubernetes.PodName(id), metav1.GetOptions{})
	if err != nil || pod.Status.PodIP == "" || pod.Status.PodIP != sb.IPAddress {
		t.Fatalf("pod %v: IP %q, sandbox address %q", err, pod.Status.PodIP, sb.IPAddress)
	}

	// A network peer in the cluster (here the node's namespace) without the
	// manager's client certificate gets no answer from the agent.
	if err := dialAgentWithoutCert(ctx, e.c, pod.Status.PodIP, f.cfg.Advanced.VM.Agent.Port); err == nil {
		t.Fatal("the agent answered a client without the manager's certificate")
	} else {
		t.Logf("agent without a client certificate: %v", err)
	}

	// exec: output and exit code, and a file on the disk for later.
	if code, out := api.exec(id, "echo out; echo err >&2; exit 3"); code != 3 || out != "out\nerr\n" {
		t.Fatalf("exec: %d %q", code, out)
	}
	if code, out := api.exec(id, "echo kept-across-stop > /home/dev/kept.txt && cat /etc/os-release"); code != 0 || !strings.Contains(out, "Atelier test image") {
		t.Fatalf("exec in the image: %d %q", code, out)
	}
	// The guest holds no credential for the cluster's API.
	if code, out := api.exec(id, "if [ -e /var/run/secrets/kubernetes.io/serviceaccount/token ]; then echo mounted; exit 1; fi; echo none"); code != 0 || out != "none\n" {
		t.Fatalf("a service account token in the sandbox: %d %q", code, out)
	}

	// A terminal over WebSocket through the manager's agent proxy.
	code, b = api.json("POST", "/api/sandboxes/"+id+"/terminals", `{"cmd":["sh"],"cols":80,"rows":24}`)
	var term struct{ ID string }
	if json.Unmarshal(b, &term); code >= 300 || term.ID == "" {
		t.Fatalf("create terminal: %d %s", code, b)
	}
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	defer wcancel()
	ws, _, err := websocket.Dial(wctx, "ws://"+srv.Addr()+"/api/sandboxes/"+id+"/terminals/"+term.ID+"/attach",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + api.secret}}})
	if err != nil {
		t.Fatalf("attach terminal: %v", err)
	}
	if err := ws.Write(wctx, websocket.MessageBinary, []byte("echo in-the-p''od\n")); err != nil {
		t.Fatal(err)
	}
	var seen strings.Builder
	for !strings.Contains(seen.String(), "in-the-pod") {
		typ, data, err := ws.Read(wctx)
		if err != nil {
			t.Fatalf("read terminal (saw %q): %v", seen.String(), err)
		}
		if typ == websocket.MessageBinary {
			seen.Write(data)
		}
	}
	ws.Close(websocket.StatusNormalClosure, "")

	// A dev server in the Pod, reached through the real edge by its host.
	if code, b := api.call("PUT", "/api/sandboxes/"+id+"/files?path=/tmp/edgeecho&mode=0755", bytes.NewReader(echo)); code != 200 {
		t.Fatalf("upload echo server: %d %s", code, b)
	}
	if code, b := api.json("POST", "/api/sandboxes/"+id+"/dev/web/start", `{"argv":["/tmp/edgeecho","-addr",":3000"],"port":3000}`); code != 200 {
		t.Fatalf("start dev command: %d %s", code, b)
	}
	if code, b := api.json("POST", "/api/sandboxes/"+id+"/dev/web/expose", `{"default":true}`); code != 200 {
		t.Fatalf("expose: %d %s", code, b)
	}
	br := newBrowser(t, f.cfg.Domain.HTTPSPort, pool)
	host := "dev-" + id + ".atelier.test"
	cookie := br.login(host, edgeSession(t, srv.Store, f.cfg, u.ID))
	var res *http.Response
	var body string
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		// The dev server may still be binding its port.
		res, body = br.get(br.url(host, "/hello"), http.Header{"Cookie": {cookie}})
		if res.StatusCode == 200 || time.Now().After(deadline) {
			break
		}
	}
	if want := "port=3000 host=" + host + ":" + br.port + " path=/hello"; res.StatusCode != 200 || !strings.HasPrefix(body, want) {
		t.Fatalf("dev server through the edge: %d %q, want %q", res.StatusCode, body, want)
	}

	// SSH through the proxy with the OpenSSH client, as the image's user.
	if _, err := exec.LookPath("ssh"); err == nil {
		key, pub := keygen(t, f.dir, "k")
		kb, _ := json.Marshal(map[string]string{"name": "k", "publicKey": pub})
		if code, b := api.json("POST", "/api/ssh-keys", string(kb)); code != http.StatusCreated {
			t.Fatalf("register key: %d %s", code, b)
		}
		port := strconv.Itoa(f.cfg.Domain.SSH.Port)
		out, stderr, status := runSSH(t, port, key, id, `echo "$(id -u) $USER"; cat /home/dev/kept.txt; exit 4`)
		if out != "1000 dev\nkept-across-stop\n" || status != 4 {
			t.Fatalf("ssh into the pod: %q status %d (stderr %q)", out, status, stderr)
		}
	} else {
		t.Log("ssh step not run: no OpenSSH client (apt-get install openssh-client)")
	}

	// Stop: the Pod and its Secret go, the disk stays.
	if code, b := api.json("POST", "/api/sandboxes/"+id+"/stop", ""); code != 200 {
		t.Fatalf("stop: %d %s", code, b)
	}
	if pods, claims, secrets, _ := e.objects(t, id); pods != 0 || claims != 1 || secrets != 0 {
		t.Fatalf("stopped sandbox: %d pods, %d claims, %d secrets; want 0, 1, 0", pods, claims, secrets)
	}
	if res, body := br.get(br.url(host, "/"), http.Header{"Cookie": {cookie}}); res.StatusCode != 503 {
		t.Fatalf("stopped sandbox through the edge: %d %q", res.StatusCode, body)
	}
	// Start: a new Pod on the same disk.
	begin = time.Now()
	if code, b := api.json("POST", "/api/sandboxes/"+id+"/start", ""); code != 200 {
		t.Fatalf("start: %d %s", code, b)
	}
	t.Logf("start -> running in %v", time.Since(begin).Round(time.Millisecond))
	if code, out := api.exec(id, "cat /home/dev/kept.txt"); code != 0 || out != "kept-across-stop\n" {
		t.Fatalf("file written before the stop: %d %q", code, out)
	}

	// Destroy: nothing labelled with the id is left.
	if code, b := api.json("DELETE", "/api/sandboxes/"+id, ""); code != http.StatusNoContent {
		t.Fatalf("destroy: %d %s", code, b)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		pods, claims, secrets, policies := e.objects(t, id)
		if pods+claims+secrets+policies == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after destroy: %d pods, %d claims, %d secrets, %d policies", pods, claims, secrets, policies)
		}
	}
	if res, _ := br.get(br.url(host, "/"), http.Header{"Cookie": {cookie}}); res.StatusCode != 404 {
		t.Fatalf("destroyed sandbox through the edge: %d", res.StatusCode)
	}
}

// edgeSession starts a dashboard session for user and returns its cookie
// value.
func edgeSession(t testing.TB, st *store.Store, cfg *config.Config, user string) string {
	t.Helper()
	now := time.Now()
	sid := "k8s-e2e-" + strconv.FormatInt(now.UnixNano(), 36)
	if err := st.CreateSession(context.Background(), store.Session{ID: sid, UserID: user, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sid": sid, "sub": user, "iss": "atelier", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	})
	s, err := tok.SignedString([]byte(cfg.Auth.JWTSecret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// dialAgentWithoutCert speaks TLS and HTTP to the agent at ip:port from the
// bed's network namespace with no client certificate; the agent must end
// the connection before any answer.
func dialAgentWithoutCert(ctx context.Context, c *kubetest.Cluster, ip string, port int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	raw, err := c.DialContext(ctx, "tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	conn := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
	if err := conn.HandshakeContext(ctx); err != nil {
		return err
	}
	if _, err := io.WriteString(conn, "GET /health HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"); err != nil {
		return err
	}
	b, err := io.ReadAll(conn)
	if err != nil {
		return err
	}
	if len(b) == 0 {
		return errors.New("connection closed without an answer")
	}
	return nil
}
