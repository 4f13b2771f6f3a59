// Package network is the host side of sandbox networking: the bridge, one
// link per sandbox (a TAP for Firecracker, a veth into a named netns for the
// container runtime), NAT to the egress interface and the firewall that
// isolates guests from each other and from the host.
//
// Everything lives in one network namespace, Options.HostNS (the root netns
// in production). The firewall is two nftables tables owned by Atelier:
//
//   - inet "atelier": guest→host input (to any of the host's addresses)
//     limited to ICMP echo to the gateway, the registry port and
//     Options.AllowedHostPorts on the gateway, port 53 of a host address that
//     is a DNS server (plus replies to connections the host opened); forward
//     bridge→egress for IPv4 to public destinations, to Options.EgressAllow
//     and to the DNS servers on port 53, never to the blockedEgress ranges
//     (private, CGNAT, link-local with the cloud metadata address, loopback,
//     multicast, reserved); replies back; nothing else to or from the bridge
//     (this also stops guest→guest traffic routed through the gateway);
//     masquerade of the bridge subnet out of the egress interface; and,
//     while net.ipv4.ip_forward is off, a guard that drops traffic arriving
//     on the egress to be routed anywhere but the bridge.
//   - bridge "atelier_bridge": every frame entering a sandbox port (a link in
//     interface group PortGroup) must carry that port's leased MAC and IPv4
//     address (Ethernet source, IPv4 source, ARP sender MAC and IP), kept in
//     the set "guests" keyed by port name; only IPv4 and ARP pass; frames
//     bridged from or to a sandbox port are dropped.
//
// Guest↔guest isolation therefore holds twice: bridge port isolation
// (IFLA_BRPORT_ISOLATED) on every sandbox port, and the bridge-family filter,
// which does not depend on br_netfilter (the reference's weak point 11).
// Membership in the group is set before a port comes up, so a port whose
// set entry is missing drops everything (fail closed).
//
// Every Atelier link carries the alias "atelier:<id> <ip> <mac>", so the
// kernel itself records which sandbox and lease a link belongs to: Detach
// and Links find links by alias, and Setup re-creates the anti-spoofing
// entries of running sandboxes when it rebuilds the tables at start-up.
//
// Link names follow the seed: tap-{id[:8]} (veth{id[:8]} for veth). Ids
// that share their first 8 characters get a deterministic fallback,
// tap-{8 hex digits of SHA-256(id)}; Attach returns the name it used (see
// linkNames). A veth sandbox's netns is /var/run/netns/atelier-<id>
// (NetnsPath). Guests get IPv4 only: every other ethertype from a sandbox
// port is dropped. Setup turns IPv4 forwarding on for the bridge and the
// egress interface only (net.ipv4.conf.<if>.forwarding), never host-wide:
// the host does not become a router between its other interfaces, and the
// guard above keeps the egress's flag from routing a peer on the egress link
// anywhere but to the guests. Teardown turns the flags off again when it
// removes the guard. It never changes net.bridge.bridge-nf-call-iptables,
// which other bridges on the host may rely on, because isolation does not
// need it.
package network

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"atelier/internal/config"
)

// LinkKind is the kind of per-sandbox link.
type LinkKind string

const (
	// LinkTAP is a persistent TAP device that Firecracker opens.
	LinkTAP LinkKind = "tap"
	// LinkVeth is a veth pair whose peer is eth0 of a per-sandbox named netns.
	LinkVeth LinkKind = "veth"
)

// DefaultNetnsPrefix names the per-sandbox namespaces: atelier-<id>.
const DefaultNetnsPrefix = "atelier-"

// PortGroup is the interface group of every sandbox port. The bridge-family
// firewall matches on it (meta iifgroup) because the bridge-name match
// (meta ibrname) needs CONFIG_NFT_BRIDGE_META, which not every kernel has.
const PortGroup uint32 = 0x6174656c // "atel"

const (
	aliasPrefix = "atelier:"
	// bridgeAlias marks a bridge Atelier created, so Teardown removes only that.
	bridgeAlias = aliasPrefix + "bridge"
)

