package sandbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"atelier/internal/agent"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

// fakeAgent answers the routes the lifecycle uses, with a settable delay on
// GET /services (a slow agent).
type fakeAgent struct {
	mu       sync.Mutex
	slow     time.Duration
	browser  string // the browser's state
	applied  []agent.ServicesApply
	requests []string
	execs    []agent.ExecRequest
	execExit int    // exit code of every exec
	user     string // the image manifest's user; "" answers 404 (no manifest)
}

func (a *fakeAgent) list() agent.ProcessList {
	return agent.ProcessList{Processes: []agent.ProcessStatus{
		{Name: "vscode", Role: "vscode", State: agent.StateRunning, Port: 8080, Ready: true, Wanted: true, Image: true},
		{Name: "browser", Role: "browser", State: a.browser, Port: 6080, Wanted: a.browser == agent.StateRunning, Image: true},
	}}
}

func (a *fakeAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.requests = append(a.requests, r.Method+" "+r.URL.Path)
	slow := a.slow
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch r.Method + " " + r.URL.Path {
	case "GET /health":
		json.NewEncoder(w).Encode(agent.Health{Status: "healthy", Protocol: agent.ProtocolVersion})
	case "POST /services/apply":
		var req agent.ServicesApply
		json.NewDecoder(r.Body).Decode(&req)
		a.mu.Lock()
		a.applied = append(a.applied, req)
		l := a.list()
		a.mu.Unlock()
		json.NewEncoder(w).Encode(l)
	case "GET /image":
		a.mu.Lock()
		u := a.user
		a.mu.Unlock()
		if u == "" {
			w.WriteHeader(404)
			json.NewEncoder(w).Encode(agent.Problem{Code: agent.CodeNotFound, Detail: "the image has no manifest"})
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"user": u})
	case "POST /exec":
		var req agent.ExecRequest
		json.NewDecoder(r.Body).Decode(&req)
		a.mu.Lock()
		a.execs = append(a.execs, req)
		code := a.execExit
		a.mu.Unlock()
		json.NewEncoder(w).Encode(agent.ExecResult{ExitCode: code, Stderr: map[bool]string{true: "git: not found"}[code != 0]})
	case "GET /services":
		time.Sleep(slow)
		a.mu.Lock()
		l := a.list()
		a.mu.Unlock()
		json.NewEncoder(w).Encode(l)
	case "POST /services/browser/start", "POST /services/browser/stop":
		a.mu.Lock()
		a.browser = agent.StateStopped
		if strings.HasSuffix(r.URL.Path, "start") {
			a.browser = agent.StateRunning
		}
		st := a.list().Processes[1]
		a.mu.Unlock()
		json.NewEncoder(w).Encode(st)
	default:
		w.WriteHeader(404)
		json.NewEncoder(w).Encode(agent.Problem{Code: agent.CodeNotFound, Detail: "no route"})
	}
}

// agentRuntime is the in-memory runtime whose guests all answer as fa.
type agentRuntime struct {
	sandbox.Runtime
	sock string
}

func (r agentRuntime) AgentDialer(string) agent.Dialer { return agent.UnixDialer(r.sock) }

func newAgentEnv(t *testing.T) (*env, *fakeAgent) {
	t.Helper()
	e := newEnv(t)
	fa := &fakeAgent{browser: agent.StateStopped}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: fa}
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close() })
	e.svc = sandbox.New(e.cfg, e.st, e.bus, e.m, sandbox.Drivers{Runtime: agentRuntime{e.rt, sock}, Network: e.nw, Volumes: e.vol}, slog.New(slog.DiscardHandler))
	e.run(t)
	return e, fa
}

