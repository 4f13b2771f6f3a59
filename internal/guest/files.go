package guest

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unicode/utf8"

	"atelier/internal/agent"
)

// Bounds of the file API.
const (
	maxListEntries = 10000
	maxBatchFiles  = 1000
)

// fileRoots confines file and git paths. A request path is first mapped to
// a real path: cleaned, then the symlinks of every existing component
// resolved (absolute ones included, as a real root filesystem is full of
// them), and refused unless the result lies under one of the roots. The
// file API then does not reopen that path by name: it opens it beneath
// the root's directory file descriptor (os.Root), which refuses any
// symlink or ".." that would lead out. A guest that swaps a component for
// a symlink between the check and the use therefore gets an error, or
// whatever now lies at that place inside the root, never a file outside.
type fileRoots struct {
	given []string // cleaned as configured
	real  []string // with symlinks resolved

	mu    sync.Mutex
	roots []*os.Root // per real root, opened at start or at first use
}

func newFileRoots(roots []string) *fileRoots {
	f := &fileRoots{}
	for _, r := range roots {
		abs, err := filepath.Abs(r)
		if err != nil {
			continue
		}
		f.given = append(f.given, abs)
		if real, err := filepath.EvalSymlinks(abs); err == nil {
			f.real = append(f.real, real)
		} else {
			f.real = append(f.real, abs)
		}
	}
	if len(f.given) == 0 {
		f.given, f.real = []string{"/"}, []string{"/"}
	}
	f.roots = make([]*os.Root, len(f.real))
	for i := range f.real {
		_, _ = f.open(i) // a root made later is opened at first use
	}
	return f
}

// open returns the directory handle of root i. It is kept for the agent's
// lifetime, so a root renamed or replaced later still means the directory
// it was.
func (f *fileRoots) open(i int) (*os.Root, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.roots[i] != nil {
		return f.roots[i], nil
	}
	r, err := os.OpenRoot(f.real[i])
	if err != nil {
		return nil, err
	}
	f.roots[i] = r
	return r, nil
}

func under(p string, roots []string) bool {
	for _, r := range roots {
		if r == "/" || p == r || strings.HasPrefix(p, r+"/") {
			return true
		}
	}
	return false
}

func (f *fileRoots) isRoot(p string) bool {
	return slices.Contains(f.real, p) || slices.Contains(f.given, p)
}

// loc is a request path resolved inside a root.
type loc struct {
	path string   // the real path, as answers report it
	root *os.Root // the innermost root holding it
	rel  string   // path relative to root ("." for the root itself)
}

// resolve maps a request path to a real path inside the roots. Relative
// paths are taken from the first root. With followFinal the last component
// is resolved too (reads, writes, listing); without it the path names the
// entry itself (stat, delete).
func (f *fileRoots) resolve(field, p string, followFinal bool) (string, error) {
	if p == "" {
		return "", errBadField(field, "is required")
	}
	if strings.IndexByte(p, 0) >= 0 {
		return "", errBadField(field, "contains a NUL byte")
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(f.real[0], p)
	}
	p = filepath.Clean(p)
	if !under(p, f.given) && !under(p, f.real) {
		return "", errForbidden("%s: %s is outside the allowed roots", field, p)
	}
	var real string
	var err error
	if followFinal || p == "/" {
		real, err = evalExisting(p)
	} else {
		var dir string
		dir, err = evalExisting(filepath.Dir(p))
		real = filepath.Join(dir, filepath.Base(p))
	}
	if err != nil {
		return "", pathError(field, err)
	}
	if !under(real, f.real) {
		return "", errForbidden("%s: %s resolves outside the allowed roots", field, p)
	}
	return real, nil
}

