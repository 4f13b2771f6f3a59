package firecracker

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"

	"atelier/internal/bootcontract"
	"atelier/internal/runtime/firecracker/fcapi"
	"atelier/internal/sandbox"
)

// maxVcpus is Firecracker's vCPU limit (MachineConfiguration.vcpu_count).
const maxVcpus = 32

// linkNameRe is a Linux interface name (IFNAMSIZ 16 with the NUL).
var linkNameRe = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)

// bootPlan is the configuration sent to a fresh Firecracker, in order.
type bootPlan struct {
	machine fcapi.MachineConfiguration
	boot    fcapi.BootSource
	rootfs  fcapi.Drive
	eth0    fcapi.NetworkInterface
	vsock   fcapi.Vsock
}

// plan checks inst and builds its configuration. Everything that reaches
// the kernel command line is parsed first, so no field can smuggle in
// another boot argument (an init=, say); the command line itself is
// bootcontract.Cmdline's.
func (d *Driver) plan(inst sandbox.Instance) (bootPlan, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if err := checkID(inst.ID); err != nil {
		errs = append(errs, err)
	}
	if inst.Vcpus < 1 || inst.Vcpus > maxVcpus {
		bad("vcpus %d outside [1, %d]", inst.Vcpus, maxVcpus)
	}
	if inst.MemoryMB < 1 {
		bad("memory %d MiB is not positive", inst.MemoryMB)
	}
	ip, err := netip.ParseAddr(inst.IP)
	if err != nil || !ip.Is4() {
		bad("guest ip %q is not an IPv4 address", inst.IP)
	}
	gw, err := netip.ParseAddr(inst.Gateway)
	if err != nil || !gw.Is4() {
		bad("gateway %q is not an IPv4 address", inst.Gateway)
	}
	if inst.PrefixLen < 1 || inst.PrefixLen > 32 {
		bad("prefix length %d outside [1, 32]", inst.PrefixLen)
	}
	mac, err := net.ParseMAC(inst.MAC)
	if err != nil || len(mac) != 6 {
		bad("mac %q is not a 48-bit MAC address", inst.MAC)
	}
	dns := make([]netip.Addr, 0, len(inst.DNS))
	for _, s := range inst.DNS {
		a, err := netip.ParseAddr(s)
		if err != nil {
			bad("dns server %q is not an IP address", s)
			continue
		}
		dns = append(dns, a)
	}
	if err := checkDisk(inst.Disk); err != nil {
		errs = append(errs, err)
	}
	if !linkNameRe.MatchString(inst.Link) {
		bad("link %q is not an interface name", inst.Link)
	}
	if len(errs) > 0 {
		return bootPlan{}, errors.Join(errs...)
	}
	// The command line is the boot contract's, nobody else's.
	args, err := bootcontract.Cmdline(bootcontract.Guest{
		ID: inst.ID, IP: ip, Gateway: gw, PrefixLen: inst.PrefixLen, DNS: dns, AgentPort: d.opts.AgentPort,
	})
	if err != nil {
		return bootPlan{}, err
	}
	kernel, disk := d.opts.Kernel, inst.Disk
	if d.jailed() {
		// The jailed Firecracker sees its jail as /.
		kernel, disk = jailKernel, jailDisk
		if _, err := d.jailID(inst); err != nil {
			return bootPlan{}, err
		}
	}
	return bootPlan{
		machine: fcapi.MachineConfiguration{VcpuCount: inst.Vcpus, MemSizeMib: inst.MemoryMB},
		boot:    fcapi.BootSource{KernelImagePath: kernel, BootArgs: args},
		rootfs: fcapi.Drive{
			DriveID:      rootDriveID,
			PathOnHost:   disk,
			IsRootDevice: true,
			IsReadOnly:   new(false),
		},
		eth0: fcapi.NetworkInterface{IfaceID: ifaceID, HostDevName: inst.Link, GuestMAC: mac.String()},
		// Relative to the process's working directory (SocketDir, or the
		// jail's root), so the path a snapshot records can be bound
		// elsewhere by a restore.
		vsock: fcapi.Vsock{GuestCID: bootcontract.GuestCID, UDSPath: inst.ID + ".vsock"},
	}, nil
}

func checkDisk(p string) error {
	if p == "" || !filepath.IsAbs(p) {
		return fmt.Errorf("disk %q is not an absolute path", p)
	}
	return nil
}
