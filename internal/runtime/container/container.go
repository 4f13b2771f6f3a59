// Package container is the container runtime: each sandbox is an OCI bundle
// run by runc, its root filesystem the sandbox's ext4 volume loop-mounted
// read-write, its network the per-sandbox namespace the network driver made,
// and its agent reached over a unix socket in a host directory bind-mounted
// at /run/atelier.
//
// Isolation is container-grade, not VM-grade: the guest shares the host
// kernel. It is confined by namespaces, including, where the host supports
// it, a user namespace that makes the guest's root an unprivileged host uid
// of the sandbox's own range (userns.go), by Docker's default seccomp
// profile, by Docker's default capability set, masked /proc paths, a device
// allow-list and, where the host's cgroups allow, CPU, memory and pids
// limits. It suits development hosts without KVM and CI; production
// sandboxes for untrusted code belong on the Firecracker runtime.
//
// Containers are detached from the manager: a manager restart or crash
// leaves them running, and every call here works from runc's state and the
// host's mount table, not from memory, so a new manager picks them up.
package container

import (
	"atelier/internal/keylock"
	"atelier/internal/loopdev"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"atelier/internal/ids"
	"atelier/internal/logkeeper"
	"atelier/internal/network"
	"atelier/internal/sandbox"
)

const (
	// namePrefix names Atelier's containers: atelier-<id>.
	namePrefix = "atelier-"

	// DefaultAgentPath is the agent binary inside the image.
	DefaultAgentPath = "/sbin/atelier-agent"
	// DefaultCgroupParent keeps sandboxes outside the manager's own cgroup,
	// so that stopping the manager's service does not kill them.
	DefaultCgroupParent = "/atelier"
	// DefaultStopTimeout is how long Stop waits after SIGTERM before SIGKILL.
	DefaultStopTimeout = 5 * time.Second

	// Files in a sandbox's bundle directory besides config.json and rootfs.
	diskRecord   = "disk" // the volume's path, written before the loop attach
	sysfsDir     = "sys"  // the sandbox's sysfs mount
	pidFile      = "pid"
	resolvFile   = "resolv.conf"
	hostsName    = "hosts"
	hostnameFile = "hostname"

	annotationID   = "org.atelier.sandbox-id"
	annotationDisk = "org.atelier.disk"

	// socketFSOptions size the tmpfs of a socket dir: room for the socket
	// and little else.
	socketFSOptions = "size=1m,nr_inodes=64,mode=0700"

	// nsfsMagic is NSFS_MAGIC: what a pinned namespace file reports.
	nsfsMagic = 0x6e736673
	// runTimeout bounds `runc run`, which normally takes well under a second.
	runTimeout = time.Minute
	// killWait bounds the wait for a SIGKILLed container to exit.
	killWait = 5 * time.Second
)

// ErrRunning is returned by Boot for a sandbox whose container is running.
var ErrRunning = errors.New("sandbox container is already running")

// Options configure a Driver. StateDir, BundleDir, SocketDir and LogDir are
// required and must be absolute.
type Options struct {
	// Runc is the runc binary (default "runc", looked up in PATH).
	Runc string
	// StateDir is runc's --root, e.g. {stateDir}/runc.
	StateDir string
	// BundleDir holds one OCI bundle per sandbox, e.g. {stateDir}/bundles.
	BundleDir string
	// SocketDir holds one directory per sandbox with the agent's socket,
	// e.g. {stateDir}/sockets.
	SocketDir string
	// LogDir receives the guest's console output as <id>.log, written and
	// rotated by a log keeper (Logs).
	LogDir string
	// Logs starts the keepers of the sandboxes' logs (default
	// logkeeper.Default()).
	Logs *logkeeper.Keepers
	// AgentPath is the agent binary inside the image (default
	// DefaultAgentPath).
	AgentPath string
	// CgroupParent is the cgroup under which sandboxes run (default
	// DefaultCgroupParent). An absolute path is from the hierarchy's root; a
	// relative one is under runc's (and so the manager's) own cgroup.
	CgroupParent string
	// StopTimeout is Stop's grace period after SIGTERM (default
	// DefaultStopTimeout).
	StopTimeout time.Duration
	// NetnsPath is the sandbox's network namespace, made by the network
	// driver (default /var/run/netns/atelier-<id>, network.NetnsPath).
	NetnsPath func(id string) string
	// UserNS says whether guests run in a user namespace (default
	// UserNSAuto: where the host supports it).
	UserNS UserNSMode
	// NoSeccomp leaves the seccomp filter out. Only for the benchmark that
	// measures what the filter costs, and for diagnosis; never a default.
	NoSeccomp bool
	Log       *slog.Logger
}

