package agentpki_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"atelier/internal/agent"
	"atelier/internal/agentpki"
)

// writeCreds lays out what the sandbox's Secret mounts: ca.crt, tls.crt, tls.key.
func writeCreds(t *testing.T, ca *agentpki.CA, id string) string {
	t.Helper()
	dir := t.TempDir()
	c, k, err := ca.IssueAgent(id)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{agentpki.CAFile: ca.CertPEM(), agentpki.CertFile: c, agentpki.KeyFile: k} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// serveAgent runs an HTTPS stand-in for the agent on loopback with the
// agent's TLS config, answering its sandbox id.
func serveAgent(t *testing.T, dir, id string) string {
	t.Helper()
	cfg, err := agentpki.ServerConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, id) }),
		ErrorLog: nil}
	go srv.Serve(tls.NewListener(ln, cfg))
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func get(t *testing.T, addr string, cfg *tls.Config) (string, error) {
	t.Helper()
	d := agent.TLSDialer(func(context.Context) (string, error) { return addr, nil }, cfg, nil)
	c := agent.New(d)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://agent/", nil)
	resp, err := c.HTTPClient().Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestMutualTLS(t *testing.T) {
	ca, err := agentpki.LoadOrCreate(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := agentpki.LoadOrCreate(filepath.Join(t.TempDir(), "other"))
	if err != nil {
		t.Fatal(err)
	}
	dirA := writeCreds(t, ca, "aaaaaaaaaaaa")
	dirB := writeCreds(t, ca, "bbbbbbbbbbbb")
	addrA := serveAgent(t, dirA, "aaaaaaaaaaaa")

	// A sandbox's own credential, presented as a client certificate to
	// another sandbox's agent (a hostile guest that read its Secret).
	bCert, err := tls.LoadX509KeyPair(filepath.Join(dirB, agentpki.CertFile), filepath.Join(dirB, agentpki.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	asB := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: ca.Pool(), ServerName: agentpki.ServerName("aaaaaaaaaaaa"),
		Certificates: []tls.Certificate{bCert}}
	noCert := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: ca.Pool(), ServerName: agentpki.ServerName("aaaaaaaaaaaa")}

	cases := []struct {
		name    string
		cfg     *tls.Config
		wantErr string
	}{
		{"the manager reaches the sandbox it means", ca.ClientConfig("aaaaaaaaaaaa"), ""},
		// Pod A answering where the manager expects sandbox B (a reused
		// pod IP, or a guest that took B's address): refused by name.
		{"impersonating another sandbox is refused", ca.ClientConfig("bbbbbbbbbbbb"), "certificate is valid for aaaaaaaaaaaa.agent.atelier.internal, not bbbbbbbbbbbb.agent.atelier.internal"},
		{"a manager of another CA is refused", other.ClientConfig("aaaaaaaaaaaa"), "certificate signed by unknown authority"},
		{"a sandbox's server certificate is no client certificate", asB, "bad certificate"},
		{"no client certificate is refused", noCert, "certificate required"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body, err := get(t, addrA, tc.cfg)
			if tc.wantErr == "" {
				if err != nil || body != "aaaaaaaaaaaa" {
					t.Fatalf("got %q, %v", body, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// A client certificate from the CA for client auth but not the manager's
// subject is refused: the CN pin, not only the CA, makes the manager.
func TestAgentPinsManagerSubject(t *testing.T) {
	ca, err := agentpki.LoadOrCreate(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatal(err)
	}
	dir := writeCreds(t, ca, "aaaaaaaaaaaa")
	cfg, err := agentpki.ServerConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.VerifyPeerCertificate(nil, nil); err == nil {
		t.Fatal("no verified chain accepted")
	}
}

// Rotation: the agent serves the certificate its Secret holds now.
func TestAgentReloadsRotatedCertificate(t *testing.T) {
	ca, err := agentpki.LoadOrCreate(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatal(err)
	}
	dir := writeCreds(t, ca, "aaaaaaaaaaaa")
	addr := serveAgent(t, dir, "aaaaaaaaaaaa")
	if _, err := get(t, addr, ca.ClientConfig("aaaaaaaaaaaa")); err != nil {
		t.Fatal(err)
	}
	// The same directory now holds another sandbox's credential (the files
	// swapped under a running agent): the next handshake shows it.
	c, k, err := ca.IssueAgent("cccccccccccc")
	if err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(2 * time.Second)
	for name, b := range map[string][]byte{agentpki.CertFile: c, agentpki.KeyFile: k} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, later, later)
	}
	if _, err := get(t, addr, ca.ClientConfig("aaaaaaaaaaaa")); err == nil {
		t.Fatal("old name still served after the rotation")
	}
	if _, err := get(t, addr, ca.ClientConfig("cccccccccccc")); err != nil {
		t.Fatal(err)
	}
}

func TestLoadOrCreate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	a, err := agentpki.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "ca.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("ca.key mode %v, %v", fi.Mode(), err)
	}
	di, _ := os.Stat(dir)
	if di.Mode().Perm() != 0o700 {
		t.Fatalf("ca dir mode %v", di.Mode())
	}
	b, err := agentpki.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if string(a.CertPEM()) != string(b.CertPEM()) {
		t.Fatal("a second load made a new CA")
	}
	os.Remove(filepath.Join(dir, "ca.key"))
	if _, err := agentpki.LoadOrCreate(dir); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("half a CA: %v", err)
	}
}
