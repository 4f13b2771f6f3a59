// Package hostcheck answers "can this host run Atelier, and what is
// missing?": the kernel, KVM and who may open it, vhost-vsock,
// device-mapper thin provisioning, the cgroup version, user namespaces,
// free disk, the ports Atelier listens on and whether the DNS names point
// here. `atelier init` runs the checks before it changes anything and picks
// the runtime from them; `atelier doctor` runs them on a working host. Each
// result says what was found and, when something is wrong, how to fix it.
package hostcheck

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"atelier/internal/config"
	"atelier/internal/ids"
)

// Status of one check.
type Status string

const (
	OK   Status = "ok"
	Info Status = "info"
	Warn Status = "warn"
	// Fail stops init: Atelier cannot run until it is fixed.
	Fail Status = "fail"
)

// Result is one check's finding.
type Result struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Report is every result, and the runtime the host supports.
type Report struct {
	Results []Result `json:"results"`
	// Runtime is firecracker when KVM works, else container.
	Runtime       string `json:"runtime"`
	RuntimeReason string `json:"runtimeReason"`
}

// OK reports whether no check failed.
func (r Report) OK() bool {
	for _, x := range r.Results {
		if x.Status == Fail {
			return false
		}
	}
	return true
}

// Failed returns the failed results.
func (r Report) Failed() []Result {
	var out []Result
	for _, x := range r.Results {
		if x.Status == Fail {
			out = append(out, x)
		}
	}
	return out
}

// Host is where the checks look; zero fields take the real host's.
type Host struct {
	KVM        string // /dev/kvm
	VhostVsock string // /dev/vhost-vsock
	DMControl  string // /dev/mapper/control
	Proc       string // /proc
	CgroupRoot string // /sys/fs/cgroup
	// KernelRelease returns uname -r.
	KernelRelease func() (string, error)
	// LookupHost resolves a DNS name.
	LookupHost func(ctx context.Context, host string) ([]string, error)
	// LocalAddrs lists this host's addresses.
	LocalAddrs func() ([]netip.Addr, error)
	// ThinModule reports whether dm-thin-pool is built in or loadable.
	ThinModule func(release string) bool
	// LookPath finds a program.
	LookPath func(string) (string, error)
	// Runtime forces the runtime decision ("" chooses from KVM).
	Runtime string
}

func (h *Host) defaults() {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&h.KVM, "/dev/kvm")
	def(&h.VhostVsock, "/dev/vhost-vsock")
	def(&h.DMControl, "/dev/mapper/control")
	def(&h.Proc, "/proc")
	def(&h.CgroupRoot, "/sys/fs/cgroup")
	if h.KernelRelease == nil {
		h.KernelRelease = func() (string, error) {
			var u unix.Utsname
			if err := unix.Uname(&u); err != nil {
				return "", err
			}
			return unix.ByteSliceToString(u.Release[:]), nil
		}
	}
	if h.LookupHost == nil {
		h.LookupHost = net.DefaultResolver.LookupHost
	}
	if h.LocalAddrs == nil {
		h.LocalAddrs = localAddrs
	}
	if h.ThinModule == nil {
		h.ThinModule = thinModule
	}
	if h.LookPath == nil {
		h.LookPath = exec.LookPath
	}
}

