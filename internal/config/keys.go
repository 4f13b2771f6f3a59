package config

import (
	"reflect"
	"slices"
	"strings"
	"sync"
)

// EnvVar maps one environment variable onto one config key. The table behind
// EnvVars drives loading, documentation, schema descriptions and redaction,
// so a new variable is added in exactly one place.
type EnvVar struct {
	// Name is the environment variable, e.g. ATELIER_SERVER_PORT.
	Name string
	// Key is the dotted JSON key it sets, e.g. server.port.
	Key string
	// Secret values are replaced by Redacted and never echoed in errors.
	Secret bool
	// Description is the operator-facing meaning of the key.
	Description string
}

// envTable lists each key's variables in priority order: when two variables
// name the same key, the earlier one wins (ATELIER_REGISTRY_PORT over its
// older alias ATELIER_VERDACCIO_PORT).
var envTable = []EnvVar{
	{Name: "ATELIER_BASE_DOMAIN", Key: "domain.baseDomain", Description: "Base domain, the root of every sandbox subdomain (e.g. example.com)."},
	{Name: "ATELIER_DASHBOARD_DOMAIN", Key: "domain.dashboard", Description: "Dashboard host name; empty means sandbox.{baseDomain}."},
	{Name: "ATELIER_HTTP_PORT", Key: "domain.httpPort", Description: "Port the edge (embedded Caddy) serves HTTP on."},
	{Name: "ATELIER_HTTPS_PORT", Key: "domain.httpsPort", Description: "Port the edge (embedded Caddy) serves HTTPS on."},
	{Name: "ATELIER_TLS_EMAIL", Key: "domain.tls.email", Description: "Account email for ACME / Let's Encrypt; required in production unless certPath and keyPath are set."},
	{Name: "ATELIER_TLS_CERT_PATH", Key: "domain.tls.certPath", Description: "Path to a TLS certificate (set together with keyPath to skip ACME)."},
	{Name: "ATELIER_TLS_KEY_PATH", Key: "domain.tls.keyPath", Description: "Path to the TLS private key (set together with certPath)."},
	{Name: "ATELIER_TLS_MAX_NEW_CERTS_PER_HOUR", Key: "domain.tls.maxNewCertsPerHour", Description: "New on-demand ACME certificates the edge may request per hour, host-wide (hosts that hold one renew freely); 0 means no limit."},
	{Name: "ATELIER_MAX_DEV_HOSTS_PER_SANDBOX", Key: "domain.maxDevHostsPerSandbox", Description: "Most exposed dev hosts (dev-* names) one sandbox may hold."},
	{Name: "ATELIER_MAX_DEV_HOSTS_PER_USER", Key: "domain.maxDevHostsPerUser", Description: "Most exposed dev hosts one user may hold across their sandboxes."},
	{Name: "ATELIER_SSH_PROXY_PORT", Key: "domain.ssh.port", Description: "SSH proxy listen port."},
	{Name: "ATELIER_SSH_PROXY_HOSTNAME", Key: "domain.ssh.hostname", Description: "SSH proxy host name; empty means ssh.{baseDomain}."},
	{Name: "ATELIER_GITHUB_CLIENT_ID", Key: "auth.github.clientId", Description: "GitHub OAuth app client ID; required in production."},
	{Name: "ATELIER_GITHUB_CLIENT_SECRET", Key: "auth.github.clientSecret", Secret: true, Description: "GitHub OAuth app client secret; required in production."},
	{Name: "ATELIER_GITHUB_WEB_URL", Key: "auth.github.webUrl", Description: "GitHub web base URL (GitHub Enterprise, or a local stand-in in tests)."},
	{Name: "ATELIER_GITHUB_API_URL", Key: "auth.github.apiUrl", Description: "GitHub API base URL (GitHub Enterprise, or a local stand-in in tests)."},
	{Name: "ATELIER_GITHUB_APP_ID", Key: "auth.github.appId", Description: "ID of a GitHub App whose installation tokens git sources may use; 0 means none. Set with appPrivateKeyPath."},
	{Name: "ATELIER_GITHUB_APP_PRIVATE_KEY_PATH", Key: "auth.github.appPrivateKeyPath", Description: "Absolute path of the GitHub App's private key (PEM, as GitHub downloads it; keep it 0600). Set with appId."},
	{Name: "ATELIER_JWT_SECRET", Key: "auth.jwtSecret", Secret: true, Description: "Session signing secret; production requires a random value of at least 32 characters."},
	{Name: "ATELIER_AUTH_ALLOWED_ORG", Key: "auth.allowedOrg", Description: "GitHub organization whose members may log in."},
	{Name: "ATELIER_AUTH_ALLOWED_USERS", Key: "auth.allowedUsers", Description: "GitHub user names allowed to log in (comma-separated in the environment)."},
	{Name: "ATELIER_SESSION_TTL_HOURS", Key: "auth.sessionTtlHours", Description: "Dashboard session lifetime in hours."},
	{Name: "ATELIER_AUTH_ADMINS", Key: "auth.admins", Description: "GitHub user names allowed host-wide operations: the npm cache, cleanup, every user's sandboxes (comma-separated in the environment). Each must also be allowed to log in."},
	{Name: "ATELIER_AUTH_TOKEN_TTL_DAYS", Key: "auth.tokenTtlDays", Description: "Lifetime of a new API token in days: the default and the longest a create may ask for."},
	{Name: "ATELIER_AUTH_TOKEN_NO_EXPIRY", Key: "auth.tokenNoExpiry", Description: "allow: a token create may ask for noExpiry; refuse: every token expires."},
	{Name: "ATELIER_AUTH_ORG_RECHECK_MINUTES", Key: "auth.orgRecheckMinutes", Description: "How long a confirmed auth.allowedOrg membership is trusted before GitHub is asked again with the user's token."},
	{Name: "ATELIER_SERVER_MODE", Key: "server.mode", Description: "Runtime mode: production on a server, mock for local development. Required."},
	{Name: "ATELIER_SERVER_HOST", Key: "server.host", Description: "Bind host of the manager API, the edge and the SSH proxy. In mock mode the default (0.0.0.0) binds 127.0.0.1, and any other non-loopback address is refused unless server.allowRemoteMock is true."},
	{Name: "ATELIER_SERVER_PORT", Key: "server.port", Description: "Manager API port."},
	{Name: "ATELIER_MAX_SANDBOXES", Key: "server.maxSandboxes", Description: "Maximum number of sandboxes that may exist at once."},
	{Name: "ATELIER_SPAWN_CONCURRENCY", Key: "server.spawnConcurrency", Description: "How many sandbox creations run their boot steps at once."},
	{Name: "ATELIER_DATA_DIR", Key: "server.dataDir", Description: "Manager data directory (SQLite database, Caddy storage, keys)."},
	{Name: "ATELIER_SOCKET_PATH", Key: "server.socketPath", Description: "Root-only unix socket for the server CLI; empty means {dataDir}/atelier.sock."},
	{Name: "ATELIER_ALLOW_REMOTE_MOCK", Key: "server.allowRemoteMock", Description: "Mock mode only: let the manager, edge and SSH proxy listen on server.host even when it is not loopback. Mock mode has no login and runs every command as your user on this machine, so anyone who reaches these ports gets a shell; leave false unless the network is yours alone."},
	{Name: "ATELIER_LOG_LEVEL", Key: "server.logLevel", Description: "Log level: debug, info, warn or error."},
	{Name: "ATELIER_LOG_FORMAT", Key: "server.logFormat", Description: "Log format of the manager: text, or json (one object per line; the systemd unit passes serve --log-format json for the journal)."},
	{Name: "ATELIER_QUOTA_RUNNING_PER_USER", Key: "quotas.runningPerUser", Description: "Most sandboxes one user may have creating, starting, running or stopping; 0 means unlimited."},
	{Name: "ATELIER_QUOTA_SANDBOXES_PER_USER", Key: "quotas.sandboxesPerUser", Description: "Most sandboxes one user may have in any state (a stopped one keeps its disk and IP address); 0 means unlimited."},
	{Name: "ATELIER_QUOTA_DISK_GB_PER_USER", Key: "quotas.diskGbPerUser", Description: "Most GiB of sandbox disk one user may hold, summing each disk's virtual size (its image's size); 0 means unlimited."},
	{Name: "ATELIER_BRIDGE_NAME", Key: "network.bridgeName", Description: "Host bridge device name."},
	{Name: "ATELIER_BRIDGE_IP", Key: "network.bridgeIp", Description: "Bridge IPv4 address (host side, the guests' gateway)."},
	{Name: "ATELIER_BRIDGE_PREFIX", Key: "network.bridgePrefix", Description: "Prefix length of the guest subnet."},
	{Name: "ATELIER_GUEST_IP_START", Key: "network.guestIpStart", Description: "Host number of the first guest address inside the subnet (10 gives 172.16.0.10)."},
	{Name: "ATELIER_DNS_SERVERS", Key: "network.dnsServers", Description: "DNS servers written into guests' resolv.conf (comma-separated in the environment); guests may reach them on port 53 even when they are private addresses."},
	{Name: "ATELIER_EGRESS_ALLOW_CIDRS", Key: "network.egressAllowCidrs", Description: "IPv4 prefixes guests may reach although they are private, link-local, loopback, multicast or reserved (e.g. 10.20.0.0/16; comma-separated in the environment). Empty: guests reach only public addresses, the DNS servers and what Atelier serves on the bridge."},
	{Name: "ATELIER_SANDBOX_RUNTIME", Key: "sandbox.runtime", Description: "Sandbox runtime: firecracker, container, or kubernetes (sandboxes as Pods of a cluster, see sandbox.kubernetes)."},
	{Name: "ATELIER_DEFAULT_IMAGE", Key: "sandbox.defaultImage", Description: "Image used when a sandbox names none."},
	{Name: "ATELIER_STATE_DIR", Key: "sandbox.stateDir", Description: "Root of the sandbox host paths (sockets, overlays, snapshots, images)."},
	{Name: "ATELIER_LOG_DIR", Key: "sandbox.logDir", Description: "Sandbox log directory: each sandbox's console and runtime output as <id>.log, rotated by size."},
	{Name: "ATELIER_LOG_MAX_BYTES", Key: "sandbox.logMaxBytes", Description: "Most bytes one sandbox log file holds before it is rotated to <id>.log.1 (at least 65536)."},
	{Name: "ATELIER_LOG_KEEP", Key: "sandbox.logKeep", Description: "Rotated sandbox log files kept beside the live one (0-100); a sandbox's logs hold at most logMaxBytes × (logKeep+1)."},
	{Name: "ATELIER_K8S_KUBECONFIG", Key: "sandbox.kubernetes.kubeconfig", Description: "Kubernetes runtime: kubeconfig file of the cluster; empty uses the in-cluster service account (the manager deployed as a Pod)."},
	{Name: "ATELIER_K8S_NAMESPACE", Key: "sandbox.kubernetes.namespace", Description: "Kubernetes runtime: namespace of the sandboxes' Pods, disks, Secrets and NetworkPolicies; the manager's RBAC is limited to it. One Atelier per namespace."},
	{Name: "ATELIER_K8S_RUNTIME_CLASS", Key: "sandbox.kubernetes.runtimeClassName", Description: "Kubernetes runtime: RuntimeClass of sandbox Pods (kata-fc for VM-grade isolation); empty uses the node's default runtime (runc, container-grade)."},
	{Name: "ATELIER_K8S_STORAGE_CLASS", Key: "sandbox.kubernetes.storageClass", Description: "Kubernetes runtime: StorageClass of sandbox disks (PersistentVolumeClaims); empty uses the cluster's default class."},
	{Name: "ATELIER_K8S_DISK_GB", Key: "sandbox.kubernetes.diskGb", Description: "Kubernetes runtime: size in GiB of every sandbox disk, counted against the owner's disk quota."},
	{Name: "ATELIER_K8S_IMAGES", Key: "sandbox.kubernetes.images", Description: "Kubernetes runtime: the images sandboxes may use, IMAGE=OCI-REFERENCE (dev-base=registry.example/atelier/dev-base:1; comma-separated in the environment). sandbox.defaultImage must be one of them."},
	{Name: "ATELIER_K8S_SNAPSHOTS", Key: "sandbox.kubernetes.snapshots", Description: "Kubernetes runtime: CSI VolumeSnapshots holding an image's root, IMAGE=SNAPSHOT (comma-separated in the environment); a disk is restored from one where given, else copied from the image by a fill Pod."},
	{Name: "ATELIER_K8S_SNAPSHOT_CLASS", Key: "sandbox.kubernetes.snapshotClass", Description: "Kubernetes runtime: VolumeSnapshotClass of workspace prebuilds (CSI snapshots of a sandbox's disk); empty uses the cluster's default class. Without a CSI snapshot API, prebuilds are refused."},
	{Name: "ATELIER_K8S_CLUSTER_CIDRS", Key: "sandbox.kubernetes.clusterCidrs", Description: "Kubernetes runtime: the cluster's pod, Service and node prefixes, denied to sandboxes on top of every private, link-local and reserved prefix (needed only where they are public addresses; comma-separated in the environment)."},
	{Name: "ATELIER_K8S_CA_DIR", Key: "sandbox.kubernetes.caDir", Description: "Kubernetes runtime: directory of the agent CA (ca.crt, ca.key) whose certificates authenticate the manager and the agents to each other; empty means {dataDir}/agent-ca. Replicas must share it."},
	{Name: "ATELIER_K8S_ALLOW_UNENFORCED_POLICIES", Key: "sandbox.kubernetes.allowUnenforcedPolicies", Description: "Kubernetes runtime: let sandboxes be created and started although the check at start-up found that the cluster's network does not enforce NetworkPolicies (a CNI such as plain bridge or flannel). Then nothing keeps a sandbox's Pod from another user's code-server: only for a single-user or test cluster. false (the default) refuses creates and starts with 503 while the check finds policies not enforced."},
	{Name: "ATELIER_CONTAINER_USERNS", Key: "sandbox.container.userNamespace", Description: "Container runtime: run each sandbox in a user namespace whose root is an unprivileged host uid of the sandbox's own range. auto uses one where the host supports it (and warns where not), on refuses to start without one, off makes sandbox root the host's root."},
	{Name: "ATELIER_SANDBOX_POOL_SIZE", Key: "sandbox.pool.size", Description: "Booted, unclaimed sandboxes of the default image, vCPUs and memory the manager keeps ready: a create asking for that shape takes one (its VS Code already answers) instead of booting. Each costs an idle sandbox's memory (about 1.2 GB for dev-base with code-server and OpenCode) and counts against server.maxSandboxes, not against any user's quotas; 0 (the default) keeps none."},
	{Name: "ATELIER_GIT_EMAIL", Key: "sandbox.git.email", Description: "Git author email set in a new sandbox's user's git config when the owner's GitHub account is unknown (a GitHub user gets their no-reply address)."},
	{Name: "ATELIER_GIT_NAME", Key: "sandbox.git.name", Description: "Git author name set in a new sandbox's user's git config when the owner's GitHub account is unknown (a GitHub user gets their name)."},
	{Name: "ATELIER_VSCODE_PORT", Key: "advanced.vm.vscode.port", Description: "code-server port inside the guest."},
	{Name: "ATELIER_VERSION_CODE_SERVER", Key: "advanced.vm.vscode.version", Description: "code-server version installed in images."},
	{Name: "ATELIER_OPENCODE_PORT", Key: "advanced.vm.opencode.port", Description: "OpenCode port inside the guest."},
	{Name: "ATELIER_VERSION_OPENCODE", Key: "advanced.vm.opencode.version", Description: "OpenCode version installed in images."},
	{Name: "ATELIER_BROWSER_PORT", Key: "advanced.vm.browser.port", Description: "Browser (KasmVNC websocket) port inside the guest."},
	{Name: "ATELIER_AGENT_PORT", Key: "advanced.vm.agent.port", Description: "Guest agent vsock port."},
	{Name: "ATELIER_RELEASE_URL", Key: "advanced.server.releaseUrl", Description: "Base URL of Atelier releases for atelier update --version V: {releaseUrl}/v{V}/atelier-linux-{amd64|arm64} and its .sha256 beside it. Empty: updates only from --binary."},
	{Name: "ATELIER_DATABASE_URL", Key: "advanced.server.database.url", Secret: true, Description: "PostgreSQL URL of the store shared by several manager replicas (postgres://user:password@host:5432/atelier?sslmode=verify-full); a host other than loopback or a socket needs sslmode require, verify-ca or verify-full. Empty: the embedded SQLite file {dataDir}/atelier.db, for one manager."},
	{Name: "ATELIER_SECRETS_KEY_FILE", Key: "advanced.server.secretsKeyFile", Description: "File holding the key (64 hex characters, mode 0600) that seals secrets at rest. Empty: {dataDir}/secrets.key, created at the first start. Manager replicas sharing a store must all be given the same file; a configured file must exist (openssl rand -hex 32 > FILE; chmod 600 FILE), and a manager whose key does not open the store's sealed values refuses to start."},
	{Name: "ATELIER_REGISTRY_PORT", Key: "advanced.server.verdaccio.port", Description: "npm registry cache (Verdaccio) port on the host."},
	{Name: "ATELIER_VERDACCIO_PORT", Key: "advanced.server.verdaccio.port", Description: "Older alias of ATELIER_REGISTRY_PORT, which wins when both are set."},
	{Name: "ATELIER_VERSION_VERDACCIO", Key: "advanced.server.verdaccio.version", Description: "Verdaccio version the manager runs."},
	{Name: "ATELIER_REGISTRY_USER", Key: "advanced.server.verdaccio.user", Description: "Unprivileged system user Verdaccio runs as when the manager is root; created (no login, no home) when missing."},
	{Name: "ATELIER_REGISTRY_DIR", Key: "advanced.server.verdaccio.dir", Description: "Verdaccio's install, config and package storage, kept outside the private data dir; empty means {dataDir}-registry."},
	{Name: "ATELIER_VERSION_FIRECRACKER", Key: "advanced.server.firecracker.version", Description: "Firecracker release the driver's API calls follow; atelier doctor and init warn when the binary at binaryPath says it is another."},
	{Name: "ATELIER_FIRECRACKER_BIN", Key: "advanced.server.firecracker.binaryPath", Description: "Firecracker binary path."},
	{Name: "ATELIER_JAILER_BIN", Key: "advanced.server.firecracker.jailerPath", Description: "Firecracker jailer binary path."},
	{Name: "ATELIER_KERNEL_PATH", Key: "advanced.server.firecracker.kernelPath", Description: "Guest kernel image path."},
	{Name: "ATELIER_JAILER_CHROOT_DIR", Key: "advanced.server.firecracker.chrootBaseDir", Description: "The jailer's chroot base directory, on the filesystem of {stateDir}/sockets; empty means {stateDir}/jailer."},
	{Name: "ATELIER_JAILER_UID_BASE", Key: "advanced.server.firecracker.jailerUidBase", Description: "First uid/gid of jailed Firecrackers: each runs as this plus the host part of its sandbox's IP; the 65536 ids from here must belong to no other user."},
}

