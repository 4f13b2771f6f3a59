package registry

import (
	"errors"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestTarballPath(t *testing.T) {
	for _, tc := range []struct {
		url, want string
	}{
		{"/is-number/-/is-number-7.0.0.tgz", "is-number/is-number-7.0.0.tgz"},
		{"/is-number/-/is-number-7.0.0.tgz?write=true", "is-number/is-number-7.0.0.tgz"},
		{"/@types%2fnode/-/node-20.1.0.tgz", "@types/node/node-20.1.0.tgz"},
		{"/@types/node/-/@types/node-20.1.0.tgz", "@types/node/node-20.1.0.tgz"},
		{"/@types/node/-/node-20.1.0.tgz", "@types/node/node-20.1.0.tgz"},
		{"/is-number", ""},
		{"/-/ping", ""},
		{"/is-number/-/is-number-7.0.0.json", ""},
		{"/../-/x.tgz", ""},
		{"/%2e%2e/-/x.tgz", ""},
		{"/a/b/c/-/x.tgz", ""},
		{"/@/-/x.tgz", ""},
		{"/@scope/-/x.tgz", ""},
		{"/.verdaccio-db.json/-/x.tgz", ""},
		{"/x/-/.x.tgz", ""},
		{"/x/-/%zz.tgz", ""},
	} {
		got, ok := tarballPath("/s", tc.url)
		if tc.want == "" {
			if ok {
				t.Errorf("%s: mapped to %s, want ignored", tc.url, got)
			}
			continue
		}
		if want := filepath.Join("/s", tc.want); !ok || got != want {
			t.Errorf("%s: got %q %v, want %q", tc.url, got, ok, want)
		}
	}
}

// storageTree is a Verdaccio storage with tarballs of chosen ages.
func storageTree(t *testing.T, now time.Time, files map[string]time.Duration) string {
	t.Helper()
	dir := t.TempDir()
	for name, age := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(strings.Repeat("x", 5000)), 0o644); err != nil {
			t.Fatal(err)
		}
		ts := now.Add(-age)
		if err := os.Chtimes(p, ts, ts); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	slices.Sort(out)
	return out
}

func TestEvictDeletesOnlyOldTarballs(t *testing.T) {
	day := 24 * time.Hour
	now := time.Now()
	dir := storageTree(t, now, map[string]time.Duration{
		".verdaccio-db.json":          100 * day,
		"old/package.json":            30 * day,
		"old/old-1.0.0.tgz":           30 * day,
		"mixed/package.json":          30 * day,
		"mixed/mixed-1.0.0.tgz":       30 * day,
		"mixed/mixed-2.0.0.tgz":       1 * day,
		"fresh-meta/package.json":     1 * day, // in use: metadata refreshed lately
		"fresh-meta/fresh-1.0.0.tgz":  30 * day,
		"@scope/a/package.json":       30 * day,
		"@scope/a/a-1.0.0.tgz":        30 * day,
		"@scope/b/package.json":       2 * day,
		"@scope/b/b-1.0.0.tgz":        2 * day,
		"@gone/c/package.json":        30 * day,
		"@gone/c/c-1.0.0.tgz":         20 * day,
		"young/package.json":          13 * day,
		"young/young-1.0.0.tgz":       13 * day,
		"mixed/mixed-1.0.0.tgz.tmp-1": 30 * day, // not a tarball
	})
	// A tarball served lately: the log touched it, though atime says old.
	if !touchTarball(dir, "/@gone%2fc/-/c-1.0.0.tgz", now.Add(-3*day)) {
		t.Fatal("touch of a cached tarball failed")
	}
	if err := os.Chtimes(filepath.Join(dir, "@gone/c/c-1.0.0.tgz"), now.Add(-40*day), now.Add(-3*day)); err != nil {
		t.Fatal(err)
	}

	r, err := evict(dir, now.Add(-14*day))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		".verdaccio-db.json",
		"@gone/c/c-1.0.0.tgz", "@gone/c/package.json",
		"@scope/b/b-1.0.0.tgz", "@scope/b/package.json",
		"fresh-meta/package.json",
		"mixed/mixed-1.0.0.tgz.tmp-1", "mixed/mixed-2.0.0.tgz", "mixed/package.json",
		"young/package.json", "young/young-1.0.0.tgz",
	}
	if got := listTree(t, dir); !slices.Equal(got, want) {
		t.Errorf("left:\n%v\nwant:\n%v", got, want)
	}
	if r.Tarballs != 4 || r.Packages != 2 || r.Bytes < 4*5000 {
		t.Errorf("removed %+v, want 4 tarballs (old, mixed 1.0.0, fresh-meta, @scope/a) and 2 packages (old, @scope/a)", r)
	}
	if _, err := os.Stat(filepath.Join(dir, "old")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("the emptied package directory old/ remains")
	}

	u, err := usage(dir)
	if err != nil {
		t.Fatal(err)
	}
	if u.Packages != 5 || u.Bytes <= 0 {
		t.Errorf("usage %+v, want 5 packages", u)
	}

	r, err = purge(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := listTree(t, dir); !slices.Equal(got, []string{".verdaccio-db.json"}) {
		t.Errorf("after purge: %v", got)
	}
	if r.Tarballs != 4 || r.Packages != 5 {
		t.Errorf("purge removed %+v, want 4 tarballs and 5 packages", r)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("after purge the storage holds %d entries (empty @scope dirs?)", len(ents))
	}
}

