package config

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
)

const (
	// EnvConfigFile names the config file when Options.File is empty.
	EnvConfigFile = "ATELIER_CONFIG"
	// DefaultFile is read when neither Options.File nor ATELIER_CONFIG is set;
	// unlike a named file, it may be missing.
	DefaultFile = "/etc/atelier/sandbox.config.json"
	// DefaultJWTSecret is the development secret production refuses.
	DefaultJWTSecret = "dev-secret-change-in-production"

	redactedValue = "<redacted>"
)

// defaults returns the built-in values before any derivation, with fresh
// slices so that decoding into one result never aliases another.
func defaults() *Config {
	return &Config{
		Domain: Domain{
			BaseDomain: "localhost",
			HTTPPort:   80,
			HTTPSPort:  443,
			// Enough for a project's few dev servers with aliases in each
			// sandbox; the user's cap keeps one user off the CA's weekly
			// quota for the whole domain.
			MaxDevHostsPerSandbox: 32,
			MaxDevHostsPerUser:    128,
			TLS:                   TLS{MaxNewCertsPerHour: 10},
			SSH:                   SSH{Port: 2222},
		},
		Auth: Auth{
			GitHub: GitHub{
				WebURL: "https://github.com",
				APIURL: "https://api.github.com",
			},
			JWTSecret:         DefaultJWTSecret,
			AllowedUsers:      []string{},
			SessionTTLHours:   168,
			Admins:            []string{},
			TokenTTLDays:      90,
			TokenNoExpiry:     TokenNoExpiryRefuse,
			OrgRecheckMinutes: 10,
		},
		Server: Server{
			Host:             "0.0.0.0",
			Port:             4000,
			MaxSandboxes:     20,
			SpawnConcurrency: 8,
			DataDir:          "/var/lib/atelier",
			LogLevel:         "info",
			LogFormat:        "text",
		},
		// With server.maxSandboxes at 20, four users can run at once
		// before one can be refused; ten sandboxes of the 5 GiB dev-base
		// image fill the disk quota exactly.
		Quotas: Quotas{
			RunningPerUser:   5,
			SandboxesPerUser: 10,
			DiskGBPerUser:    50,
		},
		Network: Network{
			BridgeName:   "br0",
			BridgeIP:     "172.16.0.1",
			BridgePrefix: 24,
			GuestIPStart: 10,
			DNSServers:   []string{"8.8.8.8", "8.8.4.4"},
			// Empty: guests reach no private, link-local, loopback, multicast or
			// reserved address (the cloud metadata service included).
			EgressAllowCIDRs: []string{},
		},
		Sandbox: Sandbox{
			Runtime:         "firecracker",
			DefaultImage:    "dev-base",
			StateDir:        "/var/lib/sandbox",
			LogDir:          "/var/log/sandbox",
			LogMaxBytes:     10 << 20,
			LogKeep:         3,
			DefaultVcpus:    2,
			DefaultMemoryMB: 2048,
			Git:             Git{Email: "sandbox@atelier.dev", Name: "Sandbox User"},
			Container:       SandboxContainer{UserNamespace: "auto"},
			Kubernetes: SandboxKubernetes{Namespace: "atelier", DiskGB: 20, Images: []string{}, Snapshots: []string{},
				ClusterCIDRs: []string{}},
		},
		Advanced: Advanced{
			VM: AdvancedVM{
				VSCode:   VersionedPort{Port: 8080, Version: "4.139.1"},
				OpenCode: VersionedPort{Port: 3000, Version: "1.18.33"},
				Browser:  Port{Port: 6080},
				Agent:    Port{Port: 9998},
			},
			Server: AdvancedServer{
				Verdaccio: Verdaccio{Port: 4873, Version: "6.8.0", User: "atelier-registry"},
				Firecracker: Firecracker{
					Version:       "1.14.1",
					BinaryPath:    "/usr/local/bin/firecracker",
					JailerPath:    "/usr/local/bin/jailer",
					KernelPath:    "/var/lib/sandbox/kernel/vmlinux",
					JailerUIDBase: 900000,
				},
			},
		},
	}
}

