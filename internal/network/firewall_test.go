package network

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// firewallEnv is one host with two veth guests, one TAP guest and the
// servers the checks talk to.
type firewallEnv struct {
	tp       *topo
	tapM     *Manager
	id1, id2 string
	ip1, ip2 netip.Addr
	g1, g2   netns.NsHandle
	tapID    string
	tapName  string
	tapIP    netip.Addr
	tg       *tapGuest
}

func newFirewallEnv(t *testing.T) *firewallEnv {
	tp := newTopo(t, LinkVeth, func(o *Options) { o.AllowedHostPorts = []int{8081} })
	ctx := context.Background()
	must(t, tp.m.Setup(ctx))

	// A second Manager attaches TAPs to the same bridge, as a Firecracker
	// host would; veth and TAP guests then share one firewall.
	o := tp.m.opts
	o.Kind, o.HostNS = LinkTAP, tp.host
	tapM, err := New(o)
	must(t, err)
	t.Cleanup(func() { tapM.Close() })

	e := &firewallEnv{tp: tp, tapM: tapM, id1: "fwguest00001", id2: "fwguest00002", tapID: "fwtapguest01"}
	e.ip1, e.ip2, e.tapIP = netip.MustParseAddr("172.16.0.10"), netip.MustParseAddr("172.16.0.11"), netip.MustParseAddr("172.16.0.20")
	tp.attach(t, e.id1, 10)
	tp.attach(t, e.id2, 11)
	e.g1, e.g2 = tp.guestNS(t, e.id1), tp.guestNS(t, e.id2)
	l := guestLease(e.tapID, 20)
	e.tapName, err = tapM.Attach(ctx, e.tapID, l)
	must(t, err)
	mac, _ := net.ParseMAC(l.MAC)
	e.tg = startTAPGuest(t, tp.host, e.tapName, e.tapIP, mac)

	serveHTTP(t, tp.host, fmt.Sprintf("%s:%d", testGW, testRegistryPort), "registry")
	serveHTTP(t, tp.host, fmt.Sprintf("0.0.0.0:%d", testManagerPort), "manager")
	serveHTTP(t, tp.host, testGW.String()+":8081", "allowed")
	serveHTTP(t, tp.host, testGW.String()+":8082", "other")
	serveHTTP(t, tp.wan, wanIP.String()+":80", "wan")
	serveHTTP(t, e.g1, e.ip1.String()+":8080", "guest1")
	serveHTTP(t, e.g2, e.ip2.String()+":9000", "guest2")
	return e
}

func (e *firewallEnv) drops(t *testing.T) Drops {
	t.Helper()
	st, err := e.tp.m.Status(context.Background())
	must(t, err)
	return st.Drops
}

// tapEcho sends an ICMP echo request from the TAP guest with the given
// source MAC and address.
func (e *firewallEnv) tapEcho(t *testing.T, srcMAC net.HardwareAddr, srcIP, dst netip.Addr, dstMAC net.HardwareAddr, id uint16) {
	t.Helper()
	e.tg.send(t, ethFrame(dstMAC, srcMAC, 0x0800, ipv4Packet(srcIP, dst, 1, icmpEcho(8, id, 1, []byte("probe")))))
}