// DefaultOptions lays the driver's directories out under the seed's state
// and log directories.
func DefaultOptions(stateDir, logDir string) Options {
	return Options{
		StateDir:  filepath.Join(stateDir, "runc"),
		BundleDir: filepath.Join(stateDir, "bundles"),
		SocketDir: filepath.Join(stateDir, "sockets"),
		LogDir:    logDir,
	}
}

// DefaultNetnsPath is where the network driver pins a sandbox's namespace.
func DefaultNetnsPath(id string) string { return "/var/run/netns/atelier-" + id }

// Driver runs sandboxes as runc containers. It is safe for concurrent use;
// calls for one sandbox run one at a time.
type Driver struct {
	opts    Options
	runc    string
	log     *slog.Logger
	cgroups cgroupSupport
	noFile  uint64
	// userNS: guests run in a user namespace (Options.UserNS and the host).
	userNS      bool
	usernsTools usernsTools
	// seccomp is the filter every guest gets; nil with NoSeccomp.
	seccomp *specs.LinuxSeccomp
	locks   keylock.Mutex
}

var _ sandbox.Runtime = (*Driver)(nil)

// New checks the options, finds runc and detects which cgroup controllers
// the host offers. It changes nothing on the host.
func New(opts Options) (*Driver, error) {
	if opts.Runc == "" {
		opts.Runc = "runc"
	}
	if opts.AgentPath == "" {
		opts.AgentPath = DefaultAgentPath
	}
	if opts.CgroupParent == "" {
		opts.CgroupParent = DefaultCgroupParent
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = DefaultStopTimeout
	}
	if opts.NetnsPath == nil {
		opts.NetnsPath = DefaultNetnsPath
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.Logs == nil {
		opts.Logs = logkeeper.Default()
	}
	for _, d := range []struct{ name, path string }{
		{"StateDir", opts.StateDir}, {"BundleDir", opts.BundleDir},
		{"SocketDir", opts.SocketDir}, {"LogDir", opts.LogDir},
	} {
		if d.path == "" || !filepath.IsAbs(d.path) {
			return nil, fmt.Errorf("container runtime: %s must be an absolute path, got %q", d.name, d.path)
		}
	}
	if !filepath.IsAbs(opts.AgentPath) {
		return nil, fmt.Errorf("container runtime: AgentPath must be absolute, got %q", opts.AgentPath)
	}
	// Mount points are compared with the kernel's view, which has no
	// symlinks.
	bundles, err := canonical(opts.BundleDir)
	if err != nil {
		return nil, fmt.Errorf("container runtime: %w", err)
	}
	opts.BundleDir = bundles
	sockets, err := canonical(opts.SocketDir)
	if err != nil {
		return nil, fmt.Errorf("container runtime: %w", err)
	}
	opts.SocketDir = sockets
	// The agent's socket path must fit in sockaddr_un (108 bytes with NUL).
	if n := len(filepath.Join(opts.SocketDir, "xxxxxxxxxxxx", "agent.sock")); n > 107 {
		return nil, fmt.Errorf("container runtime: SocketDir %q makes agent socket paths of %d bytes (max 107)", opts.SocketDir, n)
	}
	runc, err := exec.LookPath(opts.Runc)
	if err != nil {
		return nil, fmt.Errorf("container runtime: find runc: %w", err)
	}
	d := &Driver{opts: opts, runc: runc, log: opts.Log.With("component", "runtime", "runtime", "container")}
	d.cgroups = detectCgroups(cgroupRoot)
	d.noFile = noFileLimit()
	switch opts.UserNS {
	case "", UserNSAuto, UserNSOn:
		tools, err := probeUserNS()
		if err == nil {
			// Boot makes the bundle dir itself searchable.
			err = searchableByOthers(filepath.Dir(opts.BundleDir))
		}
		if err == nil {
			err = searchableByOthers(opts.SocketDir)
		}
		if err != nil {
			if opts.UserNS == UserNSOn {
				return nil, fmt.Errorf("container runtime: user namespaces required (userNamespace: on) but unsupported here: %w", err)
			}
			d.log.Warn("USER NAMESPACES UNAVAILABLE: sandbox root will be the host's root, and a container escape is root on the host; "+
				"set sandbox.container.userNamespace (ATELIER_CONTAINER_USERNS) to off to silence this or on to refuse to start", "err", err)
		} else {
			d.userNS, d.usernsTools = true, tools
		}
	case UserNSOff:
	default:
		return nil, fmt.Errorf("container runtime: UserNS %q: want auto, on or off", opts.UserNS)
	}
	if !opts.NoSeccomp {
		sc, err := seccompProfile()
		if err != nil {
			return nil, fmt.Errorf("container runtime: %w", err)
		}
		d.seccomp = sc
	}
	d.log.Info("container runtime ready", "runc", runc, "cgroup_cpu", d.cgroups.CPU,
		"cgroup_memory", d.cgroups.Memory, "cgroup_pids", d.cgroups.Pids,
		"user_namespace", d.userNS, "seccomp", d.seccomp != nil)
	return d, nil
}

// bundleMode is the mode of the bundle directories: see boot.
func (d *Driver) bundleMode() os.FileMode {
	if d.userNS {
		return 0o711
	}
	return 0o700
}

// UserNS reports whether guests run in a user namespace.
func (d *Driver) UserNS() bool { return d.userNS }

// Seccomp reports whether guests get the seccomp filter.
func (d *Driver) Seccomp() bool { return d.seccomp != nil }

// wantNoFile is the guest's open-file limit where the host allows it
// (Docker's default): editors, bundlers and browsers open many files.
const wantNoFile = 1 << 20

// noFileLimit caps wantNoFile at this process's hard limit: raising a hard
// limit needs CAP_SYS_RESOURCE, which a manager may lack (our build
// machines do), and runc fails the start on a limit it cannot set.
func noFileLimit() uint64 {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Max > wantNoFile {
		return wantNoFile
	}
	return rl.Max
}

// Cgroups reports which resource limits Boot applies on this host.
func (d *Driver) Cgroups() (cpu, memory, pids bool) {
	return d.cgroups.CPU, d.cgroups.Memory, d.cgroups.Pids
}

// AgentSocket is the host path of the sandbox's agent socket.
func (d *Driver) AgentSocket(id string) string {
	return filepath.Join(d.socketDir(id), filepath.Base(GuestSocket))
}

// AgentDialer dials the sandbox's agent socket for agent.New. Use it
// rather than a plain unix dial of AgentSocket: the socket's directory is
// writable by the guest's root, which could replace agent.sock with a
// symlink to another host socket and have the manager send its requests
// there. This dialer opens the final component without following symlinks,
// checks that it is a socket and connects through /proc/self/fd.
func (d *Driver) AgentDialer(id string) func(ctx context.Context) (net.Conn, error) {
	path := d.AgentSocket(id)
	return func(ctx context.Context) (net.Conn, error) {
		c, err := dialNoFollow(ctx, path)
		if err != nil {
			return nil, fmt.Errorf("dial agent socket %s: %w", path, err)
		}
		return c, nil
	}
}

func dialNoFollow(ctx context.Context, path string) (net.Conn, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return nil, errors.New("not a socket")
	}
	var dl net.Dialer
	return dl.DialContext(ctx, "unix", "/proc/self/fd/"+strconv.Itoa(fd))
}

