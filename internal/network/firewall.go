package network

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

const (
	inetTable   = "atelier"
	bridgeTable = "atelier_bridge"
	guestsSet   = "guests"
	// Sets of the inet table: destinations guests may not reach through the
	// egress, the operator's exceptions, and the DNS servers (port 53 only).
	blockedSet = "egress_blocked"
	allowSet   = "egress_allowed"
	dnsSet     = "dns_servers"
)

// blockedEgress are the IPv4 destinations a guest may not reach: whatever is
// not the public internet. Through the egress they are the operator's
// networks (RFC 1918, CGNAT, which some clouds use for their own services)
// and the cloud metadata service (link-local); the rest (loopback,
// multicast, "this network", reserved, limited broadcast) has no business
// leaving a guest. The host's own addresses are covered separately: traffic
// to any of them is input, not forward, and guest_to_host drops it.
var blockedEgress = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),      // "this network"
	netip.MustParsePrefix("10.0.0.0/8"),     // RFC 1918
	netip.MustParsePrefix("100.64.0.0/10"),  // shared address space (CGNAT)
	netip.MustParsePrefix("127.0.0.0/8"),    // loopback
	netip.MustParsePrefix("169.254.0.0/16"), // link-local, cloud metadata 169.254.169.254
	netip.MustParsePrefix("172.16.0.0/12"),  // RFC 1918
	netip.MustParsePrefix("192.0.0.0/24"),   // IETF protocol assignments
	netip.MustParsePrefix("192.168.0.0/16"), // RFC 1918
	netip.MustParsePrefix("198.18.0.0/15"),  // benchmarking
	netip.MustParsePrefix("224.0.0.0/4"),    // multicast
	netip.MustParsePrefix("240.0.0.0/4"),    // reserved, limited broadcast
}

// BlockedEgress returns the IPv4 prefixes a guest may not reach (a copy):
// the kubernetes runtime's NetworkPolicies except the same ones.
func BlockedEgress() []netip.Prefix { return append([]netip.Prefix(nil), blockedEgress...) }

// Rule comments name the drop counters that Status reports.
const (
	cmtSpoof     = "atelier:spoofed-drop"
	cmtBridged   = "atelier:guest-to-guest-bridged-drop"
	cmtRouted    = "atelier:guest-to-guest-routed-drop"
	cmtHost      = "atelier:guest-to-host-drop"
	cmtFwdOut    = "atelier:forward-from-bridge-drop"
	cmtFwdIn     = "atelier:forward-to-bridge-drop"
	cmtBridgedIn = "atelier:bridged-to-guest-drop"
	cmtPrivate   = "atelier:guest-to-private-drop"
	cmtGuard     = "atelier:routed-from-egress-drop"
)

// ipsDstNAT is IPS_DST_NAT of the conntrack status: the connection was
// destination-NATed on the way in (a port published by Docker, say).
const ipsDstNAT uint32 = 1 << 5

var (
	errNoFirewall = errors.New("firewall tables missing: run network setup first")
	errLeaseInUse = errors.New("lease already attached")
)

// guestsKeyType keys the anti-spoofing set: port name . MAC . IPv4.
var guestsKeyType = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr, nftables.TypeIPAddr)

// nft registers: the concatenated key sits in NFT_REG_1 (16 bytes, the port
// name) followed by NFT_REG32_04 (MAC, padded to 8) and NFT_REG32_06 (IPv4).
const (
	regName = 1
	regMAC  = unix.NFT_REG32_04
	regIP   = unix.NFT_REG32_06
)

// portEntry is one anti-spoofing element.
type portEntry struct {
	name string
	mac  net.HardwareAddr
	ip   netip.Addr
}

func (e portEntry) key() []byte {
	k := make([]byte, 28)
	copy(k[:16], e.name)
	copy(k[16:22], e.mac)
	ip := e.ip.As4()
	copy(k[24:28], ip[:])
	return k
}

