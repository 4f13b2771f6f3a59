package api_test

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

// TestMockPortSpace: mock sandboxes are processes on the developer's
// machine and share its ports. A dev command or exposure on a port the
// manager listens on, one another sandbox exposes, or one something else
// already listens on is refused up front (409 port_in_use naming the
// holder), never a process that cannot bind or a host serving someone
// else's server.
func TestMockPortSpace(t *testing.T) {
	h := newAgentHarness(t)
	ids := map[string]string{}
	for _, name := range []string{"one", "two"} {
		r := h.do(t, "POST", "/api/sandboxes", map[string]any{"name": name}, nil)
		want(t, r, 201, "create "+name)
		var sb struct{ ID string }
		r.json(t, &sb)
		ids[name] = sb.ID
	}
	one, two := "/api/sandboxes/"+ids["one"], "/api/sandboxes/"+ids["two"]
	free := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	start := func(base string, port int) resp {
		return h.do(t, "POST", base+"/dev/web/start", `{"argv":["sleep","60"],"port":`+strconv.Itoa(port)+`}`, nil)
	}

	p := free()
	want(t, start(one, p), 200, "dev start in one")
	want(t, h.do(t, "POST", one+"/dev/web/expose", map[string]any{}, nil), 200, "expose in one")

	r := start(two, p)
	checkProblem(t, r, 409, "port_in_use", "exposed by sandbox "+ids["one"], "body.port")
	r = h.do(t, "POST", two+"/dev/web/expose", map[string]any{"port": p}, nil)
	checkProblem(t, r, 409, "port_in_use", "exposed by sandbox "+ids["one"], "body.port")

	// Something of the developer's own listens there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	busy := l.Addr().(*net.TCPAddr).Port
	r = start(two, busy)
	checkProblem(t, r, 409, "port_in_use", "already in use on this machine", "body.port")

	// The manager's own ports.
	r = start(two, h.srv.Config.Domain.HTTPPort)
	checkProblem(t, r, 409, "port_in_use", "the manager's own", "body.port")

	// A free port is fine, and the sandbox that holds one keeps using it.
	want(t, start(two, free()), 200, "dev start on a free port")
	r = h.do(t, "POST", one+"/dev/web/restart", `{"argv":["sleep","60"],"port":`+strconv.Itoa(p)+`}`, nil)
	want(t, r, 200, "restart on its own port")
	if !strings.Contains(string(r.body), `"port":`+strconv.Itoa(p)) {
		t.Fatalf("restart: %s", r.body)
	}
}
