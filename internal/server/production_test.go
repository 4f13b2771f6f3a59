package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"atelier/internal/config"
	"atelier/internal/network"
	"atelier/internal/runtime/container"
	"atelier/internal/testimage"
)

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// hostNetns makes a "host" namespace with an egress route to a "wan"
// namespace, the way the network driver's own tests do, and removes both.
func hostNetns(t *testing.T, prefix string) netns.NsHandle {
	t.Helper()
	host, wan := prefix+"host", prefix+"wan"
	sh(t, "ip", "netns", "add", host)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", host).Run() })
	sh(t, "ip", "netns", "add", wan)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", wan).Run() })
	sh(t, "ip", "-n", host, "link", "set", "lo", "up")
	sh(t, "ip", "-n", host, "link", "add", "wan0", "type", "veth", "peer", "name", "wan1", "netns", wan)
	sh(t, "ip", "-n", host, "addr", "add", "198.51.100.1/24", "dev", "wan0")
	sh(t, "ip", "-n", host, "link", "set", "wan0", "up")
	sh(t, "ip", "-n", wan, "addr", "add", "198.51.100.2/24", "dev", "wan1")
	sh(t, "ip", "-n", wan, "link", "set", "wan1", "up")
	sh(t, "ip", "-n", host, "route", "add", "default", "via", "198.51.100.2")
	h, err := netns.GetFromName(host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// TestContainerSandboxesEndToEnd drives the production manager with real
// runc sandboxes: 20 concurrent creates, exec and files through the agent,
// stop/start keeping the network, and destroy leaving nothing behind.
func TestContainerSandboxesEndToEnd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("requires root: runs runc containers, loop mounts and network namespaces")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("requires runc (apt-get install runc)")
	}
	rb := make([]byte, 3)
	rand.Read(rb)
	prefix := "atlt-" + hex.EncodeToString(rb) + "-"
	hostNS := hostNetns(t, prefix)

	dir, err := os.MkdirTemp("", "atl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	agentBin := filepath.Join(dir, "atelier-agent")
	build := exec.Command("go", "build", "-o", agentBin, "../../cmd/atelier-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}
	cfg := productionConfig(t)
	cfg.Sandbox.Runtime = "container"
	cfg.Sandbox.StateDir = filepath.Join(dir, "s")
	cfg.Sandbox.LogDir = filepath.Join(dir, "log")
	cfg.Setup.Storage.Method = "file"
	if err := os.MkdirAll(filepath.Join(cfg.Sandbox.StateDir, "images"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := testimage.Build(context.Background(), filepath.Join(cfg.Sandbox.StateDir, "images", "dev-base.ext4"), agentBin, 64); err != nil {
		t.Fatal(err)
	}

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := New(ctx, cfg, Options{
		Log: log,
		Network: func(o *network.Options) {
			o.HostNS, o.NetnsPrefix = hostNS, prefix+"sb-"
		},
		Container: func(o *container.Options) { o.CgroupParent = "/" + prefix + "cg" },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(false); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	uc := unixClient(cfg.Server.SocketPath)
	call := func(method, path, body string) (int, []byte) {
		req, _ := http.NewRequest(method, "http://atelier"+path, strings.NewReader(body))
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		res, err := uc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, b
	}
	exe := func(id, cmd string) (int, string) {
		code, b := call("POST", "/api/sandboxes/"+id+"/exec", fmt.Sprintf(`{"argv":["sh","-c",%q],"timeoutMs":10000}`, cmd))
		var r struct {
			ExitCode       int
			Stdout, Stderr string
		}
		if code != 200 || json.Unmarshal(b, &r) != nil {
			t.Fatalf("exec %q in %s: %d %s", cmd, id, code, b)
		}
		return r.ExitCode, r.Stdout + r.Stderr
	}

	// 20 concurrent creates: the default limit.
	ids := make([]string, 20)
	var wg sync.WaitGroup
	start := time.Now()
	errs := make(chan string, 20)
	for i := range ids {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			code, b := call("POST", "/api/sandboxes", `{"vcpus":1,"memoryMb":512}`)
			var v struct{ ID, Status, Error string }
			json.Unmarshal(b, &v)
			if code != 201 || v.Status != "running" {
				errs <- fmt.Sprintf("create %d: %d %s", i, code, b)
			}
			ids[i] = v.ID
		}(i)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("20 concurrent creates ready in %v", time.Since(start))
	if code, b := call("POST", "/api/sandboxes", `{}`); code != 429 {
		t.Fatalf("21st create: %d %s, want 429", code, b)
	}

	id := ids[0]
	if code, out := exe(id, "hostname; id -u; exit 7"); code != 7 || !strings.Contains(out, "sandbox-"+id) {
		t.Fatalf("exec: %d %q", code, out)
	}
	if code, out := exe(id, "ping -c 1 -W 2 172.16.0.1"); code != 0 {
		t.Fatalf("ping gateway before restart: %d %s", code, out)
	}
	if code, b := call("PUT", "/api/sandboxes/"+id+"/files?path=/root/keep.txt&parents=true", "kept across restart"); code >= 300 {
		t.Fatalf("write file: %d %s", code, b)
	}
	// Guests cannot reach each other.
	code, b := call("GET", "/api/sandboxes/"+ids[1], "")
	var other struct{ IPAddress string }
	json.Unmarshal(b, &other)
	if code != 200 || other.IPAddress == "" {
		t.Fatalf("get other: %d %s", code, b)
	}
	if code, _ := exe(id, "ping -c 1 -W 1 "+other.IPAddress); code == 0 {
		t.Fatalf("sandbox reached another sandbox at %s", other.IPAddress)
	}

	// Stop/start keeps networking and the disk.
	if code, b := call("POST", "/api/sandboxes/"+id+"/stop", ""); code != 200 {
		t.Fatalf("stop: %d %s", code, b)
	}
	if code, b := call("POST", "/api/sandboxes/"+id+"/start", ""); code != 200 {
		t.Fatalf("start: %d %s", code, b)
	}
	if code, out := exe(id, "ping -c 1 -W 2 172.16.0.1 && cat /root/keep.txt"); code != 0 || !strings.Contains(out, "kept across restart") {
		t.Fatalf("after restart: %d %s", code, out)
	}

	// A reconciler pass on a healthy host fixes nothing.
	if code, b := call("POST", "/api/system/cleanup", ""); code != 200 || strings.Contains(string(b), ":1") {
		t.Fatalf("cleanup on a healthy host: %d %s", code, b)
	}

	// Destroy everything: nothing may remain.
	for _, id := range ids {
		wg.Add(1)
		go func(id string) {
			defer wg.Done()
			if code, b := call("DELETE", "/api/sandboxes/"+id, ""); code != 204 {
				t.Errorf("destroy %s: %d %s", id, code, b)
			}
		}(id)
	}
	wg.Wait()
	if leases, err := srv.Store.ListLeases(context.Background()); err != nil || len(leases) != 0 {
		t.Errorf("leases left: %v %v", leases, err)
	}
	if n, _ := srv.Store.CountSandboxes(context.Background()); n != 0 {
		t.Errorf("%d sandbox rows left", n)
	}
	assertNothingLeft(t, cfg, prefix)
}

func assertNothingLeft(t *testing.T, cfg *config.Config, prefix string) {
	t.Helper()
	out, _ := exec.Command("runc", "--root", filepath.Join(cfg.Sandbox.StateDir, "runc"), "list", "-q").Output()
	if s := strings.TrimSpace(string(out)); s != "" {
		t.Errorf("runc containers left: %s", s)
	}
	mounts, _ := os.ReadFile("/proc/mounts")
	if strings.Contains(string(mounts), cfg.Sandbox.StateDir) {
		t.Errorf("mounts left under %s", cfg.Sandbox.StateDir)
	}
	loops, _ := exec.Command("losetup", "-a").Output()
	if strings.Contains(string(loops), cfg.Sandbox.StateDir) {
		t.Errorf("loop devices left: %s", loops)
	}
	nsOut, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(nsOut), prefix+"sb-") {
		t.Errorf("sandbox namespaces left: %s", nsOut)
	}
	links, _ := exec.Command("ip", "-n", prefix+"host", "-br", "link").Output()
	if strings.Contains(string(links), "veth") && !strings.Contains(string(links), "wan0") {
		t.Errorf("links left: %s", links)
	}
	for _, l := range strings.Split(string(links), "\n") {
		if strings.HasPrefix(l, "veth") || strings.HasPrefix(l, "tap-") {
			t.Errorf("sandbox link left: %s", l)
		}
	}
	for _, sub := range []string{"overlays", "sockets", "bundles"} {
		ents, _ := os.ReadDir(filepath.Join(cfg.Sandbox.StateDir, sub))
		if len(ents) != 0 {
			t.Errorf("%s left in %s", sub, filepath.Join(cfg.Sandbox.StateDir, sub))
		}
	}
}
