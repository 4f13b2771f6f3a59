package edge

import (
	"fmt"
	"net"
	"strings"

	"atelier/internal/ids"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

// maxLabel is the DNS limit on one label; every sandbox host is one label
// under the base domain, so a wildcard certificate covers them all.
const maxLabel = 63

// DevAlias is an extra host of a dev command: dev-{name}-{alias}-{id}.
type DevAlias struct {
	Alias string `json:"alias"`
	Port  int    `json:"port"`
}

// DevExposure declares the hosts of one dev command: dev-{name}-{id} on
// Port, dev-{id} too when Default, and one host per alias.
type DevExposure struct {
	Name    string
	Port    int
	Aliases []DevAlias
	Default bool
	// Public hosts skip the edge login: anyone with the URL reaches them.
	Public bool
}

// label returns the first label of a sandbox host of the given kind.
func label(kind, id, name, alias string) string {
	switch kind {
	case store.RouteVSCode:
		return "sandbox-" + id
	case store.RouteOpenCode:
		return "opencode-" + id
	case store.RouteBrowser:
		return "browser-" + id
	}
	switch {
	case name == "":
		return "dev-" + id
	case alias == "":
		return "dev-" + name + "-" + id
	}
	return "dev-" + name + "-" + alias + "-" + id
}

func (e *Edge) host(kind, id, name, alias string) string {
	return label(kind, id, name, alias) + "." + e.base
}

// serviceRoutes are the routes every sandbox gets when it runs, to the ports
// of advanced.vm.*.
func (e *Edge) serviceRoutes(id string) []store.Route {
	vm := e.cfg.Advanced.VM
	return []store.Route{
		{Host: e.host(store.RouteVSCode, id, "", ""), SandboxID: id, Kind: store.RouteVSCode, Port: vm.VSCode.Port},
		{Host: e.host(store.RouteOpenCode, id, "", ""), SandboxID: id, Kind: store.RouteOpenCode, Port: vm.OpenCode.Port},
		{Host: e.host(store.RouteBrowser, id, "", ""), SandboxID: id, Kind: store.RouteBrowser, Port: vm.Browser.Port},
	}
}

// devRoutes validates an exposure and returns its routes. Names and aliases
// are DNS labels, and each whole host label fits the DNS limit.
func (e *Edge) devRoutes(id string, d DevExposure) ([]store.Route, error) {
	if !ids.ValidSandboxID(id) {
		return nil, &sandbox.FieldError{Field: "id", Message: "expected 12 characters [a-z0-9]"}
	}
	if !ids.ValidDNSLabel(d.Name) {
		return nil, &sandbox.FieldError{Field: "name", Message: "must be a DNS label: lower-case letters, digits and inner hyphens, at most 63 characters"}
	}
	if l := label(store.RouteDev, id, d.Name, ""); len(l) > maxLabel {
		return nil, &sandbox.FieldError{Field: "name", Message: fmt.Sprintf("host label %s is %d characters, the limit is %d", l, len(l), maxLabel)}
	}
	if !validPort(d.Port) {
		return nil, &sandbox.FieldError{Field: "port", Message: "must be 1-65535"}
	}
	mk := func(name, alias string, port int) store.Route {
		return store.Route{Host: e.host(store.RouteDev, id, name, alias), SandboxID: id, Kind: store.RouteDev, Name: d.Name, Alias: alias, Port: port, Public: d.Public}
	}
	routes := []store.Route{mk(d.Name, "", d.Port)}
	if d.Default {
		routes = append(routes, mk("", "", d.Port))
	}
	seen := map[string]bool{}
	for i, a := range d.Aliases {
		field := fmt.Sprintf("aliases[%d]", i)
		switch {
		case !ids.ValidDNSLabel(a.Alias):
			return nil, &sandbox.FieldError{Field: field + ".alias", Message: "must be a DNS label"}
		case seen[a.Alias]:
			return nil, &sandbox.FieldError{Field: field + ".alias", Message: "duplicate alias " + a.Alias}
		case len(label(store.RouteDev, id, d.Name, a.Alias)) > maxLabel:
			return nil, &sandbox.FieldError{Field: field + ".alias", Message: fmt.Sprintf("host label %s is longer than %d characters", label(store.RouteDev, id, d.Name, a.Alias), maxLabel)}
		case !validPort(a.Port):
			return nil, &sandbox.FieldError{Field: field + ".port", Message: "must be 1-65535"}
		}
		seen[a.Alias] = true
		routes = append(routes, mk(d.Name, a.Alias, a.Port))
	}
	return routes, nil
}

func validPort(p int) bool { return p >= 1 && p <= 65535 }

// normalizeHost turns a Host header or TLS server name into a table key:
// lower case, without port or trailing dot. It allocates only when the
// name has upper-case letters.
func normalizeHost(h string) string {
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.Contains(h[i:], "]") {
		if host, _, err := net.SplitHostPort(h); err == nil {
			h = host
		}
	}
	h = strings.TrimSuffix(h, ".")
	return strings.ToLower(h)
}

// safeNext keeps a post-login destination on the same host: a path, never
// a scheme-relative or absolute URL.
func safeNext(p string) string {
	if p == "" || p[0] != '/' || strings.HasPrefix(p, "//") || strings.ContainsAny(p, "\\\r\n\t") {
		return "/"
	}
	return p
}
