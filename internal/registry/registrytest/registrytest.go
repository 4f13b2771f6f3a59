// Package registrytest holds what the npm cache's tests share: the Verdaccio
// install CI provides, throwaway network namespaces, an uplink reachable
// from inside one, and npm run from inside one.
package registrytest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"atelier/internal/config"
	"atelier/internal/network"
	"atelier/internal/testenv"
)

// EnvVerdaccio names the directory holding Verdaccio installed by
// registry.Install (.ci/run sets it). This package does not import
// registry: the registry's own tests use it.
const EnvVerdaccio = "ATELIER_TEST_VERDACCIO_DIR"

// Version is the Verdaccio version the tests expect: the configured one.
var Version = config.Default().Advanced.Server.Verdaccio.Version

// VerdaccioDir returns the Verdaccio install CI made, skipping the test
// when there is none (or when not root: the tests use namespaces).
func VerdaccioDir(tb testing.TB) string {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("requires root: runs Verdaccio in a network namespace")
	}
	dir := os.Getenv(EnvVerdaccio)
	if dir == "" {
		testenv.Missing(tb, "%s is not set: run .ci/run, or `atelier registry install --dir D` and export %s=D", EnvVerdaccio, EnvVerdaccio)
	}
	if !installed(dir) {
		testenv.Missing(tb, "%s=%s holds no Verdaccio %s: run `atelier registry install --dir %s`", EnvVerdaccio, dir, Version, dir)
	}
	if _, err := exec.LookPath("npm"); err != nil {
		testenv.Missing(tb, "requires npm (apt-get install nodejs npm)")
	}
	return dir
}

// installed mirrors registry.Installed (which this package cannot import:
// the registry's own tests use this package).
func installed(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "node_modules", "verdaccio", "package.json"))
	if err != nil {
		return false
	}
	var m struct{ Version string }
	return json.Unmarshal(b, &m) == nil && m.Version == Version
}

// UserName is a fresh name for the system user a test's Verdaccio runs
// as; the supervisor creates the user (as production does) and the test's
// cleanup deletes it, with its group, if it exists by then. Register it
// before anything that must stop first (the supervisor's Stop): cleanups
// run last-registered first, and userdel refuses a user with processes.
func UserName(tb testing.TB) string {
	tb.Helper()
	b := make([]byte, 3)
	rand.Read(b)
	name := "atlreg-" + hex.EncodeToString(b)
	tb.Cleanup(func() {
		if _, err := user.Lookup(name); err != nil {
			return
		}
		for try := 0; ; try++ {
			out, err := exec.Command("userdel", name).CombinedOutput()
			if err == nil {
				return
			}
			// /etc/passwd locked by a concurrent useradd or userdel.
			if try < 50 && bytes.Contains(out, []byte("lock")) {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			tb.Errorf("userdel %s: %v: %s", name, err, out)
			return
		}
	})
	return name
}

// Dir is a temporary directory that every user can reach (t.TempDir's
// parent is private to root), for a Verdaccio running as its own user.
func Dir(tb testing.TB) string {
	tb.Helper()
	d, err := os.MkdirTemp("", "atlreg")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		tb.Fatal(err)
	}
	return d
}

// Netns creates a network namespace with loopback up and returns its name
// and path; the test's cleanup deletes it.
func Netns(tb testing.TB) (name, path string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("requires root: creates network namespaces")
	}
	b := make([]byte, 3)
	rand.Read(b)
	name = "atlreg-" + hex.EncodeToString(b)
	run(tb, "ip", "netns", "add", name)
	tb.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run(tb, "ip", "-n", name, "link", "set", "lo", "up")
	return name, "/var/run/netns/" + name
}