// locate is resolve, then the root to operate beneath: every file API
// operation goes through loc.root with loc.rel, never through loc.path.
func (f *fileRoots) locate(field, p string, followFinal bool) (loc, error) {
	real, err := f.resolve(field, p, followFinal)
	if err != nil {
		return loc{}, err
	}
	best := -1
	for i, r := range f.real {
		if under(real, []string{r}) && (best < 0 || len(r) > len(f.real[best])) {
			best = i
		}
	}
	if best < 0 { // resolve checked it; kept for safety
		return loc{}, errForbidden("%s: %s resolves outside the allowed roots", field, p)
	}
	root, err := f.open(best)
	if err != nil {
		return loc{}, pathError(field, err)
	}
	rel, err := filepath.Rel(f.real[best], real)
	if err != nil {
		return loc{}, errForbidden("%s: %s resolves outside the allowed roots", field, p)
	}
	return loc{path: real, root: root, rel: rel}, nil
}

// evalExisting resolves symlinks in the longest existing prefix of p and
// appends the components that do not exist yet.
func evalExisting(p string) (string, error) {
	r, err := filepath.EvalSymlinks(p)
	if err == nil {
		return r, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	parent := filepath.Dir(p)
	if parent == p {
		return p, nil
	}
	rp, err := evalExisting(parent)
	if err != nil {
		return "", err
	}
	return filepath.Join(rp, filepath.Base(p)), nil
}

// errEscapes is the error os.Root gives for a path that would leave it (a
// ".." above the root, a symlink out of it, an absolute symlink). The os
// package does not export it, so it is taken from an open that must fail.
var errEscapes = func() error {
	r, err := os.OpenRoot("/")
	if err != nil {
		return nil
	}
	defer r.Close()
	_, err = r.Open("..")
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return nil
}()

// pathError maps filesystem errors to problems.
func pathError(field string, err error) error {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		return err
	case errEscapes != nil && errors.Is(err, errEscapes):
		return errForbidden("%s: %v (it changed while in use, or leads outside the allowed roots)", field, trimPathErr(err))
	case errors.Is(err, fs.ErrNotExist):
		return errNotFound("%s: %v", field, trimPathErr(err))
	case errors.Is(err, fs.ErrPermission):
		return errForbidden("%s: %v", field, trimPathErr(err))
	case errors.Is(err, fs.ErrExist):
		return errConflict(agent.CodeConflict, "%s: %v", field, trimPathErr(err))
	case errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.ELOOP),
		errors.Is(err, syscall.ENAMETOOLONG):
		return errBadField(field, "%v", trimPathErr(err))
	case errors.Is(err, syscall.ENOTEMPTY):
		return errConflict(agent.CodeConflict, "%s: directory not empty (use recursive)", field)
	}
	return fmt.Errorf("%s: %w", field, err)
}

func trimPathErr(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Path + ": " + pe.Err.Error()
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		return le.New + ": " + le.Err.Error()
	}
	return err.Error()
}

func parseMode(field, s string) (os.FileMode, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || n > 0o7777 {
		return 0, errBadField(field, "must be octal permission bits like 0644")
	}
	return unixMode(uint32(n)), nil
}

// unixMode converts permission plus setuid/setgid/sticky bits to Go's
// FileMode layout.
func unixMode(n uint32) os.FileMode {
	m := os.FileMode(n & 0o777)
	if n&syscall.S_ISUID != 0 {
		m |= os.ModeSetuid
	}
	if n&syscall.S_ISGID != 0 {
		m |= os.ModeSetgid
	}
	if n&syscall.S_ISVTX != 0 {
		m |= os.ModeSticky
	}
	return m
}

// owner is a parsed "user[:group]" with -1 for "leave as is".
type owner struct{ uid, gid int }

func parseOwner(field, s string) (*owner, error) {
	if s == "" {
		return nil, nil
	}
	us, gs, hasGroup := strings.Cut(s, ":")
	o := &owner{uid: -1, gid: -1}
	if us != "" {
		u, err := user.Lookup(us)
		if err != nil {
			if _, nerr := strconv.Atoi(us); nerr == nil {
				u, err = user.LookupId(us)
				if err != nil {
					o.uid, _ = strconv.Atoi(us)
				}
			}
			if err != nil && o.uid < 0 {
				return nil, errBadField(field, "unknown user %q", us)
			}
		}
		if u != nil {
			o.uid, _ = strconv.Atoi(u.Uid)
			if !hasGroup {
				o.gid, _ = strconv.Atoi(u.Gid)
			}
		}
	}
	if hasGroup && gs != "" {
		g, err := user.LookupGroup(gs)
		switch {
		case err == nil:
			o.gid, _ = strconv.Atoi(g.Gid)
		default:
			n, nerr := strconv.Atoi(gs)
			if nerr != nil {
				return nil, errBadField(field, "unknown group %q", gs)
			}
			o.gid = n
		}
	}
	return o, nil
}