// Options configure a Manager.
type Options struct {
	// Bridge is the bridge's interface name.
	Bridge string
	// BridgeIP is the bridge's address and the guests' prefix, e.g. 172.16.0.1/24.
	BridgeIP netip.Prefix
	// RegistryPort is the TCP port guests may reach on the bridge address (0: none).
	RegistryPort int
	// AllowedHostPorts are extra TCP ports guests may reach on the bridge address.
	AllowedHostPorts []int
	// DNSServers are handed to guests by the runtime; guests may reach each
	// of them on port 53 (UDP and TCP), private and host addresses included.
	DNSServers []netip.Addr
	// EgressAllow are IPv4 prefixes guests may reach through the egress
	// although they are in the blocked ranges (private, link-local, ...).
	EgressAllow []netip.Prefix
	// Kind is the link Attach creates.
	Kind LinkKind
	// HostNS holds the bridge. A negative or zero handle means the network
	// namespace of this process. The Manager keeps its own duplicate.
	HostNS netns.NsHandle
	// NetnsPrefix names the per-sandbox namespaces of LinkVeth; Teardown
	// removes every namespace with this prefix. Default DefaultNetnsPrefix.
	NetnsPrefix string
	Log         *slog.Logger
}

// OptionsFromConfig derives the options of the production host network.
func OptionsFromConfig(cfg *config.Config, kind LinkKind) (Options, error) {
	gw, _, _, err := cfg.GuestRange()
	if err != nil {
		return Options{}, fmt.Errorf("network options: %w", err)
	}
	dns := make([]netip.Addr, 0, len(cfg.Network.DNSServers))
	for _, s := range cfg.Network.DNSServers {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return Options{}, fmt.Errorf("network options: dns server %q: %w", s, err)
		}
		dns = append(dns, a)
	}
	allow := make([]netip.Prefix, 0, len(cfg.Network.EgressAllowCIDRs))
	for _, s := range cfg.Network.EgressAllowCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return Options{}, fmt.Errorf("network options: network.egressAllowCidrs %q: %w", s, err)
		}
		allow = append(allow, p)
	}
	return Options{
		Bridge:       cfg.Network.BridgeName,
		BridgeIP:     netip.PrefixFrom(gw, cfg.Network.BridgePrefix),
		RegistryPort: cfg.Advanced.Server.Verdaccio.Port,
		DNSServers:   dns,
		EgressAllow:  allow,
		Kind:         kind,
		HostNS:       netns.None(),
		NetnsPrefix:  DefaultNetnsPrefix,
		Log:          slog.Default(),
	}, nil
}

// NetnsPath is the named netns of a container-runtime sandbox.
func NetnsPath(id string) string { return netnsDir + "/" + DefaultNetnsPrefix + id }

// Manager drives the host network. Its methods are safe for concurrent use;
// they run one at a time.
type Manager struct {
	opts   Options
	log    *slog.Logger
	hostNS netns.NsHandle
	h      *netlink.Handle

	mu     sync.Mutex
	closed bool
}

// New checks the options and opens handles in the host namespace. It
// changes nothing on the host.
func New(opts Options) (*Manager, error) {
	if err := opts.check(); err != nil {
		return nil, fmt.Errorf("network options: %w", err)
	}
	if opts.NetnsPrefix == "" {
		opts.NetnsPrefix = DefaultNetnsPrefix
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	opts.BridgeIP = netip.PrefixFrom(opts.BridgeIP.Addr(), opts.BridgeIP.Bits())
	var ns netns.NsHandle
	var err error
	if opts.HostNS <= 0 {
		ns, err = netns.GetFromPath("/proc/self/ns/net")
	} else {
		var fd int
		fd, err = unix.FcntlInt(uintptr(opts.HostNS), unix.F_DUPFD_CLOEXEC, 0)
		ns = netns.NsHandle(fd)
	}
	if err != nil {
		return nil, fmt.Errorf("open host netns: %w", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("open netlink in host netns: %w", err)
	}
	opts.HostNS = ns
	return &Manager{opts: opts, log: opts.Log.With("component", "network"), hostNS: ns, h: h}, nil
}

func (o Options) check() error {
	var errs []error
	if msg := ifnameProblem(o.Bridge); msg != "" {
		errs = append(errs, fmt.Errorf("bridge name %q: %s", o.Bridge, msg))
	}
	a := o.BridgeIP.Addr()
	switch {
	case !o.BridgeIP.IsValid() || !a.Is4():
		errs = append(errs, fmt.Errorf("bridge address %s: not an IPv4 prefix", o.BridgeIP))
	case o.BridgeIP.Bits() < 8 || o.BridgeIP.Bits() > 30:
		errs = append(errs, fmt.Errorf("bridge address %s: prefix length must be 8..30", o.BridgeIP))
	case a == o.BridgeIP.Masked().Addr() || a == broadcast(o.BridgeIP):
		errs = append(errs, fmt.Errorf("bridge address %s: is the network or broadcast address", o.BridgeIP))
	}
	if o.RegistryPort < 0 || o.RegistryPort > 65535 {
		errs = append(errs, fmt.Errorf("registry port %d: outside 0..65535", o.RegistryPort))
	}
	for _, p := range o.AllowedHostPorts {
		if p < 1 || p > 65535 {
			errs = append(errs, fmt.Errorf("allowed host port %d: outside 1..65535", p))
		}
	}
	for _, p := range o.EgressAllow {
		if !p.IsValid() || !p.Addr().Is4() {
			errs = append(errs, fmt.Errorf("egress allow %s: not an IPv4 prefix", p))
		}
	}
	if o.Kind != LinkTAP && o.Kind != LinkVeth {
		errs = append(errs, fmt.Errorf("link kind %q: want %q or %q", o.Kind, LinkTAP, LinkVeth))
	}
	if strings.ContainsAny(o.NetnsPrefix, "/\x00") || o.NetnsPrefix == "." || o.NetnsPrefix == ".." {
		errs = append(errs, fmt.Errorf("netns prefix %q: not a file name prefix", o.NetnsPrefix))
	}
	return errors.Join(errs...)
}

func ifnameProblem(s string) string {
	switch {
	case s == "":
		return "empty"
	case len(s) > 15:
		return "longer than 15 characters"
	case strings.ContainsAny(s, "/: \t\n\x00"):
		return "contains '/', ':' or white space"
	}
	return ""
}

func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := ^uint32(0) >> p.Bits()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Close releases the Manager's handles; it changes nothing on the host.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	m.h.Close()
	return m.hostNS.Close()
}

func (m *Manager) lock(ctx context.Context) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return errors.New("network manager closed")
	}
	if err := ctx.Err(); err != nil {
		m.mu.Unlock()
		return err
	}
	return nil
}