// Default returns the built-in configuration with derived fields filled in.
// Its mode is unset, so it does not validate until a mode is chosen.
func Default() *Config {
	c := defaults()
	c.derive()
	return c
}

// derive fills fields left empty from the ones they depend on. It runs after
// env so that ATELIER_BASE_DOMAIN alone moves every host name. Stated network
// values are kept so that Validate can report a mismatch instead of silently
// overriding what the operator wrote.
func (c *Config) derive() {
	if c.Domain.Dashboard == "" {
		c.Domain.Dashboard = "sandbox." + c.Domain.BaseDomain
	}
	if c.Domain.SSH.Hostname == "" {
		c.Domain.SSH.Hostname = "ssh." + c.Domain.BaseDomain
	}
	if c.Server.SocketPath == "" {
		c.Server.SocketPath = filepath.Join(c.Server.DataDir, "atelier.sock")
	}
	if c.Advanced.Server.Verdaccio.Dir == "" && c.Server.DataDir != "" {
		c.Advanced.Server.Verdaccio.Dir = filepath.Clean(c.Server.DataDir) + "-registry"
	}
	if c.Advanced.Server.Firecracker.ChrootBaseDir == "" {
		c.Advanced.Server.Firecracker.ChrootBaseDir = filepath.Join(c.Sandbox.StateDir, "jailer")
	}
	d, err := deriveNetwork(c.Network.BridgeIP, c.Network.BridgePrefix)
	if err != nil {
		return // Validate reports the bad bridge address or prefix.
	}
	if c.Network.GuestSubnet == "" {
		c.Network.GuestSubnet = d.guestSubnet
	}
	if c.Network.BridgeCIDR == "" {
		c.Network.BridgeCIDR = d.bridgeCIDR
	}
	if c.Network.BridgeNetmask == "" {
		c.Network.BridgeNetmask = d.bridgeNetmask
	}
}

type derivedNetwork struct {
	guestSubnet, bridgeCIDR, bridgeNetmask string
}

func deriveNetwork(bridgeIP string, bits int) (derivedNetwork, error) {
	_, pfx, err := parseBridge(bridgeIP, bits)
	if err != nil {
		return derivedNetwork{}, err
	}
	d := derivedNetwork{bridgeCIDR: pfx.String()}
	if bits == 24 {
		a := pfx.Addr().As4()
		d.guestSubnet = fmt.Sprintf("%d.%d.%d", a[0], a[1], a[2])
	} else {
		d.guestSubnet = pfx.Addr().String()
	}
	m := prefixMask(bits)
	d.bridgeNetmask = fmt.Sprintf("%d.%d.%d.%d", byte(m>>24), byte(m>>16), byte(m>>8), byte(m))
	return d, nil
}

var (
	errBridgeIP     = errors.New("not an IPv4 address")
	errBridgePrefix = errors.New("prefix length outside 0..32")
)

// parseBridge returns the bridge address and its masked subnet.
func parseBridge(bridgeIP string, bits int) (netip.Addr, netip.Prefix, error) {
	a, err := netip.ParseAddr(bridgeIP)
	if err != nil || !a.Is4() {
		return netip.Addr{}, netip.Prefix{}, fmt.Errorf("bridge ip %q: %w", bridgeIP, errBridgeIP)
	}
	if bits < 0 || bits > 32 {
		return netip.Addr{}, netip.Prefix{}, fmt.Errorf("bridge prefix %d: %w", bits, errBridgePrefix)
	}
	return a, netip.PrefixFrom(a, bits).Masked(), nil
}

func prefixMask(bits int) uint32 {
	if bits <= 0 {
		return 0
	}
	return ^uint32(0) << (32 - bits)
}

func addrToU32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func u32ToAddr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
