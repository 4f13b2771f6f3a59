package container

import (
	"fmt"
	"net/netip"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"atelier/internal/sandbox"
)

const (
	// GuestSocketDir is where the host's per-sandbox socket dir appears in
	// the guest; the agent listens on GuestSocket inside it.
	GuestSocketDir = "/run/atelier"
	GuestSocket    = GuestSocketDir + "/agent.sock"

	// cpuPeriod is the CFS period (µs); the quota is Vcpus periods.
	cpuPeriod = 100_000
	// pidsLimit stops a fork bomb from taking the host's pid space (32768
	// on small hosts) while leaving a browser, an editor and builds room.
	pidsLimit = 8192
	// shmMB is /dev/shm when the instance has no memory limit; Chromium
	// wants more than Docker's 64 MB.
	shmMB = 256
)

// capabilities are Docker's default set: root in the sandbox may own and
// chmod its files, bind low ports and switch users (sudo, su), but may not
// administer the host (SYS_ADMIN, SYS_MODULE, SYS_TIME, NET_ADMIN,
// SYS_PTRACE of foreign processes ...). In a user namespace they hold only
// over the sandbox's own namespaces and files: NET_RAW, for one, gives no
// raw sockets in the network namespace the host made. The agent needs no
// more: it runs commands as other users (SETUID, SETGID), owns files for
// them (CHOWN, FOWNER) and signals their processes (KILL).
var capabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// maskedPaths and readonlyPaths are runc's defaults: they hide the host's
// kernel memory, keys and timers and freeze its tunables.
var (
	maskedPaths = []string{
		"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
		"/sys/firmware", "/sys/devices/virtual/powercap",
	}
	readonlyPaths = []string{
		"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
	}
)

// cgroupSupport says which resource controllers the host lets runc use.
type cgroupSupport struct {
	CPU, Memory, Pids bool
}

// specParams is everything buildSpec needs besides the instance.
type specParams struct {
	AgentPath   string
	NetnsPath   string
	CgroupsPath string
	Cgroups     cgroupSupport
	// NoFile is the guest's open-file limit (soft and hard).
	NoFile uint64
	// Host files bind-mounted over the guest's /etc files and the socket dir.
	ResolvConf, Hosts, Hostname, SocketDir string
	// Sysfs is the host's mount of the sandbox's sysfs, bound at /sys.
	Sysfs string
	// IDMap, when set, puts the guest in a user namespace with that range.
	IDMap *idRange
	// Seccomp is the guest's syscall filter (nil: none).
	Seccomp *specs.LinuxSeccomp
}

