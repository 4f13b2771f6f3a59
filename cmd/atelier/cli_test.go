package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"atelier/internal/store"
)

// cliRun is one CLI invocation's outcome, as a user sees it: stdout,
// stderr (the error report included) and the exit status.
type cliRun struct {
	out, err string
	code     int
}

// cli runs the CLI in-process against url with stdin, the way main does.
func cli(t *testing.T, ctx context.Context, url, stdin string, args ...string) cliRun {
	t.Helper()
	root := newRoot()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(append([]string{"--url", url}, args...))
	code := 0
	if err := root.ExecuteContext(ctx); err != nil {
		code = report(&errb, err)
	}
	return cliRun{out.String(), errb.String(), code}
}

func (r cliRun) ok(t *testing.T, what string) cliRun {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("%s: exit %d\nstdout: %s\nstderr: %s", what, r.code, r.out, r.err)
	}
	return r
}

// fails checks an error: exit 1 and a single line naming what to fix.
func (r cliRun) fails(t *testing.T, what string, wants ...string) {
	t.Helper()
	if r.code != 1 {
		t.Fatalf("%s: exit %d, want 1\nstdout: %s\nstderr: %s", what, r.code, r.out, r.err)
	}
	line := strings.TrimSpace(r.err)
	if strings.Count(line, "\n") > 1 || !strings.HasPrefix(line[strings.LastIndex(line, "\n")+1:], "atelier: ") {
		t.Errorf("%s: the error is not one line starting atelier: %q", what, r.err)
	}
	for _, w := range wants {
		if !strings.Contains(r.err, w) {
			t.Errorf("%s: stderr %q lacks %q", what, r.err, w)
		}
	}
}

func jsonKeys(t *testing.T, s string) []string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("not JSON: %v: %s", err, s)
	}
	if a, ok := v.([]any); ok {
		if len(a) == 0 {
			return nil
		}
		v = a[0]
	}
	var keys []string
	for k := range v.(map[string]any) {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func hasAll(have []string, want ...string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			found = found || h == w
		}
		if !found {
			return false
		}
	}
	return true
}

