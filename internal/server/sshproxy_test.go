package server

import (
	"bytes"
	"context"
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
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"atelier/internal/auth"
	"atelier/internal/config"
	"atelier/internal/store"
)

// sshEnv is a mock-mode manager (real agent processes, no root needed)
// with the SSH proxy on a loopback port, driven by the real OpenSSH client.
type sshEnv struct {
	srv     *Server
	api     string
	sshPort string
	dir     string
}

func newSSHEnv(t *testing.T) *sshEnv {
	t.Helper()
	for _, tool := range []string{"ssh", "scp", "sftp", "ssh-keygen"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs the OpenSSH client (%s): apt-get install openssh-client", tool)
		}
	}
	// Short paths: unix socket paths are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "atlssh")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	srv, stop := startMockManager(t, dir, func(c *config.Config) { c.Auth.AllowedUsers = []string{"octocat"} })
	cfg := srv.Config
	e := &sshEnv{srv: srv, api: "http://" + srv.Addr(), sshPort: strconv.Itoa(cfg.Domain.SSH.Port), dir: dir}
	t.Cleanup(func() {
		// Destroy first: the agents are our processes.
		for _, sb := range e.sandboxes(t) {
			if code, body := e.call(t, "DELETE", "/api/sandboxes/"+sb, "", nil); code != http.StatusNoContent {
				t.Errorf("destroy %s: %d %s", sb, code, body)
			}
		}
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", "127.0.0.1:"+e.sshPort)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ssh proxy not listening: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return e
}

func (e *sshEnv) call(t *testing.T, method, path, body string, hdr map[string]string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, e.api+path, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b
}

func (e *sshEnv) sandboxes(t *testing.T) []string {
	list, err := e.srv.Store.ListSandboxes(context.Background(), store.SandboxFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, sb := range list {
		out = append(out, sb.ID)
	}
	return out
}

// createSandbox creates a sandbox as the mock-mode local user and waits
// until it runs.
func (e *sshEnv) createSandbox(t *testing.T) string {
	t.Helper()
	code, b := e.call(t, "POST", "/api/sandboxes", `{}`, nil)
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, b)
	}
	var v struct {
		ID   string
		URLs struct{ SSH string }
	}
	json.Unmarshal(b, &v)
	sb, err := e.srv.Sandboxes.Wait(ctxFor(t, 30*time.Second), v.ID)
	if err != nil || sb.Status != store.StatusRunning {
		t.Fatalf("sandbox %s: %v %s", v.ID, err, sb.Status)
	}
	// The command the dashboard shows is the one these tests run.
	_, b = e.call(t, "GET", "/api/sandboxes/"+v.ID, "", nil)
	json.Unmarshal(b, &v)
	if want := "ssh " + v.ID + "@ssh.localhost -p " + e.sshPort; v.URLs.SSH != want {
		t.Errorf("view ssh = %q, want %q", v.URLs.SSH, want)
	}
	return v.ID
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func (e *sshEnv) keygen(t *testing.T, name string) (string, string) { return keygen(t, e.dir, name) }

// keygen makes an ed25519 key pair with ssh-keygen and returns the private
// key's path and the public key line.
func keygen(t *testing.T, dir, name string) (string, string) {
	t.Helper()
	path := filepath.Join(dir, name)
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	pub, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return path, strings.TrimSpace(string(pub))
}

// register adds a public key through the API; hdr carries a non-local
// user's token.
func (e *sshEnv) register(t *testing.T, name, pub string, hdr map[string]string) string {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"name": name, "publicKey": pub})
	code, b := e.call(t, "POST", "/api/ssh-keys", string(body), hdr)
	if code != http.StatusCreated {
		t.Fatalf("register key: %d %s", code, b)
	}
	var k struct{ ID, Fingerprint string }
	json.Unmarshal(b, &k)
	if !strings.HasPrefix(k.Fingerprint, "SHA256:") {
		t.Fatalf("fingerprint %q", k.Fingerprint)
	}
	return k.ID
}

func (e *sshEnv) sshArgs(key string) []string { return sshArgs(key) }

