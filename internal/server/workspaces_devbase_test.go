package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"atelier/internal/edge/edgetest"
	"atelier/internal/network"
	"atelier/internal/store"
	"atelier/internal/testenv"
)

// The private git server of TestWorkspaceDevBase: an address in the
// fixture's wan namespace that the egress firewall drops by default (10/8),
// opened to guests by network.egressAllowCidrs for this one address.
const privateGitIP = "10.77.0.2"

// privateGit is git http-backend behind TLS (a test CA's certificate) in a
// namespace the test made, answering only requests with the token.
type privateGit struct {
	URL    string
	root   string
	authed atomic.Int64 // requests that carried the token
}

// testCA makes a CA and a server certificate it signs for ip; it returns
// the CA's PEM and the server's TLS certificate.
func testCA(t testing.TB, ip string) ([]byte, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "atelier test git CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: ip},
		IPAddresses: []net.IP{net.ParseIP(ip)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// startPrivateGit serves the bare repositories under a temporary root at
// https://{privateGitIP}/ inside the namespace at nsPath.
func startPrivateGit(t testing.TB, nsPath, token string, cert tls.Certificate) *privateGit {
	t.Helper()
	backend, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		testenv.Missing(t, "requires git: %v", err)
	}
	g := &privateGit{URL: "https://" + privateGitIP, root: t.TempDir()}
	h := &cgi.Handler{Path: filepath.Join(strings.TrimSpace(string(backend)), "git-http-backend"),
		Env: []string{"GIT_PROJECT_ROOT=" + g.root, "GIT_HTTP_EXPORT_ALL=1"}, Stderr: io.Discard}
	var ln net.Listener
	if err := network.DoAt(nsPath, func() (err error) { ln, err = net.Listen("tcp", privateGitIP+":443"); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pw, ok := r.BasicAuth(); !ok || pw != token {
			w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
			http.Error(w, "token required", http.StatusUnauthorized)
			return
		}
		g.authed.Add(1)
		h.ServeHTTP(w, r)
	})}
	go srv.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}}))
	t.Cleanup(func() { srv.Close() })
	return g
}

// repo makes bare repository name.git on branch main with files (pushes
// allowed) and returns its commit.
func (g *privateGit) repo(t testing.TB, name string, files map[string]string) string {
	t.Helper()
	gs := &gitServer{root: g.root}
	c := gs.repo(t, name, files)
	git(t, filepath.Join(g.root, name+".git"), "config", "http.receivepack", "true")
	return c
}

// trustCA appends the CA to the system bundle of the ext4 image at path, as
// an operator bakes a private CA into an image.
func trustCA(t testing.TB, image string, caPEM []byte) {
	t.Helper()
	mnt := t.TempDir()
	sh(t, "mount", "-o", "loop", image, mnt)
	defer sh(t, "umount", mnt)
	bundle := filepath.Join(mnt, "etc/ssl/certs/ca-certificates.crt")
	for range 4 { // a link to another place in the image
		target, err := os.Readlink(bundle)
		if err != nil {
			break
		}
		if filepath.IsAbs(target) {
			bundle = filepath.Join(mnt, target)
		} else {
			bundle = filepath.Join(filepath.Dir(bundle), target)
		}
	}
	fd, err := os.OpenFile(bundle, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("the image's CA bundle: %v", err)
	}
	if _, err := fd.Write(caPEM); err != nil {
		t.Fatal(err)
	}
	if err := fd.Close(); err != nil {
		t.Fatal(err)
	}
}

