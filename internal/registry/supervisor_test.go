package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"atelier/internal/network"
	"atelier/internal/registry/registrytest"
)

func TestNewSupervisorRefusesBadOptions(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"every interface", Options{AppDir: dir, StateDir: dir, Listen: netip.MustParseAddrPort("0.0.0.0:4873")}, "every interface"},
		{"every v6 interface", Options{AppDir: dir, StateDir: dir, Listen: netip.MustParseAddrPort("[::]:4873")}, "every interface"},
		{"no port", Options{AppDir: dir, StateDir: dir, Listen: netip.MustParseAddrPort("172.16.0.1:0")}, "ip:port"},
		{"no address", Options{AppDir: dir, StateDir: dir}, "ip:port"},
		{"relative state dir", Options{AppDir: dir, StateDir: "registry", Listen: netip.MustParseAddrPort("172.16.0.1:4873")}, "absolute"},
		{"relative install dir", Options{AppDir: "app", StateDir: dir, Listen: netip.MustParseAddrPort("172.16.0.1:4873")}, "absolute"},
		{"as root: no user", Options{AppDir: dir, StateDir: dir, Listen: netip.MustParseAddrPort("172.16.0.1:4873")}, "refusing to run verdaccio as root"},
		{"as root: user root", Options{AppDir: dir, StateDir: dir, User: "root", Listen: netip.MustParseAddrPort("172.16.0.1:4873")}, "refusing to run verdaccio as root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if strings.HasPrefix(tc.name, "as root") && os.Geteuid() != 0 {
				t.Skip("the manager is not root: verdaccio runs as the manager's user")
			}
			_, err := NewSupervisor(tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestStartWithoutInstallIsUnavailable(t *testing.T) {
	dir := t.TempDir()
	s, err := NewSupervisor(Options{AppDir: filepath.Join(dir, "app"), Version: "6.8.0", StateDir: dir, User: "atlreg-unused",
		Listen: netip.MustParseAddrPort("127.0.0.1:4873"), Uplink: "http://127.0.0.1:9/"})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Start(context.Background())
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "registry install") {
		t.Fatalf("got %v, want ErrUnavailable telling how to install", err)
	}
	if s.Running() {
		t.Fatal("running after a failed start")
	}
}

func TestVerdaccioConfig(t *testing.T) {
	b, err := verdaccioConfig("/var/lib/atelier/registry", "http://127.0.0.1:9/")
	if err != nil {
		t.Fatal(err)
	}
	_, body, _ := bytes.Cut(b, []byte("\n")) // the comment line
	var c struct {
		Storage string
		Auth    struct {
			Htpasswd struct {
				MaxUsers int `json:"max_users"`
			}
		}
		Web      struct{ Enable bool }
		Uplinks  map[string]struct{ URL string }
		Listen   any
		Packages map[string]struct {
			Access, Publish, Unpublish, Proxy string
		}
	}
	if err := json.Unmarshal(body, &c); err != nil {
		t.Fatalf("config is not JSON after its comment: %v\n%s", err, b)
	}
	if c.Storage != "/var/lib/atelier/registry/storage" || c.Auth.Htpasswd.MaxUsers != -1 || c.Web.Enable || c.Listen != nil {
		t.Errorf("config: %+v", c)
	}
	if len(c.Uplinks) != 1 || c.Uplinks["upstream"].URL != "http://127.0.0.1:9/" {
		t.Errorf("uplinks: %+v", c.Uplinks)
	}
	for _, p := range []string{"**", "@*/*"} {
		if got := c.Packages[p]; got.Access != "$all" || got.Proxy != "upstream" || got.Publish != "atelier-nobody" || got.Unpublish != "atelier-nobody" {
			t.Errorf("packages %q: %+v", p, got)
		}
	}
}

// groupMembers lists the live (not zombie) processes in process group pgid.
func groupMembers(pgid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces and parens.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) >= 3 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			out = append(out, pid)
		}
	}
	return out
}

// procStatus is /proc/<pid>/status as key -> value.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// managerSecret stands for the manager's secrets in its environment.
const managerSecret = "manager-secret-0123456789abcdef0123456789"

