package network

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// tapGuest stands in for a Firecracker guest: it opens the sandbox's TAP
// (inside the host netns, where the TAP lives), answers ARP for its address
// and ICMP echo, records every frame it receives and sends raw frames on
// demand, spoofed ones included.
type tapGuest struct {
	f   *os.File
	mac net.HardwareAddr
	ip  netip.Addr

	mu   sync.Mutex
	seen [][]byte
}

func startTAPGuest(t testing.TB, hostNS netns.NsHandle, name string, ip netip.Addr, mac net.HardwareAddr) *tapGuest {
	t.Helper()
	var fd int
	must(t, Do(hostNS, func() error {
		var err error
		fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return err
		}
		return nil
	}))
	// Non-blocking only after TUNSETIFF, so that the poller can take the fd.
	must(t, unix.SetNonblock(fd, true))
	g := &tapGuest{f: os.NewFile(uintptr(fd), "tap:"+name), mac: mac, ip: ip}
	done := make(chan struct{})
	go g.loop(done)
	t.Cleanup(func() {
		g.f.Close()
		<-done
	})
	// Opening the TAP gives it carrier; the kernel's link watcher, which may
	// wait up to a second, then lets the bridge port forward.
	h, err := netlink.NewHandleAt(hostNS)
	must(t, err)
	defer h.Close()
	up := eventually(3*time.Second, func() bool {
		l, err := h.LinkByName(name)
		return err == nil && l.Attrs().OperState == netlink.OperUp
	})
	if !up {
		t.Fatalf("TAP %s did not come up", name)
	}
	return g
}

// echo sends ICMP echo requests to dst through the gateway MAC, resending
// until the reply arrives or the timeout passes; the first frames may meet
// a bridge port that is not forwarding yet.
func (g *tapGuest) echo(t testing.TB, dst netip.Addr, dstMAC net.HardwareAddr, id uint16, timeout time.Duration) bool {
	t.Helper()
	ok, err := g.tryEcho(dst, dstMAC, id, timeout)
	if err != nil {
		t.Fatalf("tap guest send: %v", err)
	}
	return ok
}

// tryEcho is echo for any goroutine: it reports a failed send instead of
// failing the test.
func (g *tapGuest) tryEcho(dst netip.Addr, dstMAC net.HardwareAddr, id uint16, timeout time.Duration) (bool, error) {
	mark := g.mark()
	deadline := time.Now().Add(timeout)
	for seq := uint16(1); time.Now().Before(deadline); seq++ {
		fr := ethFrame(dstMAC, g.mac, unix.ETH_P_IP, ipv4Packet(g.ip, dst, unix.IPPROTO_ICMP, icmpEcho(8, id, seq, nil)))
		if _, err := g.f.Write(fr); err != nil {
			return false, err
		}
		if g.waitFrame(mark, 100*time.Millisecond, g.isEchoReply(id)) {
			return true, nil
		}
	}
	return false, nil
}

func (g *tapGuest) loop(done chan struct{}) {
	defer close(done)
	buf := make([]byte, 65536)
	for {
		n, err := g.f.Read(buf)
		if err != nil {
			return
		}
		fr := bytes.Clone(buf[:n])
		g.mu.Lock()
		g.seen = append(g.seen, fr)
		g.mu.Unlock()
		if reply := g.answer(fr); reply != nil {
			g.f.Write(reply)
		}
	}
}

// answer builds the reply to an ARP request for the guest's address or an
// ICMP echo request to it.
func (g *tapGuest) answer(fr []byte) []byte {
	if len(fr) < 14 {
		return nil
	}
	src := net.HardwareAddr(fr[6:12])
	switch binary.BigEndian.Uint16(fr[12:]) {
	case unix.ETH_P_ARP:
		a, ok := parseARP(fr[14:])
		if !ok || a.op != 1 || a.tpa != g.ip {
			return nil
		}
		return ethFrame(a.sha, g.mac, unix.ETH_P_ARP, arpPayload(2, g.mac, g.ip, a.sha, a.spa))
	case unix.ETH_P_IP:
		p, ok := parseIPv4(fr[14:])
		if !ok || p.dst != g.ip || p.proto != unix.IPPROTO_ICMP || len(p.payload) < 8 || p.payload[0] != 8 {
			return nil
		}
		id, seq := binary.BigEndian.Uint16(p.payload[4:]), binary.BigEndian.Uint16(p.payload[6:])
		return ethFrame(src, g.mac, unix.ETH_P_IP,
			ipv4Packet(g.ip, p.src, unix.IPPROTO_ICMP, icmpEcho(0, id, seq, p.payload[8:])))
	}
	return nil
}

func (g *tapGuest) send(t testing.TB, fr []byte) {
	t.Helper()
	if _, err := g.f.Write(fr); err != nil {
		t.Fatalf("tap guest send: %v", err)
	}
}

