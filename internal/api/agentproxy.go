package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"reflect"
	"strconv"
	"strings"

	"github.com/danielgtaylor/huma/v2"

	"atelier/internal/agent"
	"atelier/internal/auth"
	"atelier/internal/config"
	"atelier/internal/ids"
	"atelier/internal/sandbox"
)

// agentRoute is one of the guest agent's routes the manager exposes under
// /api/sandboxes/{id}: authenticated and checked for ownership here, then
// proxied over the sandbox's pooled agent transport. The fields describe
// it in the OpenAPI document with the agent's own wire types (package
// agent), so generated clients get real request and response schemas.
type agentRoute struct {
	method, path, id, summary, description string
	query                                  []queryParam
	// body is the JSON request body's type; nil for none.
	body         any
	bodyOptional bool
	// rawBody: the body is the file's bytes (PUT /files).
	rawBody bool
	// out is the 200 answer's type; nil with noContent (204) or websocket (101).
	out       any
	noContent bool
	websocket bool
	// errors lists the statuses the agent (or the proxy) answers besides
	// the 400/401/404/409/502/503 every agent route may give.
	errors []int
}

type queryParam struct {
	name, typ, doc string
	required       bool
	enum           []any
	min, max       *float64
}

func num(f float64) *float64 { return &f }

var (
	qPath = queryParam{name: "path", typ: "string", required: true,
		doc: "A path inside the sandbox: absolute, or relative to the first file root (the home directory in mock mode). Paths that resolve outside the agent's file roots are refused (403)."}
	qOffset = queryParam{name: "offset", typ: "integer", min: num(0), doc: "Byte offset to start from."}
)

func logsRoute(prefix, what, one string) agentRoute {
	return agentRoute{method: "GET", path: prefix + "/{name}/logs", id: one + "-logs",
		summary: "A " + what + "'s log from a byte offset",
		description: "Offsets are logical and only grow, across restarts and rotation: poll with offset=nextOffset to follow. " +
			"When the answer's offset is past the one asked for, the bytes in between were rotated away.",
		query: []queryParam{qOffset, {name: "limit", typ: "integer", min: num(1), max: num(agent.MaxLogReadLimit),
			doc: fmt.Sprintf("Most bytes to return; default %d.", agent.DefaultLogReadLimit)}},
		out: agent.LogChunk{}}
}

func processRoutes(prefix, what, one, many string) []agentRoute {
	return []agentRoute{
		{method: "GET", path: prefix, id: "list-" + many, summary: "List " + what + "s", out: agent.ProcessList{}},
		{method: "GET", path: prefix + "/{name}", id: "get-" + one, summary: "One " + what + "'s state, port and restarts", out: agent.ProcessStatus{}},
		{method: "POST", path: prefix + "/{name}/start", id: "start-" + one, summary: "Start a " + what,
			description: "Exactly one of argv and shell. A " + what + " already running is 409 already_running.",
			body:        agent.ProcessSpec{}, out: agent.ProcessStatus{}},
		{method: "POST", path: prefix + "/{name}/stop", id: "stop-" + one, summary: "Stop a " + what,
			description: "SIGTERM to its process group, SIGKILL after the grace.",
			body:        agent.StopRequest{}, bodyOptional: true, out: agent.ProcessStatus{}},
		{method: "POST", path: prefix + "/{name}/restart", id: "restart-" + one, summary: "Restart a " + what,
			description: "With a body, the " + what + " restarts with that spec; without, with its last one.",
			body:        agent.ProcessSpec{}, bodyOptional: true, out: agent.ProcessStatus{}},
		logsRoute(prefix, what, one),
	}
}