func portOfKey(k []byte) string {
	if len(k) < 16 {
		return ""
	}
	return strings.TrimRight(string(k[:16]), "\x00")
}

func ourTables() (inet, br *nftables.Table) {
	return &nftables.Table{Name: inetTable, Family: nftables.TableFamilyINet},
		&nftables.Table{Name: bridgeTable, Family: nftables.TableFamilyBridge}
}

func (m *Manager) nft() (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(m.hostNS)))
	if err != nil {
		return nil, fmt.Errorf("open nftables: %w", err)
	}
	return c, nil
}

// buildFirewall replaces both tables in one netlink batch (add, delete,
// recreate: the kernel applies it atomically, so there is no moment without
// rules) and fills the anti-spoofing set with ports. It returns the number
// of rules.
func (m *Manager) buildFirewall(egress string, guard bool, ports []portEntry) (int, error) {
	c, err := m.nft()
	if err != nil {
		return 0, err
	}
	inet, br := ourTables()
	for _, t := range []*nftables.Table{inet, br} {
		c.AddTable(t)
		c.DelTable(t)
		c.AddTable(t)
	}
	n, err := m.inetRules(c, inet, egress, guard)
	if err != nil {
		return 0, err
	}
	nb, err := m.bridgeRules(c, br, ports)
	if err != nil {
		return 0, err
	}
	if err := c.Flush(); err != nil {
		return 0, fmt.Errorf("install firewall: %w", err)
	}
	return n + nb, nil
}

func (m *Manager) deleteFirewall() error {
	c, err := m.nft()
	if err != nil {
		return err
	}
	inet, br := ourTables()
	for _, t := range []*nftables.Table{inet, br} {
		c.AddTable(t) // so that the delete cannot fail on an absent table
		c.DelTable(t)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete firewall: %w", err)
	}
	return nil
}