// LogPath is the file that receives the sandbox's console output.
func (d *Driver) LogPath(id string) string { return filepath.Join(d.opts.LogDir, id+".log") }

func (d *Driver) socketDir(id string) string { return filepath.Join(d.opts.SocketDir, id) }
func (d *Driver) bundleDir(id string) string { return filepath.Join(d.opts.BundleDir, id) }
func (d *Driver) rootfs(id string) string    { return filepath.Join(d.bundleDir(id), "rootfs") }

// Boot mounts the sandbox's volume and starts its container, returning once
// runc reports it running; waiting for the agent is the caller's job. It
// fails with ErrRunning when the container is already running, and cleans
// up what an earlier, interrupted run left behind. A failed Boot leaves no
// mount, loop device or bundle.
func (d *Driver) Boot(ctx context.Context, inst sandbox.Instance) error {
	id := inst.ID
	if !ids.ValidSandboxID(id) {
		return fmt.Errorf("boot sandbox: invalid sandbox id %q", id)
	}
	files, err := checkInstance(inst)
	if err != nil {
		return fmt.Errorf("boot sandbox %s: %w", id, err)
	}
	unlock, err := d.locks.Lock(ctx, id)
	if err != nil {
		return fmt.Errorf("boot sandbox %s: %w", id, err)
	}
	defer unlock()
	nsPath := d.opts.NetnsPath(id)
	if err := checkNetns(nsPath); err != nil {
		return fmt.Errorf("boot sandbox %s: %w (is the sandbox's network attached?)", id, err)
	}
	st, err := d.state(ctx, id)
	if err != nil && !errors.Is(err, errNoContainer) {
		return fmt.Errorf("boot sandbox %s: %w", id, err)
	}
	if err == nil && (st.Status == statusRunning || st.Status == statusPaused) {
		return fmt.Errorf("boot sandbox %s: %w (%s)", id, ErrRunning, st.Status)
	}
	// Whatever a crashed manager or a guest that exited on its own left.
	if err := d.teardown(ctx, id, 0, false); err != nil {
		return fmt.Errorf("boot sandbox %s: clean up earlier run: %w", id, err)
	}
	disk, err := canonical(inst.Disk)
	if err != nil {
		return fmt.Errorf("boot sandbox %s: %w", id, err)
	}
	// Two writers on one ext4 volume corrupt it.
	if loops, err := LoopsBacking(disk); err != nil {
		return fmt.Errorf("boot sandbox %s: %w", id, err)
	} else if len(loops) > 0 {
		return fmt.Errorf("boot sandbox %s: volume %s is in use by %s", id, disk, strings.Join(loops, ", "))
	}
	start := time.Now()
	pid, err := d.boot(ctx, inst, disk, nsPath, files)
	if err != nil {
		if terr := d.teardown(context.WithoutCancel(ctx), id, 0, false); terr != nil {
			d.log.Error("undo failed boot", "sandbox_id", id, "err", terr)
			err = errors.Join(err, fmt.Errorf("undo: %w", terr))
		}
		return fmt.Errorf("boot sandbox %s: %w", id, err)
	}
	d.log.Info("sandbox container started", "sandbox_id", id, "pid", pid,
		"duration_ms", float64(time.Since(start).Microseconds())/1000)
	return nil
}