var agentRoutes = func() []agentRoute {
	rs := []agentRoute{
		{method: "GET", path: "/health", id: "agent-health", summary: "The sandbox agent's health and version", out: agent.Health{}},
		{method: "GET", path: "/metrics", id: "agent-metrics", summary: "CPU, memory, disk and processes inside the sandbox", out: agent.Metrics{}},
		{method: "POST", path: "/exec", id: "exec", summary: "Run a command and wait for its result",
			description: "Exactly one of argv (run as is, no shell) and shell (/bin/sh -c). A command that ran answers 200 " +
				"whatever its exit code (exitCode; 128+n when signal n ended it); one that could not start is a problem. " +
				"Output beyond maxOutputBytes is dropped (truncated: true); the command still runs to its end.",
			body: agent.ExecRequest{}, out: agent.ExecResult{}},
		{method: "GET", path: "/exec/stream", id: "exec-stream", summary: "Run a command with streamed input and output (WebSocket)",
			description: "A WebSocket. The client's first message is a text message holding an ExecRequest (stdinStream: true keeps " +
				"stdin open). Then the client sends binary messages (stdin bytes) and text StreamControl messages " +
				"({\"type\":\"closeStdin\"}, {\"type\":\"kill\",\"signal\":\"INT\"}). The agent sends binary messages whose first byte " +
				"is 1 (stdout) or 2 (stderr) followed by output, then one text StreamEvent ({\"type\":\"exit\",\"exitCode\":N} or " +
				"{\"type\":\"error\",\"code\",\"detail\"} when the command could not start) and closes. Closing the socket kills the command.",
			websocket: true},
		{method: "GET", path: "/files", id: "read-file", summary: "Read a file",
			description: "Content is UTF-8 text, or base64 when the file is not valid UTF-8 or encoding=base64. Read large files in pieces with offset and limit.",
			query: []queryParam{qPath,
				{name: "encoding", typ: "string", enum: []any{"utf8", "base64"}, doc: "utf8 fails on binary content; default: utf8 when valid, else base64."},
				qOffset, {name: "limit", typ: "integer", min: num(1), doc: "Most bytes to return; default and maximum the agent's file size limit (16 MiB)."}},
			out: agent.FileContent{}, errors: []int{403}},
		{method: "PUT", path: "/files", id: "write-file", summary: "Write a file atomically",
			description: "The body is the file's content (any content type). The file is replaced at once: readers see the old or the new file.",
			query: []queryParam{qPath,
				{name: "mode", typ: "string", doc: "Octal permission bits, e.g. 0644; default: keep an existing file's, 0644 for a new one."},
				{name: "owner", typ: "string", doc: "user, uid, user:group or uid:gid; default: keep, or the agent's user for a new file."},
				{name: "parents", typ: "boolean", doc: "Create missing parent directories."}},
			rawBody: true, out: agent.FileInfo{}, errors: []int{403, 413}},
		{method: "DELETE", path: "/files", id: "delete-file", summary: "Delete a file or directory",
			query:     []queryParam{qPath, {name: "recursive", typ: "boolean", doc: "Delete a directory with its contents."}},
			noContent: true, errors: []int{403}},
		{method: "GET", path: "/files/list", id: "list-files", summary: "List a directory", query: []queryParam{qPath},
			description: "Entries sorted by name, symlinks described (not followed); at most 10 000 (truncated: true beyond).",
			out:         agent.ListResult{}, errors: []int{403}},
		{method: "GET", path: "/files/stat", id: "stat-file", summary: "Describe a path (a symlink itself, not its target)",
			query: []queryParam{qPath}, out: agent.FileInfo{}, errors: []int{403}},
		{method: "POST", path: "/files/mkdir", id: "make-directory", summary: "Create a directory",
			description: "With parents, missing parents are made and an existing directory is fine (mkdir -p).",
			body:        agent.MkdirRequest{}, out: agent.FileInfo{}, errors: []int{403}},
		{method: "POST", path: "/files/write-batch", id: "write-files", summary: "Write several files",
			description: "Each file is written on its own; the answer has one result per file, in order (200 when the batch itself was well formed).",
			body:        agent.WriteBatchRequest{}, out: agent.BatchResult{}},
		{method: "POST", path: "/files/delete-batch", id: "delete-files", summary: "Delete several paths",
			description: "Missing paths succeed with existed: false, so a removal can be repeated.",
			body:        agent.DeleteBatchRequest{}, out: agent.BatchResult{}},
		{method: "POST", path: "/git/status", id: "git-status", summary: "Git status of repositories",
			description: "One entry per path, in order; a path that is not a repository has error set.",
			body:        agent.GitPathsRequest{}, out: agent.GitStatusResult{}},
		{method: "POST", path: "/git/diff", id: "git-diff", summary: "Lines added and removed per file against HEAD",
			body: agent.GitPathsRequest{}, out: agent.GitDiffResult{}},
		{method: "POST", path: "/git/commit", id: "git-commit", summary: "Stage everything and commit",
			description: "git add -A, then git commit. Nothing to commit is 409 nothing_to_commit.",
			body:        agent.GitCommitRequest{}, out: agent.GitCommitResult{}},
		{method: "POST", path: "/git/push", id: "git-push", summary: "Push a repository",
			description: "env is added to git's environment for this push only (credentials: a GIT_ASKPASS helper and its token); it is never stored. A failed push is 409 git_failed with git's output.",
			body:        agent.GitPushRequest{}, out: agent.GitPushResult{}},
	}
	rs = append(rs, processRoutes("/services", "service", "service", "services")...)
	rs = append(rs, processRoutes("/dev", "dev command", "dev-command", "dev-commands")...)
	rs = append(rs,
		agentRoute{method: "GET", path: "/terminals", id: "list-terminals", summary: "List terminal sessions", out: agent.TerminalList{}},
		agentRoute{method: "POST", path: "/terminals", id: "create-terminal", summary: "Open a terminal session (PTY)",
			description: "The command (default: the user's login shell) runs on a PTY until it exits or the session is deleted; " +
				"attach to it with the WebSocket route. Sessions nobody watches and that print nothing for 30 minutes are closed.",
			body: agent.TerminalRequest{}, out: agent.TerminalInfo{}},
		agentRoute{method: "DELETE", path: "/terminals/{tid}", id: "delete-terminal", summary: "Close a terminal session (SIGHUP, then SIGKILL)", noContent: true},
		agentRoute{method: "POST", path: "/terminals/{tid}/resize", id: "resize-terminal", summary: "Resize a terminal",
			body: agent.ResizeRequest{}, out: agent.TerminalInfo{}},
		agentRoute{method: "GET", path: "/terminals/{tid}/attach", id: "attach-terminal", summary: "Attach to a terminal (WebSocket)",
			description: "A WebSocket. The agent first sends the last 64 KiB of output, then live output, as binary messages, and a " +
				"text TerminalControl {\"type\":\"exit\",\"exitCode\":N} before it closes when the program ends. The client sends keyboard " +
				"input as binary or text messages, and text TerminalControl {\"type\":\"resize\",\"cols\":C,\"rows\":R} messages; a text " +
				"message that is not such a JSON object is input (so websocat and browsers can type). Up to 16 viewers may attach at once.",
			websocket: true},
	)
	return rs
}()