// sshArgs make the OpenSSH client use key only, trust the proxy's host key
// on first sight without recording it, and never prompt.
func sshArgs(key string) []string {
	return []string{"-F", "/dev/null", "-i", key, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
		"-o", "ConnectTimeout=10"}
}

func (e *sshEnv) ssh(t *testing.T, key, user string, extra ...string) (string, string, int) {
	t.Helper()
	return runSSH(t, e.sshPort, key, user, extra...)
}

// runSSH runs the OpenSSH client against the proxy on 127.0.0.1:port; the
// last of extra is the remote command. It returns stdout, stderr and the
// exit code.
func runSSH(t *testing.T, port, key, user string, extra ...string) (string, string, int) {
	t.Helper()
	args := append(sshArgs(key), "-p", port)
	args = append(args, extra[:len(extra)-1]...)
	args = append(args, user+"@127.0.0.1", extra[len(extra)-1])
	return runTool(t, "ssh", args...)
}

func runTool(t *testing.T, name string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errs
	cmd.Stdin = strings.NewReader("")
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errs.String(), 0
	case errors.As(err, &ee):
		return out.String(), errs.String(), ee.ExitCode()
	}
	t.Fatalf("%s: %v", name, err)
	return "", "", 0
}

func TestOpenSSHThroughProxy(t *testing.T) {
	e := newSSHEnv(t)
	id := e.createSandbox(t)
	key, pub := e.keygen(t, "me")
	keyID := e.register(t, "laptop", pub, nil)

	t.Run("exec with exit status", func(t *testing.T) {
		out, stderr, code := e.ssh(t, key, id, "echo ok; exit 3")
		if out != "ok\n" || code != 3 {
			t.Fatalf("stdout %q status %d (stderr %q), want ok and 3", out, code, stderr)
		}
	})

	t.Run("login shell on a pty", func(t *testing.T) {
		args := append(e.sshArgs(key), "-tt", "-p", e.sshPort, id+"@127.0.0.1")
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "ssh", args...)
		cmd.Stdin = strings.NewReader("stty size; tty; exit 6\n")
		out, err := cmd.Output()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 6 || !strings.Contains(string(out), "/dev/pts/") {
			t.Errorf("shell: %v, output %q; want status 6 and a pts", err, out)
		}
	})

	t.Run("scp round trip", func(t *testing.T) {
		src := filepath.Join(e.dir, "payload.bin")
		data := bytes.Repeat([]byte("scp\x00\xff through the proxy\n"), 50000)
		os.WriteFile(src, data, 0o600)
		for _, mode := range []struct{ name, flag string }{{"sftp protocol", "-s"}, {"legacy scp protocol", "-O"}} {
			remote := "up-" + mode.flag[1:] + ".bin"
			back := filepath.Join(e.dir, "back-"+mode.flag[1:]+".bin")
			args := append(e.sshArgs(key), mode.flag, "-P", e.sshPort)
			if _, stderr, code := runTool(t, "scp", append(args, src, id+"@127.0.0.1:"+remote)...); code != 0 {
				t.Fatalf("%s: scp in: %d %s", mode.name, code, stderr)
			}
			if _, stderr, code := runTool(t, "scp", append(args, id+"@127.0.0.1:"+remote, back)...); code != 0 {
				t.Fatalf("%s: scp out: %d %s", mode.name, code, stderr)
			}
			got, _ := os.ReadFile(back)
			if !bytes.Equal(got, data) {
				t.Errorf("%s: file came back with %d bytes of %d, or different", mode.name, len(got), len(data))
			}
		}
	})

	t.Run("sftp batch", func(t *testing.T) {
		src := filepath.Join(e.dir, "sftp-src.txt")
		back := filepath.Join(e.dir, "sftp-back.txt")
		os.WriteFile(src, []byte("via sftp\n"), 0o600)
		batch := filepath.Join(e.dir, "batch")
		os.WriteFile(batch, []byte(fmt.Sprintf("mkdir d\nput %s d/f.txt\nls d\nget d/f.txt %s\n", src, back)), 0o600)
		args := append(e.sshArgs(key), "-b", batch, "-P", e.sshPort, id+"@127.0.0.1")
		if out, stderr, code := runTool(t, "sftp", args...); code != 0 || !strings.Contains(out, "f.txt") {
			t.Fatalf("sftp: %d %q %s", code, out, stderr)
		}
		if got, _ := os.ReadFile(back); string(got) != "via sftp\n" {
			t.Errorf("sftp get: %q", got)
		}
	})

	t.Run("local port forwarding", func(t *testing.T) {
		// In mock mode the guest is this host: a server on a loopback port
		// stands for a dev server in the sandbox.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "guest saw "+r.URL.Path)
		})}
		go hs.Serve(ln)
		defer hs.Close()
		local := strconv.Itoa(freePort(t))
		args := append(e.sshArgs(key), "-p", e.sshPort, "-N", "-o", "ExitOnForwardFailure=yes",
			"-L", "127.0.0.1:"+local+":"+ln.Addr().String(), id+"@127.0.0.1")
		cmd := exec.Command("ssh", args...)
		var errs bytes.Buffer
		cmd.Stderr = &errs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			cmd.Process.Kill()
			cmd.Wait()
		}()
		deadline := time.Now().Add(15 * time.Second)
		for {
			res, err := http.Get("http://127.0.0.1:" + local + "/through/the/tunnel")
			if err == nil {
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if string(b) != "guest saw /through/the/tunnel" {
					t.Fatalf("forwarded answer %q", b)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("forward never worked: %v (ssh: %s)", err, errs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	t.Run("another user's key cannot enter", func(t *testing.T) {
		u, err := e.srv.Store.UpsertGitHubUser(context.Background(), store.User{GitHubID: 7, Login: "octocat"})
		if err != nil {
			t.Fatal(err)
		}
		secret, _, err := e.srv.Auth.CreateToken(context.Background(), auth.Principal{User: u, Method: auth.MethodCookie, Scope: auth.ScopeFull}, auth.TokenRequest{Name: "t"})
		if err != nil {
			t.Fatal(err)
		}
		okey, opub := e.keygen(t, "octo")
		e.register(t, "octo", opub, map[string]string{"Authorization": "Bearer " + secret})
		out, stderr, code := e.ssh(t, okey, id, "echo pwned")
		if code != 1 || out != "" || !strings.Contains(stderr, "you have no sandbox "+id) {
			t.Errorf("other user's key: status %d stdout %q stderr %q", code, out, stderr)
		}
	})

	t.Run("unknown sandbox gets a message", func(t *testing.T) {
		out, stderr, code := e.ssh(t, key, "zzzzzzzzzzzz", "true")
		if code != 1 || out != "" || !strings.Contains(stderr, "you have no sandbox zzzzzzzzzzzz") {
			t.Errorf("unknown sandbox: status %d stdout %q stderr %q", code, out, stderr)
		}
	})

	t.Run("expired key is refused", func(t *testing.T) {
		ekey, epub := e.keygen(t, "expired")
		pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(epub))
		if err != nil {
			t.Fatal(err)
		}
		past := time.Now().Add(-time.Minute)
		// Through the store: the API only accepts expiry in the future.
		if _, err := e.srv.Store.CreateSSHKey(context.Background(), store.SSHKey{UserID: "local", Name: "old", PublicKey: epub,
			Fingerprint: ssh.FingerprintSHA256(pk), Type: pk.Type(), ExpiresAt: &past}); err != nil {
			t.Fatal(err)
		}
		out, stderr, code := e.ssh(t, ekey, id, "echo in")
		if code != 255 || out != "" || !strings.Contains(stderr, "expired or was deleted") || !strings.Contains(stderr, "Permission denied") {
			t.Errorf("expired key: status %d stdout %q stderr %q", code, out, stderr)
		}
	})

	t.Run("deleted key is refused at once", func(t *testing.T) {
		if code, b := e.call(t, "DELETE", "/api/ssh-keys/"+keyID, "", nil); code != http.StatusNoContent {
			t.Fatalf("delete key: %d %s", code, b)
		}
		out, stderr, code := e.ssh(t, key, id, "echo in")
		if code != 255 || out != "" || !strings.Contains(stderr, "not registered") || !strings.Contains(stderr, "Permission denied") {
			t.Errorf("deleted key: status %d stdout %q stderr %q", code, out, stderr)
		}
	})

	t.Run("stopped sandbox gets a message", func(t *testing.T) {
		key2, pub2 := e.keygen(t, "again")
		e.register(t, "again", pub2, nil)
		if code, b := e.call(t, "POST", "/api/sandboxes/"+id+"/stop", "", nil); code != http.StatusOK && code != http.StatusAccepted {
			t.Fatalf("stop: %d %s", code, b)
		}
		if _, err := e.srv.Sandboxes.Wait(ctxFor(t, 30*time.Second), id); err != nil {
			t.Fatal(err)
		}
		out, stderr, code := e.ssh(t, key2, id, "true")
		if code != 1 || out != "" || !strings.Contains(stderr, "sandbox "+id+" is stopped: start it with") {
			t.Errorf("stopped sandbox: status %d stdout %q stderr %q", code, out, stderr)
		}
	})
}

// TestSSHIntoContainerSandbox goes through the proxy into a real runc
// sandbox of the test image (busybox, the agent as its init).
func TestSSHIntoContainerSandbox(t *testing.T) {
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("needs the OpenSSH client: apt-get install openssh-client")
	}
	f := newFixture(t)
	f.cfg.Domain.SSH.Port = freePort(t)
	// A GitHub user on the allow-list owns the sandbox and the key (one
	// added straight to the store has no org membership on record).
	f.cfg.Auth.AllowedUsers = []string{"dev"}
	srv := f.start(t)
	_, dev := devUser(t, srv)
	secret := dev.secret
	api := func(method, path, body string) (int, []byte) {
		req, _ := http.NewRequest(method, "http://"+srv.Addr()+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+secret)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, b
	}
	code, b := api("POST", "/api/sandboxes", `{"vcpus":1,"memoryMb":512}`)
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, b)
	}
	var v struct{ ID string }
	json.Unmarshal(b, &v)
	if sb, err := srv.Sandboxes.Wait(ctxFor(t, 60*time.Second), v.ID); err != nil || sb.Status != store.StatusRunning {
		t.Fatalf("sandbox %s: %v %s %s", v.ID, err, sb.Status, sb.Error)
	}
	key, pub := keygen(t, f.dir, "k")
	body, _ := json.Marshal(map[string]string{"name": "k", "publicKey": pub})
	if code, b := api("POST", "/api/ssh-keys", string(body)); code != http.StatusCreated {
		t.Fatalf("register key: %d %s", code, b)
	}
	port := strconv.Itoa(f.cfg.Domain.SSH.Port)
	out, stderr, status := runSSH(t, port, key, v.ID, "echo ok; exit 3")
	if out != "ok\n" || status != 3 {
		t.Errorf("exec in the container: %q status %d (stderr %q)", out, status, stderr)
	}
	// Sessions run as the image's user, not as the agent's root.
	if out, stderr, status := runSSH(t, port, key, v.ID, `echo "$(id -u) $(id -g) $USER $HOME"; pwd`); out != "1000 1000 dev /home/dev\n/home/dev\n" || status != 0 {
		t.Errorf("ssh user: %q status %d (stderr %q)", out, status, stderr)
	}
	src := filepath.Join(f.dir, "up.txt")
	os.WriteFile(src, []byte("into the container\n"), 0o600)
	if _, stderr, status := runTool(t, "scp", append(sshArgs(key), "-P", port, src, v.ID+"@127.0.0.1:/tmp/up.txt")...); status != 0 {
		t.Fatalf("scp: %d %s", status, stderr)
	}
	if out, _, _ := runSSH(t, port, key, v.ID, "cat /tmp/up.txt"); out != "into the container\n" {
		t.Errorf("file in the container: %q", out)
	}
	if code, b := f.call(t, "DELETE", "/api/sandboxes/"+v.ID, ""); code != http.StatusNoContent {
		t.Fatalf("destroy: %d %s", code, b)
	}
	out, stderr, status = runSSH(t, port, key, v.ID, "true")
	if status != 1 || !strings.Contains(stderr, "you have no sandbox "+v.ID) {
		t.Errorf("destroyed sandbox: %q status %d stderr %q", out, status, stderr)
	}
	f.assertNoLeaks(t)
}