// Run checks the host for cfg.
func Run(ctx context.Context, cfg *config.Config, h Host) Report {
	h.defaults()
	var rep Report
	add := func(r Result) { rep.Results = append(rep.Results, r) }

	release, kerr := h.KernelRelease()
	kvmOK, kvmDetail := KVMWorks(h.KVM)
	rep.Runtime, rep.RuntimeReason = PickRuntime(h)

	add(kernelCheck(release, kerr, rep.Runtime))
	kvm := Result{Name: "kvm", Status: OK, Detail: kvmDetail}
	if !kvmOK {
		kvm.Status = Info
		kvm.Fix = "for Firecracker microVMs: a bare-metal host or a VM with nested virtualisation, the kvm_intel or kvm_amd module loaded (modprobe kvm_intel)"
		if rep.Runtime == "firecracker" {
			kvm.Status = Fail
		}
	}
	add(kvm)
	add(Result{Name: "runtime", Status: OK, Detail: rep.Runtime + ": " + rep.RuntimeReason})
	if rep.Runtime == "firecracker" {
		add(firecrackerCheck(cfg))
	} else {
		add(userNSCheck(h.Proc))
		add(toolCheck(h.LookPath, "runc", "runc", "container sandboxes"))
	}
	add(vsockCheck(h.VhostVsock))
	add(thinCheck(h.DMControl, release, h.ThinModule))
	add(cgroupCheck(h.CgroupRoot))
	add(diskCheck("disk "+cfg.Sandbox.StateDir, cfg.Sandbox.StateDir, 20<<30, 5<<30, "sandbox disks and images"))
	add(diskCheck("disk "+cfg.Server.DataDir, cfg.Server.DataDir, 1<<30, 100<<20, "the database"))
	for _, p := range Ports(cfg) {
		add(portCheck(h.Proc, cfg.ListenHost(), p))
	}
	rep.Results = append(rep.Results, dnsChecks(ctx, cfg, h)...)
	return rep
}

// PickRuntime is firecracker when KVM works, else container, and why;
// h.Runtime, when set, wins.
func PickRuntime(h Host) (runtime, reason string) {
	h.defaults()
	if h.Runtime != "" {
		return h.Runtime, "chosen by the operator"
	}
	if ok, detail := KVMWorks(h.KVM); ok {
		return "firecracker", "KVM works: " + detail
	} else {
		return "container", "no usable KVM (" + detail + "): sandboxes are runc containers, container-grade isolation rather than VM-grade"
	}
}

// KVMWorks opens path and asks for KVM's API version, which must be 12 (the
// only stable one): a device node that exists but cannot be opened, or
// answers something else, cannot run Firecracker.
func KVMWorks(path string) (bool, string) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return false, path + " does not exist"
		case errors.Is(err, fs.ErrPermission):
			return false, path + " cannot be opened by this user (" + describeMode(path) + ")"
		}
		return false, "open " + path + ": " + err.Error()
	}
	defer f.Close()
	const kvmGetAPIVersion = 0xAE00 // _IO(KVMIO, 0x00)
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	if err != nil {
		return false, path + " does not answer KVM_GET_API_VERSION: " + err.Error()
	}
	if v != 12 {
		return false, fmt.Sprintf("%s answers KVM API version %d, not 12", path, v)
	}
	return true, fmt.Sprintf("%s answers KVM API version 12 (%s)", path, describeMode(path))
}

func describeMode(path string) string {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return err.Error()
	}
	return fmt.Sprintf("mode %04o, uid %d, gid %d", st.Mode&0o7777, st.Uid, st.Gid)
}

// ParseRelease returns the major and minor version of a kernel release.
func ParseRelease(r string) (major, minor int, ok bool) {
	a, rest, found := strings.Cut(r, ".")
	if !found {
		return 0, 0, false
	}
	b := rest
	if i := strings.IndexFunc(rest, func(c rune) bool { return c < '0' || c > '9' }); i >= 0 {
		b = rest[:i]
	}
	maj, err1 := strconv.Atoi(a)
	min, err2 := strconv.Atoi(b)
	return maj, min, err1 == nil && err2 == nil
}

func kernelCheck(release string, err error, runtime string) Result {
	r := Result{Name: "kernel", Status: OK, Detail: "Linux " + release}
	if err != nil {
		return Result{Name: "kernel", Status: Warn, Detail: "uname: " + err.Error()}
	}
	maj, min, ok := ParseRelease(release)
	v := maj*1000 + min
	switch {
	case !ok:
		r.Status, r.Detail = Warn, "cannot read the kernel version "+release
	case v < 5010:
		r.Status, r.Fix = Fail, "Atelier needs Linux 5.10 or later: upgrade the kernel (Debian 12 ships 6.1)"
	case runtime == "container" && v < 5012:
		r.Status, r.Fix = Warn, "container sandboxes need Linux 5.12+ for idmapped mounts (their user namespaces); upgrade the kernel"
	}
	return r
}