// EnvVars returns every environment variable Load reads besides
// ATELIER_CONFIG, in priority order per key.
func EnvVars() []EnvVar { return slices.Clone(envTable) }

// envFor returns the primary environment variable of a key, or "".
func envFor(key string) string {
	for _, e := range envTable {
		if e.Key == key {
			return e.Name
		}
	}
	return ""
}

// envNamesFor returns all variables of a key, primary first.
func envNamesFor(key string) []string {
	var names []string
	for _, e := range envTable {
		if e.Key == key {
			names = append(names, e.Name)
		}
	}
	return names
}

// rule holds the constraints of one key that are simple enough to share
// between Validate and Schema; anything relational lives in validate.go.
type rule struct {
	key string
	// desc documents keys that have no environment variable (the others are
	// described in envTable).
	desc     string
	min, max *int
	enum     []string
	// unset replaces the enum message when the value is empty.
	unset    string
	format   string
	minItems int
	// derived keys are computed from others and cannot be set to anything else.
	derived bool
}

var portMin, portMax = 1, 65535

var rules = []rule{
	{key: "domain.baseDomain", format: "hostname"},
	{key: "domain.dashboard", format: "hostname"},
	{key: "domain.ssh.hostname", format: "hostname"},
	{key: "domain.tls.email", format: "email"},
	{key: "domain.tls.maxNewCertsPerHour", min: new(0), max: new(10000)},
	{key: "domain.maxDevHostsPerSandbox", min: new(1), max: new(10000)},
	{key: "domain.maxDevHostsPerUser", min: new(1), max: new(100000)},
	{key: "auth.github.webUrl", format: "uri"},
	{key: "auth.github.apiUrl", format: "uri"},
	{key: "auth.github.appId", min: new(0)},
	{key: "auth.sessionTtlHours", min: new(1), max: new(8760)},
	{key: "auth.tokenTtlDays", min: new(1), max: new(3650)},
	{key: "auth.tokenNoExpiry", enum: []string{TokenNoExpiryRefuse, TokenNoExpiryAllow}},
	{key: "auth.orgRecheckMinutes", min: new(1), max: new(1440)},
	{key: "server.mode", enum: []string{string(ModeProduction), string(ModeMock)},
		unset: `is not set; set "server": {"mode": "mock"} in the config file or ATELIER_SERVER_MODE=mock for local development ("production" on a server)`},
	{key: "server.maxSandboxes", min: new(1), max: new(1000)},
	{key: "server.spawnConcurrency", min: new(1), max: new(64)},
	{key: "server.logLevel", enum: []string{"debug", "info", "warn", "error"}},
	{key: "server.logFormat", enum: []string{"text", "json"}},
	{key: "advanced.server.releaseUrl", format: "uri"},
	{key: "quotas.runningPerUser", min: new(0), max: new(1000)},
	{key: "quotas.sandboxesPerUser", min: new(0), max: new(100000)},
	{key: "quotas.diskGbPerUser", min: new(0), max: new(1 << 20)},
	{key: "network.bridgeIp", format: "ipv4"},
	{key: "network.bridgePrefix", min: new(16), max: new(30)},
	{key: "network.guestIpStart", min: new(2), max: new(65534)},
	{key: "network.dnsServers", minItems: 1},
	{key: "network.guestSubnet", derived: true,
		desc: "Derived: the first three octets of the network address for a /24 (172.16.0), else the network address. May only be stated with the derived value."},
	{key: "network.bridgeCidr", derived: true,
		desc: "Derived: network address/prefix (172.16.0.0/24). May only be stated with the derived value."},
	{key: "network.bridgeNetmask", derived: true,
		desc: "Derived: dotted netmask of bridgePrefix (255.255.255.0). May only be stated with the derived value."},
	{key: "sandbox.runtime", enum: []string{"firecracker", "container", "kubernetes"}},
	{key: "sandbox.defaultVcpus", min: new(MinVcpus), max: new(MaxVcpus), desc: "vCPUs of a sandbox that asks for none; the bounds are those of a create request."},
	{key: "sandbox.defaultMemoryMb", min: new(MinMemoryMB), max: new(MaxMemoryMB), desc: "Memory in MiB of a sandbox that asks for none; the bounds are those of a create request."},
	{key: "sandbox.logMaxBytes", min: new(64 << 10), max: new(1 << 40)},
	{key: "sandbox.logKeep", min: new(0), max: new(100)},
	{key: "sandbox.pool.size", min: new(0), max: new(64)},
	{key: "sandbox.container.userNamespace", enum: []string{"auto", "on", "off"}},
	{key: "sandbox.kubernetes.diskGb", min: new(1), max: new(65536)},
	{key: "advanced.server.firecracker.jailerUidBase", min: new(1000), max: new(4294901759)},
	{key: "setup.storage.method", enum: []string{"", "loop", "device", "lvm", "file"},
		desc: "Storage backend the CLI sets up; empty means ask interactively."},
	{key: "setup.storage.loopSizeGb", min: new(0),
		desc: "Size of the loop-backed pool in GiB; 0 means unset (the CLI asks), otherwise at least 10."},
	{key: "setup.storage.device", desc: "Block device the CLI uses when method is device."},
}