// TestCLI goes past sandbox create, as a new user would, against a mock
// manager with real agents: names wherever ids go, exec with its exit
// status and stdin, shell, cp both ways, dev commands with their logs and
// hosts, keys and tokens, --json on every listing, errors that name the
// flag, and a clear word when nothing listens.
func TestCLI(t *testing.T) {
	url, srv := startMockServer(t)
	ctx := context.Background()
	run := func(stdin string, args ...string) cliRun { t.Helper(); return cli(t, ctx, url, stdin, args...) }

	// --no-wait used to panic on a sandbox that has no URLs yet.
	r := run("", "sandbox", "create", "--name", "queued", "--no-wait").ok(t, "create --no-wait")
	if !strings.Contains(r.out, "Status:") || !strings.Contains(r.out, "Name:     queued") {
		t.Fatalf("create --no-wait printed %q", r.out)
	}
	// Waiting shows one progress line (stderr is not a terminal) and the
	// sandbox with every URL.
	r = run("", "sandbox", "create", "--name", "demo").ok(t, "create")
	if !strings.Contains(r.err, "creating sandbox demo (") || strings.Contains(r.err, "\r") {
		t.Errorf("progress line: %q", r.err)
	}
	for _, w := range []string{"Status:    running", "VS Code:", "OpenCode:", "Browser:", "SSH:"} {
		if !strings.Contains(r.out, w) {
			t.Errorf("create output lacks %q:\n%s", w, r.out)
		}
	}
	r = run("", "--json", "sandbox", "get", "demo").ok(t, "get by name")
	var demo struct{ ID, Name, Status string }
	_ = json.Unmarshal([]byte(r.out), &demo)
	if demo.Name != "demo" || demo.Status != "running" {
		t.Fatalf("get demo: %s", r.out)
	}

	// Errors name the flag the user typed, without internals.
	run("", "sandbox", "create", "--memory", "5").fails(t, "small memory", "--memory 5:", ">= 512")
	run("", "sandbox", "create", "--name", "demo").fails(t, "duplicate name", "--name demo", "already used")
	run("", "sandbox", "create", "--image", "nope").fails(t, "unknown image", "--image", `no image "nope"`)
	run("", "sandbox", "stop", "nosuch").fails(t, "unknown name", `no sandbox "nosuch"`)
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(run("", "sandbox", "get", "queued").out, "running"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the queued sandbox never ran")
		}
	}
	r = run("", "sandbox", "stop", "queued", "demo")
	r.ok(t, "stop two by name")
	if !strings.Contains(r.out, "stopped queued (") || !strings.Contains(r.out, "stopped demo ("+demo.ID+")") {
		t.Errorf("stop output: %q", r.out)
	}
	run("", "sandbox", "stop", "demo").fails(t, "stop again", "sandbox "+demo.ID+" is already stopped")
	run("", "sandbox", "exec", "demo", "--", "true").fails(t, "exec when stopped", "start it first (atelier sandbox start "+demo.ID+")")
	r = run("", "--json", "sandbox", "start", "demo").ok(t, "start")
	if k := jsonKeys(t, r.out); !hasAll(k, "id", "name", "status", "image", "vcpus", "memoryMb", "createdAt") {
		t.Errorf("start --json keys %v", k)
	}

	// An admin sees every user's sandboxes: a name two of them use is
	// ambiguous, and the error lists the ids.
	if _, err := srv.Store.EnsureUser(ctx, store.User{ID: "other", Login: "other"}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Store.InsertSandbox(ctx, store.Sandbox{ID: "zzzzzzzzzzzz", OwnerID: "other", Name: "demo", Image: "dev-base",
		Status: store.StatusStopped, Vcpus: 1, MemoryMB: 512}, 0); err != nil {
		t.Fatal(err)
	}
	run("", "sandbox", "get", "demo").fails(t, "ambiguous name", `"demo" is ambiguous`, demo.ID, "zzzzzzzzzzzz")
	run("", "sandbox", "rm", "zzzzzzzzzzzz").ok(t, "rm by id")

	// exec: argv, exit status, stdin, stderr apart, a program that is not there.
	r = run("piped in\n", "sandbox", "exec", "demo", "--", "sh", "-c", "cat; echo to-stderr >&2; exit 7")
	if r.code != 7 || r.out != "piped in\n" || !strings.Contains(r.err, "to-stderr") {
		t.Fatalf("exec: %+v", r)
	}
	r = run("", "sandbox", "exec", "demo", "-e", "GREETING=hi there", "-w", "/tmp", "--", "sh", "-c", `echo "$GREETING from $(pwd)"`).ok(t, "exec env")
	if r.out != "hi there from /tmp\n" {
		t.Fatalf("exec env: %q", r.out)
	}
	if r = run("", "sandbox", "exec", "demo", "--", "no-such-program"); r.code != 127 || !strings.Contains(r.err, "cannot run no-such-program") {
		t.Fatalf("missing program: %+v", r)
	}
	run("", "sandbox", "exec", "demo", "-w", "/no/such/dir", "--", "true").fails(t, "bad workdir", "--workdir")
	run("", "sandbox", "exec", "demo", "true").fails(t, "no --", "put the command after --")

	// shell: the PTY takes what stdin holds, and its status is the CLI's.
	r = run("echo from-the-sh''ell; exit 3\n", "sandbox", "shell", "demo", "--", "sh")
	if r.code != 3 || !strings.Contains(r.out, "from-the-shell") {
		t.Fatalf("shell: %+v", r)
	}

	// cp, both ways, a directory with modes.
	local := t.TempDir()
	src := filepath.Join(local, "src")
	if err := os.MkdirAll(filepath.Join(src, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(src, "run.sh"), []byte("#!/bin/sh\necho ran\n"), 0o750)
	os.WriteFile(filepath.Join(src, "sub", "data.txt"), []byte("data"), 0o640)
	r = run("", "sandbox", "cp", src, "demo:proj").ok(t, "cp in")
	if !strings.Contains(r.err, "copied 2 files") {
		t.Errorf("cp summary: %q", r.err)
	}
	r = run("", "sandbox", "exec", "demo", "--", "sh", "-c", "./proj/run.sh && cat proj/sub/data.txt && stat -c %a proj/run.sh && chmod 4755 proj/run.sh").ok(t, "run the copied script")
	if r.out != "ran\ndata750\n" {
		t.Fatalf("copied in: %q", r.out)
	}
	back := filepath.Join(local, "back")
	run("", "sandbox", "cp", "demo:proj", back).ok(t, "cp out")
	if b, _ := os.ReadFile(filepath.Join(back, "sub", "data.txt")); string(b) != "data" {
		t.Fatalf("copied out: %q", b)
	}
	if st, err := os.Stat(filepath.Join(back, "run.sh")); err != nil || st.Mode().Perm() != 0o755 || st.Mode()&os.ModeSetuid != 0 {
		t.Fatalf("copied out mode: %v %v (setuid must be dropped)", st.Mode(), err)
	}
	run("", "sandbox", "cp", "demo:proj/run.sh", back).ok(t, "cp a file into a directory")
	run("", "sandbox", "cp", "demo:nothing-here", back).fails(t, "cp a missing file", "nothing-here does not exist")
	run("", "sandbox", "cp", src, back).fails(t, "cp local to local", "one of SRC and DEST")

	// Dev commands, their logs and their hosts.
	devPort := strconv.Itoa(freePort(t))
	r = run("", "sandbox", "dev", "start", "demo", "web", "--port", devPort, "--", "sh", "-c", "echo first; sleep 0.5; echo second; exec sleep 60").ok(t, "dev start")
	if !strings.Contains(r.out, "started web in demo") || !strings.Contains(r.out, "port "+devPort) {
		t.Errorf("dev start: %q", r.out)
	}
	run("", "sandbox", "dev", "start", "demo", "web", "--restart", "sometimes", "--", "true").fails(t, "dev start bad flag", "--restart")
	r = run("", "--json", "sandbox", "dev", "list", "demo").ok(t, "dev list")
	if k := jsonKeys(t, r.out); !hasAll(k, "name", "kind", "state", "port", "restart") {
		t.Errorf("dev list --json keys %v", k)
	}
	fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	r = cli(t, fctx, url, "", "sandbox", "logs", "demo", "-f")
	cancel()
	if r.code != 0 || r.out != "first\nsecond\n" {
		t.Fatalf("logs -f: %+v", r)
	}
	r = run("", "sandbox", "expose", "demo", "web", "--default", "--alias", "api="+strconv.Itoa(freePort(t))).ok(t, "expose")
	if !strings.Contains(r.out, "http://dev-web-"+demo.ID+".") || !strings.Contains(r.out, "web (alias api)") {
		t.Errorf("expose: %q", r.out)
	}
	run("", "sandbox", "expose", "demo", "web", "--alias", "api").fails(t, "bad alias", "--alias")
	r = run("", "--json", "sandbox", "routes", "demo").ok(t, "routes")
	if k := jsonKeys(t, r.out); !hasAll(k, "host", "url", "kind", "port", "public") {
		t.Errorf("routes --json keys %v", k)
	}
	run("", "sandbox", "unexpose", "demo", "web").ok(t, "unexpose")
	if r = run("", "sandbox", "routes", "demo").ok(t, "routes"); strings.Contains(r.out, "dev-web") {
		t.Errorf("unexposed routes remain: %s", r.out)
	}

	// SSH keys and tokens, by name.
	key := filepath.Join(local, "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "me@laptop", "-f", key).CombinedOutput(); err != nil {
		t.Skipf("ssh-keygen: %v %s", err, out)
	}
	run("", "ssh-key", "add", key).fails(t, "a private key", "holds a private key")
	r = run("", "ssh-key", "add", key+".pub").ok(t, "ssh-key add")
	if !strings.Contains(r.out, "added ssh-ed25519 SHA256:") || !strings.Contains(r.out, "me@laptop") {
		t.Errorf("ssh-key add: %q", r.out)
	}
	r = run("", "--json", "ssh-key", "list").ok(t, "ssh-key list")
	if k := jsonKeys(t, r.out); !hasAll(k, "id", "name", "fingerprint", "type", "createdAt") {
		t.Errorf("ssh-key --json keys %v", k)
	}
	run("", "ssh-key", "rm", "me@laptop").ok(t, "ssh-key rm by name")
	r = run("", "token", "create", "ci", "--scope", "read").ok(t, "token create")
	secret := strings.TrimSpace(r.out)
	if strings.Count(r.out, "\n") != 1 || len(secret) < 32 || !strings.Contains(r.err, "shown only now") {
		t.Fatalf("token create: stdout must be the secret alone: %+v", r)
	}
	r = run("", "token", "list").ok(t, "token list")
	r2 := run("", "--json", "token", "list").ok(t, "token list --json")
	if strings.Contains(r.out+r2.out, secret) || !strings.Contains(r.out, "ci") {
		t.Fatalf("token list shows the secret or misses the token: %s %s", r.out, r2.out)
	}
	run("", "token", "create", "ci", "--ttl", "90m").fails(t, "bad ttl", "--ttl")
	run("", "token", "rm", "ci").ok(t, "token rm by name")

	// Completion offers names.
	r = run("", "__complete", "sandbox", "get", "de").ok(t, "complete")
	if !strings.Contains(r.out, "demo\t"+demo.ID) {
		t.Errorf("completion: %q", r.out)
	}

	// --json on lifecycle lists and rm.
	r = run("", "--json", "sandbox", "list").ok(t, "list --json")
	if k := jsonKeys(t, r.out); !hasAll(k, "id", "name", "status", "ownerId", "image", "vcpus", "memoryMb", "createdAt", "updatedAt") {
		t.Errorf("list --json keys %v", k)
	}
	r = run("", "manager", "config").ok(t, "manager config")
	if !strings.Contains(r.out, `"mode": "mock"`) {
		t.Errorf("manager config: %s", r.out)
	}
	r = run("", "--json", "sandbox", "rm", "demo", "queued").ok(t, "rm --json")
	if k := jsonKeys(t, r.out); !hasAll(k, "id", "name", "destroyed") {
		t.Errorf("rm --json keys %v", k)
	}

	// Local settings: serve's recipe keeps everything in ./.atelier; config
	// show says it is this shell's view, not the running manager's.
	r = run("", "serve", "--help").ok(t, "serve --help")
	if !strings.Contains(r.out, "ATELIER_STATE_DIR=$PWD/.atelier/state") || !strings.Contains(r.out, "make run") {
		t.Errorf("serve --help: %s", r.out)
	}
	r = run("", "config", "show").ok(t, "config show")
	if !strings.Contains(r.err, "atelier manager config") {
		t.Errorf("config show does not point at the running manager's configuration: %q", r.err)
	}

	// Nothing listens: say what to start.
	cli(t, ctx, "http://127.0.0.1:1", "", "sandbox", "list").fails(t, "no manager", "is the manager running? (atelier serve")
}

// TestCpFromHostileSandbox: a sandbox's root can replace its agent, so a
// listing may name "../x" or plant a symlink to elsewhere and then list a
// directory of the same name. Nothing may be written outside the
// destination.
func TestCpFromHostileSandbox(t *testing.T) {
	outside := t.TempDir()
	id := "hhhhhhhhhhhh"
	for _, tc := range []struct {
		name    string
		listing map[string]string // directory -> its JSON entries
		wantErr string
	}{
		{"dot-dot name", map[string]string{"/d": `[{"name":"../escaped","type":"file","mode":"0644"}]`}, "invalid file name"},
		{"slash name", map[string]string{"/d": `[{"name":"a/b","type":"file","mode":"0644"}]`}, "invalid file name"},
		{"symlink then directory", map[string]string{
			"/d":      `[{"name":"evil","type":"symlink","linkTarget":"` + outside + `"},{"name":"evil","type":"dir","mode":"0755"}]`,
			"/d/evil": `[{"name":"planted","type":"file","mode":"0644"}]`}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mux := http.NewServeMux()
			mux.HandleFunc("GET /api/sandboxes/"+id, func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, `{"id":"`+id+`","status":"running"}`)
			})
			mux.HandleFunc("GET /api/sandboxes/"+id+"/files/stat", func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, `{"path":"/d","name":"d","type":"dir","mode":"0755"}`)
			})
			mux.HandleFunc("GET /api/sandboxes/"+id+"/files/list", func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, `{"path":"`+r.URL.Query().Get("path")+`","entries":`+tc.listing[r.URL.Query().Get("path")]+`}`)
			})
			mux.HandleFunc("GET /api/sandboxes/"+id+"/files", func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, `{"path":"x","content":"cHduZWQ=","encoding":"base64","size":5}`)
			})
			ts := httptest.NewServer(mux)
			defer ts.Close()
			dest := filepath.Join(t.TempDir(), "copy")
			r := cli(t, context.Background(), ts.URL, "", "sandbox", "cp", id+":/d", dest)
			if tc.wantErr != "" && !strings.Contains(r.err, tc.wantErr) {
				t.Errorf("stderr %q lacks %q", r.err, tc.wantErr)
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(dest), "escaped")); err == nil {
				t.Fatal("a file was written next to the destination")
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Fatalf("a file was written through the planted symlink: %v", ents)
			}
		})
	}
}