// expectBlocked runs probes at once; each must fail.
func expectBlocked(t *testing.T, probes map[string]func() error) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	for name, p := range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p(); err == nil {
				mu.Lock()
				t.Errorf("%s: got through, want blocked", name)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

func TestFirewall(t *testing.T) {
	e := newFirewallEnv(t)
	tp := e.tp
	gwMAC := bridgeMAC(testGW)
	url := func(a netip.Addr, port int) string { return fmt.Sprintf("http://%s:%d/", a, port) }

	t.Run("guests reach the gateway", func(t *testing.T) {
		if err := pingIn(e.g1, netip.Addr{}, testGW, okTimeout); err != nil {
			t.Errorf("veth guest: %v", err)
		}
		if !e.tg.echo(t, testGW, gwMAC, 101, okTimeout) {
			t.Error("TAP guest: no echo reply from the gateway")
		}
	})

	t.Run("guests reach the registry and allowed ports only", func(t *testing.T) {
		for port, want := range map[int]string{testRegistryPort: "registry", 8081: "allowed"} {
			body, err := httpGetIn(e.g1, url(testGW, port), okTimeout)
			if err != nil || !strings.HasPrefix(body, want) {
				t.Errorf("port %d: got %q, %v", port, body, err)
			}
		}
		before := e.drops(t).GuestToHost
		expectBlocked(t, map[string]func() error{
			"other host port":                func() error { _, err := httpGetIn(e.g1, url(testGW, 8082), blockedTimeout); return err },
			"manager API on the bridge":      func() error { _, err := httpGetIn(e.g1, url(testGW, testManagerPort), blockedTimeout); return err },
			"manager API on the wan address": func() error { _, err := httpGetIn(e.g1, url(hostWanIP, testManagerPort), blockedTimeout); return err },
			"ping to the host's wan address": func() error { return pingIn(e.g1, netip.Addr{}, hostWanIP, blockedTimeout) },
		})
		if after := e.drops(t).GuestToHost; after <= before {
			t.Errorf("guest-to-host drop counter did not move: %d -> %d", before, after)
		}
		// The servers are up: the host itself reaches them.
		for _, u := range []string{url(testGW, testManagerPort), url(hostWanIP, testManagerPort), url(testGW, 8082)} {
			if _, err := httpGetIn(tp.host, u, okTimeout); err != nil {
				t.Errorf("control from the host %s: %v", u, err)
			}
		}
	})

	t.Run("guests reach the wan through NAT", func(t *testing.T) {
		body, err := httpGetIn(e.g1, url(wanIP, 80), okTimeout)
		if err != nil {
			t.Fatal(err)
		}
		// The wan has no route to 172.16.0.0/24: it must see the host's address.
		if !strings.HasPrefix(body, "wan "+hostWanIP.String()+":") {
			t.Errorf("wan saw %q, want the client %s", body, hostWanIP)
		}
	})

	t.Run("host reaches guests", func(t *testing.T) {
		body, err := httpGetIn(tp.host, url(e.ip1, 8080), okTimeout)
		if err != nil || !strings.HasPrefix(body, "guest1 ") {
			t.Errorf("host to veth guest HTTP: %q, %v", body, err)
		}
		if err := pingIn(tp.host, netip.Addr{}, e.ip2, okTimeout); err != nil {
			t.Errorf("host to veth guest ping: %v", err)
		}
		if err := pingIn(tp.host, netip.Addr{}, e.tapIP, okTimeout); err != nil {
			t.Errorf("host to TAP guest ping: %v", err)
		}
	})

	t.Run("guest to guest is blocked", func(t *testing.T) {
		w1, w2 := watchICMP(t, e.g1), watchICMP(t, e.g2)
		g1MAC, _ := net.ParseMAC(guestLease(e.id1, 10).MAC)
		mark := e.tg.mark()
		expectBlocked(t, map[string]func() error{
			"veth to veth ping": func() error { return pingIn(e.g1, netip.Addr{}, e.ip2, blockedTimeout) },
			"veth to veth TCP": func() error {
				c, err := dialIn(e.g1, "tcp4", e.ip2.String()+":9000", blockedTimeout)
				if err == nil {
					c.Close()
				}
				return err
			},
			"veth to TAP ping": func() error { return pingIn(e.g1, netip.Addr{}, e.tapIP, blockedTimeout) },
		})
		e.tapEcho(t, e.tg.mac, e.tapIP, e.ip1, g1MAC, 202)
		if e.tg.waitFrame(mark, blockedTimeout, fromMAC(g1MAC)) {
			t.Error("a frame from the veth guest reached the TAP guest")
		}
		if w1.sawID(202) {
			t.Error("the TAP guest's echo request reached the veth guest")
		}
		if n := w2.requestsFrom(e.ip1); n != 0 {
			t.Errorf("%d echo requests from guest 1 reached guest 2", n)
		}
		// The watchers see traffic that is allowed.
		if err := pingIn(tp.host, netip.Addr{}, e.ip1, okTimeout); err != nil || !eventually(okTimeout, func() bool { return w1.requestsFrom(testGW) > 0 }) {
			t.Errorf("control: host ping to guest 1 not seen (%v)", err)
		}
		if _, err := httpGetIn(tp.host, url(e.ip2, 9000), okTimeout); err != nil {
			t.Errorf("control: host to guest 2 TCP: %v", err)
		}
	})

	t.Run("guest to guest through the gateway is blocked", func(t *testing.T) {
		w2 := watchICMP(t, e.g2)
		gh, err := netlink.NewHandleAt(e.g1)
		must(t, err)
		defer gh.Close()
		eth, err := gh.LinkByName(guestIf)
		must(t, err)
		route := &netlink.Route{LinkIndex: eth.Attrs().Index, Dst: prefixToIPNet(netip.PrefixFrom(e.ip2, 32)), Gw: net.IP(testGW.AsSlice())}
		must(t, gh.RouteAdd(route))
		defer gh.RouteDel(route)
		before := e.drops(t).GuestToGuest
		if err := pingIn(e.g1, netip.Addr{}, e.ip2, blockedTimeout); err == nil {
			t.Error("routed ping from guest 1 to guest 2 got through")
		}
		if n := w2.requestsFrom(e.ip1); n != 0 {
			t.Errorf("%d routed echo requests reached guest 2", n)
		}
		if after := e.drops(t).GuestToGuest; after <= before {
			t.Errorf("guest-to-guest drop counter did not move: %d -> %d", before, after)
		}
	})

	t.Run("spoofed frames from a TAP guest are dropped", func(t *testing.T) {
		spoofMAC := net.HardwareAddr{0x06, 0x00, 0xde, 0xad, 0xbe, 0xef}
		spoofMAC2 := net.HardwareAddr{0x06, 0x00, 0xde, 0xad, 0xbe, 0xee}
		otherIP := netip.MustParseAddr("172.16.0.99")
		before := e.drops(t).Spoofed
		mark := e.tg.mark()
		e.tapEcho(t, spoofMAC, e.tapIP, testGW, gwMAC, 301)                                           // spoofed Ethernet source
		e.tapEcho(t, e.tg.mac, otherIP, testGW, gwMAC, 302)                                           // spoofed IPv4 source
		e.tg.send(t, ethFrame(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, e.tg.mac, 0x0806, // spoofed ARP sender IP
			arpPayload(1, e.tg.mac, otherIP, make(net.HardwareAddr, 6), testGW)))
		e.tg.send(t, ethFrame(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, e.tg.mac, 0x0806, // spoofed ARP sender MAC
			arpPayload(1, spoofMAC, e.tapIP, make(net.HardwareAddr, 6), testGW)))
		e.tg.send(t, ethFrame(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, spoofMAC2, 0x0806, // spoofed Ethernet source of ARP
			arpPayload(1, e.tg.mac, e.tapIP, make(net.HardwareAddr, 6), testGW)))
		forbidden := func(fr []byte) bool {
			// An answer to any of them: the echo reply to the genuine
			// address, traffic towards the spoofed address, an ARP reply
			// to the spoofed MAC.
			return e.tg.isEchoReply(301)(fr) || aboutAddr(otherIP)(fr) || isARPReplyTo(spoofMAC)(fr)
		}
		if e.tg.waitFrame(mark, blockedTimeout, forbidden) {
			t.Error("the host answered a spoofed frame")
		}
		if after := e.drops(t).Spoofed; after < before+5 {
			t.Errorf("spoof counter %d -> %d, want +5", before, after)
		}
		// Had the bridge seen them, it would have learnt the spoofed MACs on
		// the TAP's port and sent the real owners' traffic there.
		fdb, err := tp.hh.NeighList(0, unix.AF_BRIDGE)
		must(t, err)
		for _, n := range fdb {
			if bytes.Equal(n.HardwareAddr, spoofMAC) || bytes.Equal(n.HardwareAddr, spoofMAC2) {
				t.Errorf("the bridge learnt spoofed MAC %s", n.HardwareAddr)
			}
		}
		// The same frames with the genuine source get answers.
		mark = e.tg.mark()
		e.tapEcho(t, e.tg.mac, e.tapIP, testGW, gwMAC, 303)
		e.tg.send(t, ethFrame(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, e.tg.mac, 0x0806,
			arpPayload(1, e.tg.mac, e.tapIP, make(net.HardwareAddr, 6), testGW)))
		if !e.tg.waitFrame(mark, okTimeout, e.tg.isEchoReply(303)) {
			t.Error("control: genuine echo not answered")
		}
		if !e.tg.waitFrame(mark, okTimeout, isARPReplyTo(e.tg.mac)) {
			t.Error("control: genuine ARP request not answered")
		}
	})

	t.Run("spoofing from a veth guest is dropped", func(t *testing.T) {
		gh, err := netlink.NewHandleAt(e.g1)
		must(t, err)
		defer gh.Close()
		eth, err := gh.LinkByName(guestIf)
		must(t, err)
		spoofIP := netip.MustParseAddr("172.16.0.50")
		addr := &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(spoofIP, 24))}
		must(t, gh.AddrAdd(eth, addr))
		before := e.drops(t).Spoofed
		if err := pingIn(e.g1, spoofIP, testGW, blockedTimeout); err == nil {
			t.Error("ping from a spoofed address got through")
		}
		must(t, gh.AddrDel(eth, addr))
		mid := e.drops(t).Spoofed
		if mid <= before {
			t.Errorf("spoof counter did not move for a spoofed address: %d -> %d", before, mid)
		}
		genuine := eth.Attrs().HardwareAddr
		must(t, gh.LinkSetHardwareAddr(eth, net.HardwareAddr{0x06, 0x00, 0xde, 0xad, 0xbe, 0xef}))
		if _, err := httpGetIn(e.g1, url(testGW, testRegistryPort), blockedTimeout); err == nil {
			t.Error("a connection from a spoofed MAC got through")
		}
		must(t, gh.LinkSetHardwareAddr(eth, genuine))
		if after := e.drops(t).Spoofed; after <= mid {
			t.Errorf("spoof counter did not move for a spoofed MAC: %d -> %d", mid, after)
		}
		if err := pingIn(e.g1, netip.Addr{}, testGW, okTimeout); err != nil {
			t.Errorf("control: genuine ping after the spoofing: %v", err)
		}
	})

	// Last: it switches mechanisms off one at a time.
	t.Run("isolation holds with either mechanism alone", func(t *testing.T) {
		ports := []string{}
		for _, id := range []string{e.id1, e.id2} {
			links, err := tp.m.Links(context.Background())
			must(t, err)
			for _, l := range links {
				if l.SandboxID == id {
					ports = append(ports, l.Name)
				}
			}
		}
		if len(ports) != 2 {
			t.Fatalf("ports of the veth guests: %v", ports)
		}
		setIsolated := func(on bool) {
			t.Helper()
			for _, p := range ports {
				l, err := tp.hh.LinkByName(p)
				must(t, err)
				must(t, tp.hh.LinkSetIsolated(l, on))
			}
		}
		blocked := func(what string) {
			t.Helper()
			w2 := watchICMP(t, e.g2)
			if err := pingIn(e.g1, netip.Addr{}, e.ip2, blockedTimeout); err == nil || w2.requestsFrom(e.ip1) != 0 {
				t.Errorf("%s: guest 1 reached guest 2", what)
			}
		}

		links, err := tp.m.Links(context.Background())
		must(t, err)
		for _, l := range links {
			if !l.Isolated {
				t.Errorf("port %s is not isolated", l.Name)
			}
		}
		// br_netfilter off: the inet forward rule no longer sees bridged frames.
		must(t, writeSysctl(tp.host, "net/bridge/bridge-nf-call-iptables", "0"))
		setIsolated(false)
		blocked("port isolation off, bridge firewall on")
		setIsolated(true)

		c, err := tp.m.nft()
		must(t, err)
		_, brTable := ourTables()
		c.DelTable(brTable)
		must(t, c.Flush())
		blocked("bridge firewall gone, port isolation on")

		setIsolated(false)
		must(t, writeSysctl(tp.host, "net/bridge/bridge-nf-call-iptables", "1"))
		blocked("bridge firewall gone, port isolation off, br_netfilter on (inet forward rule)")
		must(t, writeSysctl(tp.host, "net/bridge/bridge-nf-call-iptables", "0"))
		if err := pingIn(e.g1, netip.Addr{}, e.ip2, okTimeout); err != nil {
			t.Errorf("control: with every mechanism off guest 1 should reach guest 2: %v", err)
		}

		// A manager restart: Setup restores the firewall, the entries of the
		// running guests (from their aliases) and port isolation.
		must(t, tp.m.Setup(context.Background()))
		links, err = tp.m.Links(context.Background())
		must(t, err)
		if len(links) != 3 {
			t.Errorf("links after re-setup: %+v", links)
		}
		for _, l := range links {
			if !l.Isolated || !l.Up || l.Master != "br0" {
				t.Errorf("link after re-setup: %+v", l)
			}
		}
		blocked("after re-setup")
		if err := pingIn(e.g1, netip.Addr{}, testGW, okTimeout); err != nil {
			t.Errorf("veth guest to gateway after re-setup: %v", err)
		}
		if !e.tg.echo(t, testGW, gwMAC, 401, okTimeout) {
			t.Error("TAP guest to gateway after re-setup: no reply")
		}
		mark := e.tg.mark()
		e.tapEcho(t, e.tg.mac, netip.MustParseAddr("172.16.0.98"), testGW, gwMAC, 402)
		if e.tg.waitFrame(mark, blockedTimeout, aboutAddr(netip.MustParseAddr("172.16.0.98"))) {
			t.Error("spoofed source answered after re-setup")
		}
	})
}
