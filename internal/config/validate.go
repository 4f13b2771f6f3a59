package config

import (
	"fmt"
	"net/netip"
	"net/url"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
)

// Problem is one invalid setting.
type Problem struct {
	// Key is the dotted JSON key.
	Key string `json:"key"`
	// Env is the key's environment variable, "" when it has none.
	Env     string `json:"env,omitempty"`
	Message string `json:"message"`
}

func (p Problem) String() string {
	env := "config file only"
	if p.Env != "" {
		env = "env " + p.Env
	}
	return fmt.Sprintf("%s (%s): %s", p.Key, env, p.Message)
}

// ValidationError lists every problem found, so an operator fixes them all in
// one round instead of one restart per mistake.
type ValidationError struct {
	Problems []Problem
}

func (e *ValidationError) Error() string { return joinProblems(e.Problems) }

func joinProblems(ps []Problem) string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Validate checks every setting and returns nil or a *ValidationError with all
// problems. Production additionally refuses settings that are only safe on a
// developer machine.
func (c *Config) Validate() error {
	v := &checker{c: c}
	v.simple()
	v.domain()
	v.auth()
	v.server()
	v.network()
	v.sandbox()
	v.setup()
	v.ports()
	if c.Server.Mode == ModeProduction {
		v.production()
	}
	if len(v.problems) == 0 {
		return nil
	}
	return &ValidationError{Problems: v.problems}
}

type checker struct {
	c        *Config
	problems []Problem
}

func (v *checker) add(key, format string, args ...any) {
	v.problems = append(v.problems, Problem{Key: key, Env: envFor(key), Message: fmt.Sprintf(format, args...)})
}

// simple applies the rules table (ranges, enums) and requires every version.
func (v *checker) simple() {
	for _, l := range leaves() {
		r := ruleFor(l.key)
		f := l.value(v.c)
		switch f.Kind() {
		case reflect.Int:
			n := int(f.Int())
			switch {
			case r.min != nil && r.max != nil && (n < *r.min || n > *r.max):
				v.add(l.key, "must be between %d and %d (got %d)", *r.min, *r.max, n)
			case r.min != nil && n < *r.min:
				v.add(l.key, "must be at least %d (got %d)", *r.min, n)
			case r.max != nil && n > *r.max:
				v.add(l.key, "must be at most %d (got %d)", *r.max, n)
			}
		case reflect.String:
			s := f.String()
			switch {
			case r.enum != nil && s == "" && r.unset != "":
				v.add(l.key, "%s", r.unset)
			case r.enum != nil && !slices.Contains(r.enum, s):
				v.add(l.key, "must be one of %s (got %q)", quoteList(r.enum), s)
			case strings.HasSuffix(l.key, ".version") && strings.TrimSpace(s) == "":
				v.add(l.key, "must be set")
			}
		}
	}
}

func (v *checker) domain() {
	d := v.c.Domain
	v.dnsName("domain.baseDomain", d.BaseDomain)
	v.dnsName("domain.dashboard", d.Dashboard)
	v.dnsName("domain.ssh.hostname", d.SSH.Hostname)

	switch {
	case d.TLS.CertPath != "" && d.TLS.KeyPath == "":
		v.add("domain.tls.keyPath", "must be set when domain.tls.certPath is set (both or neither)")
	case d.TLS.CertPath == "" && d.TLS.KeyPath != "":
		v.add("domain.tls.certPath", "must be set when domain.tls.keyPath is set (both or neither)")
	}
	v.absPathIfSet("domain.tls.certPath", d.TLS.CertPath)
	v.absPathIfSet("domain.tls.keyPath", d.TLS.KeyPath)
	if e := d.TLS.Email; e != "" {
		local, host, ok := strings.Cut(e, "@")
		if !ok || local == "" || strings.ContainsAny(e, " \t<>") || dnsNameError(strings.ToLower(host)) != "" {
			v.add("domain.tls.email", "must be an email address like admin@example.com (got %q)", e)
		}
	}
}

