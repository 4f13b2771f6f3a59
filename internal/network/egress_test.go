package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Addresses behind the wan namespace, which routes for the test host the way
// a cloud's or an office's upstream router does: the metadata service, a
// private LAN with a DNS server, and one host in each other private range.
// They exist only in namespaces the tests create.
var (
	metadataIP = netip.MustParseAddr("169.254.169.254")
	lanIP      = netip.MustParseAddr("192.168.77.2")
	lanDNSIP   = netip.MustParseAddr("192.168.77.53")
	tenIP      = netip.MustParseAddr("10.9.0.2")
	oneSevenIP = netip.MustParseAddr("172.20.0.2")
	cgnatIP    = netip.MustParseAddr("100.64.0.2")
	tapIPv6    = netip.MustParseAddr("fe80::400:acff:fe10:14")
)

func mustLinkIndex(t testing.TB, h *netlink.Handle, name string) int {
	t.Helper()
	l, err := h.LinkByName(name)
	must(t, err)
	return l.Attrs().Index
}

// linkNS joins two namespaces with a veth pair, addresses both ends and
// brings them up.
func linkNS(t testing.TB, a netns.NsHandle, aIf string, aAddr netip.Prefix, b netns.NsHandle, bIf string, bAddr netip.Prefix) {
	t.Helper()
	ah, err := netlink.NewHandleAt(a)
	must(t, err)
	defer ah.Close()
	bh, err := netlink.NewHandleAt(b)
	must(t, err)
	defer bh.Close()
	la := netlink.NewLinkAttrs()
	la.Name = aIf
	must(t, ah.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: bIf, PeerNamespace: netlink.NsFd(int(b))}))
	for _, x := range []struct {
		h    *netlink.Handle
		name string
		addr netip.Prefix
	}{{ah, aIf, aAddr}, {bh, bIf, bAddr}} {
		l, err := x.h.LinkByName(x.name)
		must(t, err)
		must(t, x.h.AddrAdd(l, &netlink.Addr{IPNet: prefixToIPNet(x.addr)}))
		must(t, x.h.LinkSetUp(l))
	}
}

// routeVia adds a route to dst (the default route when dst is invalid)
// through gw in ns.
func routeVia(t testing.TB, ns netns.NsHandle, dst netip.Prefix, gw netip.Addr) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	must(t, err)
	defer h.Close()
	r := &netlink.Route{Gw: net.IP(gw.AsSlice())}
	if dst.IsValid() {
		r.Dst = prefixToIPNet(dst)
	}
	must(t, h.RouteAdd(r))
}

func addAddr(t testing.TB, ns netns.NsHandle, ifc string, p netip.Prefix) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	must(t, err)
	defer h.Close()
	l, err := h.LinkByName(ifc)
	must(t, err)
	must(t, h.AddrAdd(l, &netlink.Addr{IPNet: prefixToIPNet(p)}))
}

// serveUDP answers every datagram with the server's name and the payload: a
// stand-in for a DNS server.
func serveUDP(t testing.TB, ns netns.NsHandle, addr, name string) {
	t.Helper()
	var pc net.PacketConn
	must(t, Do(ns, func() error {
		var err error
		pc, err = net.ListenPacket("udp4", addr)
		return err
	}))
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte(name+" "), buf[:n]...), from)
		}
	}()
}