// Setup makes the host ready for sandboxes; it is idempotent and meant to run
// at every manager start, while sandboxes keep running: it ensures the bridge
// (address, up), re-adopts existing sandbox ports, rebuilds the firewall in
// one atomic batch (with the anti-spoofing entries of existing ports) and
// turns on IPv4 forwarding in the host namespace. The egress interface is
// the default route's; Setup must run again when that changes.
func (m *Manager) Setup(ctx context.Context) error {
	if err := m.lock(ctx); err != nil {
		return fmt.Errorf("network setup: %w", err)
	}
	defer m.mu.Unlock()
	// Egress first: a host without a default route is refused untouched.
	egress, err := m.egressInterface()
	if err != nil {
		return fmt.Errorf("network setup: %w", err)
	}
	br, err := m.ensureBridge()
	if err != nil {
		return fmt.Errorf("network setup: %w", err)
	}
	links, err := m.listLinks()
	if err != nil {
		return fmt.Errorf("network setup: %w", err)
	}
	var ports []portEntry
	for _, l := range links {
		a, ok := parseAlias(l.Attrs().Alias)
		if !ok {
			continue
		}
		if err := m.enslave(l, br); err != nil {
			return fmt.Errorf("network setup: re-adopt %s: %w", l.Attrs().Name, err)
		}
		if !a.ip.IsValid() || a.mac == nil {
			// Without a recorded lease the port gets no entry and drops everything.
			m.log.Warn("sandbox link has no recorded lease; its traffic is dropped until the next attach",
				"sandbox_id", a.id, "link", l.Attrs().Name)
			continue
		}
		ports = append(ports, portEntry{name: l.Attrs().Name, mac: a.mac, ip: a.ip})
	}
	// Forwarding goes on for the bridge and the egress only. When the
	// host-wide switch is off, the host routes nothing else, and the guard
	// keeps the egress's flag from routing anything but the guests' traffic.
	global, err := readSysctl(m.hostNS, "net/ipv4/ip_forward")
	if err != nil {
		return fmt.Errorf("network setup: %w", err)
	}
	guard := global == "0"
	prev, err := m.guardedEgress()
	if err != nil {
		return fmt.Errorf("network setup: %w", err)
	}
	n, err := m.buildFirewall(egress, guard, ports)
	if err != nil {
		return fmt.Errorf("network setup: %w", err)
	}
	for _, ifc := range []string{m.opts.Bridge, egress} {
		if err := writeSysctl(m.hostNS, "net/ipv4/conf/"+ifc+"/forwarding", "1"); err != nil {
			return fmt.Errorf("network setup: %w", err)
		}
	}
	if guard && prev != "" && prev != egress {
		// The egress moved: the old one no longer needs forwarding.
		m.unforward(prev)
	}
	if !guard {
		m.log.Warn("IPv4 forwarding is on for every interface (net.ipv4.ip_forward=1): the host routes between "+
			"all of them as its own firewall allows; Atelier needs it only on the bridge and the egress "+
			"(if an earlier Atelier turned it on, turn it off: sysctl -w net.ipv4.ip_forward=0, then run network setup)",
			"bridge", m.opts.Bridge, "egress", egress)
	}
	m.log.Info("network ready", "bridge", m.opts.Bridge, "address", m.opts.BridgeIP.String(),
		"egress", egress, "rules", n, "ports", len(ports), "routing_guard", guard)
	return nil
}