// inetRules fills the inet table. With guard, forwarding on the egress
// interface is on only for the guests' sake (the host-wide switch is off), and
// anything arriving there to be routed elsewhere than the bridge is dropped,
// except replies and destination-NATed connections, so that software that
// turns forwarding on later (Docker's published ports) keeps working.
func (m *Manager) inetRules(c *nftables.Conn, t *nftables.Table, egress string, guard bool) (int, error) {
	blocked := &nftables.Set{Table: t, Name: blockedSet, KeyType: nftables.TypeIPAddr, Interval: true}
	if err := c.AddSet(blocked, intervalElements(blockedEgress)); err != nil {
		return 0, fmt.Errorf("build blocked destinations set: %w", err)
	}
	allowed := &nftables.Set{Table: t, Name: allowSet, KeyType: nftables.TypeIPAddr, Interval: true}
	if err := c.AddSet(allowed, intervalElements(m.opts.EgressAllow)); err != nil {
		return 0, fmt.Errorf("build allowed destinations set: %w", err)
	}
	dns := &nftables.Set{Table: t, Name: dnsSet, KeyType: nftables.TypeIPAddr}
	if err := c.AddSet(dns, addrElements(m.opts.DNSServers)); err != nil {
		return 0, fmt.Errorf("build DNS servers set: %w", err)
	}

	accept := nftables.ChainPolicyAccept
	input := c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	toHost := c.AddChain(&nftables.Chain{Name: "guest_to_host", Table: t})
	forward := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})

	n := 0
	add := func(ch *nftables.Chain, comment string, exprs ...[]expr.Any) {
		r := &nftables.Rule{Table: t, Chain: ch, Exprs: slices.Concat(exprs...)}
		if comment != "" {
			r.UserData = userdata.AppendString(nil, userdata.TypeComment, comment)
		}
		c.AddRule(r)
		n++
	}
	br, gw := m.opts.Bridge, m.opts.BridgeIP.Addr().AsSlice()
	toGateway := slices.Concat(isIPv4(), payloadEq(expr.PayloadBaseNetworkHeader, 16, gw))
	dstIn := func(s *nftables.Set) []expr.Any {
		return slices.Concat(isIPv4(), []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
		})
	}
	dport := func(proto byte, port uint16) []expr.Any {
		return slices.Concat(metaEq(expr.MetaKeyL4PROTO, []byte{proto}),
			payloadEq(expr.PayloadBaseTransportHeader, 2, binaryutil.BigEndian.PutUint16(port)))
	}
	fromBridgeOut := slices.Concat(metaEq(expr.MetaKeyIIFNAME, ifname(br)), metaEq(expr.MetaKeyOIFNAME, ifname(egress)))

	add(input, "", metaEq(expr.MetaKeyIIFNAME, ifname(br)), jump(toHost.Name))

	// Every address of the host, on any interface, is input: only these pass.
	add(toHost, "", ctEstablished(), verdict(expr.VerdictAccept))
	add(toHost, "", toGateway, metaEq(expr.MetaKeyL4PROTO, []byte{unix.IPPROTO_ICMP}),
		payloadEq(expr.PayloadBaseTransportHeader, 0, []byte{8}), verdict(expr.VerdictAccept))
	for _, p := range m.hostTCPPorts() {
		add(toHost, "", toGateway, dport(unix.IPPROTO_TCP, uint16(p)), verdict(expr.VerdictAccept))
	}
	// DNS on a host address (the bridge's, typically) that is a configured server.
	for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
		add(toHost, "", dstIn(dns), dport(proto, 53), verdict(expr.VerdictAccept))
	}
	add(toHost, cmtHost, counterDrop())

	add(forward, cmtRouted, metaEq(expr.MetaKeyIIFNAME, ifname(br)), metaEq(expr.MetaKeyOIFNAME, ifname(br)), counterDrop())
	for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
		add(forward, "", fromBridgeOut, dstIn(dns), dport(proto, 53), verdict(expr.VerdictAccept))
	}
	add(forward, "", fromBridgeOut, dstIn(allowed), verdict(expr.VerdictAccept))
	add(forward, cmtPrivate, fromBridgeOut, dstIn(blocked), counterDrop())
	add(forward, "", fromBridgeOut, isIPv4(), verdict(expr.VerdictAccept))
	add(forward, "", metaEq(expr.MetaKeyIIFNAME, ifname(egress)), metaEq(expr.MetaKeyOIFNAME, ifname(br)),
		ctEstablished(), verdict(expr.VerdictAccept))
	add(forward, cmtFwdOut, metaEq(expr.MetaKeyIIFNAME, ifname(br)), counterDrop())
	add(forward, cmtFwdIn, metaEq(expr.MetaKeyOIFNAME, ifname(br)), counterDrop())
	if guard {
		add(forward, cmtGuard, metaEq(expr.MetaKeyIIFNAME, ifname(egress)),
			ctMaskZero(expr.CtKeySTATE, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED),
			ctMaskZero(expr.CtKeySTATUS, ipsDstNAT), counterDrop())
	}

	subnet := m.opts.BridgeIP.Masked()
	add(post, "", isIPv4(), metaEq(expr.MetaKeyOIFNAME, ifname(egress)),
		[]expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: net.CIDRMask(subnet.Bits(), 32), Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: subnet.Addr().AsSlice()},
			&expr.Masq{},
		})
	return n, nil
}

// intervalElements are the elements of an IPv4 interval set holding the
// prefixes: ranges sorted and merged where they overlap or touch (the
// kernel refuses overlapping intervals), each a start key and an end key one
// past its last address; a range that reaches 255.255.255.255 has no end.
func intervalElements(ps []netip.Prefix) []nftables.SetElement {
	type span struct{ lo, hi uint64 } // inclusive
	var spans []span
	for _, p := range ps {
		if !p.Addr().Is4() {
			continue
		}
		p = p.Masked()
		lo := uint64(u32(p.Addr()))
		spans = append(spans, span{lo, lo + (uint64(1) << (32 - p.Bits())) - 1})
	}
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.lo, b.lo) })
	var merged []span
	for _, s := range spans {
		if k := len(merged) - 1; k >= 0 && s.lo <= merged[k].hi+1 {
			merged[k].hi = max(merged[k].hi, s.hi)
			continue
		}
		merged = append(merged, s)
	}
	var out []nftables.SetElement
	for _, s := range merged {
		out = append(out, nftables.SetElement{Key: binaryutil.BigEndian.PutUint32(uint32(s.lo))})
		if s.hi < 1<<32-1 {
			out = append(out, nftables.SetElement{Key: binaryutil.BigEndian.PutUint32(uint32(s.hi + 1)), IntervalEnd: true})
		}
	}
	return out
}

