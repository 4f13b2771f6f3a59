package fctest

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The fake jailer follows Firecracker v1.14.1's jailer as its
// documentation (docs/jailer.md) describes it: the same arguments with the
// same checks, the chroot at <chroot-base>/<exec-file name>/<id>/root with
// the exec file copied in, the cgroups written (for real) under
// <cgroup mount>/<parent-cgroup>/<id>, /dev/net/tun, /dev/kvm and
// /dev/urandom made and chowned, a real pivot_root, the uid and gid dropped,
// and an exec of the copy with --id and the timing arguments before the
// ones after "--". The chroot is the jailer's: a mount namespace of its
// own and pivot_root. It differs in two places, both for the test's sake: it
// records its own invocation (<record dir>/jailer-<id>.json), and it hands
// the fake firecracker its spec and request log as open files, since the
// paths are outside the chroot.

// JailerRecord is one invocation of the fake jailer.
type JailerRecord struct {
	Argv       []string `json:"argv"`
	ChrootDir  string   `json:"chrootDir"`
	CgroupDirs []string `json:"cgroupDirs"`
}

// JailerRecordPath is where the fake jailer for id records itself.
func JailerRecordPath(dir, id string) string { return filepath.Join(dir, "jailer-"+id+".json") }

// jailerArgs are the jailer's arguments after parsing.
type jailerArgs struct {
	single map[string]string
	multi  map[string][]string
	flags  map[string]bool
	extra  []string
}

var (
	jailerSingle   = map[string]string{"id": "", "exec-file": "", "uid": "", "gid": "", "chroot-base-dir": "/srv/jailer", "netns": "", "cgroup-version": "1", "parent-cgroup": ""}
	jailerMulti    = map[string]bool{"cgroup": true, "resource-limit": true}
	jailerFlags    = map[string]bool{"daemonize": true, "new-pid-ns": true, "version": true, "help": true}
	jailerRequired = []string{"id", "exec-file", "uid", "gid"}
)

// parseJailerArgs accepts "--name value" for valued arguments, "--name"
// for flags, and hands everything after "--" to the jailed binary.
func parseJailerArgs(args []string) (jailerArgs, error) {
	a := jailerArgs{single: map[string]string{}, multi: map[string][]string{}, flags: map[string]bool{}}
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			a.extra = args[i+1:]
			break
		}
		name, ok := strings.CutPrefix(arg, "--")
		if !ok || name == "" {
			return a, fmt.Errorf("Found argument '%s' which wasn't expected, or isn't valid in this context", arg)
		}
		if jailerFlags[name] {
			a.flags[name] = true
			continue
		}
		_, single := jailerSingle[name]
		if !single && !jailerMulti[name] {
			return a, fmt.Errorf("Found argument '%s' which wasn't expected, or isn't valid in this context", arg)
		}
		if i+1 >= len(args) || strings.HasPrefix(args[i+1], "--") {
			return a, fmt.Errorf("The argument '%s' requires a value, but none was supplied", arg)
		}
		v := args[i+1]
		i++
		if single {
			if _, dup := a.single[name]; dup {
				return a, fmt.Errorf("The argument '%s' was provided more than once.", arg)
			}
			a.single[name] = v
		} else {
			a.multi[name] = append(a.multi[name], v)
		}
	}
	for _, r := range jailerRequired {
		if _, ok := a.single[r]; !ok {
			return a, fmt.Errorf("Argument '%s' required, but not found.", r)
		}
	}
	for k, def := range jailerSingle {
		if _, ok := a.single[k]; !ok && def != "" {
			a.single[k] = def
		}
	}
	return a, nil
}

var jailerIDRe = regexp.MustCompile(`^[a-zA-Z0-9-]{1,64}$`)