func stepOf(t *testing.T, st *store.Store, id, op, step string) store.Op {
	t.Helper()
	ops, err := st.ListOps(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var found store.Op
	for _, o := range ops {
		if o.Op == op && o.Step == step {
			found = o
		}
	}
	if found.Step == "" {
		t.Fatalf("no %s/%s in the journal: %+v", op, step, ops)
	}
	return found
}

// TestServicesStepAndView: create journals the services step, which sends
// the host's ports; the view carries the states; a slow agent never holds
// a view up for long, and a list never waits on it.
func TestServicesStepAndView(t *testing.T) {
	e, fa := newAgentEnv(t)
	e.cfg.Advanced.VM.VSCode.Port = 8443
	sb := e.create(t)
	sb, err := e.svc.Wait(ctxT(t), sb.ID)
	if err != nil || sb.Status != store.StatusRunning {
		t.Fatalf("create: %+v %v", sb, err)
	}
	op := stepOf(t, e.st, sb.ID, sandbox.OpCreate, sandbox.StepServices)
	if op.State != store.OpDone || op.Detail != "browser:stopped vscode:running" {
		t.Fatalf("services step %+v", op)
	}
	fa.mu.Lock()
	applied := fa.applied
	fa.mu.Unlock()
	if len(applied) != 1 || applied[0].Ports["vscode"] != 8443 || applied[0].Ports["opencode"] != 3000 || applied[0].Ports["browser"] != 6080 {
		t.Fatalf("ports sent: %+v", applied)
	}
	v := e.svc.View(sb)
	if len(v.Services) != 2 || v.Services[1].Name != "vscode" || !v.Services[1].Ready || v.Services[1].Role != "vscode" {
		t.Fatalf("view services %+v", v.Services)
	}

	fa.mu.Lock()
	fa.slow = 3 * time.Second
	fa.mu.Unlock()
	time.Sleep(sandbox.ServicesFresh)
	begin := time.Now()
	v = e.svc.ViewFresh(ctxT(t), sb)
	if took := time.Since(begin); took > time.Second || len(v.Services) != 2 {
		t.Fatalf("a slow agent held the view %v (services %+v)", took, v.Services)
	}
	begin = time.Now()
	for range 100 {
		e.svc.View(sb)
	}
	if took := time.Since(begin); took > 100*time.Millisecond {
		t.Fatalf("100 cached views took %v", took)
	}
}

// TestBrowserOperationsJournaled: the browser's start and stop are
// journaled operations on a running sandbox; a stopped one is a conflict.
func TestBrowserOperationsJournaled(t *testing.T) {
	e, fa := newAgentEnv(t)
	sb := e.create(t)
	if _, err := e.svc.Wait(ctxT(t), sb.ID); err != nil {
		t.Fatal(err)
	}
	st, err := e.svc.StartBrowser(ctxT(t), sb.ID)
	if err != nil || st.State != agent.StateRunning || !st.Wanted {
		t.Fatalf("start browser: %+v %v", st, err)
	}
	if op := stepOf(t, e.st, sb.ID, sandbox.OpBrowserStart, sandbox.StepService); op.State != store.OpDone || op.Detail != agent.StateRunning {
		t.Fatalf("browser-start journal %+v", op)
	}
	if st, err := e.svc.StopBrowser(ctxT(t), sb.ID); err != nil || st.State != agent.StateStopped || st.Wanted {
		t.Fatalf("stop browser: %+v %v", st, err)
	}
	stepOf(t, e.st, sb.ID, sandbox.OpBrowserStop, sandbox.StepService)
	fa.mu.Lock()
	reqs := strings.Join(fa.requests, ",")
	fa.mu.Unlock()
	if !strings.Contains(reqs, "POST /services/browser/start") || !strings.Contains(reqs, "POST /services/browser/stop") {
		t.Fatalf("agent requests: %s", reqs)
	}
	if _, err := e.svc.Stop(ctxT(t), sb.ID); err != nil {
		t.Fatal(err)
	}
	var conflict *store.ConflictError
	if _, err := e.svc.StartBrowser(ctxT(t), sb.ID); !errors.As(err, &conflict) {
		t.Fatalf("browser start of a stopped sandbox: %v", err)
	}
	if v := e.svc.View(mustGet(t, e, sb.ID)); len(v.Services) != 0 {
		t.Fatalf("a stopped sandbox shows services: %+v", v.Services)
	}
}

func mustGet(t *testing.T, e *env, id string) store.Sandbox {
	sb, err := e.svc.Get(ctxT(t), id)
	if err != nil {
		t.Fatal(err)
	}
	return sb
}

// TestGitIdentityStep: create sets the sandbox user's git identity through
// the agent, as argv with "--" before each key and value, run as the
// image's user: the owner's GitHub name and no-reply address when known,
// else sandbox.git.*; a start does not set it again, and a guest without
// git is still created.
func TestGitIdentityStep(t *testing.T) {
	e, fa := newAgentEnv(t)
	fa.mu.Lock()
	fa.user = "dev"
	fa.mu.Unlock()
	e.cfg.Sandbox.Git.Name, e.cfg.Sandbox.Git.Email = "Default Person", "default@example.com"
	execs := func() []agent.ExecRequest {
		fa.mu.Lock()
		defer fa.mu.Unlock()
		out := fa.execs
		fa.execs = nil
		return out
	}
	check := func(name, email string) {
		t.Helper()
		got := execs()
		want := [][]string{
			{"git", "config", "--global", "--", "user.name", name},
			{"git", "config", "--global", "--", "user.email", email},
		}
		if len(got) != 2 {
			t.Fatalf("execs %+v, want two git config calls", got)
		}
		for i := range want {
			if strings.Join(got[i].Argv, "\x00") != strings.Join(want[i], "\x00") || got[i].User != "dev" || got[i].Shell != "" {
				t.Errorf("exec %d = %q as %q, want %q as dev", i, got[i].Argv, got[i].User, want[i])
			}
		}
	}

	// An owner the store does not know: the config's defaults.
	sb := e.createRunning(t)
	check("Default Person", "default@example.com")
	if op := stepOf(t, e.st, sb.ID, sandbox.OpCreate, sandbox.StepGit); op.State != store.OpDone ||
		op.Detail != "Default Person <default@example.com> (config) for dev" {
		t.Fatalf("git step %+v", op)
	}

	// A GitHub user: their name, and the no-reply address of their account.
	// A value that looks like an option stays a value.
	if _, err := e.st.EnsureUser(ctxT(t), store.User{ID: "gh-ada", GitHubID: 42, Login: "ada", Name: "--Ada\nLovelace"}); err != nil {
		t.Fatal(err)
	}
	sb2, err := e.svc.Create(ctxT(t), sandbox.CreateRequest{OwnerID: "gh-ada"})
	if err != nil {
		t.Fatal(err)
	}
	if sb2, err = e.svc.Wait(ctxT(t), sb2.ID); err != nil || sb2.Status != store.StatusRunning {
		t.Fatalf("create: %+v %v", sb2, err)
	}
	check("--AdaLovelace", "42+ada@users.noreply.github.com")

	// A start keeps whatever the user has set since.
	if _, err := e.svc.Stop(ctxT(t), sb2.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Start(ctxT(t), sb2.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Wait(ctxT(t), sb2.ID); err != nil {
		t.Fatal(err)
	}
	if got := execs(); len(got) != 0 {
		t.Errorf("start set the git identity again: %+v", got)
	}

	// No git in the image: noted, and the sandbox runs.
	fa.mu.Lock()
	fa.execExit = 127
	fa.mu.Unlock()
	sb3 := e.createRunning(t)
	if op := stepOf(t, e.st, sb3.ID, sandbox.OpCreate, sandbox.StepGit); op.State != store.OpDone || !strings.HasPrefix(op.Detail, "not set: exit 127") {
		t.Fatalf("git step without git %+v", op)
	}
}
