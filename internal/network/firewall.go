package network

import (
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
)

// Rule comments name the drop counters that Status reports.
const (
	cmtSpoof     = "atelier:spoofed-drop"
	cmtBridged   = "atelier:guest-to-guest-bridged-drop"
	cmtRouted    = "atelier:guest-to-guest-routed-drop"
	cmtHost      = "atelier:guest-to-host-drop"
	cmtFwdOut    = "atelier:forward-from-bridge-drop"
	cmtFwdIn     = "atelier:forward-to-bridge-drop"
	cmtBridgedIn = "atelier:bridged-to-guest-drop"
)

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
func (m *Manager) buildFirewall(egress string, ports []portEntry) (int, error) {
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
	n := m.inetRules(c, inet, egress)
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

func (m *Manager) inetRules(c *nftables.Conn, t *nftables.Table, egress string) int {
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

	add(input, "", metaEq(expr.MetaKeyIIFNAME, ifname(br)), jump(toHost.Name))

	add(toHost, "", ctEstablished(), verdict(expr.VerdictAccept))
	add(toHost, "", toGateway, metaEq(expr.MetaKeyL4PROTO, []byte{unix.IPPROTO_ICMP}),
		payloadEq(expr.PayloadBaseTransportHeader, 0, []byte{8}), verdict(expr.VerdictAccept))
	for _, p := range m.hostTCPPorts() {
		add(toHost, "", toGateway, metaEq(expr.MetaKeyL4PROTO, []byte{unix.IPPROTO_TCP}),
			payloadEq(expr.PayloadBaseTransportHeader, 2, binaryutil.BigEndian.PutUint16(uint16(p))), verdict(expr.VerdictAccept))
	}
	if slices.Contains(m.opts.DNSServers, m.opts.BridgeIP.Addr()) {
		for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			add(toHost, "", toGateway, metaEq(expr.MetaKeyL4PROTO, []byte{proto}),
				payloadEq(expr.PayloadBaseTransportHeader, 2, binaryutil.BigEndian.PutUint16(53)), verdict(expr.VerdictAccept))
		}
	}
	add(toHost, cmtHost, counterDrop())

	add(forward, cmtRouted, metaEq(expr.MetaKeyIIFNAME, ifname(br)), metaEq(expr.MetaKeyOIFNAME, ifname(br)), counterDrop())
	add(forward, "", metaEq(expr.MetaKeyIIFNAME, ifname(br)), metaEq(expr.MetaKeyOIFNAME, ifname(egress)), verdict(expr.VerdictAccept))
	add(forward, "", metaEq(expr.MetaKeyIIFNAME, ifname(egress)), metaEq(expr.MetaKeyOIFNAME, ifname(br)),
		ctEstablished(), verdict(expr.VerdictAccept))
	add(forward, cmtFwdOut, metaEq(expr.MetaKeyIIFNAME, ifname(br)), counterDrop())
	add(forward, cmtFwdIn, metaEq(expr.MetaKeyOIFNAME, ifname(br)), counterDrop())

	subnet := m.opts.BridgeIP.Masked()
	add(post, "", isIPv4(), metaEq(expr.MetaKeyOIFNAME, ifname(egress)),
		[]expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: net.CIDRMask(subnet.Bits(), 32), Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: subnet.Addr().AsSlice()},
			&expr.Masq{},
		})
	return n
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
}

func (m *Manager) firewallStatus() (firewallState, error) {
	st := firewallState{tables: []string{}}
	c, err := m.nft()
	if err != nil {
		return st, err
	}
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
					}
				}
			}
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

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

func jump(chain string) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
}

func counterDrop() []expr.Any {
	return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}
}
