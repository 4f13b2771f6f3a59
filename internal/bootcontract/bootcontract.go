// Package bootcontract is the one definition of how an Atelier VM guest
// boots. The Firecracker driver builds the kernel command line here, the
// image builders install the agent at InitPath, and the agent running as
// the guest's PID 1 parses the same command line here. Nothing else may
// format or parse these arguments: a change made in one place reaches both
// sides, and the QEMU boot test (internal/runtime/firecracker) checks from
// inside a real guest that they still agree.
//
// The contract, in order of the boot:
//
//   - Kernel: an ELF vmlinux with virtio-mmio block, net and vsock built in
//     (`atelier images kernel`, internal/image/kernel). No modules, no initrd.
//   - Command line: Cmdline. Fixed arguments (BaseArgs), then init=InitPath,
//     then the kernel's own ip= with the guest address, gateway, netmask,
//     host name, device eth0, autoconf off and up to two DNS servers, then
//     atelier.id= (the sandbox id) and atelier.agent_port= (the agent's
//     vsock port). Firecracker appends VMMArgs for the root drive.
//   - Root device: RootDevice (the first virtio block device), ext4,
//     mounted read-write by the kernel.
//   - Network: the kernel configures eth0 from ip= (CONFIG_IP_PNP) before
//     init runs; PID 1 applies the same values itself when the kernel did
//     not, and writes /etc/resolv.conf (the DNS fields of ip=), /etc/hostname
//     and /etc/hosts.
//   - PID 1: the agent binary at InitPath, whatever its file name: it is
//     init because its pid is 1. See internal/guest (RunInit) for what it
//     does: mounts, Ctrl-Alt-Del as a clean shutdown, host name, network
//     files, the agent, root filesystem growth to the volume's size, swap
//     on SwapFile when the image has one, and the shutdown sequence.
//   - Agent: listens on vsock port AgentPort (any CID; the host reaches it
//     through Firecracker's hybrid vsock). It also serves on the
//     virtio-serial port named TestChannelName when, and only when, the VMM
//     provides such a port: Firecracker has no virtio-serial device, so only
//     the QEMU boot test can.
package bootcontract

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"atelier/internal/ids"
)

// The guest's fixed paths and devices.
const (
	// InitPath is where every image installs the agent; the kernel starts
	// it as PID 1.
	InitPath = "/sbin/atelier-agent"
	// RootDevice is the root drive as the guest kernel names it.
	RootDevice = "/dev/vda"
	// RootFSType is the root filesystem's type.
	RootFSType = "ext4"
	// Interface is the guest's network interface.
	Interface = "eth0"
	// DefaultAgentPort is the agent's vsock port unless configured
	// otherwise (advanced.vm.agent.port).
	DefaultAgentPort = 9998
	// GuestCID is every guest's vsock context id; each VM has its own
	// hybrid-vsock socket on the host, so they need not differ.
	GuestCID = 3
	// TestChannelName names the virtio-serial port the agent also serves
	// on when one exists. Only the QEMU boot test attaches one.
	TestChannelName = "org.atelier.agent-test.0"
	// SwapFile is enabled at boot when the image (or the volume) has it.
	SwapFile = "/swapfile"
	// InitLog is PID 1's log of the last boot, on the root filesystem, so
	// an operator can read it from a volume whose guest never answered.
	InitLog = "/var/log/sandbox/init.log"
	// RunDir holds the boot's timing records (tmpfs).
	RunDir = "/run/atelier"
)

// ShutdownGrace is how long the host waits, after Ctrl-Alt-Del, for the
// guest to power off before it kills the VMM. PID 1's shutdown sequence
// fits inside it.
const ShutdownGrace = 5 * time.Second

// Boot timing files under RunDir: each holds CLOCK_BOOTTIME in
// nanoseconds, written by PID 1 as it starts and by the agent once its
// listeners are bound.
const (
	InitStartFile      = "init-start"
	AgentListeningFile = "agent-listening"
)

// BaseArgs come first on every command line: Firecracker's own defaults
// (reboot=k makes a guest reboot end the VMM, panic=1, no modules, the i8042
// probes and bounce buffers off, no PCI scan) with the serial console
// disabled (8250.nr_uarts=0): nothing reads it in production, and a guest
// writing to it would cost VM exits and host log space.
var BaseArgs = []string{
	"console=ttyS0", "reboot=k", "panic=1", "pci=off", "nomodule",
	"8250.nr_uarts=0", "i8042.noaux", "i8042.nomux", "i8042.dumbkbd", "swiotlb=noforce",
	"quiet", "loglevel=1",
}

// VMMArgs is what Firecracker appends to boot_args for a read-write root
// drive (is_root_device, not read-only). The QEMU boot test appends it too.
const VMMArgs = "root=" + RootDevice + " rw"

// Parameter names on the command line besides the kernel's own.
const (
	paramID        = "atelier.id"
	paramAgentPort = "atelier.agent_port"
	maxDNS         = 2
)

// Guest is what one guest is told at boot.
type Guest struct {
	// ID is the sandbox id; the host name is Hostname(ID).
	ID string
	// IP, Gateway and PrefixLen are the guest's IPv4 lease on the bridge.
	IP        netip.Addr
	Gateway   netip.Addr
	PrefixLen int
	// DNS holds one or two IPv4 servers: the kernel's ip= carries two.
	DNS []netip.Addr
	// AgentPort is the agent's vsock port (DefaultAgentPort when 0).
	AgentPort uint32
}

// Hostname is a guest's host name: the same in VMs and containers.
func Hostname(id string) string { return "sandbox-" + id }

