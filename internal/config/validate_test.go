package config

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func validMock() *Config {
	c := Default()
	c.Server.Mode = ModeMock
	return c
}

func validProd() *Config {
	c := defaults()
	c.Server.Mode = ModeProduction
	c.Domain.BaseDomain = "example.com"
	c.Domain.TLS.Email = "admin@example.com"
	c.Auth.JWTSecret = strings.Repeat("k", 40)
	c.Auth.GitHub.ClientID = "Iv1.0123456789"
	c.Auth.GitHub.ClientSecret = "0123456789abcdef"
	c.Auth.AllowedOrg = "acme"
	c.derive()
	return c
}

// rederive recomputes the network fields after a test changed their inputs.
func rederive(c *Config) {
	c.Network.GuestSubnet, c.Network.BridgeCIDR, c.Network.BridgeNetmask = "", "", ""
	c.derive()
}

func TestBaselinesAreValid(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]*Config{"mock": validMock(), "production": validProd()} {
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		prod bool // start from validProd instead of validMock
		// raw skips re-deriving the network fields after mutate.
		raw     bool
		mutate  func(c *Config)
		wantKey string // "" means the config stays valid
		wantEnv string
		wantMsg string
	}{
		// Mode.
		{name: "mode unset", mutate: func(c *Config) { c.Server.Mode = "" },
			wantKey: "server.mode", wantEnv: "ATELIER_SERVER_MODE", wantMsg: `set "server": {"mode": "mock"} in the config file or ATELIER_SERVER_MODE=mock`},
		{name: "mode unknown", mutate: func(c *Config) { c.Server.Mode = "staging" },
			wantKey: "server.mode", wantEnv: "ATELIER_SERVER_MODE", wantMsg: `must be one of "production", "mock"`},

		// Sandbox log rotation.
		{name: "log max bytes too small", mutate: func(c *Config) { c.Sandbox.LogMaxBytes = 100 },
			wantKey: "sandbox.logMaxBytes", wantEnv: "ATELIER_LOG_MAX_BYTES", wantMsg: "between 65536 and"},
		{name: "log keep negative", mutate: func(c *Config) { c.Sandbox.LogKeep = -1 },
			wantKey: "sandbox.logKeep", wantEnv: "ATELIER_LOG_KEEP", wantMsg: "between 0 and 100"},
		{name: "log keep zero", mutate: func(c *Config) { c.Sandbox.LogKeep = 0 }},

		// The store.
		{name: "database url not postgres", mutate: func(c *Config) { c.Advanced.Server.Database.URL = "mysql://u:p@db/atelier" },
			wantKey: "advanced.server.database.url", wantEnv: "ATELIER_DATABASE_URL", wantMsg: "must be a PostgreSQL URL"},
		{name: "database url without database", mutate: func(c *Config) { c.Advanced.Server.Database.URL = "postgres://u:p@127.0.0.1:5432" },
			wantKey: "advanced.server.database.url", wantEnv: "ATELIER_DATABASE_URL", wantMsg: "must be a PostgreSQL URL"},
		{name: "database over the network without tls", mutate: func(c *Config) { c.Advanced.Server.Database.URL = "postgres://u:p@db.internal:5432/atelier" },
			wantKey: "advanced.server.database.url", wantEnv: "ATELIER_DATABASE_URL", wantMsg: "without TLS: add sslmode=verify-full"},
		{name: "database over the network, sslmode disable", mutate: func(c *Config) {
			c.Advanced.Server.Database.URL = "postgres://u:p@10.0.0.5/atelier?sslmode=disable"
		}, wantKey: "advanced.server.database.url", wantEnv: "ATELIER_DATABASE_URL", wantMsg: "without TLS"},
		{name: "database on loopback", mutate: func(c *Config) { c.Advanced.Server.Database.URL = "postgres://u:p@127.0.0.1:5432/atelier" }},
		{name: "database on a socket", mutate: func(c *Config) { c.Advanced.Server.Database.URL = "postgresql:///atelier?host=/run/postgresql" }},
		{name: "database with tls", mutate: func(c *Config) {
			c.Advanced.Server.Database.URL = "postgres://u:p@db.internal/atelier?sslmode=verify-full"
		}},

		// Port ranges.
		{name: "http port zero", mutate: func(c *Config) { c.Domain.HTTPPort = 0 },
			wantKey: "domain.httpPort", wantEnv: "ATELIER_HTTP_PORT", wantMsg: "between 1 and 65535"},
		{name: "https port too high", mutate: func(c *Config) { c.Domain.HTTPSPort = 65536 },
			wantKey: "domain.httpsPort", wantEnv: "ATELIER_HTTPS_PORT"},
		{name: "ssh port negative", mutate: func(c *Config) { c.Domain.SSH.Port = -1 },
			wantKey: "domain.ssh.port", wantEnv: "ATELIER_SSH_PROXY_PORT"},
		{name: "server port zero", mutate: func(c *Config) { c.Server.Port = 0 },
			wantKey: "server.port", wantEnv: "ATELIER_SERVER_PORT"},
		{name: "vscode port", mutate: func(c *Config) { c.Advanced.VM.VSCode.Port = 0 },
			wantKey: "advanced.vm.vscode.port", wantEnv: "ATELIER_VSCODE_PORT"},
		{name: "opencode port", mutate: func(c *Config) { c.Advanced.VM.OpenCode.Port = 70000 },
			wantKey: "advanced.vm.opencode.port", wantEnv: "ATELIER_OPENCODE_PORT"},
		{name: "browser port", mutate: func(c *Config) { c.Advanced.VM.Browser.Port = 0 },
			wantKey: "advanced.vm.browser.port", wantEnv: "ATELIER_BROWSER_PORT"},
		{name: "agent port", mutate: func(c *Config) { c.Advanced.VM.Agent.Port = 0 },
			wantKey: "advanced.vm.agent.port", wantEnv: "ATELIER_AGENT_PORT"},
		{name: "registry port", mutate: func(c *Config) { c.Advanced.Server.Verdaccio.Port = 0 },
			wantKey: "advanced.server.verdaccio.port", wantEnv: "ATELIER_REGISTRY_PORT"},

		// Port collisions.
		{name: "server on the http port", mutate: func(c *Config) { c.Server.Port = 80 },
			wantKey: "domain.httpPort", wantEnv: "ATELIER_HTTP_PORT", wantMsg: "port 80 is also used by server.port"},
		{name: "ssh on the https port", mutate: func(c *Config) { c.Domain.SSH.Port = 443 },
			wantKey: "domain.ssh.port", wantEnv: "ATELIER_SSH_PROXY_PORT", wantMsg: "domain.httpsPort"},
		{name: "loopback server still collides with a wildcard listener", mutate: func(c *Config) {
			c.Server.Host, c.Server.Port = "127.0.0.1", 2222
		}, wantKey: "domain.ssh.port", wantEnv: "ATELIER_SSH_PROXY_PORT", wantMsg: "server.port"},
		{name: "registry on the server port", mutate: func(c *Config) { c.Advanced.Server.Verdaccio.Port = 4000 },
			wantKey: "advanced.server.verdaccio.port", wantEnv: "ATELIER_REGISTRY_PORT", wantMsg: "server.port"},
		{name: "guest services share a port", mutate: func(c *Config) { c.Advanced.VM.Browser.Port = 8080 },
			wantKey: "advanced.vm.browser.port", wantEnv: "ATELIER_BROWSER_PORT", wantMsg: "advanced.vm.vscode.port"},
		{name: "vsock agent may reuse a TCP port", mutate: func(c *Config) { c.Advanced.VM.Agent.Port = 8080 }},
		{name: "guest and host ports are separate", mutate: func(c *Config) { c.Advanced.VM.VSCode.Port = 4000 }},

		// Server.
		{name: "no sandboxes", mutate: func(c *Config) { c.Server.MaxSandboxes = 0 },
			wantKey: "server.maxSandboxes", wantEnv: "ATELIER_MAX_SANDBOXES", wantMsg: "between 1 and 1000"},
		{name: "too many sandboxes", mutate: func(c *Config) { c.Server.MaxSandboxes = 1001 },
			wantKey: "server.maxSandboxes", wantEnv: "ATELIER_MAX_SANDBOXES"},
		{name: "negative running quota", mutate: func(c *Config) { c.Quotas.RunningPerUser = -1 },
			wantKey: "quotas.runningPerUser", wantEnv: "ATELIER_QUOTA_RUNNING_PER_USER", wantMsg: "between 0 and 1000"},
		{name: "negative sandboxes quota", mutate: func(c *Config) { c.Quotas.SandboxesPerUser = -1 },
			wantKey: "quotas.sandboxesPerUser", wantEnv: "ATELIER_QUOTA_SANDBOXES_PER_USER"},
		{name: "negative disk quota", mutate: func(c *Config) { c.Quotas.DiskGBPerUser = -5 },
			wantKey: "quotas.diskGbPerUser", wantEnv: "ATELIER_QUOTA_DISK_GB_PER_USER"},
		{name: "quotas explicitly unlimited", mutate: func(c *Config) { c.Quotas = Quotas{} }},
		{name: "no spawn concurrency", mutate: func(c *Config) { c.Server.SpawnConcurrency = 0 },
			wantKey: "server.spawnConcurrency", wantEnv: "ATELIER_SPAWN_CONCURRENCY"},
		{name: "spawn concurrency too high", mutate: func(c *Config) { c.Server.SpawnConcurrency = 65 },
			wantKey: "server.spawnConcurrency", wantEnv: "ATELIER_SPAWN_CONCURRENCY"},
		{name: "empty host", mutate: func(c *Config) { c.Server.Host = "" },
			wantKey: "server.host", wantEnv: "ATELIER_SERVER_HOST"},
		{name: "bad host", mutate: func(c *Config) { c.Server.Host = "my host" },
			wantKey: "server.host", wantEnv: "ATELIER_SERVER_HOST"},
		{name: "IPv6 wildcard host", mutate: func(c *Config) { c.Server.Host = "::" }},
		{name: "host name", mutate: func(c *Config) { c.Server.Host = "localhost" }},
		// Mock mode is a shell for whoever reaches it: loopback unless opted in.
		{name: "mock on a LAN address", mutate: func(c *Config) { c.Server.Host = "192.168.1.5" },
			wantKey: "server.host", wantEnv: "ATELIER_SERVER_HOST", wantMsg: "server.allowRemoteMock (ATELIER_ALLOW_REMOTE_MOCK=true"},
		{name: "mock on a host name", mutate: func(c *Config) { c.Server.Host = "devbox.lan" },
			wantKey: "server.host", wantEnv: "ATELIER_SERVER_HOST", wantMsg: "not a loopback address"},
		{name: "mock on a LAN address, opted in", mutate: func(c *Config) { c.Server.Host, c.Server.AllowRemoteMock = "192.168.1.5", true }},
		{name: "mock on the wildcard, opted in", mutate: func(c *Config) { c.Server.AllowRemoteMock = true }},
		{name: "mock on 127.0.0.2", mutate: func(c *Config) { c.Server.Host = "127.0.0.2" }},
		{name: "mock on ::1", mutate: func(c *Config) { c.Server.Host = "::1" }},
		{name: "production on a LAN address", prod: true, mutate: func(c *Config) { c.Server.Host = "192.168.1.5" }},
		{name: "log level", mutate: func(c *Config) { c.Server.LogLevel = "trace" },
			wantKey: "server.logLevel", wantEnv: "ATELIER_LOG_LEVEL", wantMsg: `"debug", "info", "warn", "error"`},
		{name: "relative data dir", mutate: func(c *Config) { c.Server.DataDir = "var/lib/atelier" },
			wantKey: "server.dataDir", wantEnv: "ATELIER_DATA_DIR", wantMsg: "absolute"},
		{name: "relative socket", mutate: func(c *Config) { c.Server.SocketPath = "atelier.sock" },
			wantKey: "server.socketPath", wantEnv: "ATELIER_SOCKET_PATH"},

		// npm cache.
		{name: "registry as root", mutate: func(c *Config) { c.Advanced.Server.Verdaccio.User = "root" },
			wantKey: "advanced.server.verdaccio.user", wantEnv: "ATELIER_REGISTRY_USER", wantMsg: "other than root"},
		{name: "registry user empty", mutate: func(c *Config) { c.Advanced.Server.Verdaccio.User = "" },
			wantKey: "advanced.server.verdaccio.user", wantEnv: "ATELIER_REGISTRY_USER"},
		{name: "registry user with a shell metacharacter", mutate: func(c *Config) { c.Advanced.Server.Verdaccio.User = "npm;id" },
			wantKey: "advanced.server.verdaccio.user", wantEnv: "ATELIER_REGISTRY_USER"},
		{name: "registry user option-like", mutate: func(c *Config) { c.Advanced.Server.Verdaccio.User = "-o" },
			wantKey: "advanced.server.verdaccio.user", wantEnv: "ATELIER_REGISTRY_USER"},
		{name: "registry user named", mutate: func(c *Config) { c.Advanced.Server.Verdaccio.User = "npm-cache_1" }},
		{name: "registry dir relative", mutate: func(c *Config) { c.Advanced.Server.Verdaccio.Dir = "registry" },
			wantKey: "advanced.server.verdaccio.dir", wantEnv: "ATELIER_REGISTRY_DIR", wantMsg: "absolute"},
		{name: "registry dir inside the data dir", mutate: func(c *Config) { c.Advanced.Server.Verdaccio.Dir = "/var/lib/atelier/registry" },
			wantKey: "advanced.server.verdaccio.dir", wantEnv: "ATELIER_REGISTRY_DIR", wantMsg: "outside server.dataDir"},
		{name: "registry dir holding the data dir", mutate: func(c *Config) { c.Advanced.Server.Verdaccio.Dir = "/var/lib" },
			wantKey: "advanced.server.verdaccio.dir", wantEnv: "ATELIER_REGISTRY_DIR", wantMsg: "not contain it"},
		{name: "registry dir elsewhere", mutate: func(c *Config) { c.Advanced.Server.Verdaccio.Dir = "/srv/npm-cache" }},

		// Network.
		{name: "bridge ip not an address", mutate: func(c *Config) { c.Network.BridgeIP = "300.1.1.1" },
			wantKey: "network.bridgeIp", wantEnv: "ATELIER_BRIDGE_IP", wantMsg: "IPv4"},
		{name: "bridge ip IPv6", mutate: func(c *Config) { c.Network.BridgeIP = "fd00::1" },
			wantKey: "network.bridgeIp", wantEnv: "ATELIER_BRIDGE_IP"},
		{name: "bridge ip empty", mutate: func(c *Config) { c.Network.BridgeIP = "" },
			wantKey: "network.bridgeIp", wantEnv: "ATELIER_BRIDGE_IP"},
		{name: "bridge ip is the network address", mutate: func(c *Config) { c.Network.BridgeIP = "172.16.0.0" },
			wantKey: "network.bridgeIp", wantEnv: "ATELIER_BRIDGE_IP", wantMsg: "network or broadcast"},
		{name: "bridge prefix too wide", mutate: func(c *Config) { c.Network.BridgePrefix = 15 },
			wantKey: "network.bridgePrefix", wantEnv: "ATELIER_BRIDGE_PREFIX", wantMsg: "between 16 and 30"},
		{name: "bridge prefix too narrow", mutate: func(c *Config) { c.Network.BridgePrefix = 31 },
			wantKey: "network.bridgePrefix", wantEnv: "ATELIER_BRIDGE_PREFIX"},
		{name: "guest start is the bridge", mutate: func(c *Config) { c.Network.GuestIPStart = 1 },
			wantKey: "network.guestIpStart", wantEnv: "ATELIER_GUEST_IP_START"},
		{name: "guest start is broadcast", mutate: func(c *Config) { c.Network.GuestIPStart = 255 },
			wantKey: "network.guestIpStart", wantEnv: "ATELIER_GUEST_IP_START", wantMsg: "between 2 and 254"},
		{name: "guest start at or below the bridge", mutate: func(c *Config) { c.Network.BridgeIP = "172.16.0.20" },
			wantKey: "network.guestIpStart", wantEnv: "ATELIER_GUEST_IP_START", wantMsg: "between 21 and 254"},
		{name: "guest start far outside", mutate: func(c *Config) { c.Network.GuestIPStart = 1 << 40 },
			wantKey: "network.guestIpStart", wantEnv: "ATELIER_GUEST_IP_START"},
		{name: "bridge at the top leaves no guests", mutate: func(c *Config) { c.Network.BridgeIP = "172.16.0.254" },
			wantKey: "network.guestIpStart", wantEnv: "ATELIER_GUEST_IP_START", wantMsg: "no guest address"},
		{name: "guest start 2 is the lowest", mutate: func(c *Config) { c.Network.GuestIPStart = 2 }},
		{name: "guest start 254 is the highest", mutate: func(c *Config) { c.Network.GuestIPStart = 254 }},
		{name: "no dns servers", mutate: func(c *Config) { c.Network.DNSServers = nil },
			wantKey: "network.dnsServers", wantEnv: "ATELIER_DNS_SERVERS", wantMsg: "at least one"},
		{name: "dns server not an IP", mutate: func(c *Config) { c.Network.DNSServers = []string{"1.1.1.1", "dns.google"} },
			wantKey: "network.dnsServers", wantEnv: "ATELIER_DNS_SERVERS", wantMsg: `entry 1 "dns.google"`},
		{name: "egress allow-list", mutate: func(c *Config) {
			c.Network.EgressAllowCIDRs = []string{"10.20.0.0/16", "192.168.5.7/32", "169.254.169.254/32"}
		}},
		{name: "egress allow not a prefix", mutate: func(c *Config) { c.Network.EgressAllowCIDRs = []string{"10.0.0.0/8", "lan"} },
			wantKey: "network.egressAllowCidrs", wantEnv: "ATELIER_EGRESS_ALLOW_CIDRS", wantMsg: `entry 1 "lan" is not a CIDR prefix`},
		{name: "egress allow a bare address", mutate: func(c *Config) { c.Network.EgressAllowCIDRs = []string{"10.1.2.3"} },
			wantKey: "network.egressAllowCidrs", wantEnv: "ATELIER_EGRESS_ALLOW_CIDRS", wantMsg: "10.1.2.3/32"},
		{name: "egress allow with host bits", mutate: func(c *Config) { c.Network.EgressAllowCIDRs = []string{"10.1.2.3/16"} },
			wantKey: "network.egressAllowCidrs", wantEnv: "ATELIER_EGRESS_ALLOW_CIDRS", wantMsg: "did you mean 10.1.0.0/16"},
		{name: "egress allow IPv6", mutate: func(c *Config) { c.Network.EgressAllowCIDRs = []string{"fd00::/8"} },
			wantKey: "network.egressAllowCidrs", wantEnv: "ATELIER_EGRESS_ALLOW_CIDRS", wantMsg: "IPv4 only"},
		{name: "IPv6 dns server for containers", mutate: func(c *Config) {
			c.Sandbox.Runtime = "container"
			c.Network.DNSServers = []string{"2001:4860:4860::8888", "1.1.1.1", "8.8.8.8"}
		}},
		{name: "IPv6 dns server for VMs", mutate: func(c *Config) { c.Network.DNSServers = []string{"1.1.1.1", "2001:4860:4860::8888"} },
			wantKey: "network.dnsServers", wantEnv: "ATELIER_DNS_SERVERS", wantMsg: `entry 1 "2001:4860:4860::8888" is IPv6`},
		{name: "three dns servers for VMs", mutate: func(c *Config) { c.Network.DNSServers = []string{"1.1.1.1", "8.8.8.8", "9.9.9.9"} },
			wantKey: "network.dnsServers", wantEnv: "ATELIER_DNS_SERVERS", wantMsg: "at most 2"},
		{name: "jailer uid base root", mutate: func(c *Config) { c.Advanced.Server.Firecracker.JailerUIDBase = 0 },
			wantKey: "advanced.server.firecracker.jailerUidBase", wantEnv: "ATELIER_JAILER_UID_BASE", wantMsg: "between 1000 and"},
		{name: "jailer relative", mutate: func(c *Config) { c.Advanced.Server.Firecracker.JailerPath = "jailer" },
			wantKey: "advanced.server.firecracker.jailerPath", wantEnv: "ATELIER_JAILER_BIN", wantMsg: "absolute"},
		{name: "no jailer", mutate: func(c *Config) { c.Advanced.Server.Firecracker.JailerPath = "" }},
		{name: "chroot base relative", mutate: func(c *Config) { c.Advanced.Server.Firecracker.ChrootBaseDir = "jail" },
			wantKey: "advanced.server.firecracker.chrootBaseDir", wantEnv: "ATELIER_JAILER_CHROOT_DIR", wantMsg: "absolute"},
		{name: "bridge name empty", mutate: func(c *Config) { c.Network.BridgeName = "" },
			wantKey: "network.bridgeName", wantEnv: "ATELIER_BRIDGE_NAME"},
		{name: "bridge name 16 chars", mutate: func(c *Config) { c.Network.BridgeName = "abcdefghijklmnop" },
			wantKey: "network.bridgeName", wantEnv: "ATELIER_BRIDGE_NAME", wantMsg: "1 to 15"},
		{name: "bridge name 15 chars", mutate: func(c *Config) { c.Network.BridgeName = "abcdefghijklmno" }},
		{name: "bridge name slash", mutate: func(c *Config) { c.Network.BridgeName = "br/0" },
			wantKey: "network.bridgeName", wantEnv: "ATELIER_BRIDGE_NAME"},
		{name: "bridge name colon", mutate: func(c *Config) { c.Network.BridgeName = "br:0" },
			wantKey: "network.bridgeName", wantEnv: "ATELIER_BRIDGE_NAME"},
		{name: "bridge name space", mutate: func(c *Config) { c.Network.BridgeName = "br 0" },
			wantKey: "network.bridgeName", wantEnv: "ATELIER_BRIDGE_NAME"},
		{name: "bridge name dot", mutate: func(c *Config) { c.Network.BridgeName = "." },
			wantKey: "network.bridgeName", wantEnv: "ATELIER_BRIDGE_NAME"},
		{name: "stated guest subnet differs", raw: true, mutate: func(c *Config) { c.Network.GuestSubnet = "10.0.0" },
			wantKey: "network.guestSubnet", wantEnv: "", wantMsg: `would be "172.16.0"`},
		{name: "stated cidr differs", raw: true, mutate: func(c *Config) { c.Network.BridgeCIDR = "172.16.0.0/16" },
			wantKey: "network.bridgeCidr", wantEnv: ""},
		{name: "stated netmask differs", raw: true, mutate: func(c *Config) { c.Network.BridgeNetmask = "24" },
			wantKey: "network.bridgeNetmask", wantEnv: ""},

		// Domains and TLS.
		{name: "base domain uppercase", mutate: func(c *Config) { c.Domain.BaseDomain = "Example.com" },
			wantKey: "domain.baseDomain", wantEnv: "ATELIER_BASE_DOMAIN", wantMsg: "lowercase"},
		{name: "base domain empty label", mutate: func(c *Config) { c.Domain.BaseDomain = "a..b" },
			wantKey: "domain.baseDomain", wantEnv: "ATELIER_BASE_DOMAIN"},
		{name: "base domain leading hyphen", mutate: func(c *Config) { c.Domain.BaseDomain = "-a.com" },
			wantKey: "domain.baseDomain", wantEnv: "ATELIER_BASE_DOMAIN"},
		{name: "base domain empty", mutate: func(c *Config) { c.Domain.BaseDomain = "" },
			wantKey: "domain.baseDomain", wantEnv: "ATELIER_BASE_DOMAIN"},
		{name: "base domain too long", mutate: func(c *Config) { c.Domain.BaseDomain = strings.Repeat("a.", 127) + "com" },
			wantKey: "domain.baseDomain", wantEnv: "ATELIER_BASE_DOMAIN", wantMsg: "253"},
		{name: "dashboard", mutate: func(c *Config) { c.Domain.Dashboard = "bad_name.example.com" },
			wantKey: "domain.dashboard", wantEnv: "ATELIER_DASHBOARD_DOMAIN"},
		{name: "ssh hostname", mutate: func(c *Config) { c.Domain.SSH.Hostname = "ssh host" },
			wantKey: "domain.ssh.hostname", wantEnv: "ATELIER_SSH_PROXY_HOSTNAME"},
		{name: "cert without key", mutate: func(c *Config) { c.Domain.TLS.CertPath = "/etc/ssl/c.pem" },
			wantKey: "domain.tls.keyPath", wantEnv: "ATELIER_TLS_KEY_PATH", wantMsg: "both or neither"},
		{name: "key without cert", mutate: func(c *Config) { c.Domain.TLS.KeyPath = "/etc/ssl/k.pem" },
			wantKey: "domain.tls.certPath", wantEnv: "ATELIER_TLS_CERT_PATH", wantMsg: "both or neither"},
		{name: "relative cert", mutate: func(c *Config) { c.Domain.TLS.CertPath, c.Domain.TLS.KeyPath = "c.pem", "/etc/ssl/k.pem" },
			wantKey: "domain.tls.certPath", wantEnv: "ATELIER_TLS_CERT_PATH", wantMsg: "absolute"},
		{name: "github app id without key", mutate: func(c *Config) { c.Auth.GitHub.AppID = 12 },
			wantKey: "auth.github.appPrivateKeyPath", wantEnv: "ATELIER_GITHUB_APP_PRIVATE_KEY_PATH", wantMsg: "appId"},
		{name: "github app key without id", mutate: func(c *Config) { c.Auth.GitHub.AppPrivateKeyPath = "/etc/atelier/app.pem" },
			wantKey: "auth.github.appId", wantEnv: "ATELIER_GITHUB_APP_ID", wantMsg: "appPrivateKeyPath"},
		{name: "github app relative key", mutate: func(c *Config) { c.Auth.GitHub.AppID, c.Auth.GitHub.AppPrivateKeyPath = 12, "app.pem" },
			wantKey: "auth.github.appPrivateKeyPath", wantEnv: "ATELIER_GITHUB_APP_PRIVATE_KEY_PATH", wantMsg: "absolute"},
		{name: "negative github app id", mutate: func(c *Config) { c.Auth.GitHub.AppID = -1 },
			wantKey: "auth.github.appId", wantEnv: "ATELIER_GITHUB_APP_ID"},
		{name: "github app", mutate: func(c *Config) { c.Auth.GitHub.AppID, c.Auth.GitHub.AppPrivateKeyPath = 12, "/etc/atelier/app.pem" }},
		{name: "tls email", mutate: func(c *Config) { c.Domain.TLS.Email = "admin" },
			wantKey: "domain.tls.email", wantEnv: "ATELIER_TLS_EMAIL"},
		{name: "negative certificate rate", mutate: func(c *Config) { c.Domain.TLS.MaxNewCertsPerHour = -1 },
			wantKey: "domain.tls.maxNewCertsPerHour", wantEnv: "ATELIER_TLS_MAX_NEW_CERTS_PER_HOUR", wantMsg: "between 0 and 10000"},
		{name: "unlimited certificate rate", mutate: func(c *Config) { c.Domain.TLS.MaxNewCertsPerHour = 0 }},
		{name: "no dev hosts per sandbox", mutate: func(c *Config) { c.Domain.MaxDevHostsPerSandbox = 0 },
			wantKey: "domain.maxDevHostsPerSandbox", wantEnv: "ATELIER_MAX_DEV_HOSTS_PER_SANDBOX", wantMsg: "between 1 and 10000"},
		{name: "no dev hosts per user", mutate: func(c *Config) { c.Domain.MaxDevHostsPerUser = 0 },
			wantKey: "domain.maxDevHostsPerUser", wantEnv: "ATELIER_MAX_DEV_HOSTS_PER_USER", wantMsg: "between 1 and 100000"},

		// Auth.
		{name: "session ttl zero", mutate: func(c *Config) { c.Auth.SessionTTLHours = 0 },
			wantKey: "auth.sessionTtlHours", wantEnv: "ATELIER_SESSION_TTL_HOURS", wantMsg: "between 1 and 8760"},
		{name: "session ttl over a year", mutate: func(c *Config) { c.Auth.SessionTTLHours = 8761 },
			wantKey: "auth.sessionTtlHours", wantEnv: "ATELIER_SESSION_TTL_HOURS"},
		{name: "github web url without scheme", mutate: func(c *Config) { c.Auth.GitHub.WebURL = "github.com" },
			wantKey: "auth.github.webUrl", wantEnv: "ATELIER_GITHUB_WEB_URL", wantMsg: "http(s)"},
		{name: "github api url scheme", mutate: func(c *Config) { c.Auth.GitHub.APIURL = "ftp://api.github.com" },
			wantKey: "auth.github.apiUrl", wantEnv: "ATELIER_GITHUB_API_URL"},
		{name: "local github stand-in", mutate: func(c *Config) { c.Auth.GitHub.APIURL = "http://127.0.0.1:9000/api" }},
		{name: "allowed user with space", mutate: func(c *Config) { c.Auth.AllowedUsers = []string{"al ice"} },
			wantKey: "auth.allowedUsers", wantEnv: "ATELIER_AUTH_ALLOWED_USERS"},
		{name: "admin with space", mutate: func(c *Config) { c.Auth.Admins = []string{"al ice"} },
			wantKey: "auth.admins", wantEnv: "ATELIER_AUTH_ADMINS", wantMsg: "not a GitHub user name"},
		{name: "admin who cannot log in", mutate: func(c *Config) { c.Auth.AllowedUsers, c.Auth.Admins = []string{"alice"}, []string{"bob"} },
			wantKey: "auth.admins", wantEnv: "ATELIER_AUTH_ADMINS", wantMsg: "cannot log in"},
		{name: "admin on the allow-list", mutate: func(c *Config) { c.Auth.AllowedUsers, c.Auth.Admins = []string{"Alice"}, []string{"alice"} }},
		{name: "admin through the org", mutate: func(c *Config) { c.Auth.AllowedOrg, c.Auth.Admins = "acme", []string{"bob"} }},
		{name: "token ttl zero", mutate: func(c *Config) { c.Auth.TokenTTLDays = 0 },
			wantKey: "auth.tokenTtlDays", wantEnv: "ATELIER_AUTH_TOKEN_TTL_DAYS", wantMsg: "between 1 and 3650"},
		{name: "token no-expiry policy", mutate: func(c *Config) { c.Auth.TokenNoExpiry = "yes" },
			wantKey: "auth.tokenNoExpiry", wantEnv: "ATELIER_AUTH_TOKEN_NO_EXPIRY", wantMsg: `"refuse", "allow"`},
		{name: "org recheck zero", mutate: func(c *Config) { c.Auth.OrgRecheckMinutes = 0 },
			wantKey: "auth.orgRecheckMinutes", wantEnv: "ATELIER_AUTH_ORG_RECHECK_MINUTES"},

		// Sandbox.
		{name: "runtime", mutate: func(c *Config) { c.Sandbox.Runtime = "docker" },
			wantKey: "sandbox.runtime", wantEnv: "ATELIER_SANDBOX_RUNTIME", wantMsg: `"firecracker", "container"`},
		{name: "container runtime", mutate: func(c *Config) { c.Sandbox.Runtime = "container" }},
		{name: "relative state dir", mutate: func(c *Config) { c.Sandbox.StateDir = "state" },
			wantKey: "sandbox.stateDir", wantEnv: "ATELIER_STATE_DIR"},
		{name: "empty log dir", mutate: func(c *Config) { c.Sandbox.LogDir = "" },
			wantKey: "sandbox.logDir", wantEnv: "ATELIER_LOG_DIR"},
		{name: "warm pool", mutate: func(c *Config) { c.Sandbox.Pool.Size = 2 }},
		{name: "negative pool", mutate: func(c *Config) { c.Sandbox.Pool.Size = -1 },
			wantKey: "sandbox.pool.size", wantEnv: "ATELIER_SANDBOX_POOL_SIZE", wantMsg: "between 0 and 64"},
		{name: "pool as large as the host limit", mutate: func(c *Config) { c.Server.MaxSandboxes, c.Sandbox.Pool.Size = 4, 4 },
			wantKey: "sandbox.pool.size", wantEnv: "ATELIER_SANDBOX_POOL_SIZE", wantMsg: "below server.maxSandboxes"},
		{name: "default image empty", mutate: func(c *Config) { c.Sandbox.DefaultImage = "" },
			wantKey: "sandbox.defaultImage", wantEnv: "ATELIER_DEFAULT_IMAGE"},
		{name: "default vcpus", mutate: func(c *Config) { c.Sandbox.DefaultVcpus = 0 },
			wantKey: "sandbox.defaultVcpus", wantEnv: ""},
		{name: "default memory", mutate: func(c *Config) { c.Sandbox.DefaultMemoryMB = 64 },
			wantKey: "sandbox.defaultMemoryMb", wantEnv: "", wantMsg: "between 512 and 16384"},
		{name: "default vcpus above a request's", mutate: func(c *Config) { c.Sandbox.DefaultVcpus = 32 },
			wantKey: "sandbox.defaultVcpus", wantEnv: "", wantMsg: "between 1 and 8"},
		{name: "firecracker version empty", mutate: func(c *Config) { c.Advanced.Server.Firecracker.Version = "" },
			wantKey: "advanced.server.firecracker.version", wantEnv: "ATELIER_VERSION_FIRECRACKER"},
		{name: "code-server version empty", mutate: func(c *Config) { c.Advanced.VM.VSCode.Version = " " },
			wantKey: "advanced.vm.vscode.version", wantEnv: "ATELIER_VERSION_CODE_SERVER"},

		// Setup.
		{name: "storage method", mutate: func(c *Config) { c.Setup.Storage.Method = "zfs" },
			wantKey: "setup.storage.method", wantEnv: "", wantMsg: `"", "loop", "device", "lvm", "file"`},
		{name: "loop size below 10", mutate: func(c *Config) { c.Setup.Storage.LoopSizeGB = 5 },
			wantKey: "setup.storage.loopSizeGb", wantEnv: "", wantMsg: "0 (unset) or at least 10"},
		{name: "loop size negative", mutate: func(c *Config) { c.Setup.Storage.LoopSizeGB = -1 },
			wantKey: "setup.storage.loopSizeGb", wantEnv: ""},
		{name: "loop size 10", mutate: func(c *Config) { c.Setup.Storage.Method, c.Setup.Storage.LoopSizeGB = "loop", 10 }},
		{name: "device method without device", mutate: func(c *Config) { c.Setup.Storage.Method = "device" },
			wantKey: "setup.storage.device", wantEnv: ""},

		// Production refusals.
		{name: "production default secret", prod: true, mutate: func(c *Config) { c.Auth.JWTSecret = DefaultJWTSecret },
			wantKey: "auth.jwtSecret", wantEnv: "ATELIER_JWT_SECRET", wantMsg: "development default"},
		{name: "production empty secret", prod: true, mutate: func(c *Config) { c.Auth.JWTSecret = "" },
			wantKey: "auth.jwtSecret", wantEnv: "ATELIER_JWT_SECRET", wantMsg: "must be set"},
		{name: "production short secret", prod: true, mutate: func(c *Config) { c.Auth.JWTSecret = strings.Repeat("k", 31) },
			wantKey: "auth.jwtSecret", wantEnv: "ATELIER_JWT_SECRET", wantMsg: "at least 32 characters"},
		{name: "production missing client id", prod: true, mutate: func(c *Config) { c.Auth.GitHub.ClientID = "" },
			wantKey: "auth.github.clientId", wantEnv: "ATELIER_GITHUB_CLIENT_ID"},
		{name: "production missing client secret", prod: true, mutate: func(c *Config) { c.Auth.GitHub.ClientSecret = "" },
			wantKey: "auth.github.clientSecret", wantEnv: "ATELIER_GITHUB_CLIENT_SECRET"},
		{name: "production empty allow-list", prod: true, mutate: func(c *Config) { c.Auth.AllowedOrg = "" },
			wantKey: "auth.allowedOrg", wantEnv: "ATELIER_AUTH_ALLOWED_ORG", wantMsg: "ATELIER_AUTH_ALLOWED_USERS"},
		{name: "production user allow-list suffices", prod: true, mutate: func(c *Config) {
			c.Auth.AllowedOrg, c.Auth.AllowedUsers = "", []string{"alice"}
		}},
		{name: "production on localhost", prod: true, mutate: func(c *Config) { c.Domain.BaseDomain = "localhost" },
			wantKey: "domain.baseDomain", wantEnv: "ATELIER_BASE_DOMAIN", wantMsg: "public domain"},
		{name: "production under .localhost", prod: true, mutate: func(c *Config) { c.Domain.BaseDomain = "dev.localhost" },
			wantKey: "domain.baseDomain", wantEnv: "ATELIER_BASE_DOMAIN"},
		{name: "production dashboard left on localhost", prod: true, mutate: func(c *Config) { c.Domain.Dashboard = "sandbox.localhost" },
			wantKey: "domain.dashboard", wantEnv: "ATELIER_DASHBOARD_DOMAIN", wantMsg: "localhost"},
		{name: "production ssh host left on localhost", prod: true, mutate: func(c *Config) { c.Domain.SSH.Hostname = "ssh.localhost" },
			wantKey: "domain.ssh.hostname", wantEnv: "ATELIER_SSH_PROXY_HOSTNAME"},
		{name: "production without ACME email", prod: true, mutate: func(c *Config) { c.Domain.TLS.Email = "" },
			wantKey: "domain.tls.email", wantEnv: "ATELIER_TLS_EMAIL", wantMsg: "ACME"},
		{name: "production with own certificate needs no email", prod: true, mutate: func(c *Config) {
			c.Domain.TLS = TLS{CertPath: "/etc/ssl/c.pem", KeyPath: "/etc/ssl/k.pem"}
		}},
		{name: "mock accepts the development secret", mutate: func(c *Config) { c.Auth.JWTSecret = DefaultJWTSecret }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := validMock()
			if tt.prod {
				c = validProd()
			}
			tt.mutate(c)
			if !tt.raw {
				rederive(c)
			}
			err := c.Validate()
			if tt.wantKey == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("err = %v, want *ValidationError", err)
			}
			if len(ve.Problems) != 1 {
				t.Fatalf("want exactly one problem, got:\n%v", err)
			}
			p := ve.Problems[0]
			if p.Key != tt.wantKey || p.Env != tt.wantEnv || !strings.Contains(p.Message, tt.wantMsg) {
				t.Errorf("problem = %+v, want key %q env %q message containing %q", p, tt.wantKey, tt.wantEnv, tt.wantMsg)
			}
			line := err.Error()
			if !strings.Contains(line, tt.wantKey) || (tt.wantEnv != "" && !strings.Contains(line, tt.wantEnv)) {
				t.Errorf("Error() = %q does not name %s and %s", line, tt.wantKey, tt.wantEnv)
			}
		})
	}
}