func firecrackerCheck(cfg *config.Config) Result {
	fc := cfg.Advanced.Server.Firecracker
	var missing []string
	for _, p := range []string{fc.BinaryPath, fc.JailerPath} {
		if p == "" {
			continue
		}
		if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return firecrackerVersion(fc)
	}
	return Result{Name: "firecracker", Status: Fail, Detail: "missing " + strings.Join(missing, ", "),
		Fix: fmt.Sprintf("install Firecracker v%[1]s: unpack firecracker-v%[1]s-x86_64.tgz from the Firecracker releases and copy its firecracker and jailer binaries to %s and %s (advanced.server.firecracker.binaryPath, jailerPath)",
			fc.Version, fc.BinaryPath, fc.JailerPath)}
}

// firecrackerVersion compares what the binary says it is with
// advanced.server.firecracker.version, the release the driver's API calls
// follow: another release may refuse or misread them.
func firecrackerVersion(fc config.Firecracker) Result {
	r := Result{Name: "firecracker"}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, fc.BinaryPath, "--version").Output()
	have := ""
	if f := strings.Fields(string(out)); err == nil && len(f) >= 2 && f[0] == "Firecracker" {
		have = strings.TrimPrefix(f[1], "v")
	}
	switch {
	case have == "":
		r.Status, r.Detail = Warn, fmt.Sprintf("%s --version did not name a Firecracker release (%v)", fc.BinaryPath, err)
		r.Fix = fmt.Sprintf("install Firecracker v%s at %s (advanced.server.firecracker.binaryPath)", fc.Version, fc.BinaryPath)
	case have != fc.Version:
		r.Status, r.Detail = Warn, fmt.Sprintf("%s is Firecracker %s, not %s", fc.BinaryPath, have, fc.Version)
		r.Fix = fmt.Sprintf("install Firecracker v%s (the release Atelier's API calls follow), or set advanced.server.firecracker.version to %s if you mean to run it", fc.Version, have)
	default:
		r.Status, r.Detail = OK, "Firecracker "+have+" at "+fc.BinaryPath
	}
	return r
}

func userNSCheck(proc string) Result {
	b, err := os.ReadFile(filepath.Join(proc, "sys/user/max_user_namespaces"))
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n == 0 {
		return Result{Name: "user namespaces", Status: Warn, Detail: "user namespaces are off",
			Fix: "sysctl -w user.max_user_namespaces=15000 (container sandboxes otherwise run as host root; sandbox.container.userNamespace)"}
	}
	return Result{Name: "user namespaces", Status: OK, Detail: fmt.Sprintf("max_user_namespaces %d", n)}
}

func toolCheck(look func(string) (string, error), prog, pkg, what string) Result {
	if p, err := look(prog); err == nil {
		return Result{Name: prog, Status: OK, Detail: p}
	}
	return Result{Name: prog, Status: Warn, Detail: prog + " not found (needed by " + what + ")",
		Fix: "apt-get install " + pkg + " (atelier init installs it)"}
}

func vsockCheck(path string) Result {
	if _, err := os.Stat(path); err == nil {
		return Result{Name: "vhost-vsock", Status: OK, Detail: path + " present"}
	}
	return Result{Name: "vhost-vsock", Status: Info, Detail: path + " absent; not needed: Firecracker's vsock is its own (hybrid vsock over a unix socket)"}
}