// guestFiles are the generated /etc files.
type guestFiles struct{ resolv, hosts, hostname string }

func checkInstance(inst sandbox.Instance) (guestFiles, error) {
	if inst.Vcpus < 0 || inst.MemoryMB < 0 {
		return guestFiles{}, fmt.Errorf("negative resources (vcpus %d, memory %d MB)", inst.Vcpus, inst.MemoryMB)
	}
	if inst.Disk == "" {
		return guestFiles{}, errors.New("no volume")
	}
	fi, err := os.Stat(inst.Disk)
	if err != nil {
		return guestFiles{}, fmt.Errorf("volume: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return guestFiles{}, fmt.Errorf("volume %s is not a regular file", inst.Disk)
	}
	resolv, err := resolvConf(inst.DNS)
	if err != nil {
		return guestFiles{}, err
	}
	hosts, err := hostsFile(inst.ID, inst.IP)
	if err != nil {
		return guestFiles{}, err
	}
	return guestFiles{resolv: resolv, hosts: hosts, hostname: Hostname(inst.ID) + "\n"}, nil
}

// checkNetns accepts only a pinned namespace: a plain file left where one
// was unpinned would make runc fail later with a vaguer message.
func checkNetns(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("network namespace %s does not exist", path)
		}
		return fmt.Errorf("network namespace %s: %w", path, err)
	}
	if st.Type != nsfsMagic {
		return fmt.Errorf("%s is not a network namespace", path)
	}
	return nil
}

