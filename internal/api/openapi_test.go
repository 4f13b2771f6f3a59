package api_test

import (
	"atelier/internal/logkeeper"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"atelier/internal/config"
	"atelier/internal/guest"
	"atelier/internal/server"
	"atelier/internal/store"
	"atelier/internal/testenv"
)

// TestMain lets the test binary stand in for the atelier binary when mock
// mode starts "<exe> agent serve ...": the API's tests then talk to real agents.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "agent" {
		os.Exit(guest.Main(os.Args[2:]))
	}
	logkeeper.MainIfKeeper()
	os.Exit(m.Run())
}

// newAgentHarness is a mock-mode manager whose sandboxes run the real agent
// as local processes (the test binary, see TestMain).
func newAgentHarness(t *testing.T) *harness {
	t.Helper()
	cfg := config.Default()
	dir := t.TempDir()
	cfg.Server.Mode = config.ModeMock
	cfg.Server.DataDir = dir
	cfg.Server.SocketPath = filepath.Join(dir, "atelier.sock")
	cfg.Sandbox.StateDir = filepath.Join(dir, "state")
	cfg.Sandbox.LogDir = filepath.Join(dir, "log")
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, server.Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		cancel()
		t.Fatalf("new server: %v", err)
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Sandboxes.Run(ctx) }()
	ts := httptest.NewServer(srv.API.Handler())
	t.Cleanup(func() {
		// Destroy what the test left, so no agent process outlives it.
		if list, err := srv.Sandboxes.List(context.Background(), store.SandboxFilter{}); err == nil {
			for _, sb := range list {
				_ = srv.Sandboxes.Destroy(context.Background(), sb.ID)
			}
		}
		ts.Close()
		cancel()
		<-done
		_ = srv.Store.Close()
	})
	return &harness{t: t, srv: srv, ts: ts}
}

// spec validates answers against the manager's own OpenAPI document.
type spec struct {
	t       *testing.T
	doc     map[string]any
	c       *jsonschema.Compiler
	schemas map[string]*jsonschema.Schema
	// covered records "METHOD /path status" of every answer checked.
	covered map[string]bool
}

func loadSpec(t *testing.T, h *harness) *spec {
	r := h.do(t, "GET", "/openapi.json", nil, nil)
	if r.status != 200 {
		t.Fatalf("openapi.json: %d", r.status)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	if err := c.AddResource("https://atelier.test/openapi.json", doc); err != nil {
		t.Fatal(err)
	}
	return &spec{t: t, doc: doc.(map[string]any), c: c, schemas: map[string]*jsonschema.Schema{}, covered: map[string]bool{}}
}

func ptr(parts ...string) string {
	for i, p := range parts {
		parts[i] = strings.ReplaceAll(strings.ReplaceAll(p, "~", "~0"), "/", "~1")
	}
	return "https://atelier.test/openapi.json#/" + strings.Join(parts, "/")
}

func (s *spec) schema(loc string) *jsonschema.Schema {
	if sc, ok := s.schemas[loc]; ok {
		return sc
	}
	sc, err := s.c.Compile(loc)
	if err != nil {
		s.t.Fatalf("compile %s: %v", loc, err)
	}
	s.schemas[loc] = sc
	return sc
}

// validate checks v against a schema of the document.
func (s *spec) validate(loc string, body []byte) {
	s.t.Helper()
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		s.t.Errorf("%s: answer is not JSON: %v: %s", loc, err, body)
		return
	}
	if err := s.schema(loc).Validate(v); err != nil {
		s.t.Errorf("answer does not match %s:\n%v\nbody: %s", loc, err, body)
	}
}

// check validates an answer to METHOD template against the operation's
// documented response for its status.
func (s *spec) check(method, template string, r resp) {
	s.t.Helper()
	paths, _ := s.doc["paths"].(map[string]any)
	item, _ := paths[template].(map[string]any)
	op, _ := item[strings.ToLower(method)].(map[string]any)
	if op == nil {
		s.t.Errorf("%s %s is not in the OpenAPI document", method, template)
		return
	}
	status := fmt.Sprint(r.status)
	s.covered[method+" "+template+" "+status] = true
	responses, _ := op["responses"].(map[string]any)
	res, _ := responses[status].(map[string]any)
	if res == nil {
		s.t.Errorf("%s %s answered %d, which the document does not list: %s", method, template, r.status, r.body)
		return
	}
	content, _ := res["content"].(map[string]any)
	if len(content) == 0 {
		if len(bytes.TrimSpace(r.body)) > 0 && r.status != http.StatusSwitchingProtocols {
			s.t.Errorf("%s %s %d: the document promises no body, got %s", method, template, r.status, r.body)
		}
		return
	}
	ct, _, _ := strings.Cut(r.header.Get("Content-Type"), ";")
	if _, ok := content[ct]; !ok {
		s.t.Errorf("%s %s %d: content type %q is not documented: %s", method, template, r.status, ct, r.body)
		return
	}
	s.validate(ptr("paths", template, strings.ToLower(method), "responses", status, "content", ct, "schema"), r.body)
}

