package api_test

import (
	"encoding/json"
	"strings"
	"testing"
)

type fullProblem struct {
	Type, Title, Code, Detail string
	Status                    int
	Errors                    []struct{ Location, Message string }
}

// TestOneErrorShape: the manager's own refusals and the agent's, proxied,
// are the same problem+json with a stable code; internals stay out of the
// text; a body sent as a form gets a 415 saying what to send.
func TestOneErrorShape(t *testing.T) {
	h := newAgentHarness(t)
	r := h.do(t, "POST", "/api/sandboxes", map[string]any{"name": "demo"}, nil)
	want(t, r, 201, "create")
	var sb struct{ ID string }
	r.json(t, &sb)
	base := "/api/sandboxes/" + sb.ID

	cases := []struct {
		name, method, path, body, ct string
		status                       int
		code, detail, location       string
		notIn                        []string
	}{
		{name: "agent field error", method: "POST", path: base + "/exec", body: `{"argv":["true"],"timeoutMs":-1}`, ct: "application/json",
			status: 400, code: "invalid_input", detail: "timeoutMs", location: "body.timeoutMs"},
		{name: "agent query error", method: "GET", path: base + "/files?path=a&limit=0",
			status: 400, code: "invalid_input", detail: "limit", location: "query.limit"},
		{name: "agent path name", method: "GET", path: base + "/dev/Not_A_Label",
			status: 400, code: "invalid_input", location: "path.name"},
		{name: "agent outside the roots", method: "GET", path: base + "/files?path=/etc/passwd",
			status: 403, code: "forbidden", detail: "outside"},
		{name: "agent not found", method: "GET", path: base + "/dev/none",
			status: 404, code: "not_found"},
		{name: "agent specific code", method: "POST", path: base + "/git/commit", body: `{"path":".","message":"x"}`, ct: "application/json",
			status: 400, code: "not_a_repository", location: "body.path"},
		{name: "form body to a huma route", method: "POST", path: base + "/dev/web/expose", body: `{"port":3000}`, ct: "application/x-www-form-urlencoded",
			status: 415, code: "unsupported_media_type", detail: "Content-Type: application/json", location: "header.Content-Type"},
		{name: "form body to an agent route", method: "POST", path: base + "/dev/web/start", body: `{"argv":["true"]}`, ct: "application/x-www-form-urlencoded",
			status: 415, code: "unsupported_media_type", detail: "--json"},
		{name: "duplicate name", method: "POST", path: "/api/sandboxes", body: `{"name":"demo"}`, ct: "application/json",
			status: 409, code: "conflict", detail: `you already have a sandbox named "demo"`, location: "body.name",
			notIn: []string{"insert"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hdr := map[string]string{}
			if c.ct != "" {
				hdr["Content-Type"] = c.ct
			}
			var body any
			if c.body != "" {
				body = c.body
			}
			r := h.do(t, c.method, c.path, body, hdr)
			if c.ct == "" && body != nil {
				t.Fatal("test case needs a content type")
			}
			checkProblem(t, r, c.status, c.code, c.detail, c.location)
			for _, s := range c.notIn {
				if strings.Contains(string(r.body), s) {
					t.Errorf("problem leaks %q: %s", s, r.body)
				}
			}
		})
	}

	// A sandbox's state, in the words of the operation asked for.
	want(t, h.do(t, "POST", base+"/stop", nil, nil), 200, "stop")
	checkProblem(t, h.do(t, "POST", base+"/stop", nil, nil), 409, "conflict", "is already stopped", "")
	checkProblem(t, h.do(t, "POST", base+"/exec", `{"argv":["true"]}`, nil), 409, "conflict",
		"is stopped, not running; start it first (atelier sandbox start "+sb.ID+")", "")
	want(t, h.do(t, "POST", base+"/start", nil, nil), 200, "start")
	checkProblem(t, h.do(t, "POST", base+"/start", nil, nil), 409, "conflict", "is already running", "")
}

func checkProblem(t *testing.T, r resp, status int, code, detail, location string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("content type %q, want application/problem+json", ct)
	}
	var p fullProblem
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("not JSON: %s", r.body)
	}
	if p.Type != "about:blank" || p.Title == "" || p.Status != status || p.Code != code {
		t.Errorf("problem %+v, want status %d code %s with type and title", p, status, code)
	}
	if !strings.Contains(p.Detail, detail) {
		t.Errorf("detail %q lacks %q", p.Detail, detail)
	}
	if location != "" && (len(p.Errors) == 0 || p.Errors[0].Location != location) {
		t.Errorf("errors %+v, want location %s", p.Errors, location)
	}
}
