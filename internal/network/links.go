package network

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"atelier/internal/ids"
	"atelier/internal/store"
)

// guestIf is the interface name of a veth guest inside its netns.
const guestIf = "eth0"

// LinkInfo is one Atelier link in the host namespace.
type LinkInfo struct {
	Name      string   `json:"name"`
	SandboxID string   `json:"sandboxId"`
	Kind      LinkKind `json:"kind"`
	IP        string   `json:"ip"`
	MAC       string   `json:"mac"`
	Up        bool     `json:"up"`
	// Master is the bridge the link is a port of ("" when none).
	Master   string `json:"master"`
	Isolated bool   `json:"isolated"`
	// Netns is the sandbox's named netns (veth only).
	Netns string `json:"netns,omitempty"`
}

// linkAlias records the owner and lease in the link itself:
// "atelier:<id> <ip> <mac>".
type linkAlias struct {
	id  string
	ip  netip.Addr
	mac net.HardwareAddr
}

func (a linkAlias) String() string {
	return aliasPrefix + a.id + " " + a.ip.String() + " " + a.mac.String()
}

// parseAlias accepts "atelier:<id>" with an optional lease; ok is false for
// any other alias, the bridge's included.
func parseAlias(s string) (linkAlias, bool) {
	if !strings.HasPrefix(s, aliasPrefix) {
		return linkAlias{}, false
	}
	f := strings.Fields(strings.TrimPrefix(s, aliasPrefix))
	if len(f) == 0 || !ids.ValidSandboxID(f[0]) {
		return linkAlias{}, false
	}
	a := linkAlias{id: f[0]}
	if len(f) == 3 {
		ip, err1 := netip.ParseAddr(f[1])
		mac, err2 := net.ParseMAC(f[2])
		if err1 == nil && err2 == nil && ip.Is4() && len(mac) == 6 {
			a.ip, a.mac = ip, mac
		}
	}
	return a, true
}

// linkNames lists the names a sandbox's link may take, in order. The first
// is the seed's tap-{first8} (veth{first8} for veth); ids are random, but two
// may share their first 8 characters, so when a name is held by another
// sandbox's link Attach falls back to the prefix and 8 hex digits of
// SHA-256(id), then to the next 8, and so on. The result is deterministic per
// id, and nothing relies on it but Attach's return value: Detach and Links
// find links by alias.
func linkNames(kind LinkKind, id string) []string {
	prefix := "tap-"
	if kind == LinkVeth {
		prefix = "veth"
	}
	sum := sha256.Sum256([]byte(id))
	h := hex.EncodeToString(sum[:])
	out := []string{prefix + id[:8]}
	for i := 0; i+8 <= 32; i += 8 {
		out = append(out, prefix+h[i:i+8])
	}
	return out
}

// crashOrphan reports a link of the Manager's kind without an owner, left
// by a crash between its creation and LinkSetAlias (the kernel ignores an
// alias given at creation). A veth carries PortGroup from its creation on; a
// TAP cannot, so a TAP with one of our names and no alias counts as ours.
func (m *Manager) crashOrphan(l netlink.Link) bool {
	if _, ok := parseAlias(l.Attrs().Alias); ok || kindOf(l) != m.opts.Kind {
		return false
	}
	if m.opts.Kind == LinkVeth {
		return l.Attrs().Group == PortGroup
	}
	return l.Attrs().Alias == ""
}

func kindOf(l netlink.Link) LinkKind {
	switch l.Type() {
	case "tuntap":
		return LinkTAP
	case "veth":
		return LinkVeth
	}
	return ""
}

