package guest

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"atelier/internal/agent"
)

// identity is who a child runs as. cred is nil when the child keeps the
// agent's own user.
type identity struct {
	name  string
	uid   int
	gid   int
	home  string
	shell string
	cred  *syscall.Credential
}

// resolveUser looks a user up by name or uid. "" is the agent's own user.
// Switching users needs root; asking for yourself is always allowed.
func resolveUser(field, name string) (*identity, error) {
	euid := os.Geteuid()
	var u *user.User
	var err error
	if name == "" {
		u, err = user.LookupId(strconv.Itoa(euid))
		if err != nil {
			// A uid without a passwd entry (containers) still runs.
			home, _ := os.UserHomeDir()
			return &identity{name: strconv.Itoa(euid), uid: euid, gid: os.Getegid(), home: home}, nil
		}
	} else {
		u, err = user.Lookup(name)
		if err != nil {
			if _, convErr := strconv.Atoi(name); convErr == nil {
				u, err = user.LookupId(name)
			}
		}
		if err != nil {
			return nil, errBadField(field, "unknown user %q", name)
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	id := &identity{name: u.Username, uid: uid, gid: gid, home: u.HomeDir, shell: loginShell(u.Username)}
	if uid == euid {
		return id, nil
	}
	if euid != 0 {
		return nil, &apiError{status: 403, code: agent.CodeForbidden, field: field,
			detail: fmt.Sprintf("%s: switching to user %q needs the agent to run as root", field, name)}
	}
	var groups []uint32
	if gids, err := u.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.Atoi(g); err == nil {
				groups = append(groups, uint32(n))
			}
		}
	}
	id.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}
	return id, nil
}

// loginShell reads the shell field of /etc/passwd (os/user does not
// expose it).
func loginShell(name string) string {
	f, err := os.Open("/etc/passwd")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.Split(sc.Text(), ":")
		if len(parts) == 7 && parts[0] == name {
			return parts[6]
		}
	}
	return ""
}

// commandSpec is what exec, services and terminals have in common.
type commandSpec struct {
	argv  []string
	shell string
	login bool
	env   map[string]string
	cwd   string
	user  string
}

// prepared is a validated command ready to become an exec.Cmd.
type prepared struct {
	path string
	argv []string
	env  []string
	dir  string
	id   *identity
}

// prepare validates a command spec and resolves its executable, user,
// environment and working directory. Errors are 400s naming the field.
func (s *Server) prepare(spec commandSpec) (*prepared, error) {
	if (len(spec.argv) == 0) == (spec.shell == "") {
		return nil, errBadField("argv", "exactly one of argv and shell is required")
	}
	for i, a := range spec.argv {
		if strings.IndexByte(a, 0) >= 0 {
			return nil, errBadField("argv", "element %d contains a NUL byte", i)
		}
	}
	if spec.argv != nil && spec.argv[0] == "" {
		return nil, errBadField("argv", "argv[0] is empty")
	}
	if strings.IndexByte(spec.shell, 0) >= 0 {
		return nil, errBadField("shell", "contains a NUL byte")
	}
	id, err := resolveUser("user", spec.user)
	if err != nil {
		return nil, err
	}
	env, err := buildEnv(id, s.configEnv(spec.env))
	if err != nil {
		return nil, err
	}
	argv := spec.argv
	if spec.shell != "" {
		argv = shellArgv(spec.shell, spec.login)
	}
	dir := spec.cwd
	if dir == "" {
		dir = s.defaultDir(id)
	} else if !filepath.IsAbs(dir) {
		return nil, errBadField("cwd", "must be an absolute path")
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return nil, errBadField("cwd", "%s is not a directory", dir)
	}
	path, err := lookPath(argv[0], envValue(env, "PATH"))
	if err != nil {
		field := "argv"
		if spec.shell != "" {
			field = "shell"
		}
		return nil, errBadField(field, "%s: %v", argv[0], err)
	}
	return &prepared{path: path, argv: argv, env: env, dir: dir, id: id}, nil
}