func TestUsageOfMissingStorage(t *testing.T) {
	u, err := usage(filepath.Join(t.TempDir(), "none"))
	if err != nil || u.Packages != 0 || u.Bytes != 0 {
		t.Fatalf("got %+v, %v", u, err)
	}
	if r, err := evict(filepath.Join(t.TempDir(), "none"), time.Now()); err != nil || r.Tarballs != 0 {
		t.Fatalf("evict: %+v, %v", r, err)
	}
}

// TestCaptureRecordsDownloads feeds Verdaccio's own log lines through the
// capture path: a served tarball becomes recently used.
func TestCaptureRecordsDownloads(t *testing.T) {
	dir := t.TempDir()
	s, err := NewSupervisor(Options{AppDir: dir, StateDir: dir, User: "atlreg-unused", Listen: netip.MustParseAddrPort("127.0.0.1:4873")})
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-30 * 24 * time.Hour)
	storageTreeAt(t, s.StorageDir(), old, "is-number/is-number-7.0.0.tgz", "other/other-1.0.0.tgz")
	lines := strings.Join([]string{
		`{"level":25,"time":1,"sub":"in","request":{"method":"GET","url":"/is-number/-/is-number-7.0.0.tgz"},"status":200,"msg":"200, req: 'GET /is-number/-/is-number-7.0.0.tgz'"}`,
		`{"level":25,"time":1,"sub":"in","request":{"method":"GET","url":"/other/-/other-1.0.0.tgz"},"status":404,"msg":"404"}`,
		`{"level":25,"time":1,"request":{"method":"GET","url":"https://uplink/other/-/other-1.0.0.tgz"},"status":200,"msg":"uplink"}`,
		`(node:1) Warning: not JSON`,
		`{"level":50,"time":1,"msg":"boom"}`,
	}, "\n") + "\n"
	s.capture(io.NopCloser(strings.NewReader(lines)))

	fi, err := os.Stat(filepath.Join(s.StorageDir(), "is-number/is-number-7.0.0.tgz"))
	if err != nil || time.Since(fi.ModTime()) > time.Hour {
		t.Errorf("served tarball not touched: %v %v", fi.ModTime(), err)
	}
	fi, err = os.Stat(filepath.Join(s.StorageDir(), "other/other-1.0.0.tgz"))
	if err != nil || !fi.ModTime().Equal(old) {
		t.Errorf("tarball not served (404, uplink fetch) was touched: %v %v", fi.ModTime(), err)
	}
	b, err := os.ReadFile(s.LogPath())
	if err != nil || strings.Count(string(b), "\n") != 5 {
		t.Errorf("log file: %q %v", b, err)
	}
	if tail := s.tail(); !slices.Equal(tail, []string{"(node:1) Warning: not JSON", "boom"}) {
		t.Errorf("tail %q: want the non-request lines", tail)
	}
}