// agentSchemaNames renames the agent's wire types whose Go names would be
// ambiguous in one document with the manager's own (Problem above all).
var agentSchemaNames = map[string]string{"Problem": "AgentProblem", "Health": "AgentHealth", "Metrics": "AgentMetrics"}

func schemaNamer(t reflect.Type, hint string) string {
	name := huma.DefaultSchemaNamer(t, hint)
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.PkgPath() == "atelier/internal/agent" {
		if n, ok := agentSchemaNames[name]; ok {
			return n
		}
	}
	return name
}

// strippedHeaders never reach a sandbox: its code must not see a login.
var strippedHeaders = []string{"Cookie", "Authorization", "Origin", "Referer", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"}

func (s *Server) registerAgentProxy() {
	reg := s.api.OpenAPI().Components.Schemas
	// Messages of the two WebSockets: in the document for generated clients.
	for _, v := range []any{agent.ExecRequest{}, agent.StreamControl{}, agent.StreamEvent{}, agent.TerminalControl{}} {
		reg.Schema(reflect.TypeOf(v), true, "")
	}
	for _, r := range agentRoutes {
		path := "/api/sandboxes/{id}" + r.path
		h := s.authRaw(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) { s.proxyToAgent(w, req, r) }))
		s.mux.Handle(r.method+" "+path, h)
		s.raw = append(s.raw, Route{Method: r.method, Path: path})
		s.api.OpenAPI().AddOperation(r.operation(reg, path))
	}
}