func thinCheck(control, release string, module func(string) bool) Result {
	f, err := os.OpenFile(control, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return Result{Name: "device-mapper", Status: Info,
			Detail: "no device-mapper (" + err.Error() + "): volumes are reflink clones of files on an XFS pool",
			Fix:    "for LVM thin snapshots: a kernel with CONFIG_BLK_DEV_DM and dm-thin-pool"}
	}
	f.Close()
	if !module(release) {
		return Result{Name: "device-mapper", Status: Info, Detail: "device-mapper present, thin-pool target not found: volumes are reflink clones on an XFS pool"}
	}
	return Result{Name: "device-mapper", Status: OK, Detail: "device-mapper with thin provisioning: volumes are LVM thin snapshots"}
}

// thinModule looks for dm-thin-pool loaded, built in or on disk.
func thinModule(release string) bool {
	if _, err := os.Stat("/sys/module/dm_thin_pool"); err == nil {
		return true
	}
	if b, err := os.ReadFile("/lib/modules/" + release + "/modules.builtin"); err == nil && strings.Contains(string(b), "dm-thin-pool.ko") {
		return true
	}
	m, _ := filepath.Glob("/lib/modules/" + release + "/kernel/drivers/md/dm-thin-pool.ko*")
	return len(m) > 0
}

func cgroupCheck(root string) Result {
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return Result{Name: "cgroup", Status: Warn, Detail: "statfs " + root + ": " + err.Error()}
	}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		return Result{Name: "cgroup", Status: OK, Detail: "cgroup v2 (unified)"}
	}
	return Result{Name: "cgroup", Status: Warn, Detail: "cgroup v1 or hybrid at " + root,
		Fix: "boot with systemd.unified_cgroup_hierarchy=1 for cgroup v2: per-sandbox CPU and memory limits rely on it"}
}

// diskCheck measures free space where path is or would be created.
func diskCheck(name, path string, want, need uint64, what string) Result {
	p := path
	for {
		if _, err := os.Stat(p); err == nil || p == "/" || p == "." {
			break
		}
		p = filepath.Dir(p)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		return Result{Name: name, Status: Warn, Detail: "statfs " + p + ": " + err.Error()}
	}
	free := st.Bavail * uint64(st.Bsize)
	r := Result{Name: name, Status: OK, Detail: fmt.Sprintf("%s free on %s (for %s)", gib(free), p, what)}
	switch {
	case free < need:
		r.Status, r.Fix = Fail, fmt.Sprintf("free at least %s there, %s recommended", gib(need), gib(want))
	case free < want:
		r.Status, r.Fix = Warn, fmt.Sprintf("%s or more is recommended", gib(want))
	}
	return r
}

func gib(b uint64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }

// Port is one listener of the manager.
type Port struct {
	Key, Env string
	Port     int
	What     string
}

// Ports lists the TCP ports the manager binds.
func Ports(cfg *config.Config) []Port {
	return []Port{
		{"domain.httpPort", "ATELIER_HTTP_PORT", cfg.Domain.HTTPPort, "the edge (HTTP, ACME challenges)"},
		{"domain.httpsPort", "ATELIER_HTTPS_PORT", cfg.Domain.HTTPSPort, "the edge (HTTPS)"},
		{"domain.ssh.port", "ATELIER_SSH_PROXY_PORT", cfg.Domain.SSH.Port, "the SSH proxy"},
		{"server.port", "ATELIER_SERVER_PORT", cfg.Server.Port, "the manager API"},
	}
}