// fileInfo describes fi, found at rel beneath r and reported as p.
func fileInfo(p string, fi os.FileInfo, r *os.Root, rel string) agent.FileInfo {
	info := agent.FileInfo{
		Path:    p,
		Name:    fi.Name(),
		Size:    fi.Size(),
		Mode:    fmt.Sprintf("%04o", permBits(fi.Mode())),
		ModTime: fi.ModTime().UTC(),
	}
	switch {
	case fi.Mode().IsRegular():
		info.Type = agent.FileTypeFile
	case fi.IsDir():
		info.Type = agent.FileTypeDir
	case fi.Mode()&os.ModeSymlink != 0:
		info.Type = agent.FileTypeSymlink
		info.LinkTarget, _ = r.Readlink(rel)
	default:
		info.Type = agent.FileTypeOther
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		info.UID, info.GID = int(st.Uid), int(st.Gid)
	}
	return info
}

func permBits(m os.FileMode) uint32 {
	n := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		n |= syscall.S_ISUID
	}
	if m&os.ModeSetgid != 0 {
		n |= syscall.S_ISGID
	}
	if m&os.ModeSticky != 0 {
		n |= syscall.S_ISVTX
	}
	return n
}

func queryBool(r *http.Request, key string) (bool, error) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, errBadField(key, "must be true or false")
	}
	return b, nil
}

func queryInt(r *http.Request, key string, def, lo, hi int64) (int64, error) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, errBadField(key, "must be an integer in [%d, %d]", lo, hi)
	}
	return n, nil
}

// readFile is GET /files?path=&encoding=&offset=&limit=.
func (s *Server) readFile(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	l, err := s.fs.locate("path", q.Get("path"), true)
	if err != nil {
		return err
	}
	p := l.path
	enc := q.Get("encoding")
	if enc != "" && enc != agent.EncodingUTF8 && enc != agent.EncodingBase64 {
		return errBadField("encoding", "must be utf8 or base64")
	}
	offset, err := queryInt(r, "offset", 0, 0, 1<<62)
	if err != nil {
		return err
	}
	limit, err := queryInt(r, "limit", s.opts.MaxFileBytes, 1, s.opts.MaxFileBytes)
	if err != nil {
		return err
	}
	f, err := l.root.Open(l.rel)
	if err != nil {
		return pathError("path", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return pathError("path", err)
	}
	if fi.IsDir() {
		return errBadField("path", "%s is a directory", p)
	}
	buf, err := io.ReadAll(io.NewSectionReader(f, offset, limit))
	if err != nil {
		return pathError("path", err)
	}
	fc := agent.FileContent{Path: p, Size: fi.Size(), Offset: offset, Truncated: offset+int64(len(buf)) < fi.Size()}
	switch {
	case enc == agent.EncodingBase64 || (enc == "" && !utf8.Valid(buf)):
		fc.Encoding, fc.Content = agent.EncodingBase64, base64.StdEncoding.EncodeToString(buf)
	case enc == agent.EncodingUTF8 && !utf8.Valid(buf):
		return errBadField("encoding", "content is not valid UTF-8; use base64")
	default:
		fc.Encoding, fc.Content = agent.EncodingUTF8, string(buf)
	}
	return writeJSON(w, http.StatusOK, fc)
}

// writeFile is PUT /files?path=&mode=&owner=&parents=, body = raw bytes.
func (s *Server) writeFile(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	l, err := s.fs.locate("path", q.Get("path"), true)
	if err != nil {
		return err
	}
	mode, err := parseMode("mode", q.Get("mode"))
	if err != nil {
		return err
	}
	own, err := parseOwner("owner", q.Get("owner"))
	if err != nil {
		return err
	}
	parents, err := queryBool(r, "parents")
	if err != nil {
		return err
	}
	body := http.MaxBytesReader(w, r.Body, s.opts.MaxFileBytes)
	if err := atomicWriteAt(l.root, l.rel, body, mode, own, parents); err != nil {
		return err
	}
	fi, err := l.root.Lstat(l.rel)
	if err != nil {
		return pathError("path", err)
	}
	return writeJSON(w, http.StatusOK, fileInfo(l.path, fi, l.root, l.rel))
}

// atomicWrite is atomicWriteAt for the agent's own files (its config,
// /etc/hostname…): paths it chose, not a request's.
func atomicWrite(target string, r io.Reader, mode os.FileMode, own *owner, parents bool) error {
	dir := filepath.Dir(target)
	if parents {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return pathError("path", err)
		}
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return pathError("path", err)
	}
	defer root.Close()
	return atomicWriteAt(root, filepath.Base(target), r, mode, own, false)
}