func TestValidateReportsAllProblemsAtOnce(t *testing.T) {
	t.Parallel()
	c := Default() // mode unset
	c.Server.Port = 0
	c.Network.BridgeIP = "not-an-ip"
	c.Sandbox.Runtime = "docker"
	c.Setup.Storage.LoopSizeGB = 3
	err := c.Validate()
	want := []string{"server.mode", "server.port", "network.bridgeIp", "sandbox.runtime", "setup.storage.loopSizeGb"}
	got := problemKeys(err)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("problem keys %q, want %q:\n%v", got, want, err)
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(want) {
		t.Errorf("Error() has %d lines, want one per problem:\n%v", len(lines), err)
	}
	for _, l := range lines {
		if !strings.Contains(l, "(env ATELIER_") && !strings.Contains(l, "(config file only)") {
			t.Errorf("line %q does not say where to set the key", l)
		}
	}
}

// The production refusals of an otherwise default config: each names the
// key and the variable to set.
func TestProductionRefusesDefaults(t *testing.T) {
	t.Parallel()
	c := Default()
	c.Server.Mode = ModeProduction
	err := c.Validate()
	got := problemKeys(err)
	want := productionDefaultProblems
	if !slices.Equal(got, want) {
		t.Fatalf("problem keys %q, want %q:\n%v", got, want, err)
	}
	for _, k := range want {
		if !strings.Contains(err.Error(), k+" (env "+envFor(k)+")") {
			t.Errorf("error does not name %s with %s:\n%v", k, envFor(k), err)
		}
	}
}