func (v *checker) auth() {
	a := v.c.Auth
	v.httpURL("auth.github.webUrl", a.GitHub.WebURL)
	v.httpURL("auth.github.apiUrl", a.GitHub.APIURL)
	switch gh := a.GitHub; {
	case gh.AppID > 0 && gh.AppPrivateKeyPath == "":
		v.add("auth.github.appPrivateKeyPath", "must be set when auth.github.appId is set (the GitHub App's private key)")
	case gh.AppID == 0 && gh.AppPrivateKeyPath != "":
		v.add("auth.github.appId", "must be set when auth.github.appPrivateKeyPath is set (the GitHub App's ID)")
	}
	v.absPathIfSet("auth.github.appPrivateKeyPath", a.GitHub.AppPrivateKeyPath)
	for i, u := range a.AllowedUsers {
		if u == "" || strings.ContainsFunc(u, unicode.IsSpace) || strings.Contains(u, ",") {
			v.add("auth.allowedUsers", "entry %d %q is not a GitHub user name", i, u)
		}
	}
	for i, u := range a.Admins {
		switch {
		case u == "" || strings.ContainsFunc(u, unicode.IsSpace) || strings.Contains(u, ","):
			v.add("auth.admins", "entry %d %q is not a GitHub user name", i, u)
		case a.AllowedOrg == "" && !slices.ContainsFunc(a.AllowedUsers, func(x string) bool { return strings.EqualFold(x, u) }):
			// An admin is a user first: the role never lets anyone in.
			v.add("auth.admins", "entry %q cannot log in: add it to auth.allowedUsers (ATELIER_AUTH_ALLOWED_USERS) or set auth.allowedOrg", u)
		}
	}
}

func (v *checker) server() {
	s := v.c.Server
	if s.Host == "" {
		v.add("server.host", "must be set (0.0.0.0 listens on all interfaces)")
	} else if _, err := netip.ParseAddr(s.Host); err != nil && dnsNameError(s.Host) != "" {
		v.add("server.host", "must be an IP address or host name (got %q)", s.Host)
	}
	v.absPath("server.dataDir", s.DataDir)
	v.absPath("server.socketPath", s.SocketPath)
	if s.Mode == ModeMock && !s.AllowRemoteMock && s.Host != "" && !IsLoopbackHost(v.c.ListenHost()) && !slices.ContainsFunc(v.problems, func(p Problem) bool { return p.Key == "server.host" }) {
		v.add("server.host", "is %q, not a loopback address, in mock mode: mock mode has no login and runs every command as your user on this machine, "+
			"so anyone who can reach it gets a shell. Use 127.0.0.1 (mock mode's default), or set server.allowRemoteMock (ATELIER_ALLOW_REMOTE_MOCK=true, "+
			"or atelier serve --insecure-mock-listen-any) if this network is yours alone", s.Host)
	}
	v.registry()
	v.databaseURL()
	if u := v.c.Advanced.Server.ReleaseURL; u != "" {
		v.httpURL("advanced.server.releaseUrl", u)
	}
}

