package config

import (
	"bytes"
	"maps"
	"net"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestIsLocal(t *testing.T) {
	t.Parallel()
	tests := map[string]bool{
		"localhost":             true,
		"dev.localhost":         true,
		"a.b.localhost":         true,
		"example.com":           false,
		"localhost.example.com": false,
		"mylocalhost":           false,
	}
	for base, want := range tests {
		c := Default()
		c.Domain.BaseDomain = base
		if got := c.IsLocal(); got != want {
			t.Errorf("IsLocal(%q) = %v, want %v", base, got, want)
		}
	}
}

func TestURLs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                     string
		env                      []string
		dashboard, callback, mgr string
		patterns                 map[string]string
	}{
		{name: "local",
			dashboard: "http://localhost:4000", callback: "http://localhost:4000/auth/callback", mgr: "0.0.0.0:4000",
			patterns: map[string]string{
				"dashboard":  "http://localhost:4000",
				"vscode":     "http://sandbox-{id}.localhost",
				"opencode":   "http://opencode-{id}.localhost",
				"browser":    "http://browser-{id}.localhost",
				"devNamed":   "http://dev-{name}-{id}.localhost",
				"devDefault": "http://dev-{id}.localhost",
				"devAlias":   "http://dev-{name}-{alias}-{id}.localhost",
			}},
		{name: "local with other ports",
			env:       []string{"ATELIER_SERVER_PORT=5000", "ATELIER_HTTP_PORT=8080", "ATELIER_SERVER_HOST=::1"},
			dashboard: "http://localhost:5000", callback: "http://localhost:5000/auth/callback", mgr: "[::1]:5000",
			patterns: map[string]string{
				"dashboard":  "http://localhost:5000",
				"vscode":     "http://sandbox-{id}.localhost:8080",
				"opencode":   "http://opencode-{id}.localhost:8080",
				"browser":    "http://browser-{id}.localhost:8080",
				"devNamed":   "http://dev-{name}-{id}.localhost:8080",
				"devDefault": "http://dev-{id}.localhost:8080",
				"devAlias":   "http://dev-{name}-{alias}-{id}.localhost:8080",
			}},
		{name: "public",
			env:       []string{"ATELIER_BASE_DOMAIN=example.com"},
			dashboard: "https://sandbox.example.com", callback: "https://sandbox.example.com/auth/callback", mgr: "0.0.0.0:4000",
			patterns: map[string]string{
				"dashboard":  "https://sandbox.example.com",
				"vscode":     "https://sandbox-{id}.example.com",
				"opencode":   "https://opencode-{id}.example.com",
				"browser":    "https://browser-{id}.example.com",
				"devNamed":   "https://dev-{name}-{id}.example.com",
				"devDefault": "https://dev-{id}.example.com",
				"devAlias":   "https://dev-{name}-{alias}-{id}.example.com",
			}},
		{name: "public with own dashboard and https port",
			env:       []string{"ATELIER_BASE_DOMAIN=example.com", "ATELIER_DASHBOARD_DOMAIN=app.example.org", "ATELIER_HTTPS_PORT=8443"},
			dashboard: "https://app.example.org:8443", callback: "https://app.example.org:8443/auth/callback", mgr: "0.0.0.0:4000",
			patterns: map[string]string{
				"dashboard":  "https://app.example.org:8443",
				"vscode":     "https://sandbox-{id}.example.com:8443",
				"opencode":   "https://opencode-{id}.example.com:8443",
				"browser":    "https://browser-{id}.example.com:8443",
				"devNamed":   "https://dev-{name}-{id}.example.com:8443",
				"devDefault": "https://dev-{id}.example.com:8443",
				"devAlias":   "https://dev-{name}-{alias}-{id}.example.com:8443",
			}},
	}
	for _, tt := range tests {
		c := mustLoad(t, "", tt.env...)
		if got := c.DashboardURL(); got != tt.dashboard {
			t.Errorf("%s: DashboardURL = %q, want %q", tt.name, got, tt.dashboard)
		}
		if got := c.OAuthCallbackURL(); got != tt.callback {
			t.Errorf("%s: OAuthCallbackURL = %q, want %q", tt.name, got, tt.callback)
		}
		if got := c.ManagerAddr(); got != tt.mgr {
			t.Errorf("%s: ManagerAddr = %q, want %q", tt.name, got, tt.mgr)
		}
		if got := c.URLPatterns(); !maps.Equal(got, tt.patterns) {
			t.Errorf("%s: URLPatterns = %v, want %v", tt.name, got, tt.patterns)
		}
	}
}

func TestGuestRangeErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mutate func(n *Network)
	}{
		{"empty bridge ip", func(n *Network) { n.BridgeIP = "" }},
		{"IPv6 bridge", func(n *Network) { n.BridgeIP = "fd00::1" }},
		{"prefix out of range", func(n *Network) { n.BridgePrefix = 33 }},
		{"point-to-point prefix", func(n *Network) { n.BridgePrefix = 31 }},
		{"bridge is the network address", func(n *Network) { n.BridgeIP = "172.16.0.0" }},
		{"bridge is broadcast", func(n *Network) { n.BridgeIP = "172.16.0.255" }},
		{"start at the bridge", func(n *Network) { n.GuestIPStart = 1 }},
		{"start zero", func(n *Network) { n.GuestIPStart = 0 }},
		{"start negative", func(n *Network) { n.GuestIPStart = -5 }},
		{"start at broadcast", func(n *Network) { n.GuestIPStart = 255 }},
		{"bridge at the top", func(n *Network) { n.BridgeIP = "172.16.0.254" }},
	}
	for _, tt := range tests {
		c := Default()
		tt.mutate(&c.Network)
		if gw, first, last, err := c.GuestRange(); err == nil {
			t.Errorf("%s: GuestRange = %s %s %s, want an error", tt.name, gw, first, last)
		}
	}
}

func TestRedacted(t *testing.T) {
	t.Parallel()
	c := validProd()
	c.Auth.AllowedUsers = []string{"alice"}
	orig := c.clone()
	r := c.Redacted()

	if r.Auth.JWTSecret != redactedValue || r.Auth.GitHub.ClientSecret != redactedValue {
		t.Errorf("secrets not redacted: %q %q", r.Auth.JWTSecret, r.Auth.GitHub.ClientSecret)
	}
	if r.Auth.GitHub.ClientID != c.Auth.GitHub.ClientID || r.Auth.AllowedOrg != "acme" {
		t.Error("non-secret values changed")
	}
	if !reflect.DeepEqual(c, orig) {
		t.Error("Redacted modified its receiver")
	}
	r.Auth.AllowedUsers[0] = "mallory"
	r.Network.DNSServers[0] = "9.9.9.9"
	if c.Auth.AllowedUsers[0] != "alice" || c.Network.DNSServers[0] != "8.8.8.8" {
		t.Error("Redacted shares lists with its receiver")
	}
	b, err := r.JSON()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte(c.Auth.JWTSecret)) || bytes.Contains(b, []byte(c.Auth.GitHub.ClientSecret)) {
		t.Errorf("redacted JSON leaks a secret:\n%s", b)
	}
	if !bytes.Contains(b, []byte(`"jwtSecret": "<redacted>"`)) {
		t.Errorf("redacted JSON lacks a readable marker:\n%s", b)
	}

	empty := Default()
	empty.Auth.JWTSecret = ""
	if r := empty.Redacted(); r.Auth.JWTSecret != "" || r.Auth.GitHub.ClientSecret != "" {
		t.Error("empty secrets should stay empty so that 'not set' remains visible")
	}
}

func TestSecretsAreMarked(t *testing.T) {
	t.Parallel()
	var secrets []string
	for _, e := range EnvVars() {
		if e.Secret {
			secrets = append(secrets, e.Key)
		}
	}
	if want := []string{"auth.github.clientSecret", "auth.jwtSecret", "advanced.server.database.url"}; !slices.Equal(secrets, want) {
		t.Errorf("secret keys %q, want %q", secrets, want)
	}
}