// productionDefaultProblems lists, in report order, what production refuses
// in the defaults: all of them need a site-specific value.
var productionDefaultProblems = []string{
	"auth.jwtSecret", "auth.github.clientId", "auth.github.clientSecret",
	"auth.allowedOrg", "domain.baseDomain", "domain.tls.email",
}

func TestDNSNameError(t *testing.T) {
	t.Parallel()
	valid := []string{"localhost", "example.com", "a-b.c0.example", strings.Repeat("a", 63) + ".com", "xn--bcher-kva.example"}
	invalid := []string{"", ".", "example.com.", "a_b.com", "ex ample.com", strings.Repeat("a", 64) + ".com", "a-.com", "ÿ.com"}
	for _, s := range valid {
		if msg := dnsNameError(s); msg != "" {
			t.Errorf("%q: %s, want valid", s, msg)
		}
	}
	for _, s := range invalid {
		if dnsNameError(s) == "" {
			t.Errorf("%q accepted, want invalid", s)
		}
	}
}

// The database URL may carry a password: a problem with it never quotes it.
func TestDatabaseURLNeverEchoed(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"mysql://u:hunter2hunter2@db/x", "postgres://u:hunter2hunter2@db.example/x", "postgres://u:hunter2hunter2@%zz/x"} {
		c := validMock()
		c.Advanced.Server.Database.URL = u
		err := c.Validate()
		if err == nil {
			t.Fatalf("%s: valid, want a problem", u)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("problem quotes the password: %v", err)
		}
	}
}