// fileHolds reads the data extents of path (skipping a sparse file's holes)
// and returns which of needles occur in it and how many bytes it read.
func fileHolds(t testing.TB, path string, needles map[string][]byte) ([]string, int64) {
	t.Helper()
	fd, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	st, _ := fd.Stat()
	longest := 0
	for _, n := range needles {
		longest = max(longest, len(n))
	}
	found := map[string]bool{}
	buf := make([]byte, 8<<20)
	var total int64
	for off := int64(0); off < st.Size(); {
		data, err := unix.Seek(int(fd.Fd()), off, unix.SEEK_DATA)
		if err != nil { // ENXIO: no data after off
			break
		}
		hole, err := unix.Seek(int(fd.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			hole = st.Size()
		}
		// Chunks overlap by the longest needle, so none is split unseen.
		for pos := data; pos < hole; {
			n := int64(len(buf))
			if hole-pos < n {
				n = hole - pos
			}
			got, err := fd.ReadAt(buf[:n], pos)
			if err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			total += int64(got)
			for name, nd := range needles {
				if bytes.Contains(buf[:got], nd) {
					found[name] = true
				}
			}
			if pos+int64(got) >= hole || got == 0 {
				break
			}
			pos += int64(got) - int64(longest)
		}
		off = hole
	}
	var out []string
	for name := range found {
		out = append(out, name)
	}
	return out, total
}

// TestWorkspaceDevBase is issue 13's end to end on a real runtime: the
// container runtime on the dev-base image, the manager in the fixture's
// host namespace (as on a real host) and a private git server (git
// http-backend behind TLS with a token, a test CA the image and the
// manager's GIT_SSL_CAINFO trust) in the wan namespace on an address only
// egressAllowCidrs opens. A workspace with that repository, two init
// commands (a build and a stamp), a dev command (node HTTP server), a
// secret variable and a secret file makes a sandbox from the image (clone,
// init and dev server in the create) and is prebuilt; sandboxes from the
// prebuild have the clone at the prebuild's commit and the init results
// without running them again, the dev server answers on dev-web-{id}
// through the edge (TLS), the secrets are where they belong and sealed in
// the store. The guest's own git pulls and pushes with credentials asked on
// demand (agent guest socket -> manager broker), which answers no other
// host, port or scheme, as the image user or root. The guest's push moves
// the branch: the staleness check rebuilds; with the repository gone the
// check is a 502 and changes nothing; a broken init command fails a build,
// which keeps the previous prebuild for new sandboxes. The token is in no
// process environment, no git config or remote URL, and not on the stopped
// sandbox's disk nor the prebuild's (their bytes are searched).
func TestWorkspaceDevBase(t *testing.T) {
	image := devBaseImage(t)
	// Fresh values each run: nothing on the image or the host can hold them
	// from before, so any find in a disk or environment is this run's leak.
	rnd := func(prefix string) string {
		b := make([]byte, 8)
		rand.Read(b)
		return prefix + hex.EncodeToString(b)
	}
	token, secretVal, fileVal := rnd("glpat-DEVBASE-"), rnd("devbase-secret-env-"), rnd("devbase-secret-file-")
	f := newFixture(t)
	f.useDevBase(t, image)
	caPEM, gitCert := testCA(t, privateGitIP)
	trustCA(t, filepath.Join(f.cfg.Sandbox.StateDir, "images", "dev-base.ext4"), caPEM)
	caFile := filepath.Join(f.dir, "git-ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}

	wanNS, hostNS := "/var/run/netns/"+f.prefix+"wan", "/var/run/netns/"+f.prefix+"host"
	sh(t, "ip", "-n", f.prefix+"wan", "addr", "add", privateGitIP+"/32", "dev", "lo")
	gs := startPrivateGit(t, wanNS, token, gitCert)
	c1 := gs.repo(t, "app", map[string]string{
		"README": "hello from the private repo\n",
		// A dependency from the repository itself: npm installs it with no
		// registry, as the test's sandboxes have no internet.
		"package.json":       `{"name":"app","version":"1.0.0","private":true,"dependencies":{"greet":"file:greet"}}` + "\n",
		"greet/package.json": `{"name":"greet","version":"1.0.0","main":"index.js"}` + "\n",
		"greet/index.js":     "module.exports = 'hello from greet';\n",
		".gitignore":         "node_modules/\ndist/\n",
		"build.sh":           "mkdir -p dist && printf 'built %s\\n' \"$(git rev-parse --short HEAD)\" > dist/out.txt\n",
		"server.js": `const fs = require('fs');
require('http').createServer((req, res) => {
  res.end('dev-server ' + fs.readFileSync(__dirname + '/dist/out.txt', 'utf8'));
}).listen(3000, '0.0.0.0');
`,
	})
	repoURL := gs.URL + "/app.git"

	f.cfg.Network.EgressAllowCIDRs = []string{privateGitIP + "/32"}
	certPath, keyPath, pool := edgetest.WildcardCert(t, "atelier.test")
	f.cfg.Domain.TLS.CertPath, f.cfg.Domain.TLS.KeyPath = certPath, keyPath
	// The manager runs in the host namespace, whose default route leads to
	// the git server, as a real host's does; its git trusts the test CA
	// through the operator's GIT_SSL_CAINFO.
	m := f.spawnWith(t, []string{"nsenter", "--net=" + hostNS}, "GIT_SSL_CAINFO="+caFile)
	var ids []string
	t.Cleanup(func() {
		for _, id := range ids {
			f.call(t, "DELETE", "/api/sandboxes/"+id, "")
		}
		if t.Failed() {
			t.Logf("manager log:\n%s", m.logs.String())
		}
	})
	call := func(method, path string, body any) (int, []byte) {
		t.Helper()
		var s string
		if body != nil {
			b, _ := json.Marshal(body)
			s = string(b)
		}
		return f.call(t, method, path, s)
	}
	type result struct {
		ExitCode       int
		Stdout, Stderr string
	}
	// run execs a shell command as the image user, as a person's terminal does.
	run := func(id, cmd string) string {
		t.Helper()
		code, b := call("POST", "/api/sandboxes/"+id+"/exec", map[string]any{"argv": []string{"bash", "-lc", cmd}, "user": "dev", "timeoutMs": 60000})
		var r result
		if code != 200 || json.Unmarshal(b, &r) != nil || r.ExitCode != 0 {
			t.Fatalf("exec %q in %s: %d %s", cmd, id, code, b)
		}
		return r.Stdout
	}
	edge := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return network.DialAt(hostNS, nil)(ctx, "tcp", "127.0.0.1:"+strconv.Itoa(f.cfg.Domain.HTTPSPort))
		}}}
	// devServer waits for the dev server's answer through the edge.
	devServer := func(id string, within time.Duration) string {
		t.Helper()
		u := "https://dev-web-" + id + ".atelier.test:" + strconv.Itoa(f.cfg.Domain.HTTPSPort) + "/"
		var last string
		for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			res, err := edge.Get(u)
			if err != nil {
				last = err.Error()
				continue
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode == 200 && strings.HasPrefix(string(b), "dev-server ") {
				return string(b)
			}
			last = fmt.Sprintf("%d %s", res.StatusCode, b)
		}
		t.Fatalf("dev server of %s through the edge: %s", id, last)
		return ""
	}

	code, body := call("POST", "/api/git-sources", map[string]any{"name": "private", "url": gs.URL, "token": token})
	if code != http.StatusCreated || bytes.Contains(body, []byte(token)) {
		t.Fatalf("git source: %d %s", code, body)
	}
	var src struct{ ID string }
	_ = json.Unmarshal(body, &src)
	// The host's git (branches, staleness) reaches it too, trusting the CA.
	if code, b := call("GET", "/api/git-sources/"+src.ID+"/branches?url="+repoURL, nil); code != 200 || !strings.Contains(string(b), `"name":"main","commit":"`+c1+`"`) {
		t.Fatalf("branches: %d %s", code, b)
	}
	wsCfg := map[string]any{
		"vcpus": 2, "memoryMb": 2048,
		"repos":        []any{map[string]any{"url": repoURL, "sourceId": src.ID}},
		"initCommands": []string{"cd app && sh build.sh", "date +%s%N > stamp.txt"},
		"devCommands":  []any{map[string]any{"name": "web", "command": "exec node app/server.js", "port": 3000, "default": true, "public": true}},
		"env":          map[string]string{"MODE": "dev"},
		"useNpmCache":  true,
	}
	code, body = call("POST", "/api/workspaces", map[string]any{"name": "app", "config": wsCfg,
		"secretEnv":   map[string]string{"API_KEY": secretVal},
		"secretFiles": []any{map[string]any{"path": "~/.config/app/key", "content": fileVal, "mode": "0400"}}})
	if code != http.StatusCreated {
		t.Fatalf("workspace: %d %s", code, body)
	}
	var ws struct{ ID string }
	_ = json.Unmarshal(body, &ws)
	pbPath := "/api/workspaces/" + ws.ID + "/prebuild"
	type prebuild struct {
		Status, Error, Log string
		Ready, Stale       bool
		Commits            map[string]string
	}
	wait := func(want string) (prebuild, time.Duration) {
		t.Helper()
		began := time.Now()
		var pb prebuild
		for end := time.Now().Add(3 * time.Minute); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
			_, b := call("GET", pbPath, nil)
			pb = prebuild{}
			_ = json.Unmarshal(b, &pb)
			if pb.Status != "building" {
				break
			}
		}
		if pb.Status != want {
			t.Fatalf("prebuild %s, want %s: %+v", pb.Status, want, pb)
		}
		return pb, time.Since(began)
	}
	create := func() (string, time.Duration) {
		t.Helper()
		t0 := time.Now()
		code, b := call("POST", "/api/sandboxes", map[string]any{"workspaceId": ws.ID})
		var v struct{ ID, Status string }
		_ = json.Unmarshal(b, &v)
		if v.ID != "" {
			ids = append(ids, v.ID)
		}
		if code != http.StatusCreated || v.Status != "running" {
			t.Fatalf("create from workspace: %d %s", code, b)
		}
		devServer(v.ID, 60*time.Second)
		return v.ID, time.Since(t0)
	}

	destroy := func(id string) {
		t.Helper()
		if code, b := call("DELETE", "/api/sandboxes/"+id, nil); code != http.StatusNoContent {
			t.Fatalf("destroy %s: %d %s", id, code, b)
		}
		for i, x := range ids {
			if x == id {
				ids = append(ids[:i], ids[i+1:]...)
				break
			}
		}
	}
	basic := []byte(base64.StdEncoding.EncodeToString([]byte("x-access-token:" + token)))
	tokens := map[string][]byte{"token": []byte(token), "token as Basic auth": basic}
	var searched []string

	// Without a prebuild: the create clones, runs the init commands and
	// starts the dev server itself.
	z, tookZ := create()
	t.Logf("create from the image (clone, init, dev server) -> dev server answering through the edge: %v", tookZ.Round(time.Millisecond))
	if got := run(z, `cd ~/workspace && git -C app rev-parse HEAD && printenv API_KEY`); got != c1+"\n"+secretVal+"\n" {
		t.Fatalf("sandbox from the image: %q", got)
	}
	destroy(z)

	// The prebuild: clone (the token for this one git process), build, stamp.
	t0 := time.Now()
	if code, b := call("POST", pbPath, nil); code != http.StatusAccepted {
		t.Fatalf("prebuild: %d %s", code, b)
	}
	pb, _ := wait("ready")
	prebuildTook := time.Since(t0)
	if pb.Commits["app"] != c1 || !strings.Contains(pb.Log, "ws-init-1 done") {
		t.Fatalf("ready prebuild: %+v", pb)
	}
	t.Logf("prebuild ready in %v", prebuildTook.Round(time.Millisecond))
	// The warm-ups ran for real, offline: npm from the repository alone,
	// OpenCode's first start without its models catalogue.
	warmLine := func(step string) string {
		for _, l := range strings.Split(pb.Log, "\n") {
			if strings.Contains(l, step) {
				return l
			}
		}
		return ""
	}
	npmLine, ocLine := warmLine("ws-warm-npm"), warmLine("ws-warm-opencode")
	t.Logf("warm-ups: %q; %q", npmLine, ocLine)
	if !strings.Contains(npmLine, "app: npm install via ") || strings.Contains(npmLine, "warning") {
		t.Errorf("npm warm-up: %q in\n%s", npmLine, pb.Log)
	}
	if !strings.Contains(ocLine, "app: opencode models in ") || strings.Contains(ocLine, "warning") {
		t.Errorf("OpenCode warm-up: %q in\n%s", ocLine, pb.Log)
	}
	// The prebuild's disk, byte by byte: no token, and no secret at all
	// (the build gets neither secret variables nor secret files).
	pbDisk := filepath.Join(f.cfg.Sandbox.StateDir, "prebuilds", ws.ID+".ext4")
	all := map[string][]byte{"secret variable": []byte(secretVal), "secret file": []byte(fileVal)}
	for k, v := range tokens {
		all[k] = v
	}
	t1 := time.Now()
	hit, n := fileHolds(t, pbDisk, all)
	if len(hit) > 0 || n < 100<<20 {
		t.Errorf("prebuild disk %s (%d MiB read): holds %v", pbDisk, n>>20, hit)
	}
	searched = append(searched, fmt.Sprintf("prebuild %d MiB in %v", n>>20, time.Since(t1).Round(time.Millisecond)))

	// Nothing moved: the check finds the prebuild current.
	if code, b := call("POST", pbPath+"/check", nil); code != 200 || !strings.Contains(string(b), `"stale":false`) {
		t.Fatalf("check, branch unmoved: %d %s", code, b)
	}

	// The branch moves after the prebuild: a sandbox from it starts at the
	// prebuild's commit and the background pull (the token for that one
	// git process) brings it to the new one.
	cPull := (&gitServer{root: gs.root}).commit(t, "app", "UPSTREAM", "after the prebuild\n")
	createdAt := time.Now()
	a, tookA := create()
	t.Logf("create from the prebuild -> dev server answering through the edge: %v", tookA.Round(time.Millisecond))
	returned := time.Now()
	var head string
	for end := returned.Add(30 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if head = strings.TrimSpace(run(a, `git -C ~/workspace/app rev-parse HEAD`)); head == cPull {
			break
		}
	}
	if head != cPull {
		t.Fatalf("background pull: the sandbox's app is at %s, want the upstream %s (prebuild %s)", head, cPull, c1)
	}
	t.Logf("background pull: at the new upstream commit %v after the create returned", time.Since(returned).Round(time.Millisecond))
	got := run(a, `cd ~/workspace && git -C app rev-parse HEAD && cat app/dist/out.txt stamp.txt && printf '%s %s\n' "$MODE" "$API_KEY" && `+
		`stat -c '%a %U' ~/.config/app/key && cat ~/.config/app/key && echo && cat app/UPSTREAM`)
	lines := strings.Split(got, "\n")
	if len(lines) < 7 || lines[0] != cPull || lines[1] != "built "+c1[:7] || lines[3] != "dev "+secretVal || lines[4] != "400 dev" ||
		lines[5] != fileVal || lines[6] != "after the prebuild" {
		t.Fatalf("sandbox from the prebuild: %q", got)
	}
	pulled := false
	for _, l := range strings.Split(m.logs.String(), "\n") {
		pulled = pulled || strings.Contains(l, `msg="background pull" sandbox_id=`+a) && strings.Contains(l, "result=updated") && strings.Contains(l, "to="+cPull)
	}
	if !pulled {
		t.Errorf("no background pull of %s to %s in the manager's log", a, cPull)
	}
	// The prebuild's warm-ups in the sandbox: node_modules resolves the
	// repository's dependency, the tree is clean (nothing npm wrote is
	// tracked, no lockfile), and OpenCode's database registered the
	// repository as a project in the build, before this sandbox existed.
	if got := run(a, `cd ~/workspace/app && node -p "require('greet')" && git status --porcelain && echo clean`); got != "hello from greet\nclean\n" {
		t.Errorf("npm warm-up in the sandbox: %q", got)
	}
	projects := run(a, `node -e 'const {DatabaseSync} = require("node:sqlite");`+
		`const d = new DatabaseSync(process.env.HOME + "/.local/share/opencode/opencode.db", {readOnly: true});`+
		`for (const r of d.prepare("select worktree, time_created from project").all()) console.log(r.worktree, r.time_created)' 2>/dev/null`)
	var ocProject int64
	for _, l := range strings.Split(strings.TrimSpace(projects), "\n") {
		if w, ms, ok := strings.Cut(l, " "); ok && w == "/home/dev/workspace/app" {
			ocProject, _ = strconv.ParseInt(ms, 10, 64)
		}
	}
	if ocProject == 0 || ocProject >= createdAt.UnixMilli() {
		t.Errorf("OpenCode's project for ~/workspace/app: created at %d, the sandbox at %d: %q", ocProject, createdAt.UnixMilli(), projects)
	}
	stampA := lines[2]
	if body := devServer(a, time.Second); body != "dev-server built "+c1[:7]+"\n" {
		t.Fatalf("dev server: %q", body)
	}
	// No token in the remote URL or any git config the guest has.
	if got := run(a, `cd ~/workspace/app && git remote get-url origin && git config --list --show-origin`); strings.Contains(got, token) ||
		!strings.HasPrefix(got, repoURL+"\n") || !strings.Contains(got, "git-credential") {
		t.Fatalf("remote and git config: %q", got)
	}

	// The guest's git asks for credentials on demand: a commit made on the
	// server arrives by pull; a commit made in the sandbox leaves by push.
	before := gs.authed.Load()
	c2 := (&gitServer{root: gs.root}).commit(t, "app", "NEWS", "pulled\n")
	if got := run(a, `cd ~/workspace/app && git pull -q --ff-only && git rev-parse HEAD && cat NEWS`); got != c2+"\npulled\n" {
		t.Fatalf("pull: %q", got)
	}
	c3 := strings.TrimSpace(run(a, `cd ~/workspace/app && echo from-the-sandbox > LOCAL && git add LOCAL && `+
		`git -c user.name=t -c user.email=t@t commit -q -m local && git push -q origin main && git rev-parse HEAD`))
	if head := git(t, filepath.Join(gs.root, "app.git"), "rev-parse", "main"); head != c3 {
		t.Fatalf("push: the server's main is %s, the sandbox pushed %s", head, c3)
	}
	if gs.authed.Load() == before {
		t.Fatal("the guest's pull and push reached the server without the token")
	}

	// A hostile guest (root or the image user) gets no token for another
	// host or for the source's host over plain http, and the guest socket
	// serves none of the agent's host-only routes.
	exec := func(id, user, cmd string) result {
		t.Helper()
		code, b := call("POST", "/api/sandboxes/"+id+"/exec", map[string]any{"argv": []string{"bash", "-c", cmd}, "user": user, "timeoutMs": 60000})
		var r result
		if code != 200 || json.Unmarshal(b, &r) != nil {
			t.Fatalf("exec %q in %s: %d %s", cmd, id, code, b)
		}
		return r
	}
	// (The source's own host gets it: that is what the helper is for.)
	for _, user := range []string{"dev", "root"} {
		for _, h := range [][2]string{{"https", privateGitIP}, {"https", "evil.test"}, {"http", privateGitIP}, {"https", privateGitIP + ":8443"}} {
			r := exec(a, user, fmt.Sprintf(`printf 'protocol=%s\nhost=%s\n\n' | GIT_TERMINAL_PROMPT=0 git -c credential.helper= `+
				`-c credential.helper="$(git config --file /home/dev/.gitconfig --get-all credential.helper | tail -1)" credential fill`, h[0], h[1]))
			if ours := h == [2]string{"https", privateGitIP}; ours != (r.ExitCode == 0 && strings.Contains(r.Stdout, "password="+token+"\n")) ||
				!ours && strings.Contains(r.Stdout+r.Stderr, token) {
				t.Errorf("%s asking for %s://%s: exit %d %q %q", user, h[0], h[1], r.ExitCode, r.Stdout, r.Stderr)
			}
		}
		r := exec(a, user, `for p in /git/credential/requests /git/credential/helper /exec /health; do `+
			`curl -s -o /dev/null -w '%{http_code} ' --unix-socket /etc/sandbox/git-credential.sock http://g$p; done`)
		if strings.TrimSpace(r.Stdout) != "404 404 404 404" {
			t.Errorf("%s on the guest credential socket: %q %q", user, r.Stdout, r.Stderr)
		}
	}
	if r := exec(a, "dev", `curl -s -m 5 --unix-socket /run/atelier/agent.sock http://a/health`); r.ExitCode == 0 {
		t.Errorf("the image user reached the agent's main socket: %q", r.Stdout)
	}

	// The token in no process's environment: every process on the host,
	// the guest's among them (they are host processes in its cgroup).
	// (A guest's processes are the ones whose cgroup path names the
	// sandbox, on a cgroup v1, hybrid or v2 host alike.)
	guestPIDs := 0
	procs, _ := filepath.Glob("/proc/[0-9]*/cgroup")
	for _, p := range procs {
		if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(a)) {
			guestPIDs++
		}
	}
	if guestPIDs < 3 {
		t.Fatalf("found %d processes of sandbox %s: the environment check would see none of the guest's", guestPIDs, a)
	}
	envs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, p := range envs {
		if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(token)) || bytes.Contains(b, basic) {
			t.Errorf("token found in %s", p)
		}
	}

	// The disk of the sandbox that pulled and pushed, stopped (all
	// written), byte by byte: the token is not on it.
	if code, b := call("POST", "/api/sandboxes/"+a+"/stop", nil); code != 200 {
		t.Fatalf("stop: %d %s", code, b)
	}
	t1 = time.Now()
	disk := filepath.Join(f.cfg.Sandbox.StateDir, "overlays", a+".ext4")
	hit, n = fileHolds(t, disk, all)
	// The secret file found shows the search sees what the guest wrote.
	if !slices.Contains(hit, "secret file") || slices.Contains(hit, "token") || slices.Contains(hit, "token as Basic auth") || n < 100<<20 {
		t.Errorf("sandbox disk %s (%d MiB read): holds %v, want the secret file and no token", disk, n>>20, hit)
	}
	searched = append(searched, fmt.Sprintf("sandbox %d MiB in %v", n>>20, time.Since(t1).Round(time.Millisecond)))
	destroy(a)

	// The guest's push moved the branch: the next check rebuilds.
	if code, b := call("POST", pbPath+"/check", nil); code != 200 || !strings.Contains(string(b), `"stale":true`) {
		t.Fatalf("check, branch moved: %d %s", code, b)
	}
	pb, rebuildTook := wait("ready")
	if pb.Commits["app"] != c3 || pb.Stale {
		t.Fatalf("rebuilt prebuild: %+v", pb)
	}
	t.Logf("rebuild after the check: %v", rebuildTook.Round(time.Millisecond))
	b, tookB := create()
	t.Logf("create from the rebuilt prebuild -> dev server answering: %v", tookB.Round(time.Millisecond))
	got = run(b, `cd ~/workspace && git -C app rev-parse HEAD && cat app/LOCAL stamp.txt`)
	lines = strings.Split(got, "\n")
	if len(lines) < 3 || lines[0] != c3 || lines[1] != "from-the-sandbox" || lines[2] == stampA {
		t.Fatalf("sandbox from the rebuilt prebuild (stamp of the first %s): %q", stampA, got)
	}
	stampB := lines[2]
	destroy(b)

	// A failing build keeps the previous prebuild, and creates use it.
	wsCfg["initCommands"] = []string{"echo broken >&2; exit 3"}
	if code, b := call("PUT", "/api/workspaces/"+ws.ID, map[string]any{"config": wsCfg}); code != 200 {
		t.Fatalf("update: %d %s", code, b)
	}
	if code, b := call("POST", pbPath, nil); code != http.StatusAccepted {
		t.Fatalf("prebuild: %d %s", code, b)
	}
	if pb, _ = wait("failed"); !pb.Ready || pb.Commits["app"] != c3 || !strings.Contains(pb.Error, "exit 3") {
		t.Fatalf("a failed build did not keep the previous prebuild: %+v", pb)
	}
	// A git server that cannot list the repository: the check is a 502 and
	// the prebuild stays as it was.
	bare := filepath.Join(gs.root, "app.git")
	if err := os.Rename(bare, bare+".away"); err != nil {
		t.Fatal(err)
	}
	if code, b := call("POST", pbPath+"/check", nil); code != http.StatusBadGateway {
		t.Fatalf("check with the repository gone: %d %s", code, b)
	}
	if pb, _ = wait("failed"); !pb.Ready || pb.Commits["app"] != c3 {
		t.Fatalf("after the failed check: %+v", pb)
	}
	if err := os.Rename(bare+".away", bare); err != nil {
		t.Fatal(err)
	}
	c, _ := create()
	if got := run(c, `cat ~/workspace/stamp.txt`); strings.TrimSpace(got) != stampB {
		t.Fatalf("sandbox after the failed build: stamp %q, want the kept prebuild's %q", got, stampB)
	}

	// The store: the secrets and the token sealed in their rows, and in no
	// byte of the database's files.
	db, err := sql.Open("sqlite", "file:"+filepath.Join(f.cfg.Server.DataDir, store.DBFile)+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT kind || ':' || name, sealed FROM workspace_secrets WHERE workspace_id = ? UNION ALL SELECT 'source', token FROM git_sources`, ws.ID)
	if err != nil {
		t.Fatal(err)
	}
	sealed := map[string][]byte{}
	for rows.Next() {
		var k string
		var v []byte
		if err := rows.Scan(&k, &v); err != nil {
			t.Fatal(err)
		}
		sealed[k] = v
	}
	rows.Close()
	if len(sealed) != 3 || len(sealed["env:API_KEY"]) == 0 || len(sealed["source"]) == 0 {
		t.Fatalf("sealed rows: %v", sealed)
	}
	for k, v := range sealed {
		for _, plain := range []string{token, secretVal, fileVal} {
			if bytes.Contains(v, []byte(plain)) {
				t.Errorf("row %s holds %q in the clear", k, plain)
			}
		}
	}
	for _, name := range []string{store.DBFile, store.DBFile + "-wal"} {
		if raw, _ := os.ReadFile(filepath.Join(f.cfg.Server.DataDir, name)); bytes.Contains(raw, []byte(token)) ||
			bytes.Contains(raw, []byte(secretVal)) || bytes.Contains(raw, []byte(fileVal)) {
			t.Errorf("a secret in the clear in %s", name)
		}
	}

	t.Logf("disks searched: %s", strings.Join(searched, ", "))
	if strings.Contains(m.logs.String(), token) {
		t.Error("the token is in the manager's log")
	}

	destroy(c)
	if code, b := call("DELETE", "/api/workspaces/"+ws.ID, nil); code != http.StatusNoContent {
		t.Fatalf("delete workspace: %d %s", code, b)
	}
	if _, err := os.Stat(pbDisk); !os.IsNotExist(err) {
		t.Errorf("prebuild volume after the workspace's delete: %v", err)
	}
	m.stop()
	f.assertNoLeaks(t)
}
