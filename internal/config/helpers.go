package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
)

// IsLocal reports whether the base domain is localhost or under .localhost,
// where browsers resolve every name to loopback and no certificate exists.
func (c *Config) IsLocal() bool { return isLocalName(c.Domain.BaseDomain) }

// DashboardURL is where users open the dashboard. Locally the manager serves
// it directly, because the edge may not run on a developer machine.
func (c *Config) DashboardURL() string {
	if c.IsLocal() {
		return "http://localhost:" + strconv.Itoa(c.Server.Port)
	}
	return "https://" + c.Domain.Dashboard + portSuffix(c.Domain.HTTPSPort, 443)
}

// OAuthCallbackURL is the redirect URL to register in the GitHub OAuth app.
func (c *Config) OAuthCallbackURL() string { return c.DashboardURL() + "/auth/callback" }

// ManagerAddr is the manager API listen address.
func (c *Config) ManagerAddr() string {
	return net.JoinHostPort(c.ListenHost(), strconv.Itoa(c.Server.Port))
}

// ListenHost is the address the manager API, the edge and the SSH proxy
// bind. It is server.host, except in mock mode without
// server.allowRemoteMock, where the wildcard (the default) means loopback:
// mock mode has no login and its guests are the developer's own processes,
// so it must not be a shell for the whole network. Validate refuses a
// specific non-loopback host there.
func (c *Config) ListenHost() string {
	h := c.Server.Host
	if c.Server.Mode != ModeMock || c.Server.AllowRemoteMock {
		return h
	}
	if a, err := netip.ParseAddr(h); err == nil && a.IsUnspecified() {
		if a.Is4() {
			return "127.0.0.1"
		}
		return "::1"
	}
	return h
}

// RemoteMock reports a mock-mode manager that listens beyond loopback,
// which the operator asked for with server.allowRemoteMock.
func (c *Config) RemoteMock() bool {
	return c.Server.Mode == ModeMock && !IsLoopbackHost(c.ListenHost())
}

// IsLoopbackHost reports whether a bind host reaches only this machine:
// localhost or an address in 127.0.0.0/8 or ::1.
func IsLoopbackHost(h string) bool {
	if isLocalName(h) {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.Unmap().IsLoopback()
}

// GuestRange returns the bridge (the guests' gateway) and the inclusive range
// of guest addresses: from network+guestIpStart to the address below
// broadcast. The range never holds the network, bridge or broadcast address
// because guestIpStart must lie above the bridge's host number.
func (c *Config) GuestRange() (gateway, first, last netip.Addr, err error) {
	bridge, pfx, err := parseBridge(c.Network.BridgeIP, c.Network.BridgePrefix)
	if err != nil {
		return netip.Addr{}, netip.Addr{}, netip.Addr{}, fmt.Errorf("guest range: %w", err)
	}
	size := uint64(1) << (32 - pfx.Bits())
	base := addrToU32(pfx.Addr())
	host := uint64(addrToU32(bridge) - base)
	if host == 0 || host == size-1 {
		return netip.Addr{}, netip.Addr{}, netip.Addr{}, fmt.Errorf("guest range: bridge %s is the network or broadcast address of %s", bridge, pfx)
	}
	start := c.Network.GuestIPStart
	if start <= 0 || uint64(start) <= host || uint64(start) > size-2 {
		return netip.Addr{}, netip.Addr{}, netip.Addr{}, fmt.Errorf("guest range: guestIpStart %d leaves no guest address above bridge %s in %s", start, bridge, pfx)
	}
	first = u32ToAddr(base + uint32(start))
	last = u32ToAddr(base + uint32(size-2))
	return bridge, first, last, nil
}

// URLPatterns returns the public URL of each service with {id}, {name} and
// {alias} placeholders, following the seed's Domains table. A non-standard
// edge port is part of the URL.
func (c *Config) URLPatterns() map[string]string {
	scheme, suffix := "https://", "."+c.Domain.BaseDomain+portSuffix(c.Domain.HTTPSPort, 443)
	if c.IsLocal() {
		scheme, suffix = "http://", "."+c.Domain.BaseDomain+portSuffix(c.Domain.HTTPPort, 80)
	}
	u := func(label string) string { return scheme + label + suffix }
	return map[string]string{
		"dashboard":  c.DashboardURL(),
		"vscode":     u("sandbox-{id}"),
		"opencode":   u("opencode-{id}"),
		"browser":    u("browser-{id}"),
		"devNamed":   u("dev-{name}-{id}"),
		"devDefault": u("dev-{id}"),
		"devAlias":   u("dev-{name}-{alias}-{id}"),
	}
}

func portSuffix(port, standard int) string {
	if port == standard {
		return ""
	}
	return ":" + strconv.Itoa(port)
}

// Redacted returns a deep copy whose non-empty secrets read "<redacted>",
// safe to log or print.
func (c *Config) Redacted() *Config {
	cp := c.clone()
	for _, e := range envTable {
		if !e.Secret {
			continue
		}
		l, ok := leafByKey(e.Key)
		if !ok {
			continue
		}
		if f := l.value(cp); f.String() != "" {
			f.SetString(redactedValue)
		}
	}
	return cp
}

func (c *Config) clone() *Config {
	cp := *c
	cp.Auth.AllowedUsers = slices.Clone(c.Auth.AllowedUsers)
	cp.Auth.Admins = slices.Clone(c.Auth.Admins)
	cp.Network.DNSServers = slices.Clone(c.Network.DNSServers)
	cp.Network.EgressAllowCIDRs = slices.Clone(c.Network.EgressAllowCIDRs)
	k := &cp.Sandbox.Kubernetes
	k.Images, k.Snapshots, k.ClusterCIDRs = slices.Clone(k.Images), slices.Clone(k.Snapshots), slices.Clone(k.ClusterCIDRs)
	return &cp
}

// JSON renders the configuration in the config file's key structure, indented
// by two spaces with a trailing newline. Secrets are included; use
// Redacted().JSON() for display.
func (c *Config) JSON() ([]byte, error) {
	cp := c.clone()
	// Lists always render as [] so the output is a valid config file.
	if cp.Auth.AllowedUsers == nil {
		cp.Auth.AllowedUsers = []string{}
	}
	if cp.Auth.Admins == nil {
		cp.Auth.Admins = []string{}
	}
	if cp.Network.DNSServers == nil {
		cp.Network.DNSServers = []string{}
	}
	if cp.Network.EgressAllowCIDRs == nil {
		cp.Network.EgressAllowCIDRs = []string{}
	}
	for _, l := range []*[]string{&cp.Sandbox.Kubernetes.Images, &cp.Sandbox.Kubernetes.Snapshots, &cp.Sandbox.Kubernetes.ClusterCIDRs} {
		if *l == nil {
			*l = []string{}
		}
	}
	return marshalIndent(cp)
}

func marshalIndent(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // keep "<redacted>" readable
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("encode config: %w", err)
	}
	return buf.Bytes(), nil
}