// clone copies lists by hand; a new list field must be added there too.
func TestCloneCoversEveryList(t *testing.T) {
	t.Parallel()
	var lists []string
	for _, l := range leaves() {
		if l.typ.Kind() == reflect.Slice || l.typ.Kind() == reflect.Map || l.typ.Kind() == reflect.Pointer {
			lists = append(lists, l.key)
		}
	}
	if want := []string{"auth.allowedUsers", "auth.admins", "network.dnsServers", "network.egressAllowCidrs",
		"sandbox.kubernetes.images", "sandbox.kubernetes.snapshots", "sandbox.kubernetes.clusterCidrs"}; !slices.Equal(lists, want) {
		t.Errorf("reference-typed keys %q, want %q: update clone()", lists, want)
	}
}

func TestJSONRoundTrip(t *testing.T) {
	t.Parallel()
	c := validProd()
	c.Auth.AllowedUsers = []string{"alice", "bob"}
	b, err := c.JSON()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(b, []byte("}\n")) || !bytes.Contains(b, []byte("\n  \"domain\": {\n    \"baseDomain\"")) {
		t.Errorf("JSON is not indented by two spaces with a trailing newline:\n%s", b)
	}
	got := mustLoad(t, string(b))
	if !reflect.DeepEqual(got, c) {
		t.Errorf("round trip changed the config:\n got %+v\nwant %+v", got, c)
	}

	var zero Config
	zb, err := zero.JSON()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(zb), "null") {
		t.Errorf("nil lists must render as []:\n%s", zb)
	}
}

// TestListenHostMock: mock mode has no login, so its wildcard default means
// loopback for every listener; the opt-in keeps what the operator wrote, and
// production always does.
func TestListenHostMock(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		env    []string
		want   string
		remote bool
	}{
		{name: "mock default", env: []string{"ATELIER_SERVER_MODE=mock"}, want: "127.0.0.1"},
		{name: "mock IPv6 wildcard", env: []string{"ATELIER_SERVER_MODE=mock", "ATELIER_SERVER_HOST=::"}, want: "::1"},
		{name: "mock loopback", env: []string{"ATELIER_SERVER_MODE=mock", "ATELIER_SERVER_HOST=127.0.0.5"}, want: "127.0.0.5"},
		{name: "mock opted in", env: []string{"ATELIER_SERVER_MODE=mock", "ATELIER_ALLOW_REMOTE_MOCK=true"}, want: "0.0.0.0", remote: true},
		{name: "mock opted in, LAN address", env: []string{"ATELIER_SERVER_MODE=mock", "ATELIER_ALLOW_REMOTE_MOCK=1", "ATELIER_SERVER_HOST=192.168.1.5"}, want: "192.168.1.5", remote: true},
		{name: "mock opted out explicitly", env: []string{"ATELIER_SERVER_MODE=mock", "ATELIER_ALLOW_REMOTE_MOCK=false"}, want: "127.0.0.1"},
		{name: "production default", env: []string{"ATELIER_SERVER_MODE=production"}, want: "0.0.0.0"},
	}
	for _, tt := range tests {
		c := mustLoad(t, "", tt.env...)
		if got := c.ListenHost(); got != tt.want {
			t.Errorf("%s: ListenHost = %q, want %q", tt.name, got, tt.want)
		}
		if got := c.RemoteMock(); got != tt.remote {
			t.Errorf("%s: RemoteMock = %v, want %v", tt.name, got, tt.remote)
		}
		if want := net.JoinHostPort(tt.want, "4000"); c.ManagerAddr() != want {
			t.Errorf("%s: ManagerAddr = %q, want %q", tt.name, c.ManagerAddr(), want)
		}
	}
	// The file form is a JSON boolean; anything else names the key.
	if c := mustLoad(t, `{"server": {"mode": "mock", "allowRemoteMock": true}}`); !c.Server.AllowRemoteMock {
		t.Error("allowRemoteMock: true in the file was not read")
	}
	if _, err := loadWith(t, `{"server": {"allowRemoteMock": "yes"}}`); err == nil || !strings.Contains(err.Error(), "server.allowRemoteMock: expected true or false") {
		t.Errorf("string for a boolean key: %v", err)
	}
	_, err := loadWith(t, "", "ATELIER_ALLOW_REMOTE_MOCK=sure")
	if err == nil || !strings.Contains(err.Error(), "ATELIER_ALLOW_REMOTE_MOCK") || !strings.Contains(err.Error(), "server.allowRemoteMock") {
		t.Errorf("bad boolean in the environment: %v", err)
	}
}