// listLinks lists the host namespace's links, retrying a dump that a
// concurrent change interrupted.
func (m *Manager) listLinks() ([]netlink.Link, error) {
	var err error
	for range 5 {
		var links []netlink.Link
		links, err = m.h.LinkList()
		if err == nil {
			return links, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("list links: %w", err)
}

func (m *Manager) bridgeLink() (netlink.Link, error) {
	br, err := m.h.LinkByName(m.opts.Bridge)
	if isLinkNotFound(err) {
		return nil, fmt.Errorf("bridge %s is missing: run network setup first", m.opts.Bridge)
	}
	if err != nil {
		return nil, fmt.Errorf("find bridge %s: %w", m.opts.Bridge, err)
	}
	return br, nil
}

// enslave makes l an isolated sandbox port of br. The group comes first: it
// is what makes the bridge firewall check the port's traffic.
func (m *Manager) enslave(l netlink.Link, br netlink.Link) error {
	if l.Attrs().Group != PortGroup {
		if err := m.h.LinkSetGroup(l, int(PortGroup)); err != nil {
			return fmt.Errorf("set group of %s: %w", l.Attrs().Name, err)
		}
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		if err := m.h.LinkSetMasterByIndex(l, br.Attrs().Index); err != nil {
			return fmt.Errorf("add %s to %s: %w", l.Attrs().Name, m.opts.Bridge, err)
		}
	}
	if err := m.h.LinkSetIsolated(l, true); err != nil {
		return fmt.Errorf("isolate %s: %w", l.Attrs().Name, err)
	}
	return nil
}

type lease struct {
	ip  netip.Addr
	mac net.HardwareAddr
}

func (m *Manager) checkLease(id string, l store.Lease) (lease, error) {
	if l.SandboxID != "" && l.SandboxID != id {
		return lease{}, fmt.Errorf("lease belongs to sandbox %q", l.SandboxID)
	}
	ip, err := netip.ParseAddr(l.IP)
	if err != nil || !ip.Is4() {
		return lease{}, fmt.Errorf("lease address %q is not IPv4", l.IP)
	}
	p := m.opts.BridgeIP
	if !p.Contains(ip) || ip == p.Addr() || ip == p.Masked().Addr() || ip == broadcast(p) {
		return lease{}, fmt.Errorf("lease address %s is not a guest address of %s", ip, p.Masked())
	}
	mac, err := net.ParseMAC(l.MAC)
	if err != nil || len(mac) != 6 {
		return lease{}, fmt.Errorf("lease MAC %q is not an Ethernet address", l.MAC)
	}
	if mac[0]&1 != 0 || string(mac) == string(make([]byte, 6)) {
		return lease{}, fmt.Errorf("lease MAC %s is not a unicast address", mac)
	}
	return lease{ip: ip, mac: mac}, nil
}

// Attach gives the sandbox its link on the bridge for the leased address and
// returns the link's name. It is idempotent: a link that already carries the
// sandbox's alias and lease is re-checked and reused; one with another lease
// or kind is replaced. For LinkVeth it also creates the sandbox's named
// netns (NetnsPath) with eth0 configured. The port is in PortGroup, isolated
// and has its anti-spoofing entry before it comes up. A lease whose address
// or MAC is already on another port is refused. On failure nothing of the
// sandbox's network is left.
func (m *Manager) Attach(ctx context.Context, id string, l store.Lease) (string, error) {
	if !ids.ValidSandboxID(id) {
		return "", fmt.Errorf("attach network: invalid sandbox id %q", id)
	}
	ls, err := m.checkLease(id, l)
	if err != nil {
		return "", fmt.Errorf("attach network %s: %w", id, err)
	}
	if err := m.lock(ctx); err != nil {
		return "", fmt.Errorf("attach network %s: %w", id, err)
	}
	defer m.mu.Unlock()
	name, err := m.attach(id, ls)
	if err != nil {
		if derr := m.detach(id); derr != nil {
			m.log.Warn("undo failed attach", "sandbox_id", id, "err", derr)
		}
		return "", fmt.Errorf("attach network %s: %w", id, err)
	}
	m.log.Info("sandbox network attached", "sandbox_id", id, "link", name, "ip", ls.ip.String(), "kind", string(m.opts.Kind))
	return name, nil
}

func (m *Manager) attach(id string, ls lease) (string, error) {
	br, err := m.bridgeLink()
	if err != nil {
		return "", err
	}
	links, err := m.listLinks()
	if err != nil {
		return "", err
	}
	taken := map[string]netlink.Link{}
	for _, l := range links {
		taken[l.Attrs().Name] = l
		a, ok := parseAlias(l.Attrs().Alias)
		if !ok || a.id != id {
			continue
		}
		if kindOf(l) == m.opts.Kind && a.ip == ls.ip && string(a.mac) == string(ls.mac) {
			err := m.configure(l, br, id, ls, false)
			if err == nil {
				return l.Attrs().Name, nil
			}
			// E.g. a veth whose netns was unpinned: start over with a new link.
			m.log.Warn("existing sandbox link unusable; recreating it", "sandbox_id", id, "link", l.Attrs().Name, "err", err)
		}
		// Another lease or kind: the old link must not keep the old entry.
		if err := m.removeLink(l); err != nil {
			return "", err
		}
		delete(taken, l.Attrs().Name)
	}
	name, adopt := "", false
	for _, cand := range linkNames(m.opts.Kind, id) {
		l, ok := taken[cand]
		if !ok {
			name = cand
			break
		}
		if !m.crashOrphan(l) {
			continue // another sandbox's link, or not ours at all
		}
		if m.opts.Kind == LinkTAP {
			name, adopt = cand, true
			break
		}
		if err := m.removeLink(l); err != nil {
			return "", err
		}
		name = cand
		break
	}
	if name == "" {
		return "", fmt.Errorf("no free link name for sandbox %s", id)
	}
	if m.opts.Kind == LinkTAP {
		if !adopt {
			if err := m.createTAP(name); err != nil {
				return "", err
			}
		}
		l, err := m.h.LinkByName(name)
		if err != nil {
			return "", fmt.Errorf("find %s: %w", name, err)
		}
		return name, m.configure(l, br, id, ls, true)
	}
	return name, m.createVeth(name, br, id, ls)
}

// createTAP makes a persistent single-queue TAP owned by root. The TUN
// device is created in the namespace of the thread that opens /dev/net/tun,
// hence the locked thread in the host namespace. IFF_TUN_EXCL makes a
// concurrent creator fail instead of sharing the device.
func (m *Manager) createTAP(name string) error {
	la := netlink.NewLinkAttrs()
	la.Name = name
	tap := &netlink.Tuntap{
		LinkAttrs: la,
		Mode:      netlink.TUNTAP_MODE_TAP,
		Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_TUN_EXCL,
		Owner:     0,
		Group:     0,
	}
	err := Do(m.hostNS, func() error { return m.h.LinkAdd(tap) })
	if err != nil {
		return fmt.Errorf("create TAP %s: %w", name, err)
	}
	return nil
}

func (m *Manager) createVeth(name string, br netlink.Link, id string, ls lease) error {
	path := m.NetnsPath(id)
	gns, _, err := ensureNamedNetns(path)
	if err != nil {
		return err
	}
	defer gns.Close()
	la := netlink.NewLinkAttrs()
	la.Name = name
	// The group marks the link as Atelier's from its creation on; configure
	// sets the alias, which the kernel ignores at creation.
	la.Group = PortGroup
	la.MasterIndex = br.Attrs().Index
	veth := &netlink.Veth{
		LinkAttrs:        la,
		PeerName:         guestIf,
		PeerHardwareAddr: ls.mac,
		PeerNamespace:    netlink.NsFd(int(gns)),
	}
	if err := m.h.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", name, err)
	}
	l, err := m.h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	return m.configure(l, br, id, ls, false)
}

// configure brings a sandbox link to its wanted state, whatever part of it
// already holds: alias, group, port of the bridge, isolated, anti-spoofing
// entry, guest side (veth), and only then up.
func (m *Manager) configure(l netlink.Link, br netlink.Link, id string, ls lease, setAlias bool) error {
	name := l.Attrs().Name
	alias := linkAlias{id: id, ip: ls.ip, mac: ls.mac}.String()
	if setAlias || l.Attrs().Alias != alias {
		if err := m.h.LinkSetAlias(l, alias); err != nil {
			return fmt.Errorf("set alias of %s: %w", name, err)
		}
	}
	if err := m.enslave(l, br); err != nil {
		return err
	}
	if err := m.setPortEntries([]string{name}, &portEntry{name: name, mac: ls.mac, ip: ls.ip}); err != nil {
		return err
	}
	if m.opts.Kind == LinkVeth {
		if err := m.configureGuest(id, ls); err != nil {
			return err
		}
	}
	if err := m.h.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	return nil
}

// configureGuest sets eth0 and lo inside the sandbox's netns: the lease's
// address and MAC, up, default route via the bridge.
func (m *Manager) configureGuest(id string, ls lease) error {
	gns, err := openNamedNetns(m.NetnsPath(id))
	if err != nil {
		return err
	}
	defer gns.Close()
	gh, err := netlink.NewHandleAt(gns)
	if err != nil {
		return fmt.Errorf("open netlink in %s: %w", m.NetnsPath(id), err)
	}
	defer gh.Close()
	eth, err := gh.LinkByName(guestIf)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", guestIf, m.NetnsPath(id), err)
	}
	if string(eth.Attrs().HardwareAddr) != string(ls.mac) {
		if err := gh.LinkSetHardwareAddr(eth, ls.mac); err != nil {
			return fmt.Errorf("set guest MAC: %w", err)
		}
	}
	addr := &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(ls.ip, m.opts.BridgeIP.Bits()))}
	if err := gh.AddrReplace(eth, addr); err != nil {
		return fmt.Errorf("set guest address: %w", err)
	}
	if lo, err := gh.LinkByName("lo"); err != nil {
		return fmt.Errorf("find guest lo: %w", err)
	} else if err := gh.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring guest lo up: %w", err)
	}
	if err := gh.LinkSetUp(eth); err != nil {
		return fmt.Errorf("bring guest %s up: %w", guestIf, err)
	}
	gw := net.IP(m.opts.BridgeIP.Addr().AsSlice())
	if err := gh.RouteReplace(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gw}); err != nil {
		return fmt.Errorf("set guest default route: %w", err)
	}
	return nil
}

