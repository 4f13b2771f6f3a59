package deploy

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"atelier/internal/hostcmd/hostcmdtest"
	"atelier/internal/ids"
	"atelier/internal/network"
	"atelier/internal/testenv"
)

func writeKey(t *testing.T, path string) ssh.PublicKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(blk), 0o600); err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

type sshServer struct {
	dir      string
	hostKey  ssh.PublicKey
	clientKy string
	ns       netns.NsHandle
}

// startSSHD runs Debian's OpenSSH server in a network namespace of the
// test's own, listening on that namespace's loopback, with a private host
// key and authorized_keys; it is stopped and the namespace deleted at
// cleanup.
func startSSHD(t *testing.T) *sshServer {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("requires root: runs sshd in a network namespace")
	}
	sshd := "/usr/sbin/sshd"
	if _, err := os.Stat(sshd); err != nil {
		testenv.Missing(t, "sshd not found (Debian package openssh-server)")
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s := &sshServer{dir: dir, clientKy: filepath.Join(dir, "client_key")}
	s.hostKey = writeKey(t, filepath.Join(dir, "host_key"))
	ck := writeKey(t, s.clientKy)
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), ssh.MarshalAuthorizedKey(ck), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := strings.Join([]string{
		"ListenAddress 127.0.0.1", "Port 22",
		"HostKey " + filepath.Join(dir, "host_key"),
		"AuthorizedKeysFile " + filepath.Join(dir, "authorized_keys"),
		"PidFile none", "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
		"PasswordAuthentication no", "KbdInteractiveAuthentication no", "",
	}, "\n")
	if err := os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	ns := "atlt-" + ids.New(6) + "-ssh"
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v %s", err, out)
	}
	h, err := netns.GetFromPath("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	s.ns = h
	cmd := exec.Command("ip", "netns", "exec", ns, sshd, "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	var logb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logb, &logb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("sshd log:\n%s", logb.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := s.dial(context.Background(), "127.0.0.1:22")
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd does not listen: %v\n%s", err, logb.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s
}

func (s *sshServer) dial(ctx context.Context, addr string) (net.Conn, error) {
	var c net.Conn
	err := network.Do(s.ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 3*time.Second)
		return err
	})
	return c, err
}

