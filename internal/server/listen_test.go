package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"atelier/internal/config"
)

// listeners returns the addresses this machine listens on for TCP port
// port, from /proc/net/tcp and tcp6: what a peer on the network could reach.
func listeners(t *testing.T, port int) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 4 || fields[3] != "0A" { // LISTEN
				continue
			}
			hexIP, hexPort, _ := strings.Cut(fields[1], ":")
			p, _ := strconv.ParseUint(hexPort, 16, 16)
			if int(p) != port {
				continue
			}
			raw, err := hex.DecodeString(hexIP)
			if err != nil {
				t.Fatalf("%s: %q", f, fields[1])
			}
			// The kernel prints each 32-bit word in host (little-endian) order.
			for i := 0; i+4 <= len(raw); i += 4 {
				raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
			}
			a, _ := netip.AddrFromSlice(raw)
			out = append(out, a)
		}
	}
	return out
}

// TestMockListensOnLoopbackOnly: mock mode has no login and exec runs as
// the developer, so with the default server.host (0.0.0.0) the API, the
// edge and the SSH proxy must all bind loopback: a peer on the LAN reaches
// none of them.
func TestMockListensOnLoopbackOnly(t *testing.T) {
	dir, err := os.MkdirTemp("", "atlls")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	srv, stop := startMockManager(t, dir, func(c *config.Config) { c.Server.Host = "0.0.0.0" })
	t.Cleanup(func() { stop() })
	cfg := srv.Config
	for name, port := range map[string]int{"api": cfg.Server.Port, "edge": cfg.Domain.HTTPPort, "ssh": cfg.Domain.SSH.Port} {
		var addrs []netip.Addr
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if addrs = listeners(t, port); len(addrs) > 0 {
				break
			}
		}
		if len(addrs) == 0 {
			t.Errorf("%s: nothing listens on port %d", name, port)
		}
		for _, a := range addrs {
			if !a.Unmap().IsLoopback() {
				t.Errorf("%s listens on %s port %d: reachable from the network", name, a, port)
			}
		}
	}
}

// TestMockRefusesRemoteHost: a specific non-loopback address in mock mode
// is refused with a message naming the key, its variable and the opt-in.
func TestMockRefusesRemoteHost(t *testing.T) {
	cfg := config.Default()
	dir := t.TempDir()
	cfg.Server.Mode = config.ModeMock
	cfg.Server.Host = "192.0.2.10"
	cfg.Server.DataDir = dir
	cfg.Server.SocketPath = dir + "/atelier.sock"
	cfg.Sandbox.StateDir = dir + "/state"
	_, err := New(context.Background(), cfg, Options{Log: slog.New(slog.DiscardHandler), NoUnixSock: true})
	if err == nil {
		t.Fatal("mock mode accepted server.host 192.0.2.10")
	}
	for _, want := range []string{"server.host", "ATELIER_SERVER_HOST", "server.allowRemoteMock", "ATELIER_ALLOW_REMOTE_MOCK", "--insecure-mock-listen-any"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
}

// TestRemoteMockIsLoud: with the opt-in, the listeners keep server.host and
// the log says, at warning level, that this is a shell for the network.
func TestRemoteMockIsLoud(t *testing.T) {
	for _, tc := range []struct {
		host   string
		allow  bool
		want   string
		warned bool
	}{
		{"0.0.0.0", false, "127.0.0.1", false},
		{"::", false, "::1", false},
		{"127.0.0.1", false, "127.0.0.1", false},
		{"0.0.0.0", true, "0.0.0.0", true},
		{"192.0.2.10", true, "192.0.2.10", true},
	} {
		cfg := config.Default()
		cfg.Server.Mode = config.ModeMock
		cfg.Server.Host, cfg.Server.AllowRemoteMock = tc.host, tc.allow
		var logs bytes.Buffer
		got := bindConfig(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
		if got.Server.Host != tc.want {
			t.Errorf("%s allow=%v: binds %s, want %s", tc.host, tc.allow, got.Server.Host, tc.want)
		}
		warned := strings.Contains(logs.String(), "level=WARN") && strings.Contains(logs.String(), "INSECURE")
		if warned != tc.warned {
			t.Errorf("%s allow=%v: warned=%v:\n%s", tc.host, tc.allow, warned, logs.String())
		}
		if cfg.Server.Host != tc.host {
			t.Errorf("bindConfig changed the caller's config")
		}
	}
	// Production keeps 0.0.0.0, the seed's default.
	cfg := config.Default()
	cfg.Server.Mode = config.ModeProduction
	if got := bindConfig(cfg, slog.New(slog.DiscardHandler)); got.Server.Host != "0.0.0.0" {
		t.Errorf("production binds %s", got.Server.Host)
	}
}

// TestMockAgentEnvironment: a mock sandbox's commands must not see the
// manager's environment, where its secrets live.
func TestMockAgentEnvironment(t *testing.T) {
	secret := "leak-" + rand.Text()
	t.Setenv("ATELIER_JWT_SECRET", secret)
	t.Setenv("AWS_SECRET_ACCESS_KEY", secret)
	dir, err := os.MkdirTemp("", "atlenv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	srv, stop := startMockManager(t, dir, nil)
	api := "http://" + srv.Addr()
	call := func(method, path, body string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, api+path, strings.NewReader(body))
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, b
	}
	code, b := call("POST", "/api/sandboxes", `{}`)
	var v struct{ ID string }
	if json.Unmarshal(b, &v); code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, b)
	}
	t.Cleanup(func() {
		if code, b := call("DELETE", "/api/sandboxes/"+v.ID, ""); code != http.StatusNoContent {
			t.Errorf("destroy: %d %s", code, b)
		}
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	if _, err := srv.Sandboxes.Wait(ctxFor(t, 30*time.Second), v.ID); err != nil {
		t.Fatal(err)
	}
	code, b = call("POST", "/api/sandboxes/"+v.ID+"/exec", `{"argv":["env"]}`)
	var res struct {
		ExitCode int
		Stdout   string
	}
	if json.Unmarshal(b, &res); code != 200 || res.ExitCode != 0 {
		t.Fatalf("exec env: %d %s", code, b)
	}
	if strings.Contains(res.Stdout, secret) {
		t.Fatalf("the manager's secret reached the sandbox:\n%s", res.Stdout)
	}
	vars := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(res.Stdout), "\n") {
		k, val, _ := strings.Cut(line, "=")
		vars[k] = val
	}
	home := fmt.Sprintf("%s/s/mock/%s/home", dir, v.ID)
	if vars["HOME"] != home || vars["PATH"] == "" || vars["USER"] == "" || vars["LANG"] == "" || vars["TERM"] == "" || !strings.HasPrefix(vars["TMPDIR"], dir) {
		t.Errorf("minimal environment missing a variable: %v", vars)
	}
	for k := range vars {
		switch k {
		case "PATH", "HOME", "USER", "LOGNAME", "LANG", "TERM", "TMPDIR", "ATELIER_SANDBOX_ID", "PWD", "SHLVL", "_":
		default:
			t.Errorf("unexpected variable %s in a mock sandbox", k)
		}
	}
}