// Detach removes the sandbox's links (found by alias), their anti-spoofing
// entries and its named netns. Absent pieces are already gone; so is the
// firewall after a Teardown.
func (m *Manager) Detach(ctx context.Context, id string) error {
	if !ids.ValidSandboxID(id) {
		return fmt.Errorf("detach network: invalid sandbox id %q", id)
	}
	if err := m.lock(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("detach network %s: %w", id, err)
	}
	defer m.mu.Unlock()
	if err := m.detach(id); err != nil {
		return fmt.Errorf("detach network %s: %w", id, err)
	}
	m.log.Info("sandbox network detached", "sandbox_id", id)
	return nil
}

func (m *Manager) detach(id string) error {
	links, err := m.listLinks()
	if err != nil {
		return err
	}
	for _, l := range links {
		if a, ok := parseAlias(l.Attrs().Alias); ok && a.id == id {
			if err := m.removeLink(l); err != nil {
				return err
			}
		}
	}
	return deleteNamedNetns(m.NetnsPath(id))
}

// removeLink deletes the link before its entry: while the link exists its
// frames must keep being checked.
func (m *Manager) removeLink(l netlink.Link) error {
	name := l.Attrs().Name
	if err := m.h.LinkDel(l); err != nil && !isLinkNotFound(err) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	if err := m.setPortEntries([]string{name}, nil); err != nil && !errors.Is(err, errNoFirewall) {
		return err
	}
	return nil
}

