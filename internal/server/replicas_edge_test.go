package server

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"atelier/internal/testenv"
)

// A dev server exposed through replica A is served by replica B's edge:
// the route change reaches B through the shared event stream (B's table
// is refreshed from the store), within a bounded time, and so do the
// unexpose, the sandbox's stop (B answers for it but no longer proxies)
// and its destroy (B forgets the host). A is a separate process, as two
// edges (Caddy) cannot run in one.
func TestEdgeRoutesReachEveryReplica(t *testing.T) {
	url0 := testenv.PostgresDB(t)
	h := newSharedHost(t, url0, 1500*time.Millisecond)
	a := h.spawn(t, "")
	_, cb, cfgB := h.inProcess(t)

	id := sandboxID(t, mustCall(t, a.c, "POST", "/api/sandboxes", `{}`, http.StatusCreated))
	// The "dev server": mock guests are processes of this machine, so a
	// listener of the test's on loopback is one.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const hello = "hello from the dev server"
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, hello) }))
	t.Cleanup(func() { ln.Close() })
	port := ln.Addr().(*net.TCPAddr).Port

	served := func(host string) func() bool {
		return func() bool { code, body := edgeGet(cfgB.Domain.HTTPPort, host); return code == 200 && body == hello }
	}
	var lat []time.Duration
	var hosts []string
	for i := range 5 {
		name := fmt.Sprintf("web%d", i)
		start := time.Now()
		b := mustCall(t, a.c, "POST", "/api/sandboxes/"+id+"/dev/"+name+"/expose", fmt.Sprintf(`{"port":%d,"public":true}`, port), http.StatusOK)
		var out struct{ Routes []struct{ Host, URL string } }
		if err := json.Unmarshal(b, &out); err != nil || len(out.Routes) == 0 {
			t.Fatalf("expose: %s", b)
		}
		u, _ := url.Parse(out.Routes[0].URL)
		host := u.Hostname()
		if i == 0 {
			// Served by A's own edge at once: the route exists.
			if code, body := edgeGet(a.cfg.Domain.HTTPPort, host); code != 200 || body != hello {
				t.Fatalf("A's edge: %d %q", code, body)
			}
		}
		waitFor(t, 5*time.Second, "B's edge serves "+host, served(host))
		lat = append(lat, time.Since(start))
		hosts = append(hosts, host)
	}
	slices.Sort(lat)
	t.Logf("expose on A -> served by B's edge: min %s, median %s, max %s (5 exposures, NOTIFY-driven; polling bound %s)",
		lat[0].Round(time.Millisecond), lat[2].Round(time.Millisecond), lat[4].Round(time.Millisecond), time.Second)

	gone := func(host string) func() bool {
		return func() bool { code, _ := edgeGet(cfgB.Domain.HTTPPort, host); return code == http.StatusNotFound }
	}
	start := time.Now()
	mustCall(t, a.c, "DELETE", "/api/sandboxes/"+id+"/dev/web0/expose", "", http.StatusNoContent)
	waitFor(t, 5*time.Second, "B forgets the unexposed host", gone(hosts[0]))
	t.Logf("unexpose on A -> 404 on B's edge after %s", time.Since(start).Round(time.Millisecond))
	if !served(hosts[1])() {
		t.Fatal("B stopped serving another command's host")
	}

	mustCall(t, a.c, "POST", "/api/sandboxes/"+id+"/stop", "", http.StatusOK)
	waitFor(t, 5*time.Second, "B no longer proxies the stopped sandbox", func() bool {
		code, body := edgeGet(cfgB.Domain.HTTPPort, hosts[1])
		return code == http.StatusServiceUnavailable && !strings.Contains(body, hello)
	})
	mustCall(t, cb, "POST", "/api/sandboxes/"+id+"/start", "", http.StatusOK)
	waitFor(t, 5*time.Second, "B serves again once the sandbox runs (started through B)", served(hosts[1]))
	if code, body := edgeGet(a.cfg.Domain.HTTPPort, hosts[1]); code != 200 || body != hello {
		t.Fatalf("A's edge after the start on B: %d %q", code, body)
	}
	mustCall(t, a.c, "DELETE", "/api/sandboxes/"+id, "", http.StatusNoContent)
	waitFor(t, 5*time.Second, "B forgets the destroyed sandbox's hosts", gone(hosts[1]))
}
