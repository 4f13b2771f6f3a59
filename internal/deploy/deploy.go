// Package deploy is `atelier deploy`: from a developer's machine, build
// the atelier binary for the server, copy it there over SSH, check its
// SHA-256 on the server, and run `atelier update --binary` there with its
// output streamed back. The server's host key must already be in
// known_hosts (checked with x/crypto's knownhosts): an unknown or changed
// key stops the deploy before anything is sent.
package deploy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"atelier/internal/hostcmd"
)

// Target is where to deploy, resolved from flags, SSH_HOST, SSH_USER,
// SSH_KEY_PATH and ~/.ssh/config.
type Target struct {
	// Alias is what the user named (SSH_HOST); Host is what is dialled.
	Alias, Host string
	User        string
	Port        int
	KeyPath     string
	KnownHosts  string
}

// Resolve fills a target: explicit values (flags, then the seed's
// SSH_HOST, SSH_USER, SSH_KEY_PATH) win over ~/.ssh/config for the alias,
// which wins over the defaults (port 22, the local user, ~/.ssh/id_ed25519).
func Resolve(host, user, key string, port int, home, localUser string) (Target, error) {
	if host == "" {
		host = os.Getenv("SSH_HOST")
	}
	if user == "" {
		user = os.Getenv("SSH_USER")
	}
	if key == "" {
		key = os.Getenv("SSH_KEY_PATH")
	}
	if host == "" {
		return Target{}, errors.New("no server: pass --host or set SSH_HOST")
	}
	hc := LoadSSHConfig(home, host)
	t := Target{Alias: host, Host: host, User: user, Port: port, KeyPath: expand(key, home), KnownHosts: hc.KnownHostsFile}
	if hc.HostName != "" {
		t.Host = hc.HostName
	}
	if t.User == "" {
		t.User = hc.User
	}
	if t.User == "" {
		t.User = localUser
	}
	if t.Port == 0 {
		t.Port = hc.Port
	}
	if t.Port == 0 {
		t.Port = 22
	}
	if t.KeyPath == "" {
		for _, f := range append(hc.IdentityFiles, filepath.Join(home, ".ssh", "id_ed25519"), filepath.Join(home, ".ssh", "id_ecdsa"), filepath.Join(home, ".ssh", "id_rsa")) {
			if _, err := os.Stat(f); err == nil {
				t.KeyPath = f
				break
			}
		}
	}
	if t.KeyPath == "" {
		return Target{}, errors.New("no SSH key: pass --key or set SSH_KEY_PATH")
	}
	if t.KnownHosts == "" {
		t.KnownHosts = filepath.Join(home, ".ssh", "known_hosts")
	}
	return t, nil
}

// Options of one deploy.
type Options struct {
	Target Target
	// Binary is the binary to send (built by Build, or --binary).
	Binary string
	// RemoteAtelier is the server's installed atelier, which runs the update.
	RemoteAtelier string
	// UpdateArgs are added to the remote update (--timeout, --rebuild-images).
	UpdateArgs []string
	// Dial opens the TCP connection (tests dial into their namespace).
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	Out  io.Writer
}

// safeRemote is what may stand in a remote command line: the server's
// shell reads it, so nothing it could interpret.
var safeRemote = regexp.MustCompile(`^[A-Za-z0-9_./=:-]+$`)

func quote(s string) (string, error) {
	if !safeRemote.MatchString(s) {
		return "", fmt.Errorf("%q cannot be passed to the server's shell safely", s)
	}
	return "'" + s + "'", nil
}

// Run copies the binary, checks it and runs the update remotely.
func Run(ctx context.Context, o Options) error {
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.RemoteAtelier == "" {
		o.RemoteAtelier = "/usr/local/bin/atelier"
	}
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return fmt.Errorf("read the binary to deploy: %w", err)
	}
	sum := sha256.Sum256(bin)
	want := hex.EncodeToString(sum[:])
	c, err := Connect(ctx, o.Target, o.Dial)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(o.Out, "connected to %s@%s:%d (host key known)\n", o.Target.User, o.Target.Host, o.Target.Port)

	dir, err := output(c, nil, "mktemp -d /tmp/atelier-deploy.XXXXXXXX")
	if err != nil {
		return fmt.Errorf("make a directory on the server: %w", err)
	}
	dir = strings.TrimSpace(dir)
	qdir, err := quote(dir)
	if err != nil {
		return err
	}
	defer func() { _, _ = output(c, nil, "rm -rf -- "+qdir) }()
	remote := dir + "/atelier"
	qremote, _ := quote(remote)
	fmt.Fprintf(o.Out, "copying %s (%d bytes, sha256 %s) to %s\n", o.Binary, len(bin), want[:12], remote)
	if _, err := output(c, bytes.NewReader(bin), "umask 077 && cat > "+qremote+" && chmod 0700 "+qremote); err != nil {
		return fmt.Errorf("copy the binary: %w", err)
	}
	got, err := output(c, nil, "sha256sum -- "+qremote)
	if err != nil {
		return fmt.Errorf("checksum on the server: %w", err)
	}
	if f := strings.Fields(got); len(f) == 0 || f[0] != want {
		return fmt.Errorf("the copy on the server has sha256 %q, not %s: not installed", strings.TrimSpace(got), want)
	}
	fmt.Fprintf(o.Out, "checksum verified on the server\n")

	qbin, err := quote(o.RemoteAtelier)
	if err != nil {
		return err
	}
	cmd := qbin + " update --binary " + qremote
	for _, a := range o.UpdateArgs {
		q, err := quote(a)
		if err != nil {
			return err
		}
		cmd += " " + q
	}
	if o.Target.User != "root" {
		cmd = "sudo -n " + cmd
	}
	fmt.Fprintf(o.Out, "$ %s\n", cmd)
	s, err := c.NewSession()
	if err != nil {
		return err
	}
	defer s.Close()
	// One writer for both streams, serialised: the session copies each on
	// its own goroutine.
	w := &lockedWriter{w: o.Out}
	s.Stdout, s.Stderr = w, w
	if err := s.Run(cmd); err != nil {
		var ee *ssh.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("the update on the server failed (exit status %d)", ee.ExitStatus())
		}
		return fmt.Errorf("run the update on the server: %w", err)
	}
	return nil
}

