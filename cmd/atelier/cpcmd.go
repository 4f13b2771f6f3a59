package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"atelier/internal/agent"
	"atelier/internal/client"
	"atelier/internal/ids"
)

// maxUpload is the agent's default limit on one file written at once.
const maxUpload = 16 << 20

// readChunk is how much of a file one read asks for.
const readChunk = 4 << 20

func newCpCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "cp SRC DEST",
		Short: "Copy files and directories between this machine and a sandbox",
		Long: "Copy a file or a directory (with everything in it) into or out of a sandbox. One side is\n" +
			"ID|NAME:PATH; a relative PATH starts in the sandbox's home. When DEST is an existing directory, the\n" +
			"copy goes inside it. Modes are kept (without setuid, setgid and sticky bits); symlinks are copied\n" +
			"out of a sandbox as symlinks and skipped on the way in (the file API makes none). Files written into\n" +
			"a sandbox are at most 16 MiB each. Write ./NAME:FILE for a local file with a colon in its name.",
		Example: "  atelier sandbox cp ./src demo:project/src\n  atelier sandbox cp demo:project/dist ./dist",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			srcSB, srcPath, srcRemote := remoteSpec(args[0])
			dstSB, dstPath, dstRemote := remoteSpec(args[1])
			if srcRemote == dstRemote {
				return errors.New("one of SRC and DEST must be ID|NAME:PATH in a sandbox, the other a local path")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			cp := &copier{ctx: ctx, c: c, warn: cmd.ErrOrStderr()}
			if srcRemote {
				v, err := resolve(ctx, c, srcSB)
				if err != nil {
					return err
				}
				cp.id = v.ID
				if err := cp.download(srcPath, dstPath); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "copied %s from %s:%s to %s\n", cp.summary(), label(v), srcPath, dstPath)
				return nil
			}
			v, err := resolve(ctx, c, dstSB)
			if err != nil {
				return err
			}
			cp.id = v.ID
			if err := cp.upload(srcPath, dstPath); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "copied %s from %s to %s:%s\n", cp.summary(), srcPath, label(v), dstPath)
			return nil
		},
	}
}

// remoteSpec splits SANDBOX:PATH; ok is false for a local path.
func remoteSpec(arg string) (sb, p string, ok bool) {
	sb, p, found := strings.Cut(arg, ":")
	if !found || !(ids.ValidSandboxID(sb) || ids.ValidDNSLabel(sb)) {
		return "", arg, false
	}
	if p == "" {
		p = "."
	}
	return sb, p, true
}

type copier struct {
	ctx   context.Context
	c     *client.Client
	id    string
	warn  io.Writer
	files int
	bytes int64
}

func (cp *copier) summary() string {
	s := "1 file"
	if cp.files != 1 {
		s = strconv.Itoa(cp.files) + " files"
	}
	return fmt.Sprintf("%s (%s)", s, humanBytes(cp.bytes))
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func q(kv ...string) string {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Set(kv[i], kv[i+1])
	}
	return "?" + v.Encode()
}

func (cp *copier) stat(p string) (*agent.FileInfo, error) {
	var fi agent.FileInfo
	if err := cp.c.Agent(cp.ctx, "GET", cp.id, "/files/stat"+q("path", p), nil, &fi); err != nil {
		return nil, err
	}
	return &fi, nil
}

// fileMode keeps a file's permission bits and drops setuid, setgid and
// sticky: a copied file must not gain privileges on the other side.
func fileMode(octal string, def os.FileMode) os.FileMode {
	n, err := strconv.ParseUint(octal, 8, 32)
	if err != nil {
		return def
	}
	return os.FileMode(n) & 0o777
}

// safeName accepts an entry name from a sandbox's listing: the sandbox is
// not trusted (its root may replace the agent), so a name that would climb
// out of the destination or into a subdirectory is refused.
func safeName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("the sandbox listed an invalid file name %q; nothing more is copied", name)
	}
	return nil
}

// download copies src out of the sandbox. Everything is written beneath
// the destination's directory through an os.Root, which refuses any
// symlink or ".." leading out of it, so a hostile listing cannot make the
// copy write elsewhere on this machine.
func (cp *copier) download(src, dst string) error {
	fi, err := cp.stat(src)
	if client.IsStatus(err, http.StatusNotFound) {
		return fmt.Errorf("%s does not exist in the sandbox", src)
	}
	if err != nil {
		return err
	}
	isDir := fi.Type == agent.FileTypeDir
	if fi.Type == agent.FileTypeSymlink {
		// The named path itself is followed, as cp does with its arguments.
		var l agent.ListResult
		isDir = cp.c.Agent(cp.ctx, "GET", cp.id, "/files/list"+q("path", src), nil, &l) == nil
	}
	target := dst
	if st, err := os.Stat(dst); err == nil && st.IsDir() {
		target = filepath.Join(dst, path.Base(fi.Path))
	}
	parent, base := filepath.Dir(target), filepath.Base(target)
	if err := safeName(base); err != nil {
		return err
	}
	root, err := os.OpenRoot(parent)
	if err != nil {
		return fmt.Errorf("destination %s: %w", parent, err)
	}
	defer root.Close()
	if isDir {
		return cp.downloadDir(root, src, base, fileMode(fi.Mode, 0o755))
	}
	return cp.downloadFile(root, src, base, fileMode(fi.Mode, 0o644))
}