// databaseURL checks advanced.server.database.url without ever echoing it:
// it may carry a password.
func (v *checker) databaseURL() {
	const key = "advanced.server.database.url"
	raw := v.c.Advanced.Server.Database.URL
	if raw == "" {
		return
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || strings.Trim(u.Path, "/") == "" {
		v.add(key, "must be a PostgreSQL URL: postgres://user:password@host:5432/database?sslmode=verify-full (empty: the embedded SQLite store)")
		return
	}
	host := u.Hostname()
	if h := u.Query().Get("host"); h != "" {
		host = h
	}
	local := host == "" || strings.HasPrefix(host, "/") || host == "localhost"
	if a, err := netip.ParseAddr(host); err == nil && a.IsLoopback() {
		local = true
	}
	switch mode := u.Query().Get("sslmode"); {
	case local:
	case mode != "require" && mode != "verify-ca" && mode != "verify-full":
		v.add(key, "reaches %s over the network without TLS: add sslmode=verify-full (or require, verify-ca) to the URL, or use a loopback address or a unix socket", host)
	}
}

// userNameRE is what useradd accepts by default (Debian's NAME_REGEX).
var userNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,30}$`)

func (v *checker) registry() {
	r := v.c.Advanced.Server.Verdaccio
	if !userNameRE.MatchString(r.User) || r.User == "root" {
		v.add("advanced.server.verdaccio.user", "must be a system user name other than root, like atelier-registry (lowercase letters, digits, - and _, at most 31) (got %q)", r.User)
	}
	if !filepath.IsAbs(r.Dir) {
		v.add("advanced.server.verdaccio.dir", "must be an absolute path (got %q)", r.Dir)
		return
	}
	data := filepath.Clean(v.c.Server.DataDir)
	if dir := filepath.Clean(r.Dir); filepath.IsAbs(data) && (within(dir, data) || within(data, dir)) {
		v.add("advanced.server.verdaccio.dir", "must lie outside server.dataDir %s (which only the manager may read) and not contain it (got %q); leave it empty for %s-registry", data, r.Dir, data)
	}
}

// within reports whether p is dir or lies under it.
func within(p, dir string) bool {
	return p == dir || dir == "/" || strings.HasPrefix(p, dir+"/")
}

func (v *checker) network() {
	n := v.c.Network
	if msg := ifnameError(n.BridgeName); msg != "" {
		v.add("network.bridgeName", "%s (got %q)", msg, n.BridgeName)
	}
	if len(n.DNSServers) == 0 {
		v.add("network.dnsServers", "must list at least one DNS server")
	}
	for i, s := range n.DNSServers {
		if _, err := netip.ParseAddr(s); err != nil {
			v.add("network.dnsServers", "entry %d %q is not an IP address", i, s)
		}
	}
	for i, s := range n.EgressAllowCIDRs {
		if msg := egressCIDRError(s); msg != "" {
			v.add("network.egressAllowCidrs", "entry %d %q %s", i, s, msg)
		}
	}

	bridge, pfx, err := parseBridge(n.BridgeIP, n.BridgePrefix)
	if err != nil {
		if _, _, ipErr := parseBridge(n.BridgeIP, 24); ipErr != nil {
			v.add("network.bridgeIp", "must be an IPv4 address like 172.16.0.1 (got %q)", n.BridgeIP)
		}
		return // an impossible prefix is reported by simple()
	}
	if d, err := deriveNetwork(n.BridgeIP, n.BridgePrefix); err == nil {
		v.derived("network.guestSubnet", n.GuestSubnet, d.guestSubnet)
		v.derived("network.bridgeCidr", n.BridgeCIDR, d.bridgeCIDR)
		v.derived("network.bridgeNetmask", n.BridgeNetmask, d.bridgeNetmask)
	}
	r := ruleFor("network.bridgePrefix")
	if n.BridgePrefix < *r.min || n.BridgePrefix > *r.max {
		return
	}
	size := uint32(1) << (32 - n.BridgePrefix)
	host := addrToU32(bridge) - addrToU32(pfx.Addr())
	if host == 0 || host == size-1 {
		v.add("network.bridgeIp", "%s is the network or broadcast address of %s; use a host address such as %s",
			bridge, pfx, u32ToAddr(addrToU32(pfx.Addr())+1))
		return
	}
	lo, hi := int(host)+1, int(size)-2
	gr := ruleFor("network.guestIpStart")
	if s := n.GuestIPStart; s >= *gr.min && s <= *gr.max && (s < lo || s > hi) {
		if lo > hi {
			v.add("network.guestIpStart", "no guest address is left above the bridge %s in %s; move the bridge to a low host number",
				bridge, pfx)
		} else {
			v.add("network.guestIpStart", "must be between %d and %d for bridge %s in %s (above the bridge's host number %d, below broadcast) (got %d)",
				lo, hi, bridge, pfx, host, s)
		}
	}
}

func (v *checker) derived(key, have, want string) {
	if have != want {
		v.add(key, "is derived from network.bridgeIp and network.bridgePrefix and would be %q, but is %q; remove it from the config file",
			want, have)
	}
}

func (v *checker) sandbox() {
	s := v.c.Sandbox
	v.absPath("sandbox.stateDir", s.StateDir)
	v.absPath("sandbox.logDir", s.LogDir)
	if s.DefaultImage == "" || strings.ContainsAny(s.DefaultImage, "/ \t\n") {
		v.add("sandbox.defaultImage", "must be an image name like dev-base (got %q)", s.DefaultImage)
	}
	// A pool as large as the host limit would leave no slot a create of
	// another shape could take.
	if m := v.c.Server.MaxSandboxes; s.Pool.Size > 0 && m > 0 && s.Pool.Size >= m {
		v.add("sandbox.pool.size", "must be below server.maxSandboxes (%d): pooled sandboxes count against it (got %d)", m, s.Pool.Size)
	}
	fc := v.c.Advanced.Server.Firecracker
	v.absPathIfSet("advanced.server.firecracker.jailerPath", fc.JailerPath)
	v.absPath("advanced.server.firecracker.chrootBaseDir", fc.ChrootBaseDir)
	if s.Runtime == "kubernetes" {
		v.kubernetes()
	}
	if s.Runtime == "firecracker" {
		// A VM guest learns its DNS servers from the kernel's ip= argument,
		// which carries two IPv4 addresses (see internal/bootcontract).
		n := v.c.Network.DNSServers
		if len(n) > 2 {
			v.add("network.dnsServers", "the firecracker runtime passes at most 2 DNS servers to a guest (the kernel's ip= argument); got %d", len(n))
		}
		for i, d := range n {
			if a, err := netip.ParseAddr(d); err == nil && !a.Is4() {
				v.add("network.dnsServers", "entry %d %q is IPv6: the firecracker runtime passes IPv4 DNS servers only (the kernel's ip= argument)", i, d)
			}
		}
	}
}

// kubernetes checks the kubernetes runtime's keys; the image list is
// parsed again (same rules) by the runtime.
func (v *checker) kubernetes() {
	k := v.c.Sandbox.Kubernetes
	v.absPathIfSet("sandbox.kubernetes.kubeconfig", k.Kubeconfig)
	v.absPathIfSet("sandbox.kubernetes.caDir", k.CADir)
	if !dnsLabelRe.MatchString(k.Namespace) {
		v.add("sandbox.kubernetes.namespace", "must be a DNS label (lowercase letters, digits, '-'; at most 63), got %q", k.Namespace)
	}
	for key, val := range map[string]string{"sandbox.kubernetes.runtimeClassName": k.RuntimeClassName, "sandbox.kubernetes.storageClass": k.StorageClass,
		"sandbox.kubernetes.snapshotClass": k.SnapshotClass} {
		if val != "" && (len(val) > 253 || !dnsSubdomainRe.MatchString(val)) {
			v.add(key, "must be a Kubernetes object name (lowercase DNS subdomain), got %q", val)
		}
	}
	if len(k.Images) == 0 {
		v.add("sandbox.kubernetes.images", "must name at least the default image as IMAGE=OCI-REFERENCE when sandbox.runtime is kubernetes")
	}
	images := map[string]bool{}
	for i, e := range k.Images {
		id, ref, ok := strings.Cut(e, "=")
		switch {
		case !ok || id == "" || ref == "" || strings.ContainsAny(e, " \t\n"):
			v.add("sandbox.kubernetes.images", "entry %d %q: want IMAGE=OCI-REFERENCE (dev-base=registry.example/atelier/dev-base:1)", i, e)
		case images[id]:
			v.add("sandbox.kubernetes.images", "image %q is given twice", id)
		}
		images[id] = true
	}
	if len(k.Images) > 0 && !images[v.c.Sandbox.DefaultImage] {
		v.add("sandbox.kubernetes.images", "must include sandbox.defaultImage %q", v.c.Sandbox.DefaultImage)
	}
	for i, e := range k.Snapshots {
		id, name, ok := strings.Cut(e, "=")
		if !ok || !images[id] || !dnsSubdomainRe.MatchString(name) {
			v.add("sandbox.kubernetes.snapshots", "entry %d %q: want IMAGE=VOLUMESNAPSHOT for an image of sandbox.kubernetes.images", i, e)
		}
	}
	for i, c := range k.ClusterCIDRs {
		if _, err := netip.ParsePrefix(c); err != nil {
			v.add("sandbox.kubernetes.clusterCidrs", "entry %d %q: not a CIDR prefix", i, c)
		}
	}
}

var (
	dnsLabelRe     = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	dnsSubdomainRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$`)
)