// call sends a request to a route of the document and checks the answer.
func (s *spec) call(h *harness, method, template string, vars map[string]string, query url.Values, body any, ct string) resp {
	s.t.Helper()
	path := template
	for k, v := range vars {
		path = strings.ReplaceAll(path, "{"+k+"}", v)
	}
	if len(query) > 0 {
		path += "?" + query.Encode()
	}
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, h.ts.URL+path, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	r := resp{res.StatusCode, res.Header, b}
	s.check(method, template, r)
	return r
}

func want(t *testing.T, r resp, status int, what string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("%s: %d, want %d: %s", what, r.status, status, r.body)
	}
}

// TestOpenAPIAgentRoutes drives every agent route through the manager, with
// real agents, and validates each answer (successes and problems alike)
// against the OpenAPI document the manager serves: a generated client reads
// exactly these shapes. Every documented sandbox-agent operation must be
// exercised with a success, so the document and the test cannot drift apart.
func TestOpenAPIAgentRoutes(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		testenv.Missing(t, "git (the agent's git routes)")
	}
	h := newAgentHarness(t)
	s := loadSpec(t, h)
	// The validator is not vacuous: a wrong type and a stray field fail.
	for _, bad := range []string{`{"exitCode":"3","stdout":"","stderr":"","truncated":false,"timedOut":false,"durationMs":1}`,
		`{"exitCode":3,"stdout":"","stderr":"","truncated":false,"timedOut":false,"durationMs":1,"extra":1}`} {
		v, _ := jsonschema.UnmarshalJSON(strings.NewReader(bad))
		if s.schema(ptr("components", "schemas", "ExecResult")).Validate(v) == nil {
			t.Fatalf("the validator accepts %s", bad)
		}
	}

	r := s.call(h, "POST", "/api/sandboxes", nil, nil, map[string]any{"name": "spec"}, "application/json")
	want(t, r, 201, "create")
	var sb struct{ ID string }
	r.json(t, &sb)
	id := map[string]string{"id": sb.ID}
	with := func(k, v string) map[string]string { return map[string]string{"id": sb.ID, k: v} }
	const J = "application/json"
	q := func(kv ...string) url.Values {
		v := url.Values{}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return v
	}
	base := "/api/sandboxes/{id}"

	want(t, s.call(h, "GET", base+"/health", id, nil, nil, ""), 200, "health")
	want(t, s.call(h, "GET", base+"/metrics", id, nil, nil, ""), 200, "metrics")
	want(t, s.call(h, "GET", "/api/sandboxes", nil, q("name", "spec"), nil, ""), 200, "list by name")

	// exec: a result, a field error, a command that cannot start, a form body.
	r = s.call(h, "POST", base+"/exec", id, nil, map[string]any{"argv": []string{"sh", "-c", "echo out; echo err >&2; exit 3"}}, J)
	want(t, r, 200, "exec")
	if !strings.Contains(string(r.body), `"exitCode":3`) {
		t.Fatalf("exec: %s", r.body)
	}
	want(t, s.call(h, "POST", base+"/exec", id, nil, map[string]any{"argv": []string{"true"}, "timeoutMs": -1}, J), 400, "exec bad timeout")
	want(t, s.call(h, "POST", base+"/exec", id, nil, map[string]any{"argv": []string{"/no/such/program"}}, ""), 400, "exec missing program")
	want(t, s.call(h, "POST", base+"/exec", id, nil, map[string]any{"argv": []string{"true"}}, "application/x-www-form-urlencoded"), 415, "exec as a form")

	// Streaming exec: the 101, and the final event against its schema.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wsURL := "ws" + strings.TrimPrefix(h.ts.URL, "http") + "/api/sandboxes/" + sb.ID
	ws, res, err := websocket.Dial(ctx, wsURL+"/exec/stream", nil)
	if err != nil {
		t.Fatalf("exec stream: %v", err)
	}
	s.check("GET", base+"/exec/stream", resp{status: res.StatusCode, header: res.Header})
	req, _ := json.Marshal(map[string]any{"argv": []string{"cat"}, "stdinStream": true})
	_ = ws.Write(ctx, websocket.MessageText, req)
	_ = ws.Write(ctx, websocket.MessageBinary, []byte("streamed"))
	_ = ws.Write(ctx, websocket.MessageText, []byte(`{"type":"closeStdin"}`))
	var got []byte
	for {
		typ, data, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("exec stream read: %v", err)
		}
		if typ == websocket.MessageBinary {
			got = append(got, data[1:]...)
			continue
		}
		s.validate(ptr("components", "schemas", "StreamEvent"), data)
		break
	}
	ws.CloseNow()
	if string(got) != "streamed" {
		t.Fatalf("exec stream echoed %q", got)
	}

	// Files.
	want(t, s.call(h, "PUT", base+"/files", id, q("path", "d/a.txt", "parents", "true", "mode", "0600"), []byte("hello"), "text/plain"), 200, "write")
	want(t, s.call(h, "PUT", base+"/files", id, q("path", "bin.dat"), []byte{0xff, 0xfe, 0}, ""), 200, "write binary")
	want(t, s.call(h, "GET", base+"/files", id, q("path", "d/a.txt"), nil, ""), 200, "read")
	want(t, s.call(h, "GET", base+"/files", id, q("path", "bin.dat"), nil, ""), 200, "read binary")
	want(t, s.call(h, "GET", base+"/files", id, q("path", "d/a.txt", "encoding", "base64", "offset", "1", "limit", "2"), nil, ""), 200, "read part")
	want(t, s.call(h, "GET", base+"/files", id, q("path", "nope"), nil, ""), 404, "read missing")
	r = s.call(h, "GET", base+"/files", id, q("path", "/etc/passwd"), nil, "")
	want(t, r, 403, "read outside")
	r = s.call(h, "GET", base+"/files", id, q("path", "d/a.txt", "offset", "-1"), nil, "")
	want(t, r, 400, "read bad offset")
	if !strings.Contains(string(r.body), `"location":"query.offset"`) {
		t.Errorf("a bad query parameter is not located in the query: %s", r.body)
	}
	want(t, s.call(h, "GET", base+"/files/list", id, q("path", "d"), nil, ""), 200, "list")
	want(t, s.call(h, "GET", base+"/files/stat", id, q("path", "d/a.txt"), nil, ""), 200, "stat")
	want(t, s.call(h, "POST", base+"/files/mkdir", id, nil, map[string]any{"path": "e/f", "parents": true, "mode": "0700"}, J), 200, "mkdir")
	want(t, s.call(h, "POST", base+"/files/write-batch", id, nil, map[string]any{"files": []map[string]any{
		{"path": "b1", "content": "x"}, {"path": "/etc/x", "content": "y"}, {"path": "b2", "content": "eg==", "encoding": "base64", "mode": "0640"}}}, J), 200, "write batch")
	want(t, s.call(h, "POST", base+"/files/delete-batch", id, nil, map[string]any{"paths": []string{"b1", "gone"}}, J), 200, "delete batch")
	want(t, s.call(h, "DELETE", base+"/files", id, q("path", "e", "recursive", "true"), nil, ""), 204, "delete")
	want(t, s.call(h, "DELETE", base+"/files", id, q("path", "e"), nil, ""), 404, "delete again")

	// Git, with a bare remote inside the sandbox's home.
	sh := func(script string) {
		t.Helper()
		r := s.call(h, "POST", base+"/exec", id, nil, map[string]any{"shell": script}, J)
		if r.status != 200 || !strings.Contains(string(r.body), `"exitCode":0`) {
			t.Fatalf("%s: %s", script, r.body)
		}
	}
	sh("git init -q --bare remote.git && git init -q -b main repo && cd repo && git config user.email t@e.st && git config user.name t && " +
		"echo one > f && git add f && git commit -qm one && git remote add origin ../remote.git && echo two >> f && echo new > g")
	want(t, s.call(h, "POST", base+"/git/status", id, nil, map[string]any{"paths": []string{"repo", "d"}}, J), 200, "git status")
	want(t, s.call(h, "POST", base+"/git/diff", id, nil, map[string]any{"paths": []string{"repo"}}, J), 200, "git diff")
	want(t, s.call(h, "POST", base+"/git/commit", id, nil, map[string]any{"path": "repo", "message": "two"}, J), 200, "git commit")
	want(t, s.call(h, "POST", base+"/git/commit", id, nil, map[string]any{"path": "repo", "message": "again"}, J), 409, "git commit nothing")
	want(t, s.call(h, "POST", base+"/git/push", id, nil, map[string]any{"path": "repo", "branch": "main"}, J), 200, "git push")
	want(t, s.call(h, "POST", base+"/git/push", id, nil, map[string]any{"path": "repo", "remote": "nowhere"}, J), 502, "git push to nowhere")
	want(t, s.call(h, "POST", base+"/git/commit", id, nil, map[string]any{"path": "d", "message": "x"}, J), 400, "git commit outside a repository")

	// Services and dev commands share their routes' shapes.
	for _, k := range []string{"services", "dev"} {
		p := base + "/" + k
		n := with("name", "srv")
		want(t, s.call(h, "POST", p+"/{name}/start", n, nil, map[string]any{"shell": "echo started; exec sleep 60", "port": freeTCPPort(t), "restart": "on-failure"}, J), 200, k+" start")
		want(t, s.call(h, "POST", p+"/{name}/start", n, nil, map[string]any{"argv": []string{"sleep", "1"}}, J), 409, k+" start again")
		want(t, s.call(h, "POST", p+"/{name}/start", with("name", "bad"), nil, map[string]any{"restart": "sometimes", "argv": []string{"true"}}, J), 400, k+" bad restart")
		want(t, s.call(h, "GET", p, id, nil, nil, ""), 200, k+" list")
		want(t, s.call(h, "GET", p+"/{name}", n, nil, nil, ""), 200, k+" get")
		want(t, s.call(h, "GET", p+"/{name}", with("name", "none"), nil, nil, ""), 404, k+" get missing")
		want(t, s.call(h, "GET", p+"/{name}/logs", n, q("offset", "0", "limit", "100"), nil, ""), 200, k+" logs")
		want(t, s.call(h, "POST", p+"/{name}/restart", n, nil, nil, ""), 200, k+" restart")
		want(t, s.call(h, "POST", p+"/{name}/stop", n, nil, map[string]any{"graceMs": 100}, J), 200, k+" stop")
		want(t, s.call(h, "GET", p+"/{name}", with("name", "Bad_Name"), nil, nil, ""), 400, k+" bad name")
	}

	// Terminals.
	r = s.call(h, "POST", base+"/terminals", id, nil, map[string]any{"cmd": []string{"sh"}, "cols": 100, "rows": 30}, J)
	want(t, r, 200, "terminal")
	var term struct{ ID string }
	r.json(t, &term)
	want(t, s.call(h, "GET", base+"/terminals", id, nil, nil, ""), 200, "terminals")
	want(t, s.call(h, "POST", base+"/terminals/{tid}/resize", with("tid", term.ID), nil, map[string]any{"cols": 120, "rows": 40}, J), 200, "resize")
	want(t, s.call(h, "POST", base+"/terminals/{tid}/resize", with("tid", term.ID), nil, map[string]any{"cols": 5000, "rows": 40}, J), 400, "resize too wide")
	ws, res, err = websocket.Dial(ctx, wsURL+"/terminals/"+term.ID+"/attach", nil)
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	s.check("GET", base+"/terminals/{tid}/attach", resp{status: res.StatusCode, header: res.Header})
	_ = ws.Write(ctx, websocket.MessageText, []byte("exit 7\n"))
	for {
		typ, data, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("terminal ended without its exit message: %v", err)
		}
		if typ == websocket.MessageText {
			s.validate(ptr("components", "schemas", "TerminalControl"), data)
			if !strings.Contains(string(data), `"exitCode":7`) {
				t.Fatalf("terminal exit: %s", data)
			}
			break
		}
	}
	ws.CloseNow()
	r = s.call(h, "POST", base+"/terminals", id, nil, map[string]any{}, J)
	want(t, r, 200, "terminal with the login shell")
	r.json(t, &term)
	want(t, s.call(h, "DELETE", base+"/terminals/{tid}", with("tid", term.ID), nil, nil, ""), 204, "delete terminal")
	want(t, s.call(h, "DELETE", base+"/terminals/{tid}", with("tid", term.ID), nil, nil, ""), 404, "delete terminal again")

	// The edge's routes of the sandbox.
	want(t, s.call(h, "POST", base+"/dev/{name}/start", with("name", "web"), nil, map[string]any{"argv": []string{"sleep", "60"}, "port": freeTCPPort(t)}, J), 200, "dev start")
	want(t, s.call(h, "POST", base+"/dev/{name}/expose", with("name", "web"), nil, map[string]any{"default": true, "aliases": []map[string]any{{"alias": "api", "port": freeTCPPort(t)}}}, J), 200, "expose")
	want(t, s.call(h, "POST", base+"/dev/{name}/expose", with("name", "web"), nil, []byte(`{"default":true}`), "application/x-www-form-urlencoded"), 415, "expose as a form")
	want(t, s.call(h, "POST", base+"/dev/{name}/expose", with("name", "web"), nil, []byte(`{"default":true}`), ""), 200, "expose without a content type")
	want(t, s.call(h, "GET", base+"/routes", id, nil, nil, ""), 200, "routes")
	want(t, s.call(h, "DELETE", base+"/dev/{name}/expose", with("name", "web"), nil, nil, ""), 204, "unexpose")

	// Problems from the manager on agent routes.
	want(t, s.call(h, "GET", base+"/health", map[string]string{"id": "zzzzzzzzzzzz"}, nil, nil, ""), 404, "unknown sandbox")
	want(t, s.call(h, "POST", base+"/stop", id, nil, nil, ""), 200, "stop")
	want(t, s.call(h, "POST", base+"/exec", id, nil, map[string]any{"argv": []string{"true"}}, J), 409, "exec on a stopped sandbox")
	want(t, s.call(h, "POST", base+"/stop", id, nil, nil, ""), 409, "stop again")

	// Every agent operation answered with a success at least once.
	var missing []string
	paths, _ := s.doc["paths"].(map[string]any)
	for p, item := range paths {
		for m, op := range item.(map[string]any) {
			tags, _ := op.(map[string]any)["tags"].([]any)
			if len(tags) == 0 || (tags[0] != "sandbox agent" && tags[0] != "edge") || p == "/auth/edge" {
				continue
			}
			ok := false
			for _, st := range []string{"200", "201", "204", "101"} {
				ok = ok || s.covered[strings.ToUpper(m)+" "+p+" "+st]
			}
			if !ok {
				missing = append(missing, strings.ToUpper(m)+" "+p)
			}
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("documented agent operations this test never saw succeed:\n%s", strings.Join(missing, "\n"))
	}
}