func (cp *copier) downloadFile(root *os.Root, src, rel string, mode os.FileMode) error {
	f, err := root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return fmt.Errorf("write %s: %w", rel, err)
	}
	defer f.Close()
	var off int64
	for {
		var fc agent.FileContent
		err := cp.c.Agent(cp.ctx, "GET", cp.id, "/files"+q("path", src, "encoding", "base64",
			"offset", strconv.FormatInt(off, 10), "limit", strconv.Itoa(readChunk)), nil, &fc)
		if err != nil {
			return fmt.Errorf("read %s: %w", src, err)
		}
		b, err := base64.StdEncoding.DecodeString(fc.Content)
		if err != nil {
			return fmt.Errorf("read %s: %w", src, err)
		}
		if _, err := f.Write(b); err != nil {
			return fmt.Errorf("write %s: %w", rel, err)
		}
		off += int64(len(b))
		if !fc.Truncated || len(b) == 0 {
			break
		}
	}
	_ = f.Chmod(mode) // an existing file keeps its mode on open
	cp.files++
	cp.bytes += off
	return f.Close()
}

func (cp *copier) downloadDir(root *os.Root, src, rel string, mode os.FileMode) error {
	if err := root.Mkdir(rel, mode|0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create %s: %w", rel, err)
	}
	var l agent.ListResult
	if err := cp.c.Agent(cp.ctx, "GET", cp.id, "/files/list"+q("path", src), nil, &l); err != nil {
		return fmt.Errorf("list %s: %w", src, err)
	}
	if l.Truncated {
		fmt.Fprintf(cp.warn, "atelier: %s holds more than %d entries; only those were copied\n", src, len(l.Entries))
	}
	for _, e := range l.Entries {
		if err := safeName(e.Name); err != nil {
			return err
		}
		from, to := path.Join(src, e.Name), filepath.Join(rel, e.Name)
		var err error
		switch e.Type {
		case agent.FileTypeDir:
			err = cp.downloadDir(root, from, to, fileMode(e.Mode, 0o755))
		case agent.FileTypeFile:
			err = cp.downloadFile(root, from, to, fileMode(e.Mode, 0o644))
		case agent.FileTypeSymlink:
			if err = root.Symlink(e.LinkTarget, to); errors.Is(err, fs.ErrExist) {
				err = nil
			}
		default:
			fmt.Fprintf(cp.warn, "atelier: skipped %s: not a file, directory or symlink\n", from)
		}
		if err != nil {
			return err
		}
	}
	return root.Chmod(rel, mode)
}

// upload copies a local file or directory into the sandbox.
func (cp *copier) upload(src, dst string) error {
	st, err := os.Lstat(src)
	if err != nil {
		return err
	}
	if st.Mode()&fs.ModeSymlink != 0 {
		if st, err = os.Stat(src); err != nil {
			return err
		}
	}
	target := dst
	if fi, err := cp.stat(dst); err == nil && (fi.Type == agent.FileTypeDir || fi.Type == agent.FileTypeSymlink && cp.isRemoteDir(dst)) {
		target = path.Join(dst, filepath.Base(filepath.Clean(src)))
	}
	if !st.IsDir() {
		return cp.uploadFile(src, target, st)
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := path.Join(target, filepath.ToSlash(rel))
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return cp.c.Agent(cp.ctx, "POST", cp.id, "/files/mkdir", agent.MkdirRequest{Path: to, Parents: true,
				Mode: fmt.Sprintf("%04o", info.Mode().Perm()|0o700)}, nil)
		case info.Mode().IsRegular():
			return cp.uploadFile(p, to, info)
		default:
			fmt.Fprintf(cp.warn, "atelier: skipped %s: only files and directories are copied into a sandbox\n", p)
			return nil
		}
	})
}

func (cp *copier) isRemoteDir(p string) bool {
	var l agent.ListResult
	return cp.c.Agent(cp.ctx, "GET", cp.id, "/files/list"+q("path", p), nil, &l) == nil
}

func (cp *copier) uploadFile(src, to string, st fs.FileInfo) error {
	if st.Size() > maxUpload {
		return fmt.Errorf("%s is %s: files written into a sandbox are at most 16 MiB; copy it with scp or sftp (ssh access: atelier sandbox get)",
			src, humanBytes(st.Size()))
	}
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	mode := fmt.Sprintf("%04o", st.Mode().Perm())
	if err := cp.c.AgentRaw(cp.ctx, "PUT", cp.id, "/files"+q("path", to, "mode", mode, "parents", "true"), f, nil); err != nil {
		return fmt.Errorf("write %s: %w", to, err)
	}
	cp.files++
	cp.bytes += st.Size()
	return nil
}