// atomicWriteAt replaces rel beneath root with the content of r: a temp
// file in the same directory, written, chmod/chown-ed and fsynced, then
// renamed over the target, so a reader sees the old or the new file, never
// a part. Without an explicit mode or owner an existing file keeps its own.
func atomicWriteAt(root *os.Root, rel string, r io.Reader, mode os.FileMode, own *owner, parents bool) error {
	dir, base := filepath.Split(rel)
	dir = filepath.Clean(dir)
	if parents {
		if err := mkdirParentsAt(root, dir, own); err != nil {
			return pathError("path", err)
		}
	}
	perm := os.FileMode(0o644)
	if old, err := root.Stat(rel); err == nil {
		if old.IsDir() {
			return errBadField("path", "%s is a directory", filepath.Join(root.Name(), rel))
		}
		perm = old.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
		if own == nil && os.Geteuid() == 0 {
			if st, ok := old.Sys().(*syscall.Stat_t); ok {
				own = &owner{uid: int(st.Uid), gid: int(st.Gid)}
			}
		}
	}
	if mode != 0 {
		perm = mode
	}
	tmp, tmpRel, err := createTemp(root, dir, "."+base+".tmp-")
	if err != nil {
		return pathError("path", err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			_ = root.Remove(tmpRel)
		}
	}()
	if _, err := io.Copy(tmp, r); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &apiError{status: http.StatusRequestEntityTooLarge, code: agent.CodeTooLarge, field: "body", detail: fmt.Sprintf("body: file exceeds %d bytes", mbe.Limit)}
		}
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	// Through the descriptor: the name may already be something else.
	if err := tmp.Chmod(perm); err != nil {
		return pathError("mode", err)
	}
	if own != nil {
		if err := tmp.Chown(own.uid, own.gid); err != nil {
			return pathError("owner", err)
		}
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := root.Rename(tmpRel, rel); err != nil {
		return pathError("path", err)
	}
	done = true
	// The rename is durable only once the directory is synced.
	if d, err := root.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// createTemp is os.CreateTemp beneath a root: a new file (O_EXCL) named
// prefix plus a random suffix in dir, mode 0600 until the caller sets it.
func createTemp(root *os.Root, dir, prefix string) (*os.File, string, error) {
	for try := 0; ; try++ {
		var b [6]byte
		_, _ = rand.Read(b[:])
		rel := filepath.Join(dir, prefix+hex.EncodeToString(b[:]))
		f, err := root.OpenFile(rel, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil || !errors.Is(err, fs.ErrExist) || try == 10 {
			return f, rel, err
		}
	}
}

// mkdirParentsAt creates dir beneath root and its missing parents, giving
// each directory it creates the requested owner (the reference left them
// root-owned).
func mkdirParentsAt(root *os.Root, dir string, own *owner) error {
	if dir == "." {
		return nil
	}
	if fi, err := root.Stat(dir); err == nil {
		if !fi.IsDir() {
			return &fs.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOTDIR}
		}
		return nil
	}
	if err := mkdirParentsAt(root, filepath.Dir(dir), own); err != nil {
		return err
	}
	if err := root.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			if fi, serr := root.Stat(dir); serr == nil && fi.IsDir() {
				return nil
			}
		}
		return err
	}
	if own != nil {
		return root.Lchown(dir, own.uid, own.gid)
	}
	return nil
}