func (v *checker) setup() {
	st := v.c.Setup.Storage
	if st.LoopSizeGB > 0 && st.LoopSizeGB < 10 {
		v.add("setup.storage.loopSizeGb", "must be 0 (unset) or at least 10 (got %d)", st.LoopSizeGB)
	}
	if st.Method == "device" && st.Device == "" {
		v.add("setup.storage.device", `must name a block device when setup.storage.method is "device"`)
	}
}

type listener struct {
	key  string
	host string // "" binds every interface
	port int
}

// ports reports listeners that would fail to bind. On Linux a wildcard bind
// conflicts with every specific address on the same port, so only two distinct
// specific hosts may share a port. The edge, SSH proxy and registry bind every
// interface; the guest services share one guest network namespace; the agent
// listens on vsock and cannot collide with TCP.
func (v *checker) ports() {
	c := v.c
	host := []listener{
		{"server.port", wildcard(c.ListenHost()), c.Server.Port},
		{"domain.httpPort", "", c.Domain.HTTPPort},
		{"domain.httpsPort", "", c.Domain.HTTPSPort},
		{"domain.ssh.port", "", c.Domain.SSH.Port},
		{"advanced.server.verdaccio.port", "", c.Advanced.Server.Verdaccio.Port},
	}
	guest := []listener{
		{"advanced.vm.vscode.port", "", c.Advanced.VM.VSCode.Port},
		{"advanced.vm.opencode.port", "", c.Advanced.VM.OpenCode.Port},
		{"advanced.vm.browser.port", "", c.Advanced.VM.Browser.Port},
	}
	for _, group := range [][]listener{host, guest} {
		for j, b := range group {
			for _, a := range group[:j] {
				if a.port == b.port && a.port >= portMin && a.port <= portMax && (a.host == "" || b.host == "" || a.host == b.host) {
					v.add(b.key, "port %d is also used by %s", b.port, a.key)
				}
			}
		}
	}
}