func portCheck(proc, host string, p Port) Result {
	name := fmt.Sprintf("port %d", p.Port)
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p.Port)))
	if err == nil {
		l.Close()
		return Result{Name: name, Status: OK, Detail: "free for " + p.What}
	}
	if !errors.Is(err, unix.EADDRINUSE) {
		return Result{Name: name, Status: Warn, Detail: "cannot bind it: " + err.Error(),
			Fix: "run as root (ports below 1024 need it)"}
	}
	owners := PortOwners(proc, p.Port)
	for _, o := range owners {
		if o.Comm == "atelier" {
			return Result{Name: name, Status: OK, Detail: fmt.Sprintf("in use by atelier (pid %d) for %s", o.PID, p.What)}
		}
	}
	who := "another program"
	if len(owners) > 0 {
		who = fmt.Sprintf("%s (pid %d)", owners[0].Comm, owners[0].PID)
	}
	return Result{Name: name, Status: Fail, Detail: "in use by " + who + "; Atelier needs it for " + p.What,
		Fix: fmt.Sprintf("stop %s, or set %s (%s) to another port", who, p.Key, p.Env)}
}

// Owner is a process holding a socket.
type Owner struct {
	PID  int
	Comm string
}

// PortOwners finds the processes listening on TCP port in this network
// namespace: the socket inodes of /proc/net/tcp{,6} in LISTEN state, then
// the processes with a descriptor on one of them.
func PortOwners(proc string, port int) []Owner {
	inodes := map[string]bool{}
	for _, f := range []string{"net/tcp", "net/tcp6"} {
		b, err := os.ReadFile(filepath.Join(proc, f))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 10 || fs[3] != "0A" {
				continue
			}
			_, hexPort, ok := strings.Cut(fs[1], ":")
			if n, err := strconv.ParseUint(hexPort, 16, 16); ok && err == nil && int(n) == port {
				inodes["socket:["+fs[9]+"]"] = true
			}
		}
	}
	if len(inodes) == 0 {
		return nil
	}
	var out []Owner
	dirs, _ := os.ReadDir(proc)
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join(proc, d.Name(), "fd"))
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join(proc, d.Name(), "fd", fd.Name()))
			if err == nil && inodes[link] {
				comm, _ := os.ReadFile(filepath.Join(proc, d.Name(), "comm"))
				out = append(out, Owner{PID: pid, Comm: strings.TrimSpace(string(comm))})
				break
			}
		}
	}
	return out
}

func dnsChecks(ctx context.Context, cfg *config.Config, h Host) []Result {
	if cfg.IsLocal() {
		return []Result{{Name: "dns", Status: Info, Detail: cfg.Domain.BaseDomain + " is local: no DNS needed"}}
	}
	local, _ := h.LocalAddrs()
	names := []struct{ label, host string }{
		{"dashboard", cfg.Domain.Dashboard},
		{"ssh", cfg.Domain.SSH.Hostname},
		// A random name stands for every sandbox host: only a wildcard
		// record answers it.
		{"sandbox hosts", "atelier-check-" + ids.New(8) + "." + cfg.Domain.BaseDomain},
	}
	var out []Result
	for _, n := range names {
		name := "dns " + n.label
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		addrs, err := h.LookupHost(cctx, n.host)
		cancel()
		record := n.host
		if n.label == "sandbox hosts" {
			record = "*." + cfg.Domain.BaseDomain
		}
		if err != nil || len(addrs) == 0 {
			out = append(out, Result{Name: name, Status: Fail, Detail: n.host + " does not resolve",
				Fix: "create an A (or AAAA) record " + record + " pointing at this host's public address"})
			continue
		}
		if pointsHere(addrs, local) {
			out = append(out, Result{Name: name, Status: OK, Detail: n.host + " → " + strings.Join(addrs, ", ") + " (this host)"})
			continue
		}
		out = append(out, Result{Name: name, Status: Warn, Detail: n.host + " → " + strings.Join(addrs, ", ") + ", not an address of this host",
			Fix: "point " + record + " here, unless a NAT or load balancer forwards ports 80, 443 and the SSH port to this host"})
	}
	return out
}

func pointsHere(addrs []string, local []netip.Addr) bool {
	for _, a := range addrs {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			continue
		}
		for _, l := range local {
			if ip.Unmap() == l.Unmap() {
				return true
			}
		}
	}
	return false
}

func localAddrs() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range as {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr())
		}
	}
	return out, nil
}