func TestValidateKubernetes(t *testing.T) {
	problems := func(c *Config) []Problem {
		var ve *ValidationError
		if err := c.Validate(); errors.As(err, &ve) {
			return ve.Problems
		}
		return nil
	}
	base := func() *Config {
		c := validMock()
		c.Sandbox.Runtime = "kubernetes"
		c.Sandbox.Kubernetes.Images = []string{"dev-base=localhost/atelier/dev-base:1"}
		return c
	}
	if probs := problems(base()); slices.ContainsFunc(probs, func(p Problem) bool { return strings.HasPrefix(p.Key, "sandbox.kubernetes") }) {
		t.Fatalf("a valid kubernetes config: %v", probs)
	}
	cases := []struct {
		key    string
		mutate func(*SandboxKubernetes)
	}{
		{"sandbox.kubernetes.namespace", func(k *SandboxKubernetes) { k.Namespace = "Atelier_NS" }},
		{"sandbox.kubernetes.runtimeClassName", func(k *SandboxKubernetes) { k.RuntimeClassName = "kata fc" }},
		{"sandbox.kubernetes.storageClass", func(k *SandboxKubernetes) { k.StorageClass = "Local/Path" }},
		{"sandbox.kubernetes.images", func(k *SandboxKubernetes) { k.Images = nil }},
		{"sandbox.kubernetes.images", func(k *SandboxKubernetes) { k.Images = []string{"node=localhost/node:1"} }},
		{"sandbox.kubernetes.images", func(k *SandboxKubernetes) { k.Images = append(k.Images, "broken") }},
		{"sandbox.kubernetes.snapshots", func(k *SandboxKubernetes) { k.Snapshots = []string{"unknown=snap"} }},
		{"sandbox.kubernetes.clusterCidrs", func(k *SandboxKubernetes) { k.ClusterCIDRs = []string{"10.0.0.0/33"} }},
		{"sandbox.kubernetes.kubeconfig", func(k *SandboxKubernetes) { k.Kubeconfig = "relative/kubeconfig" }},
		{"sandbox.kubernetes.diskGb", func(k *SandboxKubernetes) { k.DiskGB = 0 }},
	}
	for _, tc := range cases {
		c := base()
		tc.mutate(&c.Sandbox.Kubernetes)
		if probs := problems(c); !slices.ContainsFunc(probs, func(p Problem) bool { return p.Key == tc.key }) {
			t.Errorf("%s: not reported in %v", tc.key, probs)
		}
	}
}