func (d *Driver) boot(ctx context.Context, inst sandbox.Instance, disk, nsPath string, files guestFiles) (int, error) {
	id := inst.ID
	bundle := d.bundleDir(id)
	var idmap *idRange
	if d.userNS {
		r, err := hostIDRange(inst.IP, inst.PrefixLen)
		if err != nil {
			return 0, err
		}
		idmap = &r
	}
	if err := os.MkdirAll(d.opts.BundleDir, d.bundleMode()); err != nil {
		return 0, fmt.Errorf("create bundle dir: %w", err)
	}
	if err := os.Chmod(d.opts.BundleDir, d.bundleMode()); err != nil {
		return 0, fmt.Errorf("create bundle dir: %w", err)
	}
	// In a user namespace runc mounts the rootfs and the bundle's /etc
	// files from inside it, where host root's directories are "others":
	// they must be searchable (0711; their listing stays private).
	if err := os.Mkdir(bundle, d.bundleMode()); err != nil && !errors.Is(err, os.ErrExist) {
		return 0, fmt.Errorf("create bundle: %w", err)
	}
	if err := os.Chmod(bundle, d.bundleMode()); err != nil {
		return 0, fmt.Errorf("create bundle: %w", err)
	}
	// Recorded before the attach, so that teardown finds the loop device
	// even when this process dies right after attaching it.
	if err := writeFile(filepath.Join(bundle, diskRecord), disk, 0o600); err != nil {
		return 0, err
	}
	rootfs := d.rootfs(id)
	if err := os.Mkdir(rootfs, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return 0, fmt.Errorf("create rootfs dir: %w", err)
	}
	if err := os.MkdirAll(d.opts.SocketDir, 0o755); err != nil {
		return 0, fmt.Errorf("create socket dir: %w", err)
	}
	if err := os.Mkdir(d.socketDir(id), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return 0, fmt.Errorf("create socket dir: %w", err)
	}
	// The guest's root can write into its socket dir, which would otherwise
	// be the host's disk: a small tmpfs bounds what it can put there. It
	// also starts each run without a stale socket.
	// In a user namespace it belongs to the guest's root, who makes the
	// socket there; the manager, root on the host, still reaches it.
	sockOpts := socketFSOptions
	if idmap != nil {
		sockOpts += fmt.Sprintf(",uid=%d,gid=%d", idmap.HostID, idmap.HostID)
	}
	if err := unix.Mount("tmpfs", d.socketDir(id), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC,
		sockOpts); err != nil {
		return 0, fmt.Errorf("mount socket dir: %w", err)
	}
	if err := os.MkdirAll(d.opts.LogDir, 0o755); err != nil {
		return 0, fmt.Errorf("create log dir: %w", err)
	}
	// A volume grown while the sandbox was stopped: its filesystem grows
	// here, as a VM guest grows its own at boot.
	if grown, err := growOffline(ctx, disk); err != nil {
		d.log.Warn("grow root filesystem", "sandbox_id", id, "err", err)
	} else if grown {
		d.log.Info("root filesystem grown to its volume", "sandbox_id", id)
	}
	dev, loop, err := loopdev.Attach(disk, false)
	if err != nil {
		return 0, err
	}
	err = d.mountRootfs(dev, rootfs, idmap)
	// Closing the handle leaves the mount as the device's only user; with
	// autoclear, the unmount then frees the device.
	loop.Close()
	if err != nil {
		return 0, fmt.Errorf("mount volume %s (%s) on %s: %w", disk, dev, rootfs, err)
	}
	for name, body := range map[string]string{resolvFile: files.resolv, hostsName: files.hosts, hostnameFile: files.hostname} {
		path := filepath.Join(bundle, name)
		if err := writeFile(path, body, 0o644); err != nil {
			return 0, err
		}
		// The guest's root may edit its /etc/hosts, as without a user
		// namespace; these copies are the sandbox's own.
		if idmap != nil {
			if err := os.Chown(path, int(idmap.HostID), int(idmap.HostID)); err != nil {
				return 0, fmt.Errorf("chown %s: %w", name, err)
			}
		}
	}
	if err := setNetSysctls(nsPath); err != nil {
		return 0, err
	}
	sysfs := filepath.Join(bundle, sysfsDir)
	if err := os.Mkdir(sysfs, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return 0, fmt.Errorf("create sysfs dir: %w", err)
	}
	if err := mountSysfs(nsPath, sysfs); err != nil {
		return 0, err
	}
	spec := buildSpec(id, inst, specParams{
		AgentPath:   d.opts.AgentPath,
		NetnsPath:   nsPath,
		CgroupsPath: cgroupsPath(d.opts.CgroupParent, containerName(id)),
		Cgroups:     d.cgroups,
		NoFile:      d.noFile,
		ResolvConf:  filepath.Join(bundle, resolvFile),
		Hosts:       filepath.Join(bundle, hostsName),
		Hostname:    filepath.Join(bundle, hostnameFile),
		SocketDir:   d.socketDir(id),
		Sysfs:       sysfs,
		IDMap:       idmap,
		Seccomp:     d.seccomp,
	})
	spec.Annotations[annotationDisk] = disk
	cfg, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return 0, fmt.Errorf("encode config.json: %w", err)
	}
	if err := writeFile(filepath.Join(bundle, "config.json"), string(cfg), 0o600); err != nil {
		return 0, err
	}
	if err := d.runcRun(ctx, id); err != nil {
		return 0, err
	}
	// runc exits 0 once the agent's init is exec'd; its pid file says which
	// process that is. Reading it costs nothing, `runc state` an exec.
	b, err := os.ReadFile(filepath.Join(bundle, pidFile))
	if err != nil {
		return 0, fmt.Errorf("read container pid: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("container pid file holds %q", b)
	}
	if processGone(pid) {
		return 0, fmt.Errorf("container exited right after start (see %s)", d.LogPath(id))
	}
	return pid, nil
}

// mountRootfs mounts the volume's filesystem on dev at rootfs: idmapped
// through the sandbox's range when idmap is set, plainly otherwise.
func (d *Driver) mountRootfs(dev, rootfs string, idmap *idRange) error {
	if idmap == nil {
		// nodev: device nodes on a volume the guest controls mean nothing.
		return unix.Mount(dev, rootfs, "ext4", unix.MS_NODEV, "")
	}
	ns, err := newUserNS(d.usernsTools, *idmap)
	if err != nil {
		return err
	}
	defer ns.Close()
	return mountIDMapped(dev, rootfs, ns)
}

// mountSysfs mounts, read-only at target, a sysfs made from inside the
// sandbox's network namespace: its /sys/class/net lists the sandbox's
// interfaces, not the host's. The mount is made detached and then moved,
// so target never holds a half-set-up filesystem.
func mountSysfs(nsPath, target string) error {
	return network.DoAt(nsPath, func() error {
		fsfd, err := unix.Fsopen("sysfs", unix.FSOPEN_CLOEXEC)
		if err != nil {
			return fmt.Errorf("fsopen sysfs: %w", err)
		}
		defer unix.Close(fsfd)
		if err := unix.FsconfigSetString(fsfd, "source", "sysfs"); err != nil {
			return fmt.Errorf("fsconfig sysfs: %w", err)
		}
		if err := unix.FsconfigCreate(fsfd); err != nil {
			return fmt.Errorf("create sysfs: %w", err)
		}
		mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC,
			unix.MOUNT_ATTR_RDONLY|unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
		if err != nil {
			return fmt.Errorf("fsmount sysfs: %w", err)
		}
		defer unix.Close(mfd)
		if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("mount sysfs at %s: %w", target, err)
		}
		return nil
	})
}