func wildcard(host string) string {
	if a, err := netip.ParseAddr(host); err == nil && a.IsUnspecified() {
		return ""
	}
	return host
}

func (v *checker) production() {
	c := v.c
	a := c.Auth
	switch {
	case a.JWTSecret == "":
		v.add("auth.jwtSecret", "must be set in production (for example: openssl rand -hex 32)")
	case a.JWTSecret == DefaultJWTSecret:
		v.add("auth.jwtSecret", "is the development default; production needs a random secret of at least 32 characters (openssl rand -hex 32)")
	case len(a.JWTSecret) < 32:
		v.add("auth.jwtSecret", "must be at least 32 characters in production (got %d)", len(a.JWTSecret))
	}
	if a.GitHub.ClientID == "" {
		v.add("auth.github.clientId", "must be set in production (the GitHub OAuth app's client ID)")
	}
	if a.GitHub.ClientSecret == "" {
		v.add("auth.github.clientSecret", "must be set in production (the GitHub OAuth app's client secret)")
	}
	if a.AllowedOrg == "" && len(a.AllowedUsers) == 0 {
		v.add("auth.allowedOrg", "nobody could log in: set auth.allowedOrg (ATELIER_AUTH_ALLOWED_ORG) or auth.allowedUsers (ATELIER_AUTH_ALLOWED_USERS)")
	}
	if c.IsLocal() {
		v.add("domain.baseDomain", "must be a public domain in production, not %q", c.Domain.BaseDomain)
	} else {
		if isLocalName(c.Domain.Dashboard) {
			v.add("domain.dashboard", "is a localhost name in production (%q); leave it empty to derive sandbox.%s",
				c.Domain.Dashboard, c.Domain.BaseDomain)
		}
		if isLocalName(c.Domain.SSH.Hostname) {
			v.add("domain.ssh.hostname", "is a localhost name in production (%q); leave it empty to derive ssh.%s",
				c.Domain.SSH.Hostname, c.Domain.BaseDomain)
		}
	}
	if c.Domain.TLS.CertPath == "" && c.Domain.TLS.KeyPath == "" && c.Domain.TLS.Email == "" {
		v.add("domain.tls.email", "is required in production for ACME certificates unless domain.tls.certPath and domain.tls.keyPath are set")
	}
}