// TestOpenAPIForGenerators: the 3.0 form of the document, which most client
// generators read (oapi-codegen reads it through kin-openapi), loads and
// validates, and every agent operation in it has its schemas.
func TestOpenAPIForGenerators(t *testing.T) {
	h := newHarness(t, config.ModeMock, nil)
	r := h.do(t, "GET", "/openapi-3.0.json", nil, nil)
	want(t, r, 200, "openapi-3.0.json")
	doc, err := openapi3.NewLoader().LoadFromData(r.body)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("the 3.0 document does not validate: %v", err)
	}
	n := 0
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			if op.Responses.Value("422") != nil {
				t.Errorf("%s %s lists 422, which the API never answers (schema violations are 400)", method, path)
			}
			if len(op.Tags) == 0 || op.Tags[0] != "sandbox agent" {
				continue
			}
			n++
			if strings.HasPrefix(op.OperationID, "raw-") {
				t.Errorf("%s %s has no operation id of its own", method, path)
			}
			ok := op.Responses.Value("200")
			if ok != nil && (ok.Value.Content.Get("application/json") == nil || ok.Value.Content.Get("application/json").Schema == nil) {
				t.Errorf("%s %s: 200 without a JSON schema", method, path)
			}
			if (method == "POST" || method == "PUT") && !strings.HasSuffix(path, "/stop") && !strings.HasSuffix(path, "/restart") &&
				(op.RequestBody == nil || len(op.RequestBody.Value.Content) == 0) {
				t.Errorf("%s %s: no request body", method, path)
			}
		}
	}
	if n < 30 {
		t.Fatalf("only %d agent operations in the document", n)
	}
}

// freeTCPPort is a loopback port nothing listens on: mock sandboxes share
// this machine's ports, and the manager refuses a taken one.
func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