// unforward turns IPv4 forwarding off on an interface Atelier turned it on
// for, unless the host-wide switch is on by now (then it is the operator's).
// An interface that is gone needs nothing.
func (m *Manager) unforward(ifc string) {
	if v, err := readSysctl(m.hostNS, "net/ipv4/ip_forward"); err != nil || v != "0" {
		return
	}
	err := writeSysctl(m.hostNS, "net/ipv4/conf/"+ifc+"/forwarding", "0")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		m.log.Warn("turn forwarding off", "interface", ifc, "err", err)
	}
}

// ensureBridge creates the bridge with a fixed MAC (a Linux bridge otherwise
// takes the lowest port MAC, so guests' ARP entries for the gateway would go
// stale as sandboxes come and go), adds the address and brings it up.
func (m *Manager) ensureBridge() (netlink.Link, error) {
	link, err := m.h.LinkByName(m.opts.Bridge)
	if isLinkNotFound(err) {
		la := netlink.NewLinkAttrs()
		la.Name = m.opts.Bridge
		la.HardwareAddr = bridgeMAC(m.opts.BridgeIP.Addr())
		if err := m.h.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			return nil, fmt.Errorf("create bridge %s: %w", m.opts.Bridge, err)
		}
		m.log.Info("bridge created", "bridge", m.opts.Bridge)
		link, err = m.h.LinkByName(m.opts.Bridge)
		// The kernel ignores IFLA_IFALIAS when it creates a link.
		if err == nil {
			if err := m.h.LinkSetAlias(link, bridgeAlias); err != nil {
				return nil, fmt.Errorf("mark bridge %s: %w", m.opts.Bridge, err)
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("find bridge %s: %w", m.opts.Bridge, err)
	}
	if link.Type() != "bridge" {
		return nil, fmt.Errorf("%s exists and is a %s, not a bridge", m.opts.Bridge, link.Type())
	}
	addrs, err := m.h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", m.opts.Bridge, err)
	}
	want := prefixToIPNet(m.opts.BridgeIP)
	have := false
	for _, a := range addrs {
		if a.IPNet.IP.Equal(want.IP) && a.IPNet.Mask.String() == want.Mask.String() {
			have = true
		}
	}
	if !have {
		if err := m.h.AddrAdd(link, &netlink.Addr{IPNet: want}); err != nil {
			return nil, fmt.Errorf("add %s to %s: %w", m.opts.BridgeIP, m.opts.Bridge, err)
		}
	}
	if err := m.h.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bring %s up: %w", m.opts.Bridge, err)
	}
	return link, nil
}

// bridgeMAC is locally administered and derived from the bridge address;
// guests' MACs start with 06:00, so the two never collide.
func bridgeMAC(a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x02, 0x00, b[0], b[1], b[2], b[3]}
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), 32)}
}

// egressInterface is the interface of the lowest-metric IPv4 default route
// in the host namespace's main table.
func (m *Manager) egressInterface() (string, error) {
	routes, err := m.h.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return "", fmt.Errorf("list routes: %w", err)
	}
	best, idx := -1, 0
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		li := r.LinkIndex
		if li == 0 && len(r.MultiPath) > 0 {
			li = r.MultiPath[0].LinkIndex
		}
		if li == 0 {
			continue
		}
		if best == -1 || r.Priority < best {
			best, idx = r.Priority, li
		}
	}
	if best == -1 {
		return "", errors.New("detect egress interface: the host network namespace has no IPv4 default route; " +
			"add one (ip route add default via <gateway>) so that guests can reach the outside")
	}
	link, err := m.h.LinkByIndex(idx)
	if err != nil {
		return "", fmt.Errorf("detect egress interface: link %d: %w", idx, err)
	}
	name := link.Attrs().Name
	if name == m.opts.Bridge {
		return "", fmt.Errorf("detect egress interface: the default route goes through the sandbox bridge %s", name)
	}
	return name, nil
}