func (s *sshServer) target(t *testing.T, known ssh.PublicKey) Target {
	kh := filepath.Join(t.TempDir(), "known_hosts")
	var line string
	if known != nil {
		line = knownhosts.Line([]string{"127.0.0.1"}, known) + "\n"
	}
	if err := os.WriteFile(kh, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	return Target{Alias: "srv", Host: "127.0.0.1", User: "root", Port: 22, KeyPath: s.clientKy, KnownHosts: kh}
}

// TestDeployToOpenSSH copies a binary to a real sshd, has the server check
// it, and runs the server's "atelier update --binary" (a script that
// reports what it got), streaming its output back.
func TestDeployToOpenSSH(t *testing.T) {
	s := startSSHD(t)
	bin := filepath.Join(t.TempDir(), "atelier")
	payload := []byte("#!/bin/sh\necho new atelier\n")
	if err := os.WriteFile(bin, payload, 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(payload)
	remote := filepath.Join(s.dir, "remote-atelier")
	script := "#!/bin/sh\necho \"remote got: $*\"\nsha256sum \"$3\"\necho \"mode $(stat -c %a \"$3\")\"\necho progress line 2 >&2\n"
	if err := os.WriteFile(remote, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := Run(context.Background(), Options{Target: s.target(t, s.hostKey), Binary: bin, RemoteAtelier: remote,
		UpdateArgs: []string{"--timeout=30s"}, Dial: s.dial, Out: &out})
	t.Log(out.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"checksum verified", "remote got: update --binary /tmp/atelier-deploy.", " --timeout=30s",
		hex.EncodeToString(sum[:]), "mode 700", "progress line 2"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// The temp directory is gone from the server afterwards.
	left, _ := filepath.Glob("/tmp/atelier-deploy.*")
	for _, l := range left {
		if strings.Contains(out.String(), l) {
			t.Errorf("remote temp dir %s left behind", l)
		}
	}

	// A failing update is the deploy's failure, with its exit status.
	if err := os.WriteFile(remote, []byte("#!/bin/sh\necho rolling back\nexit 7\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	err = Run(context.Background(), Options{Target: s.target(t, s.hostKey), Binary: bin, RemoteAtelier: remote, Dial: s.dial, Out: &out})
	if err == nil || !strings.Contains(err.Error(), "exit status 7") || !strings.Contains(out.String(), "rolling back") {
		t.Fatalf("failing update: %v\n%s", err, out.String())
	}
}

// TestDeployRefusesUnknownHostKeys: a network peer answering for the
// server (a key not recorded, or a different one) gets no binary and runs
// nothing: the handshake stops before any session.
func TestDeployRefusesUnknownHostKeys(t *testing.T) {
	s := startSSHD(t)
	bin := filepath.Join(t.TempDir(), "atelier")
	os.WriteFile(bin, []byte("x"), 0o755)
	marker := filepath.Join(s.dir, "ran")
	remote := filepath.Join(s.dir, "remote-atelier")
	os.WriteFile(remote, []byte("#!/bin/sh\ntouch "+marker+"\n"), 0o755)
	other := writeKey(t, filepath.Join(t.TempDir(), "other"))
	for _, tc := range []struct {
		name  string
		known ssh.PublicKey
		want  string
	}{
		{"unknown", nil, "is not in"},
		{"changed", other, "HOST KEY MISMATCH"},
	} {
		err := Run(context.Background(), Options{Target: s.target(t, tc.known), Binary: bin, RemoteAtelier: remote, Dial: s.dial})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s host key: %v", tc.name, err)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the remote update ran despite an unverified host key")
	}
}

func TestQuoteRefusesShellSyntax(t *testing.T) {
	for _, s := range []string{"/usr/local/bin/atelier; rm -rf /", "$(id)", "a b", "'", "`x`"} {
		if _, err := quote(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

func TestSSHConfig(t *testing.T) {
	cfg := `# comment
Host prod srv-*
  HostName 203.0.113.9
  User deploy
  IdentityFile ~/.ssh/prod_%h
Host *
  User nobody
  Port 2200
  IdentityFile ~/.ssh/id_default
Host !srv-x srv-*
  Port 2300
`
	hc := ParseSSHConfig(strings.NewReader(cfg), "prod", "/home/me")
	if hc.HostName != "203.0.113.9" || hc.User != "deploy" || hc.Port != 2200 ||
		len(hc.IdentityFiles) != 2 || hc.IdentityFiles[0] != "/home/me/.ssh/prod_203.0.113.9" {
		t.Fatalf("prod: %+v", hc)
	}
	if hc := ParseSSHConfig(strings.NewReader(cfg), "srv-x", "/h"); hc.Port != 2200 {
		t.Fatalf("negated pattern: %+v", hc)
	}
	if hc := ParseSSHConfig(strings.NewReader(cfg), "other", "/h"); hc.HostName != "" || hc.User != "nobody" {
		t.Fatalf("other: %+v", hc)
	}
}

func TestResolveFromEnvAndConfig(t *testing.T) {
	home := t.TempDir()
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	os.WriteFile(filepath.Join(home, ".ssh", "config"), []byte("Host box\n HostName 198.51.100.4\n User ops\n Port 2022\n IdentityFile ~/.ssh/box\n"), 0o600)
	os.WriteFile(filepath.Join(home, ".ssh", "box"), []byte("k"), 0o600)
	t.Setenv("SSH_HOST", "box")
	t.Setenv("SSH_USER", "")
	t.Setenv("SSH_KEY_PATH", "")
	tg, err := Resolve("", "", "", 0, home, "me")
	if err != nil || tg.Host != "198.51.100.4" || tg.User != "ops" || tg.Port != 2022 || tg.KeyPath != filepath.Join(home, ".ssh/box") ||
		tg.KnownHosts != filepath.Join(home, ".ssh/known_hosts") {
		t.Fatalf("%+v %v", tg, err)
	}
	t.Setenv("SSH_USER", "root")
	t.Setenv("SSH_KEY_PATH", "~/.ssh/other")
	if tg, _ := Resolve("", "", "", 0, home, "me"); tg.User != "root" || tg.KeyPath != filepath.Join(home, ".ssh/other") {
		t.Fatalf("env over config: %+v", tg)
	}
}

func TestBuildArgv(t *testing.T) {
	r := hostcmdtest.New(t, hostcmdtest.Cmd("/usr/bin/env", "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64",
		"/usr/local/go/bin/go", "-C", "/src/atelier", "build", "-trimpath", "-ldflags", "-s -w -X atelier/internal/server.Version=v1.2.3",
		"-o", "/tmp/x/atelier", "./cmd/atelier"))
	if err := Build(context.Background(), r, nil, BuildArgv("/usr/local/go/bin/go", "/src/atelier", "arm64", "v1.2.3", "/tmp/x/atelier")); err != nil {
		t.Fatal(err)
	}
}