// Connect opens an SSH connection with the target's key, accepting only a
// host key listed for the host in known_hosts.
func Connect(ctx context.Context, t Target, dial func(context.Context, string) (net.Conn, error)) (*ssh.Client, error) {
	keyPEM, err := os.ReadFile(t.KeyPath)
	if err != nil {
		return nil, fmt.Errorf("read SSH key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		var pe *ssh.PassphraseMissingError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("SSH key %s has a passphrase: load it into ssh-agent is not supported yet; use a deploy key without one", t.KeyPath)
		}
		return nil, fmt.Errorf("parse SSH key %s: %w", t.KeyPath, err)
	}
	hostKeys, err := knownhosts.New(t.KnownHosts)
	if err != nil {
		return nil, fmt.Errorf("read known hosts %s: %w (connect once with ssh to check and record the server's key)", t.KnownHosts, err)
	}
	check := func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		err := hostKeys(hostname, remote, key)
		var ke *knownhosts.KeyError
		if errors.As(err, &ke) {
			if len(ke.Want) == 0 {
				return fmt.Errorf("%s is not in %s: check its host key (%s) and connect once with ssh to record it", hostname, t.KnownHosts, ssh.FingerprintSHA256(key))
			}
			return fmt.Errorf("HOST KEY MISMATCH for %s: the server offered %s, %s records another; someone may be intercepting the connection", hostname, ssh.FingerprintSHA256(key), t.KnownHosts)
		}
		return err
	}
	addr := net.JoinHostPort(t.Host, strconv.Itoa(t.Port))
	if dial == nil {
		dial = func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}
	}
	conn, err := dial(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	cc, chans, reqs, err := ssh.NewClientConn(conn, addr, &ssh.ClientConfig{
		User: t.User, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)}, HostKeyCallback: check, Timeout: 30 * time.Second,
	})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("ssh %s@%s: %w", t.User, addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return ssh.NewClient(cc, chans, reqs), nil
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func output(c *ssh.Client, stdin io.Reader, cmd string) (string, error) {
	s, err := c.NewSession()
	if err != nil {
		return "", err
	}
	defer s.Close()
	var out, errb bytes.Buffer
	s.Stdin, s.Stdout, s.Stderr = stdin, &out, &errb
	if err := s.Run(cmd); err != nil {
		return "", fmt.Errorf("%s: %w: %s", cmd, err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// RemoteArch asks the server for its Go architecture.
func RemoteArch(c *ssh.Client) (string, error) {
	m, err := output(c, nil, "uname -m")
	if err != nil {
		return "", err
	}
	switch strings.TrimSpace(m) {
	case "x86_64":
		return "amd64", nil
	case "aarch64", "arm64":
		return "arm64", nil
	}
	return "", fmt.Errorf("unsupported server architecture %q", strings.TrimSpace(m))
}

// BuildArgv is the command that builds the server's binary from the
// module at src: static, for linux/arch, stamped with version.
func BuildArgv(goBin, src, arch, version, out string) []string {
	return []string{"/usr/bin/env", "CGO_ENABLED=0", "GOOS=linux", "GOARCH=" + arch,
		goBin, "-C", src, "build", "-trimpath", "-ldflags", "-s -w -X atelier/internal/server.Version=" + version,
		"-o", out, "./cmd/atelier"}
}

// Build runs a BuildArgv command.
func Build(ctx context.Context, r hostcmd.Runner, out io.Writer, argv []string) error {
	if err := r.Run(ctx, out, argv...); err != nil {
		return fmt.Errorf("build the server binary: %w", err)
	}
	return nil
}
