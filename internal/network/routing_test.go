package network

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Two more networks on the test host, on interfaces of their own (neither
// the bridge nor the egress): documentation ranges, in namespaces the test
// creates.
var (
	lan1Host = netip.MustParsePrefix("192.0.2.1/24")
	lan1Peer = netip.MustParsePrefix("192.0.2.2/24")
	lan2Host = netip.MustParsePrefix("203.0.113.1/24")
	lan2Peer = netip.MustParsePrefix("203.0.113.2/24")
)

// publishPort adds what Docker does for a published port: a DNAT from the
// egress to a host behind another interface, in a table of its own.
func publishPort(t *testing.T, tp *topo, port uint16, to netip.Addr, toPort uint16) {
	t.Helper()
	c, err := tp.m.nft()
	must(t, err)
	tb := c.AddTable(&nftables.Table{Name: "test_published", Family: nftables.TableFamilyIPv4})
	ch := c.AddChain(&nftables.Chain{Name: "prerouting", Table: tb, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: append(append(append(
		metaEq(expr.MetaKeyIIFNAME, ifname("wan0")),
		metaEq(expr.MetaKeyL4PROTO, []byte{unix.IPPROTO_TCP})...),
		payloadEq(expr.PayloadBaseTransportHeader, 2, binaryutil.BigEndian.PutUint16(port))...),
		&expr.Immediate{Register: 1, Data: to.AsSlice()},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(toPort)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2},
	)})
	must(t, c.Flush())
}

// dropGuard deletes the routing guard rule, as if Atelier had none.
func dropGuard(t *testing.T, tp *topo) {
	t.Helper()
	c, err := tp.m.nft()
	must(t, err)
	inet, _ := ourTables()
	ch := &nftables.Chain{Name: "forward", Table: inet}
	rules, err := c.GetRules(inet, ch)
	must(t, err)
	for _, r := range rules {
		if cmt, _ := userdata.GetString(r.UserData, userdata.TypeComment); cmt == cmtGuard {
			must(t, c.DelRule(&nftables.Rule{Table: inet, Chain: ch, Handle: r.Handle}))
			must(t, c.Flush())
			return
		}
	}
	t.Fatal("no guard rule")
}