func (g *tapGuest) mark() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.seen)
}

// waitFrame reports whether a frame received after mark satisfies pred
// within timeout.
func (g *tapGuest) waitFrame(mark int, timeout time.Duration, pred func([]byte) bool) bool {
	return eventually(timeout, func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, fr := range g.seen[mark:] {
			if pred(fr) {
				return true
			}
		}
		return false
	})
}

// isEchoReply matches an ICMP echo reply with id to the guest.
func (g *tapGuest) isEchoReply(id uint16) func([]byte) bool {
	return func(fr []byte) bool {
		if len(fr) < 14 || binary.BigEndian.Uint16(fr[12:]) != unix.ETH_P_IP {
			return false
		}
		p, ok := parseIPv4(fr[14:])
		return ok && p.dst == g.ip && p.proto == unix.IPPROTO_ICMP && len(p.payload) >= 8 &&
			p.payload[0] == 0 && binary.BigEndian.Uint16(p.payload[4:]) == id
	}
}

// aboutAddr matches any ARP or IPv4 frame whose target or destination is a.
func aboutAddr(a netip.Addr) func([]byte) bool {
	return func(fr []byte) bool {
		if len(fr) < 14 {
			return false
		}
		switch binary.BigEndian.Uint16(fr[12:]) {
		case unix.ETH_P_ARP:
			p, ok := parseARP(fr[14:])
			return ok && p.tpa == a
		case unix.ETH_P_IP:
			p, ok := parseIPv4(fr[14:])
			return ok && p.dst == a
		}
		return false
	}
}

// isARPReplyTo matches an ARP reply whose target hardware address is mac.
func isARPReplyTo(mac net.HardwareAddr) func([]byte) bool {
	return func(fr []byte) bool {
		if len(fr) < 14 || binary.BigEndian.Uint16(fr[12:]) != unix.ETH_P_ARP {
			return false
		}
		p, ok := parseARP(fr[14:])
		return ok && p.op == 2 && bytes.Equal(p.tha, mac)
	}
}

func fromMAC(mac net.HardwareAddr) func([]byte) bool {
	return func(fr []byte) bool { return len(fr) >= 14 && bytes.Equal(fr[6:12], mac) }
}

// --- frame building and parsing ---

func ethFrame(dst, src net.HardwareAddr, typ uint16, payload []byte) []byte {
	fr := make([]byte, 14, 14+len(payload))
	copy(fr[0:6], dst)
	copy(fr[6:12], src)
	binary.BigEndian.PutUint16(fr[12:], typ)
	return append(fr, payload...)
}

func arpPayload(op uint16, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) []byte {
	b := make([]byte, 28)
	copy(b[0:6], []byte{0, 1, 8, 0, 6, 4})
	binary.BigEndian.PutUint16(b[6:], op)
	copy(b[8:14], sha)
	s := spa.As4()
	copy(b[14:18], s[:])
	copy(b[18:24], tha)
	d := tpa.As4()
	copy(b[24:28], d[:])
	return b
}

type arpPacket struct {
	op       uint16
	sha, tha net.HardwareAddr
	spa, tpa netip.Addr
}

func parseARP(b []byte) (arpPacket, bool) {
	if len(b) < 28 || !bytes.Equal(b[0:6], []byte{0, 1, 8, 0, 6, 4}) {
		return arpPacket{}, false
	}
	return arpPacket{
		op:  binary.BigEndian.Uint16(b[6:]),
		sha: net.HardwareAddr(b[8:14]),
		spa: netip.AddrFrom4([4]byte(b[14:18])),
		tha: net.HardwareAddr(b[18:24]),
		tpa: netip.AddrFrom4([4]byte(b[24:28])),
	}, true
}

func ipv4Packet(src, dst netip.Addr, proto byte, payload []byte) []byte {
	b := make([]byte, 20, 20+len(payload))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(20+len(payload)))
	b[8] = 64
	b[9] = proto
	s, d := src.As4(), dst.As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	binary.BigEndian.PutUint16(b[10:], checksum(b))
	return append(b, payload...)
}

type ipv4Info struct {
	src, dst netip.Addr
	proto    byte
	payload  []byte
}