// TestExecForwardsInterrupt: Ctrl-C on `sandbox exec` reaches the command
// (its process group) instead of ending the CLI and orphaning it; the CLI
// then exits with the command's status.
func TestExecForwardsInterrupt(t *testing.T) {
	url := startMock(t)
	ctx := context.Background()
	cli(t, ctx, url, "", "sandbox", "create", "--name", "sig").ok(t, "create")
	pr, pw := io.Pipe()
	root := newRoot()
	root.SetOut(pw)
	root.SetErr(io.Discard)
	root.SetIn(strings.NewReader(""))
	root.SetArgs([]string{"--url", url, "sandbox", "exec", "sig", "--", "sh", "-c", `trap 'echo got-int; exit 5' INT; echo ready; sleep 30 & wait`})
	done := make(chan int, 1)
	go func() {
		code := 0
		if err := root.ExecuteContext(ctx); err != nil {
			code = report(io.Discard, err)
		}
		pw.Close()
		done <- code
	}()
	br := bufio.NewReader(pr)
	if l, err := br.ReadString('\n'); err != nil || l != "ready\n" {
		t.Fatalf("read: %q %v", l, err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(br)
	select {
	case code := <-done:
		if code != 5 || !strings.Contains(string(rest), "got-int") {
			t.Fatalf("exit %d, output %q: want the trap's 5 and its output", code, rest)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the command did not end on Ctrl-C")
	}
}
