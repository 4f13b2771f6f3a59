package server

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"atelier/internal/registry"
	"atelier/internal/registry/registrytest"
)

// startWithRegistry is fixture.start with the npm cache run inside the
// fixture's host namespace (where the bridge is) with a test uplink. It
// returns the function that stops the manager.
func (f *fixture) startWithRegistry(t *testing.T, tune func(*registry.Options)) (*Server, func()) {
	t.Helper()
	return f.startWith(t, func(o *Options) { o.Registry = tune })
}

type registryStatus struct {
	Enabled       bool
	Online        bool
	URL           string
	PackageCount  int
	DiskUsedBytes int64
	Uplink        struct {
		URL     string
		Healthy bool
	}
	EvictionDays int
}

// TestRegistryEndToEnd drives the shared npm cache with real Verdaccio and
// real container sandboxes: enable, install through the cache from a
// sandbox's namespace with the config the sandbox was given, install again
// from a second sandbox with the uplink gone, check the isolation, disable.
func TestRegistryEndToEnd(t *testing.T) {
	app := registrytest.VerdaccioDir(t)
	user := registrytest.UserName(t)
	f := newFixture(t)
	// The registry dir is the fixture's; Verdaccio's user must reach it.
	if err := os.Chmod(f.dir, 0o711); err != nil {
		t.Fatal(err)
	}
	hostNS := "/var/run/netns/" + f.prefix + "host"
	up := registrytest.StartUplink(t, hostNS)
	// What a compromised Verdaccio would look for in its environment.
	t.Setenv("ATELIER_JWT_SECRET", f.cfg.Auth.JWTSecret)
	_, stop := f.startWithRegistry(t, func(o *registry.Options) {
		o.AppDir, o.NetnsPath, o.Uplink, o.User = app, hostNS, up.URL, user
	})
	storage := filepath.Join(f.cfg.Advanced.Server.Verdaccio.Dir, "storage")
	const url = "http://172.16.0.1:4873/"
	ctx := context.Background()

	create := func() string {
		t.Helper()
		id, code, b := f.create(t)
		if code != 201 {
			t.Fatalf("create: %d %s", code, b)
		}
		return id
	}
	status := func() registryStatus {
		t.Helper()
		code, b := f.call(t, "GET", "/api/registry", "")
		var st registryStatus
		if code != 200 || json.Unmarshal(b, &st) != nil {
			t.Fatalf("GET /api/registry: %d %s", code, b)
		}
		return st
	}
	configs := []string{"/etc/npmrc", "/root/.npmrc", "/root/.bunfig.toml", "/root/.yarnrc.yml",
		"/home/dev/.npmrc", "/home/dev/.bunfig.toml", "/home/dev/.yarnrc.yml"}
	checkConfigs := func(id string) {
		t.Helper()
		for _, p := range configs {
			code, out := f.exec(t, id, "cat "+p)
			if code != 0 || !strings.Contains(out, url) || !strings.HasPrefix(out, registry.Marker) {
				t.Errorf("sandbox %s: %s: %d %q", id, p, code, out)
			}
		}
		if code, out := f.exec(t, id, "ls -ln /home/dev/.npmrc"); code != 0 || !strings.Contains(out, " 1000 ") {
			t.Errorf("sandbox %s: /home/dev/.npmrc is not the dev user's: %q", id, out)
		}
		if _, out := f.exec(t, id, "cat /root/.yarnrc.yml"); !strings.Contains(out, "unsafeHttpWhitelist:\n  - \"172.16.0.1\"") {
			t.Errorf("sandbox %s: yarn config does not whitelist the registry: %q", id, out)
		}
	}
	// npmInstall runs npm in the sandbox's namespace with the .npmrc the
	// sandbox was given (the test image has no node).
	npmInstall := func(id string, pkgs ...string) string {
		t.Helper()
		code, npmrc := f.exec(t, id, "cat /root/.npmrc")
		if code != 0 {
			t.Fatalf("read the injected .npmrc: %q", npmrc)
		}
		tmp := t.TempDir()
		userconfig := filepath.Join(tmp, "npmrc")
		if err := os.WriteFile(userconfig, []byte(npmrc), 0o644); err != nil {
			t.Fatal(err)
		}
		prefix := filepath.Join(tmp, "project")
		if err := registrytest.NpmInstall(ctx, f.prefix+"sb-"+id, userconfig, prefix, pkgs...); err != nil {
			t.Fatal(err)
		}
		return prefix
	}

	if st := status(); st.Enabled || st.Online || st.URL != url {
		t.Fatalf("before enable: %+v", st)
	}
	id1 := create()
	if code, out := f.exec(t, id1, "ls /root/.npmrc /etc/npmrc"); code == 0 {
		t.Fatalf("configs before enable: %s", out)
	}

	code, b := f.call(t, "POST", "/api/registry/enable", "")
	var st registryStatus
	if code != 200 || json.Unmarshal(b, &st) != nil || !st.Enabled || !st.Online {
		t.Fatalf("enable: %d %s", code, b)
	}
	// The enabled cache is part of readiness, and it is up.
	if code, b := f.call(t, "GET", "/health/ready", ""); code != 200 || !strings.Contains(string(b), `"registry":"ok"`) {
		t.Fatalf("ready with the cache enabled: %d %s", code, b)
	}
	checkConfigs(id1) // running at enable time

	// Verdaccio runs as its own user, without the manager's secrets, and
	// cannot enter the manager's data dir.
	b, _ = os.ReadFile(filepath.Join(f.cfg.Advanced.Server.Verdaccio.Dir, "verdaccio.pid"))
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("verdaccio.pid: %q %v", b, err)
	}
	procStatus, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if uid := procField(string(procStatus), "Uid"); uid == "" || strings.HasPrefix(uid, "0\t") {
		t.Errorf("verdaccio runs with Uid %q, want its own user", uid)
	}
	if env, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ"); len(env) == 0 || strings.Contains(string(env), f.cfg.Auth.JWTSecret) {
		t.Errorf("verdaccio's environment is unreadable or holds the manager's JWT secret")
	}
	if fi, err := os.Stat(f.cfg.Server.DataDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir %v %v, want 0700", fi.Mode(), err)
	}

	// Through the cache, from the first sandbox.
	prefix := npmInstall(id1, "is-number")
	if _, err := os.Stat(filepath.Join(prefix, "node_modules", "is-number", "package.json")); err != nil {
		t.Fatalf("is-number not installed: %v", err)
	}
	tarballs, _ := filepath.Glob(filepath.Join(storage, "is-number", "is-number-*.tgz"))
	if len(tarballs) != 1 {
		t.Fatalf("is-number tarball in the cache's storage: %v", tarballs)
	}
	if up.Requests() == 0 {
		t.Fatal("the uplink saw no request: the install did not go through the cache")
	}

	// The uplink is gone; a sandbox created now still installs, from the cache.
	up.Close()
	id2 := create()
	checkConfigs(id2) // created after enable: the start hook wrote them
	prefix = npmInstall(id2, "is-number")
	if _, err := os.Stat(filepath.Join(prefix, "node_modules", "is-number", "package.json")); err != nil {
		t.Fatalf("is-number not installed from the cache: %v", err)
	}

	st = status()
	if !st.Enabled || !st.Online || st.PackageCount < 1 || st.DiskUsedBytes <= 0 || st.Uplink.URL != up.URL || st.Uplink.Healthy || st.EvictionDays != registry.DefaultEvictionDays {
		t.Errorf("status with the uplink down: %+v", st)
	}

	t.Run("settings", func(t *testing.T) {
		for _, body := range []string{`{"evictionDays":0}`, `{"evictionDays":366}`, `{}`} {
			if code, b := f.call(t, "PUT", "/api/registry/settings", body); code != 400 || !strings.Contains(string(b), "evictionDays") {
				t.Errorf("%s: %d %s, want 400 naming evictionDays", body, code, b)
			}
		}
		code, b := f.call(t, "PUT", "/api/registry/settings", `{"evictionDays":30}`)
		var st registryStatus
		if code != 200 || json.Unmarshal(b, &st) != nil || st.EvictionDays != 30 {
			t.Errorf("set 30 days: %d %s", code, b)
		}
	})

	guest := registrytest.Client("/var/run/netns/" + f.prefix + "sb-" + id2)
	t.Run("guests reach it; nothing else does", func(t *testing.T) {
		res, err := guest.Get(url + "-/ping")
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("ping from a sandbox: %v %v", res, err)
		}
		res.Body.Close()
		// The wan side reaches the host's wan address: a wildcard listener
		// would answer there.
		wan := registrytest.Client("/var/run/netns/" + f.prefix + "wan")
		if res, err := wan.Get("http://198.51.100.1:4873/-/ping"); err == nil {
			res.Body.Close()
			t.Error("the registry answered from outside the bridge")
		}
		var ne net.Error
		if _, err := registrytest.Client(hostNS).Get("http://127.0.0.1:4873/-/ping"); err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("host loopback: %v, want connection refused", err)
		}
	})

	t.Run("no registration", func(t *testing.T) {
		req, _ := http.NewRequest("PUT", url+"-/user/org.couchdb.user:mallory",
			strings.NewReader(`{"name":"mallory","password":"correct-horse-battery"}`))
		req.Header.Set("Content-Type", "application/json")
		res, err := guest.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode < 400 || res.StatusCode > 499 {
			t.Errorf("PUT /-/user: %d, want 4xx", res.StatusCode)
		}
	})

	code, b = f.call(t, "POST", "/api/registry/disable", "")
	if code != 200 || json.Unmarshal(b, &st) != nil || st.Enabled || st.Online {
		t.Fatalf("disable: %d %s", code, b)
	}
	for _, id := range []string{id1, id2} {
		for _, p := range configs {
			if code, out := f.exec(t, id, "ls "+p); code == 0 {
				t.Errorf("sandbox %s: %s left after disable: %s", id, p, out)
			}
		}
	}
	if res, err := guest.Get(url + "-/ping"); err == nil {
		res.Body.Close()
		t.Error("the registry still answers after disable")
	}
	if len(tarballs) > 0 {
		if _, err := os.Stat(tarballs[0]); err != nil {
			t.Errorf("disable dropped the cache: %v", err)
		}
	}

	// Enabled again, the cache starts with the manager and stops with it.
	if code, b := f.call(t, "POST", "/api/registry/enable", ""); code != 200 {
		t.Fatalf("re-enable: %d %s", code, b)
	}
	pidb, err := os.ReadFile(filepath.Join(f.cfg.Advanced.Server.Verdaccio.Dir, "verdaccio.pid"))
	pid, _ = strconv.Atoi(strings.TrimSpace(string(pidb)))
	if err != nil || pid <= 0 {
		t.Fatalf("verdaccio pid file: %q %v", pidb, err)
	}
	code, b = f.call(t, "POST", "/api/registry/purge", "")
	var r registry.Removed
	if code != 200 || json.Unmarshal(b, &r) != nil || r.Tarballs != 1 {
		t.Errorf("purge: %d %s", code, b)
	}
	for _, id := range []string{id1, id2} {
		if code, b := f.call(t, "DELETE", "/api/sandboxes/"+id, ""); code != 204 {
			t.Fatalf("destroy %s: %d %s", id, code, b)
		}
	}
	stop()
	waitGone := func(pid int) {
		t.Helper()
		for i := 0; syscall.Kill(pid, 0) == nil; i++ {
			if i > 250 {
				t.Fatalf("verdaccio %d still runs after the manager stopped", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitGone(pid)

	// A new manager starts the enabled cache by itself.
	_, stop = f.startWithRegistry(t, func(o *registry.Options) {
		o.AppDir, o.NetnsPath, o.Uplink, o.User = app, hostNS, up.URL, user
	})
	for i := 0; !status().Online; i++ {
		if i > 250 {
			t.Fatal("the enabled cache did not come up with the manager")
		}
		time.Sleep(20 * time.Millisecond)
	}
	pidb, _ = os.ReadFile(filepath.Join(f.cfg.Advanced.Server.Verdaccio.Dir, "verdaccio.pid"))
	pid2, _ := strconv.Atoi(strings.TrimSpace(string(pidb)))
	if pid2 <= 0 || pid2 == pid {
		t.Fatalf("verdaccio pid after restart: %q", pidb)
	}
	stop()
	waitGone(pid2)
	f.assertNoLeaks(t)
}

// procField is one field of a /proc/<pid>/status text.
func procField(status, key string) string {
	for _, l := range strings.Split(status, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