// listFiles is GET /files/list?path=.
func (s *Server) listFiles(w http.ResponseWriter, r *http.Request) error {
	l, err := s.fs.locate("path", r.URL.Query().Get("path"), true)
	if err != nil {
		return err
	}
	p := l.path
	// Entries are described beneath the listed directory's own handle, so
	// their names and their details come from the same directory.
	if fi, err := l.root.Stat(l.rel); err != nil {
		return pathError("path", err)
	} else if !fi.IsDir() {
		return errBadField("path", "%s is not a directory", p)
	}
	dr, err := l.root.OpenRoot(l.rel)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) && !errors.As(pe.Err, new(syscall.Errno)) && !errors.Is(err, errEscapes) {
			// os.Root's own "not a directory": it was one a moment ago.
			return errConflict(agent.CodeConflict, "path: %s changed while being listed", p)
		}
		return pathError("path", err)
	}
	defer dr.Close()
	d, err := dr.Open(".")
	if err != nil {
		return pathError("path", err)
	}
	defer d.Close()
	ents, err := d.ReadDir(maxListEntries + 1)
	if err != nil && !errors.Is(err, io.EOF) {
		return pathError("path", err)
	}
	res := agent.ListResult{Path: p, Entries: []agent.FileInfo{}}
	if len(ents) > maxListEntries {
		ents, res.Truncated = ents[:maxListEntries], true
	}
	for _, e := range ents {
		fi, err := dr.Lstat(e.Name())
		if err != nil {
			continue // removed meanwhile
		}
		res.Entries = append(res.Entries, fileInfo(filepath.Join(p, e.Name()), fi, dr, e.Name()))
	}
	slices.SortFunc(res.Entries, func(a, b agent.FileInfo) int { return strings.Compare(a.Name, b.Name) })
	return writeJSON(w, http.StatusOK, res)
}

// statFile is GET /files/stat?path= (a symlink is described, not followed).
func (s *Server) statFile(w http.ResponseWriter, r *http.Request) error {
	l, err := s.fs.locate("path", r.URL.Query().Get("path"), false)
	if err != nil {
		return err
	}
	fi, err := l.root.Lstat(l.rel)
	if err != nil {
		return pathError("path", err)
	}
	return writeJSON(w, http.StatusOK, fileInfo(l.path, fi, l.root, l.rel))
}

// mkdir is POST /files/mkdir; with parents it is idempotent like mkdir -p.
func (s *Server) mkdir(w http.ResponseWriter, r *http.Request) error {
	var req agent.MkdirRequest
	if err := decode(w, r, &req, maxJSONBody, false); err != nil {
		return err
	}
	l, err := s.fs.locate("path", req.Path, true)
	if err != nil {
		return err
	}
	mode, err := parseMode("mode", req.Mode)
	if err != nil {
		return err
	}
	if mode == 0 {
		mode = 0o755
	}
	own, err := parseOwner("owner", req.Owner)
	if err != nil {
		return err
	}
	if req.Parents {
		if err := mkdirParentsAt(l.root, filepath.Dir(l.rel), own); err != nil {
			return pathError("path", err)
		}
	}
	if err := l.root.Mkdir(l.rel, mode.Perm()); err != nil {
		fi, serr := l.root.Stat(l.rel)
		if !(errors.Is(err, fs.ErrExist) && req.Parents && serr == nil && fi.IsDir()) {
			return pathError("path", err)
		}
	} else {
		// Mkdir's mode is filtered by the umask and holds no special bits;
		// apply the requested ones.
		if err := l.root.Chmod(l.rel, mode); err != nil {
			return pathError("mode", err)
		}
		if own != nil {
			if err := l.root.Lchown(l.rel, own.uid, own.gid); err != nil {
				return pathError("owner", err)
			}
		}
	}
	fi, err := l.root.Lstat(l.rel)
	if err != nil {
		return pathError("path", err)
	}
	return writeJSON(w, http.StatusOK, fileInfo(l.path, fi, l.root, l.rel))
}