// addrElements are the distinct IPv4 addresses among as; guests have no
// IPv6, so an IPv6 DNS server is of no use to them.
func addrElements(as []netip.Addr) []nftables.SetElement {
	var out []nftables.SetElement
	seen := map[netip.Addr]bool{}
	for _, a := range as {
		if a.Is4() && !seen[a] {
			seen[a] = true
			out = append(out, nftables.SetElement{Key: a.AsSlice()})
		}
	}
	return out
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

// hostTCPPorts are the registry port and the allowed ports, deduplicated.
func (m *Manager) hostTCPPorts() []int {
	var out []int
	if m.opts.RegistryPort > 0 {
		out = append(out, m.opts.RegistryPort)
	}
	for _, p := range m.opts.AllowedHostPorts {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

func (m *Manager) bridgeRules(c *nftables.Conn, t *nftables.Table, ports []portEntry) (int, error) {
	accept := nftables.ChainPolicyAccept
	prio := nftables.ChainPriority(-200) // NF_BR_PRI_FILTER_BRIDGED
	set := &nftables.Set{Table: t, Name: guestsSet, KeyType: guestsKeyType, Concatenation: true}
	elems := make([]nftables.SetElement, 0, len(ports))
	for _, p := range ports {
		elems = append(elems, nftables.SetElement{Key: p.key()})
	}
	if err := c.AddSet(set, elems); err != nil {
		return 0, fmt.Errorf("build anti-spoofing set: %w", err)
	}
	pre := c.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: &prio, Policy: &accept})
	in := c.AddChain(&nftables.Chain{Name: "sandbox_in", Table: t})
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: &prio, Policy: &accept})

	n := 0
	add := func(ch *nftables.Chain, comment string, exprs ...[]expr.Any) {
		r := &nftables.Rule{Table: t, Chain: ch, Exprs: slices.Concat(exprs...)}
		if comment != "" {
			r.UserData = userdata.AppendString(nil, userdata.TypeComment, comment)
		}
		c.AddRule(r)
		n++
	}
	group := binaryutil.NativeEndian.PutUint32(PortGroup)
	etherIP := binaryutil.BigEndian.PutUint16(unix.ETH_P_IP)
	etherARP := binaryutil.BigEndian.PutUint16(unix.ETH_P_ARP)
	lookup := func(mac, ip *expr.Payload) []expr.Any {
		mac.DestRegister, ip.DestRegister = regMAC, regIP
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: regName},
			mac, ip,
			&expr.Lookup{SourceRegister: regName, SetName: set.Name, SetID: set.ID},
		}
	}
	ethSrc := func() *expr.Payload {
		return &expr.Payload{Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6}
	}
	nh := func(off, l uint32) *expr.Payload {
		return &expr.Payload{Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: l}
	}

	add(pre, "", metaEq(expr.MetaKeyIIFGROUP, group), jump(in.Name))

	// IPv4: Ethernet source and IPv4 source are the port's lease.
	add(in, "", payloadEq(expr.PayloadBaseLLHeader, 12, etherIP), lookup(ethSrc(), nh(12, 4)), verdict(expr.VerdictAccept))
	// ARP over Ethernet/IPv4 only; Ethernet source, sender MAC and sender IP are the lease.
	add(in, "", payloadEq(expr.PayloadBaseLLHeader, 12, etherARP),
		payloadEq(expr.PayloadBaseNetworkHeader, 0, []byte{0, 1, 8, 0, 6, 4}),
		lookup(ethSrc(), nh(14, 4)), lookup(nh(8, 6), nh(14, 4)), verdict(expr.VerdictAccept))
	// Everything but IPv4 and ARP (IPv6 router solicitations, VLAN tags, ...)
	// is dropped without counting it as spoofing.
	add(in, "", payloadNeq(expr.PayloadBaseLLHeader, 12, etherIP), payloadNeq(expr.PayloadBaseLLHeader, 12, etherARP),
		verdict(expr.VerdictDrop))
	add(in, cmtSpoof, counterDrop())

	add(fwd, cmtBridged, metaEq(expr.MetaKeyIIFGROUP, group), counterDrop())
	add(fwd, cmtBridgedIn, metaEq(expr.MetaKeyOIFGROUP, group), counterDrop())
	return n, nil
}