// Teardown removes everything Setup and Attach made: every Atelier link
// (found by alias or PortGroup), every named netns with the Manager's prefix, both
// nftables tables, and the bridge when Atelier created it (it carries the
// alias "atelier:bridge"; a bridge the operator made is left in place with
// its address). Forwarding on the egress (and on an operator's bridge) is
// turned off again when Setup turned it on while the host-wide switch was
// off, before the guard goes with the tables; net.ipv4.ip_forward itself is
// never touched. Running sandboxes lose their network.
func (m *Manager) Teardown(ctx context.Context) error {
	if err := m.lock(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("network teardown: %w", err)
	}
	defer m.mu.Unlock()
	var errs []error
	links, err := m.listLinks()
	if err != nil {
		return fmt.Errorf("network teardown: %w", err)
	}
	for _, l := range links {
		a, ok := parseAlias(l.Attrs().Alias)
		if !ok && l.Attrs().Group != PortGroup {
			continue
		}
		if err := m.h.LinkDel(l); err != nil && !isLinkNotFound(err) && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete link %s: %w", l.Attrs().Name, err))
			continue
		}
		m.log.Info("sandbox link removed", "sandbox_id", a.id, "link", l.Attrs().Name)
	}
	names, err := namedNetns(m.opts.NetnsPrefix)
	if err != nil {
		errs = append(errs, err)
	}
	for _, n := range names {
		if err := deleteNamedNetns(netnsDir + "/" + n); err != nil {
			errs = append(errs, err)
		}
	}
	guarded, err := m.guardedEgress()
	if err != nil {
		errs = append(errs, err)
	}
	if guarded != "" {
		m.unforward(guarded)
		m.unforward(m.opts.Bridge)
	}
	if err := m.deleteFirewall(); err != nil {
		errs = append(errs, err)
	}
	br, err := m.h.LinkByName(m.opts.Bridge)
	switch {
	case isLinkNotFound(err):
	case err != nil:
		errs = append(errs, fmt.Errorf("find bridge %s: %w", m.opts.Bridge, err))
	case br.Attrs().Alias == bridgeAlias:
		if err := m.h.LinkDel(br); err != nil && !isLinkNotFound(err) {
			errs = append(errs, fmt.Errorf("delete bridge %s: %w", m.opts.Bridge, err))
		}
	default:
		m.log.Info("bridge left in place: Atelier did not create it", "bridge", m.opts.Bridge)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("network teardown: %w", err)
	}
	m.log.Info("network removed", "bridge", m.opts.Bridge)
	return nil
}

// Status describes the host network as it is.
type Status struct {
	Bridge        string   `json:"bridge"`
	BridgePresent bool     `json:"bridgePresent"`
	BridgeUp      bool     `json:"bridgeUp"`
	BridgeAddrs   []string `json:"bridgeAddrs"`
	// BridgeOwned reports a bridge Atelier created (and Teardown removes).
	BridgeOwned bool   `json:"bridgeOwned"`
	Egress      string `json:"egress"`
	EgressError string `json:"egressError,omitempty"`
	// IPForward is the host-wide net.ipv4.ip_forward; Atelier leaves it alone.
	IPForward bool `json:"ipForward"`
	// BridgeForwarding and EgressForwarding are the per-interface IPv4
	// forwarding flags Setup turns on.
	BridgeForwarding bool `json:"bridgeForwarding"`
	EgressForwarding bool `json:"egressForwarding"`
	// RoutingGuard reports that the firewall drops traffic arriving on the
	// egress to be routed elsewhere than the bridge (set while ip_forward is
	// off; replies and destination-NATed connections pass).
	RoutingGuard bool `json:"routingGuard"`
	// BridgeNFCallIptables is net.bridge.bridge-nf-call-iptables ("" when the
	// sysctl is absent). Isolation does not depend on it.
	BridgeNFCallIptables string     `json:"bridgeNfCallIptables"`
	Tables               []string   `json:"tables"`
	Rules                int        `json:"rules"`
	Drops                Drops      `json:"drops"`
	Links                []LinkInfo `json:"links"`
	// Namespaces are the sandbox ids that have a named netns.
	Namespaces []string `json:"namespaces"`
	// FirewallMissing names the drop rules (by comment) Setup puts in
	// place that are not there now; empty when the firewall is whole.
	FirewallMissing []string `json:"firewallMissing"`
}