func (s *Server) defaultDir(id *identity) string {
	if s.opts.WorkDir != "" {
		return s.opts.WorkDir
	}
	// The image's user (SSH and terminals log in as it) starts in the
	// image's workdir, as its services do. The manifest is read at boot,
	// before the agent serves, and never changes after.
	if sup := s.sup; sup != nil && sup.img != nil && sup.img.Workdir != "" && id.name == sup.img.User {
		if fi, err := os.Stat(sup.img.Workdir); err == nil && fi.IsDir() {
			return sup.img.Workdir
		}
	}
	if id.home != "" {
		if fi, err := os.Stat(id.home); err == nil && fi.IsDir() {
			return id.home
		}
	}
	return s.fs.real[0]
}

// shellArgv runs a shell string; a login shell sources /etc/profile(.d)
// like the reference did, at the cost of a few ms per call.
func shellArgv(cmd string, login bool) []string {
	if login {
		if _, err := os.Stat("/bin/bash"); err == nil {
			return []string{"/bin/bash", "-l", "-c", cmd}
		}
		return []string{"/bin/sh", "-l", "-c", cmd}
	}
	return []string{"/bin/sh", "-c", cmd}
}

// buildEnv is the agent's environment, the target user's identity
// variables when switching, then the request's variables.
func buildEnv(id *identity, extra map[string]string) ([]string, error) {
	m := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := m[k]; !ok {
			order = append(order, k)
		}
		m[k] = v
	}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			set(k, v)
		}
	}
	if _, ok := m["PATH"]; !ok {
		set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	if id.cred != nil {
		set("HOME", id.home)
		set("USER", id.name)
		set("LOGNAME", id.name)
		if id.shell != "" {
			set("SHELL", id.shell)
		}
	}
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := extra[k]
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, errBadField("env", "invalid variable name %q", k)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return nil, errBadField("env", "value of %s contains a NUL byte", k)
		}
		set(k, v)
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+m[k])
	}
	return out, nil
}

func envValue(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

// lookPath resolves name against the child's PATH, not the agent's, so a
// request that sets PATH finds its own tools.
func lookPath(name, pathEnv string) (string, error) {
	if strings.Contains(name, "/") {
		if err := executable(name); err != nil {
			return "", err
		}
		return name, nil
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}

func executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return os.ErrPermission
	}
	return nil
}

// command builds an exec.Cmd in its own process group, so a timeout, a
// stop or a disconnect can signal the whole tree (the reference only
// signalled the leader and left grandchildren running).
func (p *prepared) command() *exec.Cmd {
	cmd := &exec.Cmd{Path: p.path, Args: p.argv, Env: p.env, Dir: p.dir}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Credential: p.id.cred,
		// If the agent dies, its direct children go too instead of lingering
		// unsupervised; the host re-provisions after an agent restart.
		Pdeathsig: syscall.SIGKILL,
	}
	return cmd
}

// killGroup SIGKILLs a process group; a group that is already gone is fine.
func killGroup(pgid int) {
	if pgid > 1 {
		_ = unix.Kill(-pgid, unix.SIGKILL)
	}
}

func signalGroup(pgid int, sig syscall.Signal) error {
	if pgid <= 1 {
		return errors.New("no process group")
	}
	err := unix.Kill(-pgid, sig)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// groupAlive reports whether any process of the group still exists.
func groupAlive(pgid int) bool {
	return pgid > 1 && unix.Kill(-pgid, 0) == nil
}

// exitInfo turns a wait status into the shell-convention exit code and
// the signal name when a signal ended the process.
func exitInfo(ps *os.ProcessState) (int, string) {
	if ps == nil {
		return -1, ""
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok {
		if ws.Signaled() {
			return 128 + int(ws.Signal()), unix.SignalName(ws.Signal())
		}
		return ws.ExitStatus(), ""
	}
	return ps.ExitCode(), ""
}

// parseSignal accepts "TERM", "SIGTERM" or a number; "" is SIGKILL.
func parseSignal(s string) (syscall.Signal, error) {
	if s == "" {
		return syscall.SIGKILL, nil
	}
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q", s)
}