// setPortEntries removes every anti-spoofing element of the named ports and,
// when e is set, adds it, in one batch: a port never holds a stale lease.
func (m *Manager) setPortEntries(names []string, e *portEntry) error {
	c, err := m.nft()
	if err != nil {
		return err
	}
	_, br := ourTables()
	if _, err := c.GetSetByName(br, guestsSet); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return errNoFirewall
		}
		return fmt.Errorf("find anti-spoofing set: %w", err)
	}
	set := &nftables.Set{Table: br, Name: guestsSet, KeyType: guestsKeyType, Concatenation: true}
	elems, err := c.GetSetElements(set)
	if err != nil {
		return fmt.Errorf("list anti-spoofing entries: %w", err)
	}
	var stale []nftables.SetElement
	for _, el := range elems {
		if slices.Contains(names, portOfKey(el.Key)) {
			stale = append(stale, nftables.SetElement{Key: el.Key})
			continue
		}
		// Two ports with one address or MAC would let either guest pose
		// as the other: refuse a lease that is already on the bridge.
		if e != nil && len(el.Key) == 28 {
			if string(el.Key[16:22]) == string(e.mac) || string(el.Key[24:28]) == string(e.ip.AsSlice()) {
				return fmt.Errorf("%w: %s or %s is already used by link %s", errLeaseInUse, e.ip, e.mac, portOfKey(el.Key))
			}
		}
	}
	if len(stale) > 0 {
		if err := c.SetDeleteElements(set, stale); err != nil {
			return fmt.Errorf("remove anti-spoofing entries: %w", err)
		}
	}
	if e != nil {
		if err := c.SetAddElements(set, []nftables.SetElement{{Key: e.key()}}); err != nil {
			return fmt.Errorf("add anti-spoofing entry: %w", err)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("update anti-spoofing entries of %s: %w", strings.Join(names, ","), err)
	}
	return nil
}

type firewallState struct {
	tables []string
	rules  int
	drops  Drops
	// guard: the forward chain drops routing from the egress (see inetRules).
	guard bool
	// missing are the expectedDrops whose rule is not in the tables.
	missing []string
}

// expectedDrops are the commented drop rules every firewall Setup builds has
// (the routing guard depends on ip_forward, so it is not among them): one
// missing means the isolation it stands for is gone, whatever else is there.
var expectedDrops = []string{cmtSpoof, cmtBridged, cmtBridgedIn, cmtRouted, cmtHost, cmtPrivate, cmtFwdOut, cmtFwdIn}