// operation describes r in the OpenAPI document.
func (r agentRoute) operation(reg huma.Registry, path string) *huma.Operation {
	problem := func(desc string) *huma.Response {
		return &huma.Response{Description: desc, Content: map[string]*huma.MediaType{
			"application/problem+json": {Schema: reg.Schema(reflect.TypeOf(Problem{}), true, "")}}}
	}
	op := &huma.Operation{
		OperationID: r.id, Method: r.method, Path: path, Summary: r.summary, Tags: []string{"sandbox agent"},
		Description: strings.TrimSpace(r.description + " Proxied to the sandbox's agent: its owner only (and root on the host through " +
			"the unix socket); a sandbox that is not running is 409."),
		Security:  securityAuthed,
		Responses: map[string]*huma.Response{},
	}
	op.Parameters = append(op.Parameters, &huma.Param{Name: "id", In: "path", Required: true, Description: "Sandbox id: 12 characters [a-z0-9].",
		Schema: &huma.Schema{Type: "string", Pattern: idPattern}})
	if strings.Contains(r.path, "{name}") {
		op.Parameters = append(op.Parameters, &huma.Param{Name: "name", In: "path", Required: true, Description: "Name (a DNS label).",
			Schema: &huma.Schema{Type: "string", Pattern: dnsLabelPattern}})
	}
	if strings.Contains(r.path, "{tid}") {
		op.Parameters = append(op.Parameters, &huma.Param{Name: "tid", In: "path", Required: true, Description: "Terminal id, as POST .../terminals returned it.",
			Schema: &huma.Schema{Type: "string", Pattern: "^[A-Za-z0-9_-]{1,64}$"}})
	}
	for _, q := range r.query {
		op.Parameters = append(op.Parameters, &huma.Param{Name: q.name, In: "query", Required: q.required, Description: q.doc,
			Schema: &huma.Schema{Type: q.typ, Enum: q.enum, Minimum: q.min, Maximum: q.max}})
	}
	switch {
	case r.body != nil:
		op.RequestBody = &huma.RequestBody{Required: !r.bodyOptional, Content: map[string]*huma.MediaType{
			"application/json": {Schema: reg.Schema(reflect.TypeOf(r.body), true, "")}}}
	case r.rawBody:
		op.RequestBody = &huma.RequestBody{Required: true, Content: map[string]*huma.MediaType{
			// No schema: any bytes (the 3.0 document gets string/binary).
			"application/octet-stream": {}}}
	}
	switch {
	case r.websocket:
		op.Responses["101"] = &huma.Response{Description: "Switching Protocols: the WebSocket described above."}
	case r.noContent:
		op.Responses["204"] = &huma.Response{Description: "Done."}
	default:
		op.Responses["200"] = &huma.Response{Description: "OK", Content: map[string]*huma.MediaType{
			"application/json": {Schema: reg.Schema(reflect.TypeOf(r.out), true, "")}}}
	}
	statuses := append([]int{400, 401, 403, 404, 409, 502, 503}, r.errors...)
	if r.body != nil {
		statuses = append(statuses, 413, 415)
	}
	for _, st := range statuses {
		if _, ok := op.Responses[strconv.Itoa(st)]; !ok {
			op.Responses[strconv.Itoa(st)] = problem(http.StatusText(st))
		}
	}
	op.Responses["500"] = problem(http.StatusText(500))
	return op
}

const dnsLabelPattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"