func run(tb testing.TB, args ...string) {
	tb.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		tb.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Uplink is the host's npm registry made reachable inside a namespace: a
// reverse proxy listening on the namespace's loopback, forwarding from the
// test's own namespace.
type Uplink struct {
	URL      string
	srv      *http.Server
	requests atomic.Int64
}

// Requests counts the requests the uplink received.
func (u *Uplink) Requests() int64 { return u.requests.Load() }

// Close makes the uplink unreachable: connections are refused from now on.
func (u *Uplink) Close() { u.srv.Close() }

// StartUplink serves the host's npm registry at http://127.0.0.1:<port>/
// inside the namespace at nsPath until the test ends or Close.
func StartUplink(tb testing.TB, nsPath string) *Uplink {
	tb.Helper()
	return startUplink(tb, nsPath, nil)
}

// StartUplinkTLS is StartUplink over HTTPS with a certificate of a CA of
// its own, as a TLS-intercepting proxy presents: caFile (in a directory
// only root can read) is that CA, which nothing trusts by default.
func StartUplinkTLS(tb testing.TB, nsPath string) (u *Uplink, caFile string) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "atelier test uplink CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	private, err := os.MkdirTemp("", "atlca")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(private) })
	caFile = filepath.Join(private, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	return startUplink(tb, nsPath, cfg), caFile
}

func startUplink(tb testing.TB, nsPath string, tlsCfg *tls.Config) *Uplink {
	tb.Helper()
	out, err := exec.Command("npm", "config", "get", "registry").Output()
	if err != nil {
		tb.Fatalf("npm config get registry: %v", err)
	}
	tu, err := url.Parse(strings.TrimSpace(string(out)))
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := listenIn(nsPath, "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	scheme := "http://"
	if tlsCfg != nil {
		ln, scheme = tls.NewListener(ln, tlsCfg), "https://"
	}
	u := &Uplink{URL: scheme + ln.Addr().String() + "/"}
	// Metadata names tarballs by absolute URL on the real registry, which
	// the namespace cannot reach: point them at the proxy instead.
	from, to := []byte(strings.TrimSuffix(tu.String(), "/")+"/"), []byte(u.URL)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(tu)
			// Go's transport then asks for gzip itself and hands us the
			// decompressed body.
			pr.Out.Header.Del("Accept-Encoding")
		},
		ModifyResponse: func(res *http.Response) error {
			if !strings.Contains(res.Header.Get("Content-Type"), "json") {
				return nil
			}
			b, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil {
				return err
			}
			b = bytes.ReplaceAll(b, from, to)
			res.Body = io.NopCloser(bytes.NewReader(b))
			res.ContentLength = int64(len(b))
			res.Header.Set("Content-Length", strconv.Itoa(len(b)))
			res.Header.Del("Content-Encoding")
			res.Header.Del("ETag")
			return nil
		},
	}
	u.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.requests.Add(1)
		rp.ServeHTTP(w, r)
	}), ReadHeaderTimeout: 10 * time.Second}
	go u.srv.Serve(ln)
	tb.Cleanup(u.Close)
	return u
}

// listenIn opens a listener inside the namespace at nsPath; the socket
// stays there while this process serves it from any thread.
func listenIn(nsPath, addr string) (net.Listener, error) {
	var ln net.Listener
	err := network.DoAt(nsPath, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	return ln, err
}

// NpmInstall runs `npm install pkgs` inside the named namespace with
// userconfig as npm's user config, a fresh npm cache (so every tarball is
// fetched from the registry) and prefix as the project directory.
func NpmInstall(ctx context.Context, nsName, userconfig, prefix string, pkgs ...string) error {
	cache, err := os.MkdirTemp("", "atlnpmcache")
	if err != nil {
		return err
	}
	defer os.RemoveAll(cache)
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	args := append([]string{"netns", "exec", nsName, "npm", "install",
		"--userconfig", userconfig, "--cache", cache, "--prefix", prefix,
		"--no-audit", "--no-fund", "--no-update-notifier", "--fetch-retries=1", "--loglevel=error"}, pkgs...)
	cmd := exec.CommandContext(ctx, "ip", args...)
	// Settings from the environment would override the user config.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(strings.ToLower(kv), "npm_config_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("npm install %s in netns %s: %w\n%s", strings.Join(pkgs, " "), nsName, err, out)
	}
	return nil
}

// Client is an HTTP client whose connections start inside the namespace at
// nsPath (only literal addresses: names would resolve outside it).
func Client(nsPath string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: network.DialAt(nsPath, nil), DisableKeepAlives: true}}
}