// guestSysctls are per network namespace: ping without NET_RAW for every
// user, and dev servers on ports below 1024 without root (in a user
// namespace the guest's root has no CAP_NET_BIND_SERVICE over a network
// namespace the host made, and no raw sockets there either).
var guestSysctls = [][2]string{
	{"net/ipv4/ping_group_range", "0 2147483647"},
	{"net/ipv4/ip_unprivileged_port_start", "0"},
}

// setNetSysctls writes guestSysctls into the sandbox's namespace from the
// host: a guest in a user namespace cannot write sysctls of a network
// namespace it does not own, so runc could not set them from inside.
func setNetSysctls(nsPath string) error {
	return network.DoAt(nsPath, func() error {
		for _, kv := range guestSysctls {
			if err := os.WriteFile(filepath.Join("/proc/sys", kv[0]), []byte(kv[1]), 0o644); err != nil {
				return fmt.Errorf("set sysctl %s in the sandbox's network namespace: %w", kv[0], err)
			}
		}
		return nil
	})
}

// runcRun starts the container detached. Its stdio is the write end of
// the sandbox's log keeper's pipe: runc passes it through to the guest's
// PID 1 (there is no terminal), and runc's own errors land there too. The
// keeper, not the guest, writes <id>.log, and rotates it by size. The
// container is not a child that dies with the manager: runc exits once it
// runs, and its session is its own, so signals to the manager's process
// group never reach it.
func (d *Driver) runcRun(ctx context.Context, id string) error {
	var offset int64
	if fi, err := os.Stat(d.LogPath(id)); err == nil {
		offset = fi.Size()
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	logw, err := d.opts.Logs.Start(ctx, d.LogPath(id))
	if err != nil {
		return fmt.Errorf("start sandbox log keeper: %w", err)
	}
	defer logw.Close()
	// Not cancelled with ctx: runc killed half-way leaves a half-made
	// container; a bounded wait is safer, and the caller undoes on error.
	runCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), runTimeout)
	defer cancel()
	bundle := d.bundleDir(id)
	cmd := d.runcCommand(runCtx, "run", "--detach", "--bundle", bundle,
		"--pid-file", filepath.Join(bundle, pidFile), containerName(id))
	cmd.Stdout, cmd.Stderr = logw, logw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Run(); err != nil {
		// No container holds the pipe now: the keeper writes what runc
		// said and ends.
		logw.Close()
		_ = d.opts.Logs.Stop(context.WithoutCancel(ctx), d.LogPath(id))
		return fmt.Errorf("runc run: %w: %s", err, runcMessage(readFrom(d.LogPath(id), offset, 4096)))
	}
	return nil
}

// readFrom returns at most max bytes of path from offset (the last ones).
func readFrom(path string, offset, max int64) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil
	}
	if offset > fi.Size() {
		offset = 0 // rotated since
	}
	if fi.Size()-offset > max {
		offset = fi.Size() - max
	}
	b, _ := io.ReadAll(io.NewSectionReader(f, offset, max))
	return b
}

func writeFile(path, body string, mode os.FileMode) error {
	if err := os.WriteFile(path, []byte(body), mode); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	return nil
}

// Stop shuts the sandbox down (SIGTERM, then SIGKILL after StopTimeout),
// deletes its container, unmounts its volume and detaches the loop device.
// The volume, the log and the (now empty) socket dir stay. An unknown or
// stopped sandbox is success.
func (d *Driver) Stop(ctx context.Context, id string) error {
	return d.shutdown(ctx, id, "stop", "stopped", d.opts.StopTimeout, false)
}

// Destroy kills the sandbox at once and removes its bundle, socket dir and
// log; the volume belongs to the storage driver. Already gone is success.
func (d *Driver) Destroy(ctx context.Context, id string) error {
	return d.shutdown(ctx, id, "destroy", "destroyed", 0, true)
}

func (d *Driver) shutdown(ctx context.Context, id, op, done string, grace time.Duration, purge bool) error {
	if !ids.ValidSandboxID(id) {
		return fmt.Errorf("%s sandbox: invalid sandbox id %q", op, id)
	}
	unlock, err := d.locks.Lock(ctx, id)
	if err != nil {
		return fmt.Errorf("%s sandbox %s: %w", op, id, err)
	}
	defer unlock()
	start := time.Now()
	if err := d.teardown(context.WithoutCancel(ctx), id, grace, purge); err != nil {
		return fmt.Errorf("%s sandbox %s: %w", op, id, err)
	}
	d.log.Info("sandbox container "+done, "sandbox_id", id,
		"duration_ms", float64(time.Since(start).Microseconds())/1000)
	return nil
}