func (s *Server) proxyToAgent(w http.ResponseWriter, r *http.Request, route agentRoute) {
	ctx := r.Context()
	id := r.PathValue("id")
	if !ids.ValidSandboxID(id) {
		writeProblem(w, fieldProblemAt("path.id", "expected 12 characters [a-z0-9]"))
		return
	}
	if v := r.PathValue("name"); v != "" && !ids.ValidDNSLabel(v) {
		writeProblem(w, fieldProblemAt("path.name", "must be a DNS label: lowercase letters, digits and inner hyphens, at most 63"))
		return
	}
	if v := r.PathValue("tid"); v != "" && !validTerminalID(v) {
		writeProblem(w, fieldProblemAt("path.tid", "must be 1 to 64 characters [A-Za-z0-9_-]"))
		return
	}
	// One rule for every JSON body, huma's operations and the agent's alike.
	if route.body != nil && r.ContentLength != 0 && !isJSONContentType(r.Header.Get("Content-Type")) {
		writeProblem(w, unsupportedMediaType())
		return
	}
	p, _ := auth.PrincipalFrom(ctx)
	// A WebSocket upgrade is a GET, so the cookie's Origin check for unsafe
	// methods does not cover it; a terminal must not open from another site.
	if p.Method == auth.MethodCookie && strings.EqualFold(r.Header.Get("Upgrade"), "websocket") &&
		r.Header.Get("Origin") != s.d.Config.DashboardURL() {
		writeProblem(w, newProblem(http.StatusForbidden, "forbidden", "websocket origin not allowed"))
		return
	}
	if _, err := s.owned(ctx, id); err != nil {
		writeProblem(w, err.(*Problem))
		return
	}
	c, err := s.d.Sandboxes.Agent(ctx, id)
	if err != nil {
		if errors.Is(err, sandbox.ErrNoAgent) {
			writeProblem(w, newProblem(http.StatusServiceUnavailable, "unavailable", "sandbox "+id+" has no agent to answer"))
			return
		}
		writeProblem(w, toProblem(ctx, s.d.Log, err).(*Problem))
		return
	}
	if s.d.Config.Server.Mode == config.ModeMock && r.Method == http.MethodPost &&
		(strings.HasSuffix(route.path, "/{name}/start") || strings.HasSuffix(route.path, "/{name}/restart")) {
		if p := s.mockPortCheck(r, id, c, route); p != nil {
			writeProblem(w, p)
			return
		}
	}
	target := strings.TrimPrefix(r.URL.Path, "/api/sandboxes/"+id)
	rp := &httputil.ReverseProxy{
		Transport: c.HTTPClient().Transport,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host, pr.Out.Host = "http", "agent", "agent"
			pr.Out.URL.Path, pr.Out.URL.RawPath = target, ""
			for _, h := range strippedHeaders {
				pr.Out.Header.Del(h)
			}
		},
		ModifyResponse: func(res *http.Response) error { return agentProblem(res, route) },
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			s.d.Log.WarnContext(r.Context(), "agent request failed", "sandbox_id", id, "path", target, "err", err)
			writeProblem(w, newProblem(http.StatusBadGateway, "unavailable", "the sandbox's agent did not answer; the sandbox may be stopping or overloaded"))
		},
		FlushInterval: -1,
	}
	rp.ServeHTTP(w, r)
}

// mockPortCheck refuses, in mock mode, to start a service or dev command
// on a port this machine cannot give it: every mock sandbox is a local
// process, so all of them share the developer's ports. A port the manager
// listens on, one another sandbox exposes, or one something already
// listens on (the developer's own server, another sandbox's process) is a
// 409 port_in_use naming the holder, instead of a process that fails to
// bind, or a dev host that serves someone else's server. The body is read
// here and handed on unchanged.
func (s *Server) mockPortCheck(r *http.Request, id string, c *agent.Client, route agentRoute) *Problem {
	b, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, 1<<20))
	if err != nil {
		return newProblem(http.StatusRequestEntityTooLarge, "body_too_large", "the body exceeds 1 MiB")
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	var spec struct {
		Port int `json:"port"`
	}
	if json.Unmarshal(b, &spec) != nil || spec.Port <= 0 || spec.Port > 65535 {
		return nil // the agent judges the body
	}
	conflict := func(msg string) *Problem {
		return newProblem(http.StatusConflict, "port_in_use", msg,
			&huma.ErrorDetail{Location: "body.port", Message: msg, Value: spec.Port})
	}
	if s.d.Edge != nil {
		if err := s.d.Edge.MockPortHolder(id, spec.Port); err != nil {
			return conflict(err.Error())
		}
	}
	if strings.HasSuffix(route.path, "/restart") {
		return nil // its own process may hold the port until the agent stops it
	}
	name := r.PathValue("name")
	var st *agent.ProcessStatus
	if strings.HasPrefix(route.path, "/dev/") {
		st, err = c.DevCommand(r.Context(), name)
	} else {
		st, err = c.Service(r.Context(), name)
	}
	if err == nil && st.Running {
		return nil // the agent answers already_running
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(spec.Port)))
	if err != nil {
		return conflict(fmt.Sprintf("port %d is already in use on this machine: mock sandboxes are local processes that "+
			"share its ports, so another sandbox's process or one of your own listens there; use another port", spec.Port))
	}
	_ = l.Close()
	return nil
}

