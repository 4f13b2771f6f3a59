package edge

import (
	"net"
	"net/http"
	"net/url"
	"strings"
)

// Every sandbox host is a sibling under the base domain, so browsers treat
// them all as one site: a SameSite=Lax host cookie rides along on requests a
// page of another sandbox host (a co-tenant's public dev server) sends to
// this one. The host cookie cannot tell those apart; the browser's own
// request metadata can. A login-protected host therefore accepts writes and
// protocol upgrades only from its own origin.

// crossOriginWrite returns why r is a state-changing request that a browser
// sent from another origin, or "" when it may pass. Safe methods without an
// upgrade always pass: the same-origin policy keeps their answers from the
// sending page. A request without Origin and Sec-Fetch-Site is not from a
// browser page (curl, the CLI, a tool's backend) and passes.
//
// sibling, when not nil, names the other hosts on this edge whose pages may
// write here: a dev server's front end on dev-web-{id} calling its own API
// alias dev-web-api-{id} is one application split over two hosts of one
// sandbox. The edge allows that between dev hosts of the same sandbox only,
// never towards the tool hosts (VS Code, OpenCode, the browser), which would
// hand a cross-site-scripting hole in the owner's demo a root terminal.
func crossOriginWrite(r *http.Request, secure bool, sibling func(host string) bool) string {
	if !writes(r) {
		return ""
	}
	site := r.Header.Get("Sec-Fetch-Site")
	if site == "cross-site" {
		return "Sec-Fetch-Site: " + site
	}
	origins := r.Header.Values("Origin")
	switch {
	case len(origins) == 0:
		if site == "same-site" {
			// same-origin would say so; same-site is another host.
			return "Sec-Fetch-Site: same-site without Origin"
		}
		return ""
	case len(origins) > 1:
		return "several Origin headers"
	case origins[0] == "null":
		// Sandboxed frames, data: URLs and some redirects: never this host.
		return "Origin: null"
	}
	scheme := "http"
	if secure {
		scheme = "https"
	}
	if sameOrigin(origins[0], scheme, r.Host) {
		return ""
	}
	if sibling != nil {
		if h, ok := originOnThisEdge(origins[0], scheme, r.Host); ok && sibling(h) {
			return ""
		}
	}
	return "Origin: " + origins[0]
}

// originOnThisEdge returns the host name of origin when it has the scheme and
// port this request arrived with, that is, when it could be a host this edge
// serves.
func originOnThisEdge(origin, scheme, host string) (string, bool) {
	u, err := url.Parse(origin)
	if err != nil || u.Scheme != scheme || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Host == "" {
		return "", false
	}
	o, self := hostPort(u.Host, scheme), hostPort(host, scheme)
	oh, op, _ := net.SplitHostPort(o)
	_, sp, _ := net.SplitHostPort(self)
	if op != sp {
		return "", false
	}
	return oh, true
}

// writes reports a request that can change state in the guest: any method
// but GET, HEAD and OPTIONS, and any protocol upgrade (WebSocket), whose
// messages the sending page reads and writes freely once it is open.
func writes(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return r.Header.Get("Upgrade") != ""
	}
	return true
}

// sameOrigin reports whether origin (scheme://host[:port], as browsers send
// it) is the origin the edge serves host on: the scheme the edge serves and
// the same host and port, default ports made explicit.
func sameOrigin(origin, scheme, host string) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Scheme != scheme || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Host == "" {
		return false
	}
	return hostPort(u.Host, scheme) == hostPort(host, scheme)
}

// hostPort is host:port with the scheme's default port filled in, lower
// case, without a trailing dot on the name.
func hostPort(hp, scheme string) string {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		h, p = strings.TrimSuffix(strings.TrimPrefix(hp, "["), "]"), ""
	}
	if p == "" {
		p = "80"
		if scheme == "https" {
			p = "443"
		}
	}
	return strings.TrimSuffix(strings.ToLower(h), ".") + ":" + p
}