func (v *checker) dnsName(key, s string) {
	if msg := dnsNameError(s); msg != "" {
		v.add(key, "must be a DNS name like example.com: %s (got %q)", msg, s)
	}
}

func (v *checker) absPath(key, p string) {
	if !filepath.IsAbs(p) {
		v.add(key, "must be an absolute path (got %q)", p)
	}
}

func (v *checker) absPathIfSet(key, p string) {
	if p != "" {
		v.absPath(key, p)
	}
}

func (v *checker) httpURL(key, s string) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		v.add(key, "must be an absolute http(s) URL (got %q)", s)
	}
}

// dnsNameError explains why s is not a lowercase DNS name, or returns "".
// Lowercase only, because host matching at the edge compares exact strings.
func dnsNameError(s string) string {
	if s == "" {
		return "empty"
	}
	if len(s) > 253 {
		return "longer than 253 characters"
	}
	for label := range strings.SplitSeq(s, ".") {
		switch {
		case label == "":
			return "empty label"
		case len(label) > 63:
			return "label longer than 63 characters"
		case label[0] == '-' || label[len(label)-1] == '-':
			return "label starts or ends with '-'"
		}
		for _, r := range label {
			if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '-' {
				return "only lowercase letters, digits, '-' and '.' are allowed"
			}
		}
	}
	return ""
}

// ifnameError mirrors the kernel's dev_valid_name.
func ifnameError(s string) string {
	switch {
	case s == "" || len(s) > 15:
		return "must be 1 to 15 characters"
	case s == "." || s == "..":
		return "must not be . or .."
	case strings.ContainsFunc(s, func(r rune) bool { return r == '/' || r == ':' || unicode.IsSpace(r) }):
		return "must not contain '/', ':' or whitespace"
	}
	return ""
}

func isLocalName(host string) bool {
	host = strings.ToLower(host)
	return host == "localhost" || strings.HasSuffix(host, ".localhost")
}

func quoteList(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

// egressCIDRError explains why s is not an IPv4 prefix in canonical form, or
// returns "". Guests have IPv4 only, and a prefix with host bits set is
// refused rather than silently widened or narrowed.
func egressCIDRError(s string) string {
	p, err := netip.ParsePrefix(s)
	switch {
	case err != nil:
		if _, aerr := netip.ParseAddr(s); aerr == nil {
			return "is an address, not a CIDR prefix; write " + s + "/32 for one address"
		}
		return "is not a CIDR prefix like 10.20.0.0/16"
	case !p.Addr().Is4():
		return "is not IPv4 (guests have IPv4 only)"
	case p.Masked() != p:
		return "has bits set after the prefix length; did you mean " + p.Masked().String() + "?"
	}
	return ""
}