func (m *Manager) firewallStatus() (firewallState, error) {
	st := firewallState{tables: []string{}, missing: []string{}}
	c, err := m.nft()
	if err != nil {
		return st, err
	}
	seen := map[string]bool{}
	inet, br := ourTables()
	for _, t := range []*nftables.Table{inet, br} {
		tabs, err := c.ListTablesOfFamily(t.Family)
		if err != nil {
			return st, fmt.Errorf("list nftables tables: %w", err)
		}
		if !slices.ContainsFunc(tabs, func(x *nftables.Table) bool { return x.Name == t.Name }) {
			continue
		}
		st.tables = append(st.tables, familyName(t.Family)+" "+t.Name)
		chains, err := c.ListChainsOfTableFamily(t.Family)
		if err != nil {
			return st, fmt.Errorf("list chains of %s: %w", t.Name, err)
		}
		for _, ch := range chains {
			if ch.Table == nil || ch.Table.Name != t.Name {
				continue
			}
			rules, err := c.GetRules(t, ch)
			if err != nil {
				return st, fmt.Errorf("list rules of %s %s: %w", t.Name, ch.Name, err)
			}
			st.rules += len(rules)
			for _, r := range rules {
				cmt, _ := userdata.GetString(r.UserData, userdata.TypeComment)
				seen[cmt] = true
				if cmt == cmtGuard {
					st.guard = true
				}
				for _, e := range r.Exprs {
					ctr, ok := e.(*expr.Counter)
					if !ok {
						continue
					}
					switch cmt {
					case cmtSpoof:
						st.drops.Spoofed += ctr.Packets
					case cmtBridged, cmtRouted:
						st.drops.GuestToGuest += ctr.Packets
					case cmtHost:
						st.drops.GuestToHost += ctr.Packets
					case cmtFwdOut, cmtFwdIn, cmtBridgedIn:
						st.drops.Forward += ctr.Packets
					case cmtPrivate:
						st.drops.Private += ctr.Packets
					case cmtGuard:
						st.drops.Routed += ctr.Packets
					}
				}
			}
		}
	}
	for _, cmt := range expectedDrops {
		if !seen[cmt] {
			st.missing = append(st.missing, cmt)
		}
	}
	return st, nil
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyBridge:
		return "bridge"
	}
	return fmt.Sprint(f)
}

func ifname(s string) []byte {
	b := make([]byte, 16)
	copy(b, s)
	return b
}

func metaEq(key expr.MetaKey, data []byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data},
	}
}

func payloadEq(base expr.PayloadBase, off uint32, data []byte) []expr.Any {
	return payloadCmp(expr.CmpOpEq, base, off, data)
}

func payloadNeq(base expr.PayloadBase, off uint32, data []byte) []expr.Any {
	return payloadCmp(expr.CmpOpNeq, base, off, data)
}

func payloadCmp(op expr.CmpOp, base expr.PayloadBase, off uint32, data []byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: base, Offset: off, Len: uint32(len(data))},
		&expr.Cmp{Op: op, Register: 1, Data: data},
	}
}

// isIPv4 guards IPv4 header loads in the inet family.
func isIPv4() []expr.Any { return metaEq(expr.MetaKeyNFPROTO, []byte{unix.NFPROTO_IPV4}) }

func ctEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}

// ctMaskZero matches a conntrack state or status with none of the mask's bits.
func ctMaskZero(key expr.CtKey, mask uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: key},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(mask), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

func jump(chain string) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
}

func counterDrop() []expr.Any {
	return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}
}

// guardedEgress is the interface the forward chain's routing guard names, ""
// when the table or the guard is absent: the egress whose forwarding Atelier
// turned on while the host-wide switch was off.
func (m *Manager) guardedEgress() (string, error) {
	c, err := m.nft()
	if err != nil {
		return "", err
	}
	inet, _ := ourTables()
	rules, err := c.GetRules(inet, &nftables.Chain{Name: "forward", Table: inet})
	if errors.Is(err, unix.ENOENT) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("list forward rules: %w", err)
	}
	for _, r := range rules {
		if cmt, _ := userdata.GetString(r.UserData, userdata.TypeComment); cmt != cmtGuard {
			continue
		}
		for i, e := range r.Exprs {
			if meta, ok := e.(*expr.Meta); ok && meta.Key == expr.MetaKeyIIFNAME && i+1 < len(r.Exprs) {
				if cmp, ok := r.Exprs[i+1].(*expr.Cmp); ok {
					return strings.TrimRight(string(cmp.Data), "\x00"), nil
				}
			}
		}
	}
	return "", nil
}