// Drops are the packet counters of the firewall's drop rules.
type Drops struct {
	// Spoofed counts IPv4 and ARP frames from a sandbox port whose source
	// MAC or address is not the port's lease.
	Spoofed uint64 `json:"spoofed"`
	// GuestToGuest counts frames bridged or routed between sandboxes.
	GuestToGuest uint64 `json:"guestToGuest"`
	// GuestToHost counts packets from guests to host services they may not use.
	GuestToHost uint64 `json:"guestToHost"`
	// Forward counts other forwarded packets to or from the bridge.
	Forward uint64 `json:"forward"`
	// Private counts guest packets to blocked destinations through the
	// egress: private, CGNAT, link-local (cloud metadata), loopback,
	// multicast and reserved addresses not in the allow-list.
	Private uint64 `json:"private"`
	// Routed counts packets the routing guard dropped.
	Routed uint64 `json:"routed"`
}

// Status reports the bridge, egress, forwarding, firewall and links.
func (m *Manager) Status(ctx context.Context) (Status, error) {
	if err := m.lock(ctx); err != nil {
		return Status{}, fmt.Errorf("network status: %w", err)
	}
	defer m.mu.Unlock()
	st := Status{Bridge: m.opts.Bridge, BridgeAddrs: []string{}, Tables: []string{}, Links: []LinkInfo{}, Namespaces: []string{}, FirewallMissing: []string{}}
	br, err := m.h.LinkByName(m.opts.Bridge)
	switch {
	case isLinkNotFound(err):
	case err != nil:
		return st, fmt.Errorf("network status: find bridge: %w", err)
	default:
		st.BridgePresent = true
		st.BridgeUp = br.Attrs().Flags&net.FlagUp != 0
		st.BridgeOwned = br.Attrs().Alias == bridgeAlias
		addrs, err := m.h.AddrList(br, netlink.FAMILY_V4)
		if err != nil {
			return st, fmt.Errorf("network status: bridge addresses: %w", err)
		}
		for _, a := range addrs {
			st.BridgeAddrs = append(st.BridgeAddrs, a.IPNet.String())
		}
	}
	if eg, err := m.egressInterface(); err != nil {
		st.EgressError = err.Error()
	} else {
		st.Egress = eg
	}
	if v, err := readSysctl(m.hostNS, "net/ipv4/ip_forward"); err == nil {
		st.IPForward = v == "1"
	}
	if v, err := readSysctl(m.hostNS, "net/ipv4/conf/"+m.opts.Bridge+"/forwarding"); err == nil {
		st.BridgeForwarding = v == "1"
	}
	if st.Egress != "" {
		if v, err := readSysctl(m.hostNS, "net/ipv4/conf/"+st.Egress+"/forwarding"); err == nil {
			st.EgressForwarding = v == "1"
		}
	}
	if v, err := readSysctl(m.hostNS, "net/bridge/bridge-nf-call-iptables"); err == nil {
		st.BridgeNFCallIptables = v
	}
	fw, err := m.firewallStatus()
	if err != nil {
		return st, fmt.Errorf("network status: %w", err)
	}
	st.Tables, st.Rules, st.Drops, st.RoutingGuard, st.FirewallMissing = fw.tables, fw.rules, fw.drops, fw.guard, fw.missing
	if st.Links, err = m.linkInfos(); err != nil {
		return st, fmt.Errorf("network status: %w", err)
	}
	if st.Namespaces, err = m.namespaces(); err != nil {
		return st, fmt.Errorf("network status: %w", err)
	}
	return st, nil
}

// Namespaces lists the sandbox ids that have a named netns, sorted; with
// Links it lets the reconciler find leaks.
func (m *Manager) Namespaces(ctx context.Context) ([]string, error) {
	if err := m.lock(ctx); err != nil {
		return nil, fmt.Errorf("list sandbox netns: %w", err)
	}
	defer m.mu.Unlock()
	return m.namespaces()
}

func (m *Manager) namespaces() ([]string, error) {
	names, err := namedNetns(m.opts.NetnsPrefix)
	if err != nil {
		return nil, err
	}
	out := []string{}
	for _, n := range names {
		out = append(out, strings.TrimPrefix(n, m.opts.NetnsPrefix))
	}
	sort.Strings(out)
	return out, nil
}

// NetnsPath is the named netns of a sandbox under this Manager's prefix.
func (m *Manager) NetnsPath(id string) string { return netnsDir + "/" + m.opts.NetnsPrefix + id }

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return err != nil && errors.As(err, &nf)
}