// pathComponentsSafe refuses ".", ".." and absolute paths, as the jailer
// does for --parent-cgroup and cgroup file names.
func pathComponentsSafe(p string) bool {
	if p == "" || strings.HasPrefix(p, "/") {
		return false
	}
	for _, c := range strings.Split(p, "/") {
		if c == "." || c == ".." {
			return false
		}
	}
	return true
}

// RunFakeJailer is the fake jailer's main. It returns only on failure.
func RunFakeJailer(args []string) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "Jailer error: "+format+"\n", args...)
		return 1
	}
	start := time.Now()
	a, err := parseJailerArgs(args)
	if err != nil {
		return fail("Failed to parse arguments: %v", err)
	}
	id := a.single["id"]
	if !jailerIDRe.MatchString(id) {
		return fail("Invalid instance ID: %q", id)
	}
	exec, err := filepath.EvalSymlinks(a.single["exec-file"])
	if err != nil {
		return fail("Failed to canonicalize path %s: %v", a.single["exec-file"], err)
	}
	if st, err := os.Stat(exec); err != nil || !st.Mode().IsRegular() {
		return fail("%s is not a file", exec)
	}
	execName := filepath.Base(exec)
	base, err := filepath.EvalSymlinks(a.single["chroot-base-dir"])
	if err != nil {
		return fail("Failed to canonicalize path %s: %v", a.single["chroot-base-dir"], err)
	}
	if st, err := os.Stat(base); err != nil || !st.IsDir() {
		return fail("%s is not a directory", base)
	}
	chroot := filepath.Join(base, execName, id, "root")
	uid, err := strconv.ParseUint(a.single["uid"], 10, 32)
	if err != nil {
		return fail("Invalid uid: %s", a.single["uid"])
	}
	gid, err := strconv.ParseUint(a.single["gid"], 10, 32)
	if err != nil {
		return fail("Invalid gid: %s", a.single["gid"])
	}
	parent := a.single["parent-cgroup"]
	if parent == "" {
		parent = execName
	}
	if !pathComponentsSafe(parent) {
		return fail("Parent cgroup path is invalid")
	}
	version, err := strconv.ParseUint(a.single["cgroup-version"], 10, 8)
	if err != nil || (version != 1 && version != 2) {
		return fail("Invalid cgroup version: %s", a.single["cgroup-version"])
	}
	type cgProp struct{ file, value, controller string }
	var props []cgProp
	for _, cg := range a.multi["cgroup"] {
		parts := strings.Split(cg, "=")
		if len(parts) != 2 || parts[1] == "" {
			return fail("Invalid format for cgroups: %s", cg)
		}
		if !pathComponentsSafe(parts[0]) {
			return fail("Invalid cgroup file: %s", cg)
		}
		ctl, _, ok := strings.Cut(parts[0], ".")
		if !ok {
			return fail("Invalid format for cgroups: %s", cg)
		}
		props = append(props, cgProp{parts[0], parts[1], ctl})
	}
	noFile := uint64(2048)
	for _, rl := range a.multi["resource-limit"] {
		name, v, ok := strings.Cut(rl, "=")
		if !ok {
			return fail("Invalid format for resource limits: %s", rl)
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return fail("Invalid limit value %s: %v", v, err)
		}
		switch name {
		case "no-file":
			noFile = n
		case "fsize":
		default:
			return fail("Invalid resource argument: %s", name)
		}
	}
	if a.single["netns"] != "" || a.flags["daemonize"] || a.flags["new-pid-ns"] {
		return fail("fctest: --netns, --daemonize and --new-pid-ns are not modelled")
	}

	// The test channel, opened while the test's paths are still reachable.
	var extraFiles []*os.File
	env := []string{}
	recDir := os.Getenv(EnvRecordDir)
	if p := os.Getenv(EnvSpec); p != "" {
		f, err := os.Open(p)
		if err != nil {
			return fail("fctest: open spec: %v", err)
		}
		extraFiles = append(extraFiles, f)
		env = append(env, EnvSpecFD+"="+strconv.Itoa(2+len(extraFiles)))
	}
	if recDir != "" {
		f, err := os.OpenFile(filepath.Join(recDir, id+".jsonl"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return fail("fctest: open request record: %v", err)
		}
		extraFiles = append(extraFiles, f)
		env = append(env, EnvRecordFD+"="+strconv.Itoa(2+len(extraFiles)))
	}
	for _, k := range []string{EnvFail, EnvIgnoreCtrlAltDel, EnvHostileVsock, EnvHostileTarget, EnvConsoleFlood} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}

	if err := os.MkdirAll(chroot, 0o755); err != nil {
		return fail("Failed to create directory %s: %v", chroot, err)
	}
	if err := copyExec(exec, filepath.Join(chroot, execName), int(uid), int(gid)); err != nil {
		return fail("%v", err)
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: noFile, Max: noFile}); err != nil {
		return fail("Failed to set resource limit: %v", err)
	}
	var cgDirs []string
	for _, p := range props {
		dir, err := cgroupDir(int(version), p.controller, parent, id)
		if err != nil {
			return fail("%v", err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fail("Failed to create cgroup %s: %v", dir, err)
		}
		if version == 2 {
			if err := enableControllers(filepath.Dir(dir), p.controller); err != nil {
				return fail("%v", err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, p.file), []byte(p.value+"\n"), 0); err != nil {
			return fail("Failed to write %s: %v", filepath.Join(dir, p.file), err)
		}
		procs := "tasks"
		if version == 2 {
			procs = "cgroup.procs"
		}
		if err := os.WriteFile(filepath.Join(dir, procs), []byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
			return fail("Failed to attach to cgroup %s: %v", dir, err)
		}
		cgDirs = appendNew(cgDirs, dir)
	}
	if recDir != "" {
		b, _ := json.Marshal(JailerRecord{Argv: append([]string{os.Args[0]}, args...), ChrootDir: chroot, CgroupDirs: cgDirs})
		if err := os.WriteFile(JailerRecordPath(recDir, id), b, 0o644); err != nil {
			return fail("fctest: record: %v", err)
		}
	}

	if err := enterJail(chroot); err != nil {
		return fail("%v", err)
	}
	for _, dir := range []string{"/", "/dev", "/dev/net", "/run"} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fail("Failed to create directory %s: %v", dir, err)
		}
		if err := errors.Join(os.Chmod(dir, 0o700), os.Chown(dir, int(uid), int(gid))); err != nil {
			return fail("Failed to set up %s: %v", dir, err)
		}
	}
	for _, d := range []struct {
		path         string
		major, minor uint32
	}{{"/dev/net/tun", 10, 200}, {"/dev/kvm", 10, 232}, {"/dev/urandom", 1, 9}} {
		if err := unix.Mknod(d.path, unix.S_IFCHR|unix.S_IRUSR|unix.S_IWUSR, int(unix.Mkdev(d.major, d.minor))); err != nil {
			return fail("Failed to create %s via mknod inside the jail: %v", d.path, err)
		}
		if err := os.Chown(d.path, int(uid), int(gid)); err != nil {
			return fail("Failed to change owner for %s: %v", d.path, err)
		}
	}
	// Drop privileges and become Firecracker.
	if err := syscall.Setgroups(nil); err != nil {
		return fail("Failed to setgroups: %v", err)
	}
	if err := syscall.Setgid(int(gid)); err != nil {
		return fail("Failed to setgid: %v", err)
	}
	if err := syscall.Setuid(int(uid)); err != nil {
		return fail("Failed to setuid: %v", err)
	}
	argv := []string{"/" + execName, "--id", id,
		"--start-time-us", strconv.FormatInt(start.UnixMicro(), 10),
		"--start-time-cpu-us", "0", "--parent-cpu-time-us", strconv.FormatInt(time.Since(start).Microseconds(), 10)}
	argv = append(argv, a.extra...)
	// The test channel becomes fds 3, 4 of the exec'd process: first out
	// of the way (the runtime's own descriptors may sit there), then into
	// place without close-on-exec. Nothing runs between this and the exec.
	high := make([]int, len(extraFiles))
	for i, f := range extraFiles {
		if high[i], err = unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 100); err != nil {
			return fail("fctest: dup: %v", err)
		}
	}
	for i, fd := range high {
		if err := unix.Dup3(fd, 3+i, 0); err != nil {
			return fail("fctest: dup: %v", err)
		}
	}
	err = syscall.Exec(argv[0], argv, env)
	return fail("Failed to exec into %s: %v", argv[0], err)
}