// agentCodes maps the agent's error codes to the API's stable ones. The
// agent's specific codes that a client can act on are kept as they are.
var agentCodes = map[string]string{
	agent.CodeBadRequest:     "invalid_input",
	agent.CodeForbidden:      "forbidden",
	agent.CodeNotFound:       "not_found",
	agent.CodeConflict:       "conflict",
	agent.CodeTooLarge:       "body_too_large",
	agent.CodeAlreadyRunning: "already_running",
	agent.CodeLimitReached:   "limit_reached",
	agent.CodeNotARepository: "not_a_repository",
	agent.CodeNothingToDo:    "nothing_to_commit",
	agent.CodeGitFailed:      "git_failed",
	agent.CodeStartFailed:    "start_failed",
}

// maxAgentProblem bounds an agent's error body the proxy reads and rewrites.
const maxAgentProblem = 64 << 10

// agentProblem rewrites an agent's error answer ({code, detail, field}, a
// plain JSON body) into the API's problem+json, so a client sees one error
// shape whether the manager or the agent refused. A field the route takes
// as a query parameter is located in the query, any other in the body. An
// agent's 5xx is the sandbox's failure (or a git remote's), not the
// manager's: 502 (504 kept), with the agent's code when it has a specific
// one, else agent_error.
func agentProblem(res *http.Response, route agentRoute) error {
	if res.StatusCode < 400 {
		return nil
	}
	b, err := io.ReadAll(io.LimitReader(res.Body, maxAgentProblem))
	_ = res.Body.Close()
	if err != nil {
		return fmt.Errorf("read agent error: %w", err)
	}
	var ap agent.Problem
	_ = json.Unmarshal(b, &ap)
	status := res.StatusCode
	code, ok := agentCodes[ap.Code]
	if !ok {
		code = codeByStatus[status]
	}
	detail := ap.Detail
	if detail == "" {
		detail = strings.TrimSpace(string(b))
	}
	if status >= 500 {
		// The sandbox failed (or a remote it talked to), not the manager.
		if !ok {
			code, detail = "agent_error", "sandbox agent: "+detail
		}
		if status != http.StatusGatewayTimeout {
			status = http.StatusBadGateway
		}
	}
	p := newProblem(status, code, detail)
	if ap.Field != "" {
		loc := "body." + ap.Field
		for _, q := range route.query {
			if q.name == ap.Field {
				loc = "query." + ap.Field
			}
		}
		if ap.Field == "name" && strings.Contains(route.path, "{name}") && route.body == nil {
			loc = "path.name"
		}
		p.Errors = []*huma.ErrorDetail{{Location: loc, Message: strings.TrimPrefix(detail, ap.Field+": ")}}
		if status == http.StatusBadRequest {
			p.Detail = "validation failed: " + detail
		}
	}
	out, _ := json.Marshal(p)
	out = append(out, '\n')
	res.StatusCode = status
	res.Status = strconv.Itoa(status) + " " + http.StatusText(status)
	res.Header.Set("Content-Type", "application/problem+json")
	res.Header.Set("Content-Length", strconv.Itoa(len(out)))
	res.ContentLength = int64(len(out))
	res.Body = io.NopCloser(bytes.NewReader(out))
	return nil
}

// fieldProblemAt is a 400 naming where the bad value was (path.id, query.path…).
func fieldProblemAt(loc, msg string) *Problem {
	return newProblem(http.StatusBadRequest, "invalid_input", "validation failed: "+loc+": "+msg,
		&huma.ErrorDetail{Location: loc, Message: msg})
}

func validTerminalID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