func parseIPv4(b []byte) (ipv4Info, bool) {
	if len(b) < 20 || b[0]>>4 != 4 {
		return ipv4Info{}, false
	}
	hl := int(b[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(b[2:]))
	if hl < 20 || total < hl || total > len(b) {
		return ipv4Info{}, false
	}
	return ipv4Info{
		src:     netip.AddrFrom4([4]byte(b[12:16])),
		dst:     netip.AddrFrom4([4]byte(b[16:20])),
		proto:   b[9],
		payload: b[hl:total],
	}, true
}

func icmpEcho(typ byte, id, seq uint16, data []byte) []byte {
	b := make([]byte, 8, 8+len(data))
	b[0] = typ
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	b = append(b, data...)
	binary.BigEndian.PutUint16(b[2:], checksum(b))
	return b
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// trySYN sends TCP SYNs from the guest to dst:port through the gateway MAC,
// resending until a SYN-ACK from dst:port arrives or the timeout passes: a
// TCP connection attempt for a guest that has no TCP stack.
func (g *tapGuest) trySYN(dst netip.Addr, dstMAC net.HardwareAddr, sport, dport uint16, timeout time.Duration) (bool, error) {
	mark := g.mark()
	deadline := time.Now().Add(timeout)
	for seq := uint32(1); time.Now().Before(deadline); seq++ {
		fr := ethFrame(dstMAC, g.mac, unix.ETH_P_IP, ipv4Packet(g.ip, dst, unix.IPPROTO_TCP, tcpSyn(g.ip, dst, sport, dport, seq)))
		if _, err := g.f.Write(fr); err != nil {
			return false, err
		}
		if g.waitFrame(mark, 100*time.Millisecond, isSynAck(dst, dport, sport)) {
			return true, nil
		}
	}
	return false, nil
}

func tcpSyn(src, dst netip.Addr, sport, dport uint16, seq uint32) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint32(b[4:], seq)
	b[12] = 5 << 4 // header length
	b[13] = 0x02   // SYN
	binary.BigEndian.PutUint16(b[14:], 65535)
	s, d := src.As4(), dst.As4()
	pseudo := append(append(append([]byte{}, s[:]...), d[:]...), 0, unix.IPPROTO_TCP, 0, byte(len(b)))
	binary.BigEndian.PutUint16(b[16:], checksum(append(pseudo, b...)))
	return b
}

// isSynAck matches a TCP SYN-ACK from src:sport to dport.
func isSynAck(src netip.Addr, sport, dport uint16) func([]byte) bool {
	return func(fr []byte) bool {
		if len(fr) < 14 || binary.BigEndian.Uint16(fr[12:]) != unix.ETH_P_IP {
			return false
		}
		p, ok := parseIPv4(fr[14:])
		return ok && p.src == src && p.proto == unix.IPPROTO_TCP && len(p.payload) >= 14 &&
			binary.BigEndian.Uint16(p.payload[0:]) == sport && binary.BigEndian.Uint16(p.payload[2:]) == dport &&
			p.payload[13]&0x12 == 0x12
	}
}

// tryEcho6 sends ICMPv6 echo requests from src to the all-nodes group (the
// host's bridge answers them), resending until a reply with id arrives or
// the timeout passes.
func (g *tapGuest) tryEcho6(src netip.Addr, id uint16, timeout time.Duration) (bool, error) {
	allNodes := netip.MustParseAddr("ff02::1")
	dstMAC := net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
	mark := g.mark()
	deadline := time.Now().Add(timeout)
	for seq := uint16(1); time.Now().Before(deadline); seq++ {
		msg := icmpEcho(128, id, seq, nil)
		msg[2], msg[3] = 0, 0
		binary.BigEndian.PutUint16(msg[2:], icmp6Checksum(src, allNodes, msg))
		if _, err := g.f.Write(ethFrame(dstMAC, g.mac, unix.ETH_P_IPV6, ipv6Packet(src, allNodes, 58, msg))); err != nil {
			return false, err
		}
		if g.waitFrame(mark, 100*time.Millisecond, isEcho6Reply(id)) {
			return true, nil
		}
	}
	return false, nil
}

func ipv6Packet(src, dst netip.Addr, next byte, payload []byte) []byte {
	b := make([]byte, 40, 40+len(payload))
	b[0] = 6 << 4
	binary.BigEndian.PutUint16(b[4:], uint16(len(payload)))
	b[6] = next
	b[7] = 255
	s, d := src.As16(), dst.As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
	return append(b, payload...)
}

func icmp6Checksum(src, dst netip.Addr, msg []byte) uint16 {
	s, d := src.As16(), dst.As16()
	pseudo := append(append([]byte{}, s[:]...), d[:]...)
	pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(msg)))
	pseudo = append(pseudo, 0, 0, 0, 58)
	return checksum(append(pseudo, msg...))
}

// isEcho6Reply matches an ICMPv6 echo reply with id.
func isEcho6Reply(id uint16) func([]byte) bool {
	return func(fr []byte) bool {
		if len(fr) < 14+40+8 || binary.BigEndian.Uint16(fr[12:]) != unix.ETH_P_IPV6 {
			return false
		}
		p := fr[14:]
		return p[6] == 58 && p[40] == 129 && binary.BigEndian.Uint16(p[44:]) == id
	}
}