// removeFile is DELETE /files?path=&recursive=; a missing path is a 404.
func (s *Server) removeFile(w http.ResponseWriter, r *http.Request) error {
	recursive, err := queryBool(r, "recursive")
	if err != nil {
		return err
	}
	existed, err := s.remove(r.URL.Query().Get("path"), recursive)
	if err != nil {
		return err
	}
	if !existed {
		return errNotFound("path: %s does not exist", r.URL.Query().Get("path"))
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) remove(path string, recursive bool) (bool, error) {
	l, err := s.fs.locate("path", path, false)
	if err != nil {
		return false, err
	}
	if s.fs.isRoot(l.path) || l.rel == "." {
		return false, errForbidden("path: %s is a file root and cannot be removed", l.path)
	}
	fi, err := l.root.Lstat(l.rel)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, pathError("path", err)
	}
	if fi.IsDir() && recursive {
		err = l.root.RemoveAll(l.rel)
	} else {
		err = l.root.Remove(l.rel)
	}
	if err != nil {
		return true, pathError("path", err)
	}
	return true, nil
}

// writeBatch is POST /files/write-batch: per-file results in request order.
func (s *Server) writeBatch(w http.ResponseWriter, r *http.Request) error {
	var req agent.WriteBatchRequest
	if err := decode(w, r, &req, 2*s.opts.MaxFileBytes+maxJSONBody, false); err != nil {
		return err
	}
	if len(req.Files) > maxBatchFiles {
		return errBadField("files", "at most %d entries", maxBatchFiles)
	}
	res := agent.BatchResult{Results: make([]agent.FileResult, len(req.Files))}
	for i, f := range req.Files {
		res.Results[i] = agent.FileResult{Path: f.Path, OK: true}
		if err := s.writeOne(f); err != nil {
			_, p := problemOf(err)
			res.Results[i].OK, res.Results[i].Error = false, &p
		}
	}
	return writeJSON(w, http.StatusOK, res)
}

func (s *Server) writeOne(f agent.FileWrite) error {
	l, err := s.fs.locate("path", f.Path, true)
	if err != nil {
		return err
	}
	data, err := agent.DecodeContent(f.Content, f.Encoding)
	if err != nil {
		return errBadField("encoding", "%v", err)
	}
	if int64(len(data)) > s.opts.MaxFileBytes {
		return &apiError{status: http.StatusRequestEntityTooLarge, code: agent.CodeTooLarge, field: "content", detail: fmt.Sprintf("content: exceeds %d bytes", s.opts.MaxFileBytes)}
	}
	mode, err := parseMode("mode", f.Mode)
	if err != nil {
		return err
	}
	own, err := parseOwner("owner", f.Owner)
	if err != nil {
		return err
	}
	return atomicWriteAt(l.root, l.rel, strings.NewReader(string(data)), mode, own, f.Parents)
}

// deleteBatch is POST /files/delete-batch; missing paths succeed.
func (s *Server) deleteBatch(w http.ResponseWriter, r *http.Request) error {
	var req agent.DeleteBatchRequest
	if err := decode(w, r, &req, maxJSONBody, false); err != nil {
		return err
	}
	if len(req.Paths) > maxBatchFiles {
		return errBadField("paths", "at most %d entries", maxBatchFiles)
	}
	res := agent.BatchResult{Results: make([]agent.FileResult, len(req.Paths))}
	for i, p := range req.Paths {
		existed, err := s.remove(p, req.Recursive)
		res.Results[i] = agent.FileResult{Path: p, OK: err == nil, Existed: existed}
		if err != nil {
			_, pr := problemOf(err)
			res.Results[i].Error = &pr
		}
	}
	return writeJSON(w, http.StatusOK, res)
}
