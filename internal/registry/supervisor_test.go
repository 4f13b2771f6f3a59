package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
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
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewSupervisor(tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestStartWithoutInstallIsUnavailable(t *testing.T) {
	dir := t.TempDir()
	s, err := NewSupervisor(Options{AppDir: filepath.Join(dir, "app"), Version: "6.8.0", StateDir: dir,
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

// TestSupervisor runs one real Verdaccio in a namespace of its own. Its
// command is wrapped so that the process group holds a second process, as
// node's children would.
func TestSupervisor(t *testing.T) {
	app := registrytest.VerdaccioDir(t)
	_, nsPath := registrytest.Netns(t)
	dir := t.TempDir()
	s, err := NewSupervisor(Options{
		StateDir:   dir,
		Listen:     netip.MustParseAddrPort("127.0.0.1:4873"),
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
			c, err := net.DialTimeout("tcp", "127.0.0.2:4873", time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err == nil {
			t.Fatal("verdaccio answered on 127.0.0.2: it listens beyond its address")
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
