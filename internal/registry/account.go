package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Account is the unprivileged system user Verdaccio runs as. Verdaccio
// listens on the address every guest reaches and runs a large dependency
// tree: as root, any flaw in it would be root on the host, with the
// manager's secrets in its environment.
type Account struct {
	Name     string
	UID, GID uint32
}

// EnsureUser returns the system user name, creating it when it does not
// exist: a system account with its own group, no login shell and no home
// (`useradd --system`, run by argv). Concurrent callers, in this process or
// another, both end with the one account. Creating needs root.
func EnsureUser(ctx context.Context, name string) (Account, error) {
	if a, err := lookupAccount(name); err == nil {
		return a, nil
	} else if !errors.As(err, new(user.UnknownUserError)) {
		return Account{}, err
	}
	useradd, err := exec.LookPath("useradd")
	if err != nil {
		return Account{}, fmt.Errorf("create system user %s for the npm cache: useradd not found (install the passwd package, or create the user yourself): %w", name, err)
	}
	shell := "/usr/sbin/nologin"
	if _, err := os.Stat(shell); err != nil {
		shell = "/bin/false"
	}
	var out []byte
	for try := 0; ; try++ {
		cmd := exec.CommandContext(ctx, useradd, "--system", "--user-group", "--no-create-home",
			"--home-dir", "/nonexistent", "--shell", shell, "--comment", "Atelier npm cache (Verdaccio)", "--", name)
		out, err = cmd.CombinedOutput()
		if err == nil {
			break
		}
		// 9: the name was taken meanwhile (another creator won).
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 9 {
			break
		}
		// 1 and 10: /etc/passwd or /etc/group locked by another tool.
		if try < 20 && errors.As(err, &ee) && (ee.ExitCode() == 1 || ee.ExitCode() == 10) && bytes.Contains(out, []byte("lock")) {
			select {
			case <-ctx.Done():
				return Account{}, fmt.Errorf("create system user %s: %w", name, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		return Account{}, fmt.Errorf("create system user %s for the npm cache: useradd: %w: %s", name, err, bytes.TrimSpace(out))
	}
	a, err := lookupAccount(name)
	if err != nil {
		return Account{}, fmt.Errorf("create system user %s: %w", name, err)
	}
	if a.UID == 0 || a.GID == 0 {
		return Account{}, fmt.Errorf("system user %s has uid %d gid %d: refusing to run the npm cache as root", name, a.UID, a.GID)
	}
	return a, nil
}

func lookupAccount(name string) (Account, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return Account{}, err
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return Account{}, fmt.Errorf("user %s: %w", name, err)
	}
	if uid == 0 || gid == 0 {
		return Account{}, fmt.Errorf("user %s has uid %d gid %d: refusing to run the npm cache as root", name, uid, gid)
	}
	return Account{Name: name, UID: uint32(uid), GID: uint32(gid)}, nil
}

// reachable checks that account can walk down to dir: every directory from
// / to dir must grant it search permission (it has no supplementary
// groups). Verdaccio would otherwise die on start with EACCES and be
// restarted for ever.
func reachable(dir string, a Account) error {
	for p := filepath.Clean(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		var bit fs.FileMode = 0o001
		switch {
		case st.Uid == a.UID:
			bit = 0o100
		case st.Gid == a.GID:
			bit = 0o010
		}
		if fi.Mode().Perm()&bit == 0 {
			return fmt.Errorf("user %s (uid %d) cannot reach %s: %s is mode %04o, owner %d:%d; let others search it (chmod o+x %s) or set advanced.server.verdaccio.dir (ATELIER_REGISTRY_DIR) elsewhere",
				a.Name, a.UID, dir, p, fi.Mode().Perm(), st.Uid, st.Gid, p)
		}
		if p == "/" {
			return nil
		}
	}
}

// chownTree gives everything in dir to uid:gid, without following
// symlinks or leaving dir (os.Root), children before dir itself: a tree
// whose top already belongs to uid:gid is done, so the walk runs once
// after a migration from a root-owned cache, and again only if it was
// interrupted.
func chownTree(dir string, uid, gid uint32) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid == uid && st.Gid == gid {
		return nil
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	err = fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if p == "." {
			return nil
		}
		fi, err := root.Lstat(p)
		if err != nil {
			return nil // gone meanwhile
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid == uid && st.Gid == gid {
			return nil
		}
		return root.Lchown(p, int(uid), int(gid))
	})
	if err != nil {
		return err
	}
	return root.Lchown(".", int(uid), int(gid))
}