// TestSupervisor runs one real Verdaccio in a namespace of its own. Its
// command is wrapped so that the process group holds a second process, as
// node's children would. It listens on a port below 1024, which its
// unprivileged user may bind only through the one capability it is given.
func TestSupervisor(t *testing.T) {
	app := registrytest.VerdaccioDir(t)
	user := registrytest.UserName(t)
	_, nsPath := registrytest.Netns(t)
	dir := registrytest.Dir(t)
	// What a compromised Verdaccio would look for in its environment.
	t.Setenv("ATELIER_JWT_SECRET", managerSecret)
	t.Setenv("ATELIER_GITHUB_CLIENT_SECRET", managerSecret)
	t.Setenv("AWS_SECRET_ACCESS_KEY", managerSecret)
	// A cache a root-run Verdaccio (an older Atelier) filled.
	legacy := filepath.Join(dir, "storage", "is-number", "package.json")
	if err := os.MkdirAll(filepath.Dir(legacy), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(legacy, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	const port = 873
	s, err := NewSupervisor(Options{
		StateDir:   dir,
		User:       user,
		Listen:     netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port),
		Uplink:     "http://127.0.0.1:9",
		NetnsPath:  nsPath,
		Command:    []string{"sh", "-c", `sleep 300 & exec "$0" "$@"`, "node", binPath(app)},
		MinBackoff: 300 * time.Millisecond,
		MaxBackoff: 2 * time.Second,
		StopGrace:  2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	if !s.Online(ctx) {
		t.Fatal("not online after Start")
	}
	if u, err := s.Uplink(ctx); u != "http://127.0.0.1:9/" || err != nil {
		t.Errorf("uplink %q %v: want the normalized URL", u, err)
	}
	client := &http.Client{Transport: &http.Transport{DialContext: network.DialAt(nsPath, nil)}, Timeout: 5 * time.Second}

	t.Run("listens on its address only", func(t *testing.T) {
		// 127.0.0.2 is on the namespace's loopback too: a wildcard listener
		// would answer there.
		err := network.DoAt(nsPath, func() error {
			c, err := net.DialTimeout("tcp", "127.0.0.2:"+strconv.Itoa(port), time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err == nil {
			t.Fatal("verdaccio answered on 127.0.0.2: it listens beyond its address")
		}
	})

	t.Run("runs as its own user, without the manager's environment", func(t *testing.T) {
		acct, err := lookupAccount(user)
		if err != nil {
			t.Fatalf("the supervisor did not create its user: %v", err)
		}
		pid := s.PID()
		members := groupMembers(pid)
		if len(members) < 2 {
			t.Fatalf("process group %d: %v, want verdaccio and its sleep", pid, members)
		}
		for _, m := range members {
			st := procStatus(t, m)
			if st["Uid"] != strings.Repeat(strconv.Itoa(int(acct.UID))+"\t", 3)+strconv.Itoa(int(acct.UID)) ||
				st["Gid"] != strings.Repeat(strconv.Itoa(int(acct.GID))+"\t", 3)+strconv.Itoa(int(acct.GID)) {
				t.Errorf("pid %d runs as Uid %q Gid %q, want %s (%d:%d) throughout", m, st["Uid"], st["Gid"], user, acct.UID, acct.GID)
			}
			if st["Groups"] != "" {
				t.Errorf("pid %d keeps supplementary groups %q", m, st["Groups"])
			}
			// CAP_NET_BIND_SERVICE (bit 10) for the low port, nothing else.
			if st["CapEff"] != "0000000000000400" {
				t.Errorf("pid %d has effective capabilities %s, want only CAP_NET_BIND_SERVICE", m, st["CapEff"])
			}
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(managerSecret)) {
			t.Error("verdaccio's environment holds the manager's secret")
		}
		// PWD: the test's sh wrapper exports it.
		allowed := map[string]bool{"PATH": true, "HOME": true, "NODE_ENV": true, "NODE_EXTRA_CA_CERTS": true, "PWD": true}
		for _, k := range passEnv {
			allowed[k] = true
		}
		for _, kv := range strings.Split(strings.TrimRight(string(b), "\x00"), "\x00") {
			k, v, _ := strings.Cut(kv, "=")
			if !allowed[k] {
				t.Errorf("verdaccio's environment holds %s", k)
			}
			if k == "HOME" && v != dir {
				t.Errorf("HOME=%s, want the registry dir %s", v, dir)
			}
		}
	})

	t.Run("writes its storage and nothing else", func(t *testing.T) {
		acct, _ := lookupAccount(user)
		owner := func(p string) (uint32, uint32, os.FileMode) {
			t.Helper()
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			return st.Uid, st.Gid, fi.Mode().Perm()
		}
		for _, c := range []struct {
			path     string
			uid, gid uint32
			mode     os.FileMode
		}{
			{dir, 0, acct.GID, 0o750},
			{s.configPath(), 0, acct.GID, 0o640},
			{filepath.Join(dir, "plugins"), 0, acct.GID, 0o750},
			{s.StorageDir(), acct.UID, acct.GID, 0o750},
			{s.LogPath(), 0, 0, 0o600},
			{s.pidPath(), 0, 0, 0o600},
		} {
			if uid, gid, mode := owner(c.path); uid != c.uid || gid != c.gid || mode != c.mode {
				t.Errorf("%s: %d:%d %04o, want %d:%d %04o", c.path, uid, gid, mode, c.uid, c.gid, c.mode)
			}
		}
		// Verdaccio keeps its token secret in its storage: it wrote there,
		// as its user. What a root-run one left is its user's now.
		for _, p := range []string{filepath.Join(s.StorageDir(), ".verdaccio-db.json"), legacy, filepath.Dir(legacy)} {
			if uid, gid, _ := owner(p); uid != acct.UID || gid != acct.GID {
				t.Errorf("%s belongs to %d:%d, want %d:%d", p, uid, gid, acct.UID, acct.GID)
			}
		}
	})

	t.Run("refuses registration, publishing and the web UI", func(t *testing.T) {
		for _, tc := range []struct{ method, path, body string }{
			{"PUT", "/-/user/org.couchdb.user:mallory", `{"name":"mallory","password":"correct-horse-battery"}`},
			{"PUT", "/atelier-not-a-package", `{"name":"atelier-not-a-package","versions":{}}`},
			{"GET", "/", ""},
		} {
			req, _ := http.NewRequest(tc.method, s.URL()+strings.TrimPrefix(tc.path, "/"), strings.NewReader(tc.body))
			req.Header.Set("Content-Type", "application/json")
			res, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode < 400 || res.StatusCode > 499 {
				t.Errorf("%s %s: %d, want 4xx", tc.method, tc.path, res.StatusCode)
			}
		}
		if _, err := os.Stat(filepath.Join(dir, "htpasswd")); err == nil {
			if b, _ := os.ReadFile(filepath.Join(dir, "htpasswd")); strings.Contains(string(b), "mallory") {
				t.Error("a user was registered")
			}
		}
	})

	t.Run("restarts with backoff after kill -9", func(t *testing.T) {
		backoff := 300 * time.Millisecond
		for round := 0; round < 2; round++ {
			pid, starts := s.PID(), s.Starts()
			if len(groupMembers(pid)) < 2 {
				t.Fatalf("process group %d: %v, want verdaccio and its sleep", pid, groupMembers(pid))
			}
			killed := time.Now()
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "a new verdaccio", 20*time.Second, func() bool { return s.Starts() == starts+1 && s.PID() != 0 })
			// A lower bound only: the restart waits for its timer.
			if gap := time.Since(killed); gap < backoff {
				t.Errorf("round %d: restarted %s after the kill, before the %s backoff", round, gap, backoff)
			}
			if m := groupMembers(pid); len(m) != 0 {
				t.Errorf("round %d: the dead verdaccio's group still has %v", round, m)
			}
			waitFor(t, "the new verdaccio to answer", 20*time.Second, func() bool { return s.Online(ctx) })
			backoff *= 2
		}
	})

	t.Run("stop kills the group", func(t *testing.T) {
		pid := s.PID()
		if len(groupMembers(pid)) < 2 {
			t.Fatalf("process group %d: %v, want verdaccio and its sleep", pid, groupMembers(pid))
		}
		if err := s.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if m := groupMembers(pid); len(m) != 0 {
			t.Errorf("after Stop the group still has %v", m)
		}
		if s.PID() != 0 || s.Running() || s.Online(ctx) {
			t.Errorf("after Stop: pid %d, running %v, online %v", s.PID(), s.Running(), s.Online(ctx))
		}
		if _, err := os.Stat(s.pidPath()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pid file left: %v", err)
		}
	})

	t.Run("output is captured", func(t *testing.T) {
		b, err := os.ReadFile(s.LogPath())
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "http address") || !strings.Contains(string(b), "/-/ping") {
			t.Errorf("log lacks the start and the pings:\n%s", tail(string(b), 2000))
		}
	})
}

// TestSupervisorTLSUplink: Verdaccio no longer inherits the manager's
// environment, yet still trusts the CA the host trusts for its uplink
// (here a TLS-intercepting proxy's own CA, in a file only root can read,
// named by NODE_EXTRA_CA_CERTS as on the CI host), and proxies an npm
// install through it.
func TestSupervisorTLSUplink(t *testing.T) {
	app := registrytest.VerdaccioDir(t)
	user := registrytest.UserName(t)
	nsName, nsPath := registrytest.Netns(t)
	up, ca := registrytest.StartUplinkTLS(t, nsPath)
	t.Setenv("NODE_EXTRA_CA_CERTS", ca)
	dir := registrytest.Dir(t)
	s, err := NewSupervisor(Options{
		AppDir: app, Version: registrytest.Version, StateDir: dir, User: user,
		Listen: netip.MustParseAddrPort("127.0.0.1:4873"), Uplink: up.URL, NetnsPath: nsPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	npmrc := filepath.Join(dir, "npmrc")
	if err := os.WriteFile(npmrc, []byte("registry="+s.URL()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	prefix := t.TempDir()
	if err := registrytest.NpmInstall(ctx, nsName, npmrc, prefix, "is-number"); err != nil {
		t.Fatalf("%v\nverdaccio log:\n%s", err, tail(readFile(s.LogPath()), 3000))
	}
	if _, err := os.Stat(filepath.Join(prefix, "node_modules", "is-number", "package.json")); err != nil {
		t.Fatal(err)
	}
	if up.Requests() == 0 {
		t.Fatal("the uplink saw no request")
	}
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}