// udpAskIn sends one datagram from inside ns and waits for the answer.
func udpAskIn(ns netns.NsHandle, addr string, timeout time.Duration) (string, error) {
	c, err := dialIn(ns, "udp4", addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("query")); err != nil {
		return "", err
	}
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// egressEnv is a test host whose upstream router (the wan namespace) also
// reaches a "cloud" namespace with the metadata address and a "lan"
// namespace with private hosts and a private DNS server; guests are one veth
// (container) and one TAP (Firecracker) sandbox.
type egressEnv struct {
	tp    *topo
	g     netns.NsHandle
	tg    *tapGuest
	tapM  *Manager
	gwMAC net.HardwareAddr
	// seq makes every TAP probe's ICMP id and TCP source port unique, so
	// that a late answer to an earlier probe is never taken for this one's.
	seq atomic.Uint32
}

func newEgressEnv(t *testing.T) *egressEnv {
	tp := newTopo(t, LinkVeth, func(o *Options) {
		// A private DNS server behind the router, and the bridge itself.
		o.DNSServers = []netip.Addr{lanDNSIP, testGW}
	})
	must(t, writeSysctl(tp.wan, "net/ipv4/ip_forward", "1"))
	cloud := newTestNetns(t, tp.prefix+"cloud")
	linkNS(t, tp.wan, "cl0", netip.MustParsePrefix("169.254.0.1/16"), cloud, "cl1", netip.PrefixFrom(metadataIP, 16))
	routeVia(t, cloud, netip.Prefix{}, netip.MustParseAddr("169.254.0.1"))
	lan := newTestNetns(t, tp.prefix+"lan")
	linkNS(t, tp.wan, "lan0", netip.MustParsePrefix("192.168.77.1/24"), lan, "lan1", netip.PrefixFrom(lanIP, 24))
	routeVia(t, lan, netip.Prefix{}, netip.MustParseAddr("192.168.77.1"))
	for _, a := range []netip.Addr{lanDNSIP, tenIP, oneSevenIP, cgnatIP} {
		addAddr(t, lan, "lan1", netip.PrefixFrom(a, 32))
		if a != lanDNSIP {
			routeVia(t, tp.wan, netip.PrefixFrom(a, 32), lanIP)
		}
	}

	ctx := context.Background()
	must(t, tp.m.Setup(ctx))
	e := &egressEnv{tp: tp, gwMAC: bridgeMAC(testGW)}
	tp.attach(t, "egressveth01", 10)
	e.g = tp.guestNS(t, "egressveth01")
	o := tp.m.opts
	o.Kind, o.HostNS = LinkTAP, tp.host
	tapM, err := New(o)
	must(t, err)
	t.Cleanup(func() { tapM.Close() })
	e.tapM = tapM
	l := guestLease("egresstap001", 20)
	name, err := tapM.Attach(ctx, "egresstap001", l)
	must(t, err)
	mac, _ := net.ParseMAC(l.MAC)
	e.tg = startTAPGuest(t, tp.host, name, netip.MustParseAddr(l.IP), mac)
	// What an operator's kube-proxy turns on: the host would route a
	// packet for 127.0.0.1 that arrives on the bridge instead of dropping
	// it as martian, so only the firewall stands between a guest and the
	// host's loopback services.
	must(t, writeSysctl(tp.host, "net/ipv4/conf/br0/route_localnet", "1"))
	// The host knows the TAP guest's IPv6 link-local address, so an answer
	// needs no neighbour discovery, which the stand-in does not speak.
	must(t, tp.hh.NeighAdd(&netlink.Neigh{LinkIndex: mustLinkIndex(t, tp.hh, "br0"), Family: netlink.FAMILY_V6,
		State: netlink.NUD_PERMANENT, IP: net.IP(tapIPv6.AsSlice()), HardwareAddr: mac}))

	serveHTTP(t, tp.wan, wanIP.String()+":80", "wan")
	serveHTTP(t, cloud, metadataIP.String()+":80", "metadata")
	for name, a := range map[string]netip.Addr{"lan": lanIP, "ten": tenIP, "172.20": oneSevenIP, "cgnat": cgnatIP, "dns-http": lanDNSIP} {
		serveHTTP(t, lan, a.String()+":80", name)
	}
	serveUDP(t, lan, lanDNSIP.String()+":53", "dns")
	serveHTTP(t, lan, lanDNSIP.String()+":53", "dns-tcp")
	// Host services on every address, and one on loopback only.
	serveHTTP(t, tp.host, fmt.Sprintf("0.0.0.0:%d", testRegistryPort), "registry")
	serveHTTP(t, tp.host, fmt.Sprintf("0.0.0.0:%d", testManagerPort), "manager")
	// One per address: a UDP socket on 0.0.0.0 would answer from the
	// bridge address whatever address was asked.
	serveUDP(t, tp.host, testGW.String()+":53", "host-dns")
	serveUDP(t, tp.host, hostWanIP.String()+":53", "host-dns")
	serveHTTP(t, tp.host, "127.0.0.1:8089", "loopback")
	return e
}

// probe is one attempt a guest makes; layers name the firewall parts that
// stop it, each on its own (none for traffic that must pass).
type probe struct {
	name   string
	layers []string
	try    func(timeout time.Duration) error
}

const (
	layerBlockedSet = "blocked destinations set"
	layerToHost     = "guest_to_host chain"
	layerEthertypes = "bridge table (IPv4 and ARP only)"
)

func (e *egressEnv) httpProbe(name, layer string, a netip.Addr, port int, want string) probe {
	return probe{name, layersOf(layer), func(d time.Duration) error {
		body, err := httpGetIn(e.g, fmt.Sprintf("http://%s:%d/", a, port), d)
		if err == nil && !strings.HasPrefix(body, want+" ") {
			err = fmt.Errorf("answered by %q, want %q", body, want)
		}
		return err
	}}
}

func (e *egressEnv) udpProbe(name, layer string, a netip.Addr, want string) probe {
	return probe{name, layersOf(layer), func(d time.Duration) error {
		got, err := udpAskIn(e.g, a.String()+":53", d)
		if err == nil && !strings.HasPrefix(got, want+" ") {
			err = fmt.Errorf("answered by %q, want %q", got, want)
		}
		return err
	}}
}

func (e *egressEnv) tapPing(name, layer string, a netip.Addr) probe {
	return probe{name, layersOf(layer), func(d time.Duration) error {
		ok, err := e.tg.tryEcho(a, e.gwMAC, uint16(1000+e.seq.Add(1)), d)
		if err == nil && !ok {
			err = fmt.Errorf("no echo reply from %s", a)
		}
		return err
	}}
}

func (e *egressEnv) tapSYN(name, layer string, a netip.Addr, port uint16) probe {
	return probe{name, layersOf(layer), func(d time.Duration) error {
		ok, err := e.tg.trySYN(a, e.gwMAC, uint16(40000+e.seq.Add(1)), port, d)
		if err == nil && !ok {
			err = fmt.Errorf("no SYN-ACK from %s:%d", a, port)
		}
		return err
	}}
}

func (e *egressEnv) probes() []probe {
	return []probe{
		// What guests must keep: the internet through NAT, Atelier's
		// services on the bridge, and the configured DNS servers on port 53.
		e.httpProbe("veth: internet (wan) through NAT", "", wanIP, 80, "wan"),
		e.httpProbe("veth: registry on the bridge", "", testGW, testRegistryPort, "registry"),
		e.udpProbe("veth: DNS on the bridge (a configured server)", "", testGW, "host-dns"),
		e.udpProbe("veth: private DNS server, UDP 53", "", lanDNSIP, "dns"),
		e.httpProbe("veth: private DNS server, TCP 53", "", lanDNSIP, 53, "dns-tcp"),
		e.tapPing("TAP: internet (wan) through NAT", "", wanIP),
		e.tapSYN("TAP: registry on the bridge", "", testGW, testRegistryPort),

		e.httpProbe("veth: cloud metadata", layerBlockedSet, metadataIP, 80, "metadata"),
		e.httpProbe("veth: LAN host 192.168.77.2", layerBlockedSet, lanIP, 80, "lan"),
		e.httpProbe("veth: 10.9.0.2", layerBlockedSet, tenIP, 80, "ten"),
		e.httpProbe("veth: 172.20.0.2", layerBlockedSet, oneSevenIP, 80, "172.20"),
		e.httpProbe("veth: CGNAT 100.64.0.2", layerBlockedSet, cgnatIP, 80, "cgnat"),
		e.httpProbe("veth: private DNS server on another port", layerBlockedSet, lanDNSIP, 80, "dns-http"),
		e.tapPing("TAP: cloud metadata", layerBlockedSet, metadataIP),
		e.tapPing("TAP: LAN host", layerBlockedSet, lanIP),

		e.httpProbe("veth: manager on the host's wan address", layerToHost, hostWanIP, testManagerPort, "manager"),
		e.httpProbe("veth: registry port on the host's wan address", layerToHost, hostWanIP, testRegistryPort, "registry"),
		e.udpProbe("veth: host DNS on the wan address (not a configured server)", layerToHost, hostWanIP, "host-dns"),
		e.httpProbe("veth: manager port on the bridge", layerToHost, testGW, testManagerPort, "manager"),
		e.tapSYN("TAP: manager on the host's wan address", layerToHost, hostWanIP, testManagerPort),
		e.tapSYN("TAP: host loopback service 127.0.0.1", layerToHost, netip.MustParseAddr("127.0.0.1"), 8089),

		// Guests have no IPv6: the port drops it, and so does the inet
		// table's input chain (it drops every family it does not accept).
		{"TAP: IPv6 echo to all nodes (the host)", []string{layerEthertypes, layerToHost}, func(d time.Duration) error {
			ok, err := e.tg.tryEcho6(tapIPv6, uint16(3000+e.seq.Add(1)), d)
			if err == nil && !ok {
				err = errors.New("no ICMPv6 echo reply")
			}
			return err
		}},
	}
}

func layersOf(layer string) []string {
	if layer == "" {
		return nil
	}
	return []string{layer}
}

// check runs the probes at once: those whose every layer is in open must
// pass (those of no layer too); the others must be blocked.
func (e *egressEnv) check(t *testing.T, open ...string) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, p := range e.probes() {
		pass := true
		for _, l := range p.layers {
			pass = pass && slices.Contains(open, l)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := blockedTimeout
			if pass {
				d = okTimeout
			}
			err := p.try(d)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case pass && err != nil:
				t.Errorf("%s: %v, want it to pass", p.name, err)
			case !pass && err == nil:
				t.Errorf("%s: got through, want it blocked by the %s", p.name, strings.Join(p.layers, " and the "))
			}
		}()
	}
	wg.Wait()
}