func storageTreeAt(t *testing.T, dir string, ts time.Time, names ...string) {
	t.Helper()
	for _, n := range names {
		p := filepath.Join(dir, n)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("tgz"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, ts, ts); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRotatingLog(t *testing.T) {
	p := filepath.Join(t.TempDir(), "v.log")
	l := &rotatingLog{path: p, max: 100}
	for i := 0; i < 30; i++ {
		l.Write([]byte("0123456789\n"))
	}
	l.Close()
	cur, err1 := os.Stat(p)
	prev, err2 := os.Stat(p + ".1")
	if err1 != nil || err2 != nil || cur.Size() > 100 || prev.Size() > 100 {
		t.Fatalf("current %v %v, previous %v %v", cur, err1, prev, err2)
	}
}

// TestStorageLinksNotFollowed: Verdaccio, running as its own user, owns
// the storage and could plant symlinks in it to aim the manager's (root's)
// touch, eviction and purge at files elsewhere. None is followed out.
func TestStorageLinksNotFollowed(t *testing.T) {
	day := 24 * time.Hour
	now := time.Now()
	old := now.Add(-30 * day)
	outside := storageTree(t, now, map[string]time.Duration{
		"victim/package.json":      30 * day,
		"victim/victim-1.0.0.tgz":  30 * day,
		"secret/secret-1.0.0.tgz":  30 * day,
		"scoped/pkg/package.json":  30 * day,
		"scoped/pkg/pkg-1.0.0.tgz": 30 * day,
		"scoped/pkg/pkg-2.0.0.tgz": 30 * day,
		"linked/linked-1.0.0.tgz":  30 * day,
		"linked/linked-2.0.0.tgz":  30 * day,
		"linked/package.json":      30 * day,
	})
	storage := storageTree(t, now, map[string]time.Duration{
		"real/package.json":     30 * day,
		"real/real-1.0.0.tgz":   30 * day,
		"inner/package.json":    30 * day,
		"inner/inner-1.0.0.tgz": 30 * day,
	})
	before := listTree(t, outside)
	link := func(target, name string) {
		t.Helper()
		if err := os.Symlink(target, filepath.Join(storage, name)); err != nil {
			t.Fatal(err)
		}
	}
	link(filepath.Join(outside, "victim"), "victim")                                     // a package dir
	link(filepath.Join(outside, "scoped"), "@scoped")                                    // a scope dir
	link(filepath.Join(outside, "secret", "secret-1.0.0.tgz"), "inner/secret-1.0.0.tgz") // a tarball
	link("../../"+filepath.Base(outside)+"/linked", "linked")                            // relative, out

	for _, u := range []string{"/victim/-/victim-1.0.0.tgz", "/inner/-/secret-1.0.0.tgz", "/@scoped/pkg/-/pkg-1.0.0.tgz", "/linked/-/linked-1.0.0.tgz"} {
		if touchTarball(storage, u, now) {
			t.Errorf("touch %s went through a symlink", u)
		}
	}
	for _, f := range before {
		if fi, err := os.Stat(filepath.Join(outside, f)); err != nil || fi.ModTime().After(old.Add(time.Minute)) {
			t.Errorf("outside file %s touched: %v %v", f, fi.ModTime(), err)
		}
	}
	if _, err := evict(storage, now.Add(-14*day)); err != nil {
		t.Fatal(err)
	}
	if _, err := purge(storage); err != nil {
		t.Fatal(err)
	}
	if got := listTree(t, outside); !slices.Equal(got, before) {
		t.Errorf("outside the storage, eviction and purge left\n%v\nof\n%v", got, before)
	}
	if _, err := os.Stat(filepath.Join(storage, "real")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("purge left a real package")
	}
}