// buildSpec is the OCI config of a sandbox: the agent's init as PID 1 on the
// sandbox's volume, in its own pid, mount, ipc, uts and cgroup namespaces and
// in the network namespace the network driver made.
func buildSpec(id string, inst sandbox.Instance, p specParams) *specs.Spec {
	shm := shmMB
	if inst.MemoryMB > 0 && inst.MemoryMB/2 < shm {
		shm = inst.MemoryMB / 2
	}
	spec := &specs.Spec{
		Version:  specs.Version,
		Hostname: Hostname(id),
		Root:     &specs.Root{Path: "rootfs"},
		Process: &specs.Process{
			User: specs.User{UID: 0, GID: 0},
			// init reaps orphans as PID 1 and keeps `serve` as its child, so
			// exit codes of the agent's own children are never stolen. The
			// kernel command line is the host's here, not the guest's, and
			// the network is set up from outside: serve only listens on the
			// socket the host reaches through the bind mount.
			Args: []string{p.AgentPath, "init", "--kernel-cmdline=false", "--",
				"--unix", GuestSocket, "--vsock-port", "0", "--sandbox-id", id},
			Env: []string{
				"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
				"HOME=/root",
				"TERM=xterm-256color",
				"LANG=C.UTF-8",
				"ATELIER_SANDBOX_ID=" + id,
				"ATELIER_AGENT_SOCKET=" + GuestSocket,
			},
			Cwd: "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  capabilities,
				Effective: capabilities,
				Permitted: capabilities,
			},
			Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: p.NoFile, Soft: p.NoFile}},
			// sudo and su for the image's user need setuid binaries, which
			// no_new_privs disables. In a user namespace the root they lead
			// to is an unprivileged host uid holding capabilities only over
			// the sandbox's own namespaces, so they stay allowed there.
			// Without one, that root is the host's root: no process of the
			// guest may gain privileges by exec (a process the dev user
			// runs cannot become root), and sudo does not work.
			NoNewPrivileges: p.IDMap == nil,
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", fmt.Sprintf("size=%dm", shm)}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			// The sandbox's own sysfs, mounted by the host in the sandbox's
			// network namespace (mountSysfs): in a user namespace the guest
			// may not mount sysfs for a network namespace it does not own.
			{Destination: "/sys", Type: "bind", Source: p.Sysfs, Options: []string{"bind", "ro", "nosuid", "noexec", "nodev"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
			// /run is scratch space, as on a booted system; the agent's
			// socket dir is mounted over part of it.
			{Destination: "/run", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=755"}},
			{Destination: GuestSocketDir, Type: "bind", Source: p.SocketDir, Options: []string{"bind", "rw", "nosuid", "nodev", "noexec"}},
			// Bind mounts, as Docker does, rather than writes into the volume:
			// runc resolves their targets inside the rootfs, so a symlink the
			// guest planted at /etc/resolv.conf cannot redirect a host write.
			{Destination: "/etc/resolv.conf", Type: "bind", Source: p.ResolvConf, Options: []string{"bind", "rw", "nosuid", "nodev", "noexec"}},
			{Destination: "/etc/hosts", Type: "bind", Source: p.Hosts, Options: []string{"bind", "rw", "nosuid", "nodev", "noexec"}},
			{Destination: "/etc/hostname", Type: "bind", Source: p.Hostname, Options: []string{"bind", "rw", "nosuid", "nodev", "noexec"}},
		},
		Annotations: map[string]string{
			annotationID:   id,
			annotationDisk: inst.Disk,
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.MountNamespace},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.CgroupNamespace},
				{Type: specs.NetworkNamespace, Path: p.NetnsPath},
			},
			CgroupsPath: p.CgroupsPath,
			Resources:   resources(inst, p.Cgroups),
			// The network sysctls (guestSysctls) are written from the host.
			MaskedPaths:   maskedPaths,
			ReadonlyPaths: readonlyPaths,
			Seccomp:       p.Seccomp,
		},
	}
	if r := p.IDMap; r != nil {
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
		m := []specs.LinuxIDMapping{{ContainerID: 0, HostID: r.HostID, Size: r.Size}}
		spec.Linux.UIDMappings, spec.Linux.GIDMappings = m, m
	}
	return spec
}

// resources limits CPU time to Vcpus cores and memory to MemoryMB, each
// only when the host has the controller (a limit runc cannot apply fails
// the whole start). Devices: only runc's defaults (null, zero, full,
// random, urandom, tty, ptmx, pts).
func resources(inst sandbox.Instance, cg cgroupSupport) *specs.LinuxResources {
	r := &specs.LinuxResources{
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
	}
	if cg.CPU && inst.Vcpus > 0 {
		quota := int64(inst.Vcpus) * cpuPeriod
		period := uint64(cpuPeriod)
		r.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	if cg.Memory && inst.MemoryMB > 0 {
		limit := int64(inst.MemoryMB) << 20
		r.Memory = &specs.LinuxMemory{Limit: &limit}
	}
	if cg.Pids {
		r.Pids = &specs.LinuxPids{Limit: pidsLimit}
	}
	return r
}

// Hostname is the guest's host name.
func Hostname(id string) string { return "sandbox-" + id }

// resolvConf renders /etc/resolv.conf for the DNS servers; every entry must
// be an IP address, so nothing else can reach the file.
func resolvConf(dns []string) (string, error) {
	var b strings.Builder
	b.WriteString("# written by the Atelier runtime\n")
	for _, s := range dns {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			return "", fmt.Errorf("dns server %q: not an IP address", s)
		}
		fmt.Fprintf(&b, "nameserver %s\n", a.Unmap())
	}
	return b.String(), nil
}

// hostsFile maps the sandbox's host name to its address (or to loopback
// when it has none), so tools that resolve their own name work offline.
func hostsFile(id, ip string) (string, error) {
	addr := "127.0.1.1"
	if ip != "" {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return "", fmt.Errorf("ip %q: not an IP address", ip)
		}
		addr = a.String()
	}
	return fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n", addr, Hostname(id)), nil
}