// enterJail does what the jailer's chroot step does: a mount namespace of
// its own, the jail bind-mounted on itself (with what is mounted below it),
// pivot_root into it, the old root detached and removed, and a chroot for
// good measure. It runs on the main thread (see fcfake), which keeps the
// namespace and root until the exec.
func enterJail(dir string) error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("Failed to unshare into new mount namespace: %v", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("Failed to change the propagation type to slave: %v", err)
	}
	if err := unix.Mount(dir, dir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("Failed to bind mount the jail root directory: %v", err)
	}
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("Failed to change current directory: %v", err)
	}
	if err := unix.Mkdir("old_root", 0o600); err != nil {
		return fmt.Errorf("Failed to create old_root dir: %v", err)
	}
	if err := unix.PivotRoot(".", "old_root"); err != nil {
		return fmt.Errorf("Failed to pivot_root: %v", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("Failed to chdir into the new root: %v", err)
	}
	if err := unix.Unmount("old_root", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("Failed to unmount the old jail root: %v", err)
	}
	if err := unix.Rmdir("old_root"); err != nil {
		return fmt.Errorf("Failed to remove old jail root directory: %v", err)
	}
	return unix.Chroot(".")
}

// copyExec copies the exec file into the jail as the jailer does: the
// copy belongs to the jailed user, and a destination with other links is
// refused.
func copyExec(src, dst string, uid, gid int) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("Failed to open %s: %v", src, err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|syscall.O_NOFOLLOW, st.Mode().Perm())
	if err != nil {
		return fmt.Errorf("Failed to open %s: %v", dst, err)
	}
	defer out.Close()
	var ost unix.Stat_t
	if err := unix.Fstat(int(out.Fd()), &ost); err != nil {
		return err
	}
	if ost.Nlink > 1 {
		return fmt.Errorf("Invalid hard link for %s", dst)
	}
	if err := out.Chown(uid, gid); err != nil {
		return fmt.Errorf("Failed to change owner for %s: %v", dst, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		return fmt.Errorf("Failed to copy %s to %s: %v", src, dst, err)
	}
	return nil
}

// cgroupDir finds where the jailer puts the cgroup of id for a controller:
// <mount>/<parent>/<id>, the mount found in /proc/mounts.
func cgroupDir(version int, controller, parent, id string) (string, error) {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 {
			continue
		}
		switch {
		case version == 2 && fields[2] == "cgroup2":
			return filepath.Join(fields[1], parent, id), nil
		case version == 1 && fields[2] == "cgroup":
			for _, o := range strings.Split(fields[3], ",") {
				if o == controller {
					return filepath.Join(fields[1], parent, id), nil
				}
			}
		}
	}
	return "", fmt.Errorf("Cannot find the cgroup v%d hierarchy of controller %s", version, controller)
}

// enableControllers writes +controller into cgroup.subtree_control from
// the hierarchy's root down to dir.
func enableControllers(dir, controller string) error {
	if _, err := os.Stat(filepath.Join(dir, "cgroup.subtree_control")); err != nil {
		return nil
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := enableControllers(parent, controller); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+controller+"\n"), 0)
}

func appendNew(l []string, s string) []string {
	for _, v := range l {
		if v == s {
			return l
		}
	}
	return append(l, s)
}