// Links lists Atelier's links in the host namespace with their sandbox ids,
// sorted by name, so the reconciler can find links no sandbox owns. A link
// in PortGroup without an owner (a crash between creation and alias) is
// listed with an empty SandboxID.
func (m *Manager) Links(ctx context.Context) ([]LinkInfo, error) {
	if err := m.lock(ctx); err != nil {
		return nil, fmt.Errorf("list sandbox links: %w", err)
	}
	defer m.mu.Unlock()
	return m.linkInfos()
}

func (m *Manager) linkInfos() ([]LinkInfo, error) {
	links, err := m.listLinks()
	if err != nil {
		return nil, err
	}
	byIndex := map[int]string{}
	for _, l := range links {
		byIndex[l.Attrs().Index] = l.Attrs().Name
	}
	out := []LinkInfo{}
	for _, l := range links {
		a, ok := parseAlias(l.Attrs().Alias)
		if !ok && l.Attrs().Group != PortGroup {
			continue
		}
		li := LinkInfo{
			Name:      l.Attrs().Name,
			SandboxID: a.id,
			Kind:      kindOf(l),
			Up:        l.Attrs().Flags&net.FlagUp != 0,
			Master:    byIndex[l.Attrs().MasterIndex],
		}
		if a.ip.IsValid() {
			li.IP, li.MAC = a.ip.String(), a.mac.String()
		}
		if li.Kind == LinkVeth && a.id != "" {
			li.Netns = m.NetnsPath(a.id)
		}
		if l.Attrs().MasterIndex != 0 {
			pi, err := m.h.LinkGetProtinfo(l)
			if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
				return nil, fmt.Errorf("bridge port state of %s: %w", li.Name, err)
			}
			li.Isolated = pi.Isolated
		}
		out = append(out, li)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
