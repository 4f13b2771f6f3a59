package api

import (
	"net"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"

	"atelier/internal/config"
)

// guard stops two ways a web page in a user's browser can drive the
// manager, whatever credential the request would carry (a session cookie,
// mock mode's implicit local user):
//
//   - DNS rebinding: a page on evil.example re-points its own name at the
//     manager's address, after which the browser treats the manager as
//     evil.example and lets the page read every answer. The browser still
//     sends Host: evil.example, so a request whose Host is not one of the
//     manager's names is refused (421).
//   - Cross-origin writes: a form or a no-cors fetch (text/plain POST) from
//     any site reaches the manager without a CORS preflight. Unsafe methods
//     and WebSocket handshakes must come from the manager's own origin
//     (net/http's CrossOriginProtection: Sec-Fetch-Site, else Origin against
//     Host); requests with neither header are not from a browser (curl, the
//     CLI) and pass.
//
// Requests on the unix socket come from local processes, never a browser,
// and are not checked.
func (s *Server) guard(next http.Handler) http.Handler {
	names := guardNames(s.d.Config)
	cop := http.NewCrossOriginProtection()
	if o := originOf(s.d.Config.DashboardURL()); o != "" {
		// The dashboard's own origin, when it differs from the Host a
		// request arrives with (the edge in front of it).
		_ = cop.AddTrustedOrigin(o)
	}
	dashboard := s.d.Config.DashboardURL()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if viaUnixSocket(r) {
			next.ServeHTTP(w, r)
			return
		}
		if !hostAllowed(names, r.Host) {
			s.d.Log.InfoContext(r.Context(), "request refused: Host is not a name of this manager (DNS rebinding?)",
				"host", r.Host, "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path)
			writeProblem(w, newProblem(http.StatusMisdirectedRequest, "misdirected",
				"host "+quote(r.Host)+" is not a name of this manager; use "+dashboard+" (accepted names: "+strings.Join(sortedKeys(names), ", ")+", or an IP address)"))
			return
		}
		if err := cop.Check(asWrite(r)); err != nil {
			s.d.Log.InfoContext(r.Context(), "request refused: cross-origin write",
				"origin", r.Header.Get("Origin"), "sec_fetch_site", r.Header.Get("Sec-Fetch-Site"), "host", r.Host,
				"remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path)
			writeProblem(w, newProblem(http.StatusForbidden, "forbidden",
				"cross-origin request refused: "+r.Method+" "+r.URL.Path+" must come from "+dashboard+" itself (Origin "+quote(r.Header.Get("Origin"))+")"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// asWrite makes a WebSocket handshake look like the write it is: it is a
// GET, which CrossOriginProtection always allows, yet it opens a
// read-write channel (a terminal, a streaming exec).
func asWrite(r *http.Request) *http.Request {
	if r.Header.Get("Upgrade") == "" {
		return r
	}
	w := *r
	w.Method = http.MethodPost
	return &w
}

// guardNames are the host names the manager answers to. An IP address is
// always accepted: rebinding needs a name the attacker controls, and a page
// whose origin is the manager's own address is not another site. Ports are
// not compared: the same names reach the API directly and through the edge.
func guardNames(cfg *config.Config) map[string]bool {
	names := map[string]bool{"localhost": true}
	for _, n := range []string{cfg.Domain.Dashboard, cfg.Server.Host} {
		if n = normalizeHostName(n); n != "" {
			if _, err := netip.ParseAddr(n); err != nil {
				names[n] = true
			}
		}
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		names[normalizeHostName(h)] = true
	}
	return names
}

func hostAllowed(names map[string]bool, hostport string) bool {
	if hostport == "" {
		return true // HTTP/1.0 without Host: no browser sends that
	}
	h := normalizeHostName(hostport)
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	return names[h]
}

// normalizeHostName strips the port, brackets and a trailing dot, and
// lowercases.
func normalizeHostName(hostport string) string {
	h := hostport
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		h = host
	}
	return strings.TrimSuffix(strings.ToLower(strings.Trim(h, "[]")), ".")
}

func viaUnixSocket(r *http.Request) bool {
	a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	return ok && a.Network() == "unix"
}

func originOf(u string) string {
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		return ""
	}
	host, _, _ := strings.Cut(rest, "/")
	return scheme + "://" + host
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func quote(s string) string {
	if len(s) > 100 {
		s = s[:100] + "…"
	}
	return strconv.Quote(s)
}