var ruleIndex = sync.OnceValue(func() map[string]rule {
	m := make(map[string]rule, len(rules))
	for _, r := range rules {
		m[r.key] = r
	}
	return m
})

// ruleFor returns the constraints of a key. Every integer key named port
// gets the TCP range, so a new port cannot be forgotten.
func ruleFor(key string) rule {
	r, ok := ruleIndex()[key]
	if !ok {
		r = rule{key: key}
	}
	if isPortKey(key) && r.min == nil && r.max == nil {
		r.min, r.max = &portMin, &portMax
	}
	return r
}

func isPortKey(key string) bool {
	last := key[strings.LastIndexByte(key, '.')+1:]
	return last == "port" || strings.HasSuffix(last, "Port")
}

// leaf is one settable value (string, integer or list) in the key tree.
type leaf struct {
	key   string
	index []int
	typ   reflect.Type
}

func (l leaf) value(c *Config) reflect.Value {
	return reflect.ValueOf(c).Elem().FieldByIndex(l.index)
}

var leaves = sync.OnceValue(func() []leaf {
	var out []leaf
	walkLeaves(reflect.TypeFor[Config](), "", nil, &out)
	return out
})

func walkLeaves(t reflect.Type, prefix string, index []int, out *[]leaf) {
	for i := range t.NumField() {
		f := t.Field(i)
		name := jsonName(f)
		if name == "" {
			continue
		}
		key := joinKey(prefix, name)
		idx := append(slices.Clone(index), i)
		if f.Type.Kind() == reflect.Struct {
			walkLeaves(f.Type, key, idx, out)
			continue
		}
		*out = append(*out, leaf{key: key, index: idx, typ: f.Type})
	}
}

func leafByKey(key string) (leaf, bool) {
	for _, l := range leaves() {
		if l.key == key {
			return l, true
		}
	}
	return leaf{}, false
}

// jsonName is the key encoding/json uses for a field, or "" when skipped.
func jsonName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	switch name {
	case "-":
		return ""
	case "":
		return f.Name
	}
	return name
}

// fieldByJSONName finds a struct field by its exact JSON key; encoding/json
// would also accept other letter cases, which would hide typos.
func fieldByJSONName(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if jsonName(f) == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func joinKey(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// KeyKind returns the kind of a settable key's value (reflect.String, Int,
// Bool or Slice of strings) and whether the key exists; `atelier config
// set` parses a value by it.
func KeyKind(key string) (reflect.Kind, bool) {
	l, ok := leafByKey(key)
	if !ok {
		return reflect.Invalid, false
	}
	return l.typ.Kind(), true
}

// KeyEnv returns the environment variable of a key, "" when it has none.
func KeyEnv(key string) string { return envFor(key) }

// KeyDerived reports whether a key is always derived from others.
func KeyDerived(key string) bool { return ruleFor(key).derived }