// teardown undoes Boot in reverse: container, mount, loop device, bundle,
// then (purge) socket dir and log. Each step treats "already gone" as done
// and a failed step keeps what later steps need, so a retry finishes it.
func (d *Driver) teardown(ctx context.Context, id string, grace time.Duration, purge bool) error {
	if err := d.stopContainer(ctx, id, grace); err != nil {
		return err
	}
	bundle := d.bundleDir(id)
	// Which file each loop device serves, while the devices are still ours.
	bound, err := boundLoops()
	if err != nil {
		return err
	}
	sources, lazy, err := unmountAll(ctx, d.rootfs(id))
	if lazy {
		d.log.Warn("volume was busy; detached it lazily", "sandbox_id", id)
	}
	if err != nil {
		return err
	}
	devs := map[string]string{} // device -> the backing file it served us
	for _, s := range sources {
		if strings.HasPrefix(s, "/dev/loop") && bound[s] != "" {
			devs[s] = bound[s]
		}
	}
	if b, err := os.ReadFile(filepath.Join(bundle, diskRecord)); err == nil && len(b) > 0 {
		more, err := LoopsBacking(string(b))
		if err != nil {
			return err
		}
		want, err := canonical(string(b))
		if err != nil {
			return err
		}
		for _, dev := range more {
			devs[dev] = want
		}
	}
	for _, dev := range sortedKeys(devs) {
		if err := detachLoopOf(ctx, dev, devs[dev]); err != nil {
			return err
		}
	}
	if _, _, err := unmountAll(ctx, d.socketDir(id)); err != nil {
		return err
	}
	if _, _, err := unmountAll(ctx, filepath.Join(bundle, sysfsDir)); err != nil {
		return err
	}
	for _, name := range []string{"config.json", pidFile, resolvFile, hostsName, hostnameFile} {
		if err := removeIfExists(filepath.Join(bundle, name)); err != nil {
			return err
		}
	}
	// rmdir, never RemoveAll: should a mount survive, its files (the
	// user's volume) must not be deleted through it.
	for _, p := range []string{d.rootfs(id), filepath.Join(bundle, sysfsDir), filepath.Join(bundle, diskRecord), bundle} {
		if err := removeIfExists(p); err != nil {
			return err
		}
	}
	if !purge {
		// The container is gone, so is every writer of the keeper's pipe:
		// it ends once it has written their last words.
		return d.opts.Logs.Stop(ctx, d.LogPath(id))
	}
	// Empty once its tmpfs is gone.
	if err := removeIfExists(d.socketDir(id)); err != nil {
		return err
	}
	return d.opts.Logs.Remove(ctx, d.LogPath(id))
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// stopContainer ends the container's processes and deletes it from runc.
// With a grace period it sends SIGTERM first (the agent's init forwards it
// and exits); SIGKILL follows when the period runs out.
func (d *Driver) stopContainer(ctx context.Context, id string, grace time.Duration) error {
	name := containerName(id)
	st, err := d.state(ctx, id)
	if errors.Is(err, errNoContainer) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.live() {
		if st.Status == statusPaused {
			// A frozen process handles no signal, not even SIGKILL.
			if _, err := d.runcOutput(ctx, "resume", name); err != nil {
				d.log.Warn("resume before stop", "sandbox_id", id, "err", err)
			}
		}
		// SIGKILL and a pidfd wait even without a grace period: delete
		// --force alone polls for the exit in 100 ms steps.
		exited := st.Pid <= 0
		if !exited && grace > 0 && st.Status != statusCreated {
			if _, err := d.runcOutput(ctx, "kill", name, "TERM"); err != nil {
				d.log.Debug("send SIGTERM", "sandbox_id", id, "err", err)
			}
			exited = waitExit(ctx, st.Pid, grace)
			if !exited {
				d.log.Warn("sandbox ignored SIGTERM; killing it", "sandbox_id", id, "grace", grace.String())
			}
		}
		if !exited {
			if _, err := d.runcOutput(ctx, "kill", name, "KILL"); err != nil {
				d.log.Debug("send SIGKILL", "sandbox_id", id, "err", err)
			}
			waitExit(ctx, st.Pid, killWait)
		}
	}
	// --force also kills whatever is left in the container's cgroup.
	if _, err := d.runcOutput(ctx, "delete", "--force", name); err != nil && !errors.Is(err, errNoContainer) {
		return err
	}
	return nil
}

// waitExit waits until process pid has exited (a zombie counts), at most
// timeout. pid is the container's init as runc reported it.
func waitExit(ctx context.Context, pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return true
	}
	if err != nil {
		// No pidfd (kernel before 5.3): poll /proc.
		for time.Now().Before(deadline) && ctx.Err() == nil {
			if processGone(pid) {
				return true
			}
			time.Sleep(20 * time.Millisecond)
		}
		return processGone(pid)
	}
	defer unix.Close(fd)
	for {
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			return false
		}
		// Short slices keep a cancelled ctx noticed.
		ms := min(left, 100*time.Millisecond).Milliseconds() + 1
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(ms))
		if err != nil && !errors.Is(err, unix.EINTR) {
			return processGone(pid)
		}
		if n > 0 {
			return true
		}
	}
}