// disable switches a firewall layer off in place, as a broken or missing
// rule would; Setup restores it.
func (e *egressEnv) disable(t *testing.T, layer string) {
	t.Helper()
	c, err := e.tp.m.nft()
	must(t, err)
	inet, _ := ourTables()
	switch layer {
	case layerBlockedSet:
		c.FlushSet(&nftables.Set{Table: inet, Name: blockedSet})
	case layerToHost:
		c.FlushChain(&nftables.Chain{Name: "guest_to_host", Table: inet})
	case layerEthertypes:
		_, br := ourTables()
		c.DelTable(br)
	default:
		t.Fatalf("unknown layer %q", layer)
	}
	must(t, c.Flush())
}

func TestGuestEgress(t *testing.T) {
	e := newEgressEnv(t)
	ctx := context.Background()
	drops := func() Drops {
		st, err := e.tp.m.Status(ctx)
		must(t, err)
		return st.Drops
	}

	t.Run("guests reach the internet, DNS and the bridge services, nothing private", func(t *testing.T) {
		before := drops()
		e.check(t)
		after := drops()
		if after.Private <= before.Private {
			t.Errorf("private-destination drop counter did not move: %d -> %d", before.Private, after.Private)
		}
		if after.GuestToHost <= before.GuestToHost {
			t.Errorf("guest-to-host drop counter did not move: %d -> %d", before.GuestToHost, after.GuestToHost)
		}
	})

	// The controls: with a layer off, exactly its probes get through, so
	// every target is up and reachable, and the layer is what stopped it.
	for _, layers := range [][]string{{layerBlockedSet}, {layerToHost}, {layerEthertypes}, {layerEthertypes, layerToHost}} {
		t.Run("without the "+strings.Join(layers, " and the "), func(t *testing.T) {
			for _, l := range layers {
				e.disable(t, l)
			}
			e.check(t, layers...)
			must(t, e.tp.m.Setup(ctx))
			e.check(t)
		})
	}

	t.Run("the allow-list opens a private prefix and nothing more", func(t *testing.T) {
		e.tp.m.opts.EgressAllow = []netip.Prefix{netip.PrefixFrom(lanIP, 32), netip.MustParsePrefix("100.64.0.0/10")}
		defer func() {
			e.tp.m.opts.EgressAllow = nil
			must(t, e.tp.m.Setup(ctx))
		}()
		must(t, e.tp.m.Setup(ctx))
		for _, p := range []probe{
			e.httpProbe("LAN host in the allow-list", "", lanIP, 80, "lan"),
			e.httpProbe("CGNAT host in the allow-list", "", cgnatIP, 80, "cgnat"),
			e.tapPing("TAP: LAN host in the allow-list", "", lanIP),
		} {
			if err := p.try(okTimeout); err != nil {
				t.Errorf("%s: %v", p.name, err)
			}
		}
		expectBlocked(t, timedProbes{
			"the LAN's DNS server on port 80": e.httpProbe("", "", lanDNSIP, 80, "dns-http").try,
			"10.9.0.2":                        e.httpProbe("", "", tenIP, 80, "ten").try,
			"cloud metadata":                  e.httpProbe("", "", metadataIP, 80, "metadata").try,
		}.withTimeout(blockedTimeout))
	})
}

type timedProbes map[string]func(time.Duration) error

func (m timedProbes) withTimeout(d time.Duration) map[string]func() error {
	out := map[string]func() error{}
	for k, f := range m {
		out[k] = func() error { return f(d) }
	}
	return out
}
