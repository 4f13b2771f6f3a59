package workspace

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"atelier/internal/testenv"
)

// TestLsRemoteTrust: the host's git ls-remote reaches an https git server
// whose certificate only the manager's GIT_SSL_CAINFO trusts (a private
// CA), with the source's token; a CA file that does not hold it fails the
// check instead of trusting anything. The rest of the manager's
// environment does not reach git: a GIT_DIR there changes nothing.
func TestLsRemoteTrust(t *testing.T) {
	backend, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		testenv.Missing(t, "requires git: %v", err)
	}
	const token = "lsr-token-4b1e"
	root := t.TempDir()
	work := filepath.Join(root, "w")
	for _, argv := range [][]string{
		{"init", "-q", "-b", "main", work},
		{"-C", work, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "one"},
		{"clone", "-q", "--bare", work, filepath.Join(root, "r.git")},
	} {
		if out, err := exec.Command("git", argv...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v %s", argv, err, out)
		}
	}
	head, _ := exec.Command("git", "-C", work, "rev-parse", "HEAD").Output()
	cgiH := &cgi.Handler{Path: filepath.Join(strings.TrimSpace(string(backend)), "git-http-backend"),
		Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"}}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pw, ok := r.BasicAuth(); !ok || pw != token {
			w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
			http.Error(w, "token required", http.StatusUnauthorized)
			return
		}
		cgiH.ServeHTTP(w, r)
	}))
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	// Another CA (httptest's servers all share one certificate).
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "another CA"}, IsCA: true,
		BasicConstraintsValid: true, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	otherCA := filepath.Join(t.TempDir(), "other.pem")
	if err := os.WriteFile(otherCA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	cred := Credential{Username: "x-access-token", Token: token}
	repo := srv.URL + "/r.git"
	t.Setenv("GIT_DIR", "/nonexistent-git-dir")

	for _, tc := range []struct {
		name, caFile string
		ok           bool
	}{
		{"the server's CA", ca, true},
		{"another CA", otherCA, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("GIT_SSL_CAINFO", tc.caFile)
			heads, err := LsRemote(context.Background(), repo, "main", cred)
			if tc.ok && (err != nil || heads["main"] != strings.TrimSpace(string(head))) {
				t.Fatalf("ls-remote: %v %v, want main at %s", heads, err, head)
			}
			if !tc.ok && (err == nil || !strings.Contains(err.Error(), "certificate")) {
				t.Fatalf("ls-remote with an untrusted certificate: %v %v", heads, err)
			}
		})
	}
}