// Validate reports every problem with g, each naming the field.
func (g Guest) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !ids.ValidSandboxID(g.ID) {
		bad("sandbox id %q is not a sandbox id", g.ID)
	}
	if !g.IP.Is4() {
		bad("guest ip %q is not an IPv4 address", addrString(g.IP))
	}
	if !g.Gateway.Is4() {
		bad("gateway %q is not an IPv4 address", addrString(g.Gateway))
	}
	if g.PrefixLen < 1 || g.PrefixLen > 32 {
		bad("prefix length %d outside [1, 32]", g.PrefixLen)
	}
	if len(g.DNS) == 0 || len(g.DNS) > maxDNS {
		bad("%d dns servers: the kernel's ip= carries one or two", len(g.DNS))
	}
	for _, d := range g.DNS {
		if !d.Is4() {
			bad("dns server %q is not an IPv4 address: the kernel's ip= carries IPv4 only", addrString(d))
		}
	}
	return errors.Join(errs...)
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// Netmask is the dotted mask of a prefix length.
func Netmask(prefixLen int) string {
	return net.IP(net.CIDRMask(prefixLen, 32)).String()
}

// IPArg is the kernel's ip= value for g:
// <client>::<gateway>:<netmask>:<hostname>:<device>:off:<dns0>:<dns1>.
func IPArg(g Guest) string {
	dns := []string{"", ""}
	for i, d := range g.DNS {
		if i < maxDNS {
			dns[i] = d.String()
		}
	}
	f := []string{g.IP.String(), "", g.Gateway.String(), Netmask(g.PrefixLen), Hostname(g.ID), Interface, "off", dns[0], dns[1]}
	return strings.TrimRight(strings.Join(f, ":"), ":")
}

// Cmdline is the kernel command line (Firecracker's boot_args) of g.
// Every value is checked first, so none can smuggle in another argument.
func Cmdline(g Guest) (string, error) {
	if g.AgentPort == 0 {
		g.AgentPort = DefaultAgentPort
	}
	if err := g.Validate(); err != nil {
		return "", err
	}
	args := append([]string(nil), BaseArgs...)
	args = append(args,
		"init="+InitPath,
		"ip="+IPArg(g),
		paramID+"="+g.ID,
		paramAgentPort+"="+strconv.FormatUint(uint64(g.AgentPort), 10),
	)
	return strings.Join(args, " "), nil
}

// Boot is what the guest reads back from its command line.
type Boot struct {
	Guest
	// Hostname is the host name field of ip=.
	Hostname string
	// Device is the device field of ip= (Interface).
	Device string
	// Init is the init= path.
	Init string
	// HasIP says whether ip= was present; without it the guest's network
	// is not the contract's to set up.
	HasIP bool
}

// Parse reads a kernel command line (/proc/cmdline). Fields it does not
// know are ignored; a malformed ip= or agent port is an error, as is a
// missing or invalid sandbox id when the line carries the contract's
// parameters at all.
func Parse(cmdline string) (Boot, error) {
	var b Boot
	var errs []error
	for _, f := range strings.Fields(cmdline) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			continue
		}
		switch k {
		case "init":
			b.Init = v
		case "ip":
			if err := parseIP(v, &b); err != nil {
				errs = append(errs, err)
			}
		case paramID:
			if !ids.ValidSandboxID(v) {
				errs = append(errs, fmt.Errorf("%s=%q is not a sandbox id", paramID, v))
				continue
			}
			b.ID = v
		case paramAgentPort:
			p, err := strconv.ParseUint(v, 10, 32)
			if err != nil || p == 0 {
				errs = append(errs, fmt.Errorf("%s=%q is not a vsock port", paramAgentPort, v))
				continue
			}
			b.AgentPort = uint32(p)
		}
	}
	if b.AgentPort == 0 {
		b.AgentPort = DefaultAgentPort
	}
	return b, errors.Join(errs...)
}

// parseIP reads the kernel's ip= value,
// <client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>:<ntp0>.
// Only the static form is the contract's; "off", "none", "dhcp" and the
// like leave the network alone.
func parseIP(v string, b *Boot) error {
	switch v {
	case "", "off", "none", "dhcp", "bootp", "rarp", "both", "any", "on":
		return nil
	}
	f := strings.Split(v, ":")
	get := func(i int) string {
		if i < len(f) {
			return f[i]
		}
		return ""
	}
	ip, err := netip.ParseAddr(get(0))
	if err != nil || !ip.Is4() {
		return fmt.Errorf("ip=: client address %q is not an IPv4 address", get(0))
	}
	b.IP, b.PrefixLen = ip, 32
	if s := get(2); s != "" {
		gw, err := netip.ParseAddr(s)
		if err != nil || !gw.Is4() {
			return fmt.Errorf("ip=: gateway %q is not an IPv4 address", s)
		}
		b.Gateway = gw
	}
	if m := get(3); m != "" {
		mask, err := netip.ParseAddr(m)
		if err != nil || !mask.Is4() {
			return fmt.Errorf("ip=: netmask %q is not an IPv4 mask", m)
		}
		a := mask.As4()
		ones, bits := net.IPv4Mask(a[0], a[1], a[2], a[3]).Size()
		if bits == 0 {
			return fmt.Errorf("ip=: netmask %q is not contiguous", m)
		}
		b.PrefixLen = ones
	}
	b.Hostname, b.Device = get(4), get(5)
	for _, s := range []string{get(7), get(8)} {
		if s == "" {
			continue
		}
		d, err := netip.ParseAddr(s)
		if err != nil || !d.Is4() {
			return fmt.Errorf("ip=: dns server %q is not an IPv4 address", s)
		}
		b.DNS = append(b.DNS, d)
	}
	b.HasIP = true
	return nil
}