// processGone reports a process that no longer exists or is a zombie.
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the parenthesised command name.
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z' || b[i+2] == 'X'
}

// Alive reports whether the sandbox's container is running. A paused
// container counts as alive: its processes exist and Resume continues them.
func (d *Driver) Alive(ctx context.Context, id string) (bool, error) {
	if !ids.ValidSandboxID(id) {
		return false, fmt.Errorf("check sandbox: invalid sandbox id %q", id)
	}
	st, err := d.state(ctx, id)
	if errors.Is(err, errNoContainer) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("check sandbox %s: %w", id, err)
	}
	return st.Status == statusRunning || st.Status == statusPaused, nil
}

// Pause freezes the sandbox's processes; pausing a paused sandbox is success.
func (d *Driver) Pause(ctx context.Context, id string) error {
	return d.freeze(ctx, id, "pause", "paused", statusPaused)
}

// Resume thaws a paused sandbox; resuming a running sandbox is success.
func (d *Driver) Resume(ctx context.Context, id string) error {
	return d.freeze(ctx, id, "resume", "resumed", statusRunning)
}

func (d *Driver) freeze(ctx context.Context, id, op, done, target string) error {
	if !ids.ValidSandboxID(id) {
		return fmt.Errorf("%s sandbox: invalid sandbox id %q", op, id)
	}
	unlock, err := d.locks.Lock(ctx, id)
	if err != nil {
		return fmt.Errorf("%s sandbox %s: %w", op, id, err)
	}
	defer unlock()
	st, err := d.state(ctx, id)
	if err != nil {
		return fmt.Errorf("%s sandbox %s: %w", op, id, err)
	}
	if st.Status == target {
		return nil
	}
	if _, err := d.runcOutput(ctx, op, containerName(id)); err != nil {
		return fmt.Errorf("%s sandbox %s: %w", op, id, err)
	}
	d.log.Info("sandbox container "+done, "sandbox_id", id)
	return nil
}

// List returns the ids of the sandboxes that have a container under the
// driver's runc root, whatever its status, for the reconciler.
func (d *Driver) List(ctx context.Context) ([]string, error) {
	sts, err := d.list(ctx)
	if err != nil {
		return nil, fmt.Errorf("list sandbox containers: %w", err)
	}
	var out []string
	for _, st := range sts {
		if id, ok := strings.CutPrefix(st.ID, namePrefix); ok && ids.ValidSandboxID(id) {
			out = append(out, id)
		}
	}
	return sortedStrings(out), nil
}

// Bundles returns the ids that have a bundle directory: with List, what
// the reconciler compares with the store (a bundle without a container is
// the remains of an interrupted boot or stop; Destroy clears it).
func (d *Driver) Bundles() ([]string, error) {
	ents, err := os.ReadDir(d.opts.BundleDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list bundles: %w", err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && ids.ValidSandboxID(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Mounts returns the mount points under the bundle and socket dirs: the
// root filesystems and socket dirs of booted sandboxes. For leak checks.
func (d *Driver) Mounts() ([]string, error) {
	ms, err := d.mounts()
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.Point)
	}
	return sortedStrings(out), nil
}

func (d *Driver) mounts() ([]mountEntry, error) {
	all, err := readMounts()
	if err != nil {
		return nil, err
	}
	var out []mountEntry
	for _, m := range all {
		for _, dir := range []string{d.opts.BundleDir, d.opts.SocketDir} {
			if strings.HasPrefix(m.Point, filepath.Clean(dir)+string(filepath.Separator)) {
				out = append(out, m)
				break
			}
		}
	}
	return out, nil
}

// LoopDevices returns the loop devices the driver holds: those mounted
// under the bundle dir and those backing a volume recorded in a bundle.
// For leak checks.
func (d *Driver) LoopDevices() ([]string, error) {
	ms, err := d.mounts()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range ms {
		if strings.HasPrefix(m.Source, "/dev/loop") {
			out = append(out, m.Source)
		}
	}
	bundles, err := d.Bundles()
	if err != nil {
		return nil, err
	}
	for _, id := range bundles {
		b, err := os.ReadFile(filepath.Join(d.bundleDir(id), diskRecord))
		if err != nil || len(b) == 0 {
			continue
		}
		devs, err := LoopsBacking(string(b))
		if err != nil {
			return nil, err
		}
		out = append(out, devs...)
	}
	return sortedStrings(out), nil
}

// sortedStrings sorts and removes duplicates.
func sortedStrings(s []string) []string {
	sort.Strings(s)
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return sortedStrings(out)
}