// Setup used to turn net.ipv4.ip_forward on, which made the host route
// between all of its interfaces: a LAN behind one interface reached another,
// and a peer on the egress link could route through the host into them.
func TestAtelierDoesNotMakeTheHostARouter(t *testing.T) {
	tp := newTopo(t, LinkVeth)
	ctx := context.Background()
	l1 := newTestNetns(t, tp.prefix+"l1")
	l2 := newTestNetns(t, tp.prefix+"l2")
	linkNS(t, tp.host, "lan1", lan1Host, l1, "eth0", lan1Peer)
	routeVia(t, l1, netip.Prefix{}, lan1Host.Addr())
	linkNS(t, tp.host, "lan2", lan2Host, l2, "eth0", lan2Peer)
	routeVia(t, l2, netip.Prefix{}, lan2Host.Addr())
	// A peer on the egress link that uses the host as its router into lan2.
	routeVia(t, tp.wan, lan2Host.Masked(), hostWanIP)
	serveHTTP(t, l2, lan2Peer.Addr().String()+":80", "lan2")
	serveHTTP(t, tp.wan, wanIP.String()+":80", "wan")
	w2 := watchICMP(t, l2)

	l2URL := fmt.Sprintf("http://%s/", lan2Peer.Addr())
	lanToLan := func(d time.Duration) error { _, err := httpGetIn(l1, l2URL, d); return err }
	wanToLan := func(d time.Duration) error { _, err := httpGetIn(tp.wan, l2URL, d); return err }
	lanToWan := func(d time.Duration) error { _, err := httpGetIn(l2, fmt.Sprintf("http://%s/", wanIP), d); return err }
	published := func(d time.Duration) error {
		_, err := httpGetIn(tp.wan, fmt.Sprintf("http://%s:8080/", hostWanIP), d)
		return err
	}
	// A one-way probe: whether the peer's packets are delivered into lan2
	// at all (without forwarding on lan2, no reply could come back anyway).
	wanPingReaches := func() bool {
		before := w2.requestsFrom(wanIP)
		pingIn(tp.wan, netip.Addr{}, lan2Peer.Addr(), blockedTimeout)
		return w2.requestsFrom(wanIP) > before
	}
	blocked := func(what string, probes map[string]func() error) {
		t.Helper()
		t.Run(what, func(t *testing.T) { expectBlocked(t, probes) })
	}
	ok := func(name string, p func(time.Duration) error) {
		t.Helper()
		if err := p(okTimeout); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	forwarding := func(ifc string) string {
		v, err := readSysctl(tp.host, "net/ipv4/conf/"+ifc+"/forwarding")
		must(t, err)
		return v
	}
	status := func() Status {
		st, err := tp.m.Status(ctx)
		must(t, err)
		return st
	}

	// A host that does not route, as a fresh netns (and a fresh boot) is.
	if v, _ := readSysctl(tp.host, "net/ipv4/ip_forward"); v != "0" {
		t.Fatalf("test host starts with ip_forward %q", v)
	}
	must(t, tp.m.Setup(ctx))
	tp.attach(t, "routerguest1", 10)
	if _, err := httpGetIn(tp.guestNS(t, "routerguest1"), fmt.Sprintf("http://%s/", wanIP), okTimeout); err != nil {
		t.Fatalf("guest to wan: %v", err)
	}
	st := status()
	if st.IPForward || !st.BridgeForwarding || !st.EgressForwarding || !st.RoutingGuard {
		t.Errorf("after setup: host-wide %v, bridge %v, egress %v, guard %v", st.IPForward, st.BridgeForwarding, st.EgressForwarding, st.RoutingGuard)
	}
	for _, ifc := range []string{"lan1", "lan2"} {
		if v := forwarding(ifc); v != "0" {
			t.Errorf("setup turned forwarding on for %s", ifc)
		}
	}

	blocked("after setup the host routes nothing but the guests", map[string]func() error{
		"lan1 to lan2":          func() error { return lanToLan(blockedTimeout) },
		"egress peer into lan2": func() error { return wanToLan(blockedTimeout) },
	})
	before := status().Drops.Routed
	if wanPingReaches() {
		t.Error("an egress peer's ping was routed into lan2")
	}
	if after := status().Drops.Routed; after <= before {
		t.Errorf("routing guard counter did not move: %d -> %d", before, after)
	}

	t.Run("control: without the guard the egress's flag routes the peer in", func(t *testing.T) {
		dropGuard(t, tp)
		if !wanPingReaches() {
			t.Error("the peer's ping did not reach lan2 with the guard gone")
		}
		must(t, tp.m.Setup(ctx))
		if wanPingReaches() {
			t.Error("the peer's ping reached lan2 after setup restored the guard")
		}
	})

	t.Run("forwarding turned on host-wide later (Docker)", func(t *testing.T) {
		must(t, writeSysctl(tp.host, "net/ipv4/ip_forward", "1"))
		publishPort(t, tp, 8080, lan2Peer.Addr(), 80)
		// What the operator's host now does is its own business, and the
		// guard lets replies and published ports through.
		ok("lan1 to lan2", lanToLan)
		ok("lan2 to the egress peer (replies pass the guard)", lanToWan)
		ok("a published port (DNAT) from the egress", published)
		// Plain routing from the egress stays dropped until the next setup.
		if err := wanToLan(blockedTimeout); err == nil {
			t.Error("egress peer routed into lan2 before the next setup")
		}
		// Setup now sees a host that routes and adds no guard.
		must(t, tp.m.Setup(ctx))
		if status().RoutingGuard {
			t.Error("guard kept although the host forwards host-wide")
		}
		ok("egress peer into lan2 on a host that routes", wanToLan)
		ok("guest to wan", func(d time.Duration) error {
			_, err := httpGetIn(tp.guestNS(t, "routerguest1"), fmt.Sprintf("http://%s/", wanIP), d)
			return err
		})
		// Back to a host that does not route. Turning ip_forward off clears
		// every interface's flag, the bridge's and egress's included: the
		// next setup (a manager start) turns them back on.
		must(t, writeSysctl(tp.host, "net/ipv4/ip_forward", "0"))
		must(t, tp.m.Setup(ctx))
		if !status().RoutingGuard {
			t.Error("no guard after setup on a host that does not route")
		}
	})

	t.Run("teardown gives the flags back", func(t *testing.T) {
		must(t, tp.m.Teardown(ctx))
		if v := forwarding("wan0"); v != "0" {
			t.Errorf("egress forwarding %s after teardown", v)
		}
		if v, _ := readSysctl(tp.host, "net/ipv4/ip_forward"); v != "0" {
			t.Errorf("host-wide ip_forward %s after teardown", v)
		}
		if wanPingReaches() {
			t.Error("after teardown the egress peer's ping reached lan2")
		}
		expectBlocked(t, map[string]func() error{
			"lan1 to lan2 after teardown": func() error { return lanToLan(blockedTimeout) },
		})
	})
}
