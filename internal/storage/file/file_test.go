package file

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"atelier/internal/storage"
	"atelier/internal/storage/internal/looptest"
)

var quiet = slog.New(slog.DiscardHandler)

const (
	sb1 = "k3v9x2m4p8qa"
	sb2 = "r7t2w5y8z1bc"
	ws1 = "w5e8r1t4y7ua"
)

// writeImage makes a sparse file of size bytes with pseudo-random data in
// chunks spread across it, and returns its sha256.
func writeImage(t testing.TB, path string, size, chunk int64, chunks int) string {
	t.Helper()
	fillImage(t, path, size, chunk, chunks)
	return sum(t, path)
}

// fillImage is writeImage without the checksum.
func fillImage(t testing.TB, path string, size, chunk int64, chunks int) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, chunk)
	stride := size / int64(chunks)
	for i := range chunks {
		for j := 0; j+8 <= len(buf); j += 8 {
			binary.LittleEndian.PutUint64(buf[j:], rng.Uint64())
		}
		if _, err := f.WriteAt(buf, int64(i)*stride); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func sum(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func allocated(t testing.TB, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// extentFlags returns the FIEMAP flags of every extent of path.
func extentFlags(t *testing.T, path string) []uint32 {
	t.Helper()
	const (
		fsIocFiemap   = 0xC020660B
		fiemapSync    = 0x1
		headerSize    = 32
		extentSize    = 56
		maxExtents    = 512
		extentFlagOff = 40
	)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, headerSize+extentSize*maxExtents)
	binary.LittleEndian.PutUint64(buf[0:], 0)           // fm_start
	binary.LittleEndian.PutUint64(buf[8:], ^uint64(0))  // fm_length
	binary.LittleEndian.PutUint32(buf[16:], fiemapSync) // fm_flags
	binary.LittleEndian.PutUint32(buf[24:], maxExtents) // fm_extent_count
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0])))
	if errno != 0 {
		t.Fatalf("FIEMAP %s: %v", path, errno)
	}
	n := binary.LittleEndian.Uint32(buf[20:]) // fm_mapped_extents
	flags := make([]uint32, n)
	for i := range flags {
		flags[i] = binary.LittleEndian.Uint32(buf[headerSize+i*extentSize+extentFlagOff:])
	}
	return flags
}

func readAt(t *testing.T, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestCloneReflinkOnXFS is the production path: images on an XFS pool with
// reflink, clones sharing every extent with the template.
func TestCloneReflinkOnXFS(t *testing.T) {
	pool := looptest.Mount(t, "xfs", 512<<20)
	ctx := context.Background()
	d := New(Config{StateDir: pool, Log: quiet})

	// The source lives on the host's filesystem, so importing it cannot
	// reflink (EXDEV) and copies; the clone then reflinks inside the pool.
	src := filepath.Join(t.TempDir(), "base.ext4")
	want := writeImage(t, src, 64<<20, 1<<20, 8)
	if err := d.CreateImage(ctx, "base", src, 0); err != nil {
		t.Fatal(err)
	}
	image := filepath.Join(pool, "images", "base.ext4")
	if got := sum(t, image); got != want {
		t.Fatalf("image checksum %s, want %s", got, want)
	}
	if s := d.Stats(); s != (Stats{Copies: 1}) {
		t.Fatalf("stats after import = %+v, want one copy", s)
	}

	var before unix.Statfs_t
	if err := unix.Statfs(pool, &before); err != nil {
		t.Fatal(err)
	}
	path, err := d.Clone(ctx, "base", sb1)
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(pool, "overlays", sb1+".ext4") || path != d.Path(sb1) {
		t.Fatalf("path = %q, want the seed's overlays/<id>.ext4", path)
	}
	if s := d.Stats(); s != (Stats{Reflinks: 1, Copies: 1}) {
		t.Fatalf("stats after clone = %+v, want one reflink", s)
	}
	flags := extentFlags(t, path)
	if len(flags) == 0 {
		t.Fatal("clone has no extents")
	}
	for i, f := range flags {
		if f&0x2000 == 0 {
			t.Fatalf("extent %d of the clone is not shared (flags %#x)", i, f)
		}
	}
	var after unix.Statfs_t
	if err := unix.Statfs(pool, &after); err != nil {
		t.Fatal(err)
	}
	// 8 MiB of data copied would cost 2048 blocks; a reflink costs a few
	// metadata blocks at most.
	if used := int64(before.Bfree-after.Bfree) * after.Bsize; used > 1<<20 {
		t.Fatalf("clone used %d bytes of the pool", used)
	}
	if got := sum(t, path); got != want {
		t.Fatalf("clone checksum %s, want the image's %s", got, want)
	}

	// The clone is writable, and writing it leaves the template alone.
	marker := []byte("written by the guest")
	writeAt(t, path, 0, marker)
	writeAt(t, path, 40<<20+123, marker)
	if got := sum(t, image); got != want {
		t.Fatal("writing the clone changed the image")
	}
	if sum(t, path) == want {
		t.Fatal("the clone did not change")
	}

	// A second clone returns the same disk untouched.
	again, err := d.Clone(ctx, "base", sb1)
	if err != nil || again != path {
		t.Fatalf("second clone = %q, %v", again, err)
	}
	if got := readAt(t, path, 40<<20+123, len(marker)); string(got) != string(marker) {
		t.Fatalf("second clone overwrote the disk: %q", got)
	}
	if s := d.Stats(); s.Reflinks != 1 {
		t.Fatalf("second clone cloned again: %+v", s)
	}
	vols, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(vols, func(v storage.Volume) bool { return v.ID == sb1 }); i < 0 || vols[i].Origin != "image-base" {
		t.Fatalf("volumes = %+v, want %s with origin image-base", vols, sb1)
	}
}

// TestCloneFallbackCopy runs where reflink is refused (tmpfs): the clone is
// an identical, sparse copy and is counted as one.
func TestCloneFallbackCopy(t *testing.T) {
	pool := looptest.Tmpfs(t, "256m")
	ctx := context.Background()
	d := New(Config{StateDir: pool, Log: quiet})
	if err := os.MkdirAll(filepath.Join(pool, "images"), 0o755); err != nil {
		t.Fatal(err)
	}
	image := filepath.Join(pool, "images", "base.ext4")
	want := writeImage(t, image, 128<<20, 1<<20, 4)

	path, err := d.Clone(ctx, "base", sb1)
	if err != nil {
		t.Fatal(err)
	}
	if got := sum(t, path); got != want {
		t.Fatalf("copy checksum %s, want %s", got, want)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 128<<20 {
		t.Fatalf("copy size %d, want %d", fi.Size(), 128<<20)
	}
	if a := allocated(t, path); a > 8<<20 {
		t.Fatalf("copy allocates %d bytes for 4 MiB of data: not sparse", a)
	}
	if s := d.Stats(); s != (Stats{Copies: 1}) {
		t.Fatalf("stats = %+v, want one copy", s)
	}
	if ok, err := ReflinkSupported(pool); err != nil || ok {
		t.Fatalf("ReflinkSupported(tmpfs) = %v, %v", ok, err)
	}
}

// TestCloneConcurrent: many clones of one sandbox at once make one disk.
func TestCloneConcurrent(t *testing.T) {
	root := t.TempDir()
	d := New(Config{StateDir: root, Log: quiet})
	if err := os.MkdirAll(filepath.Join(root, "images"), 0o755); err != nil {
		t.Fatal(err)
	}
	want := writeImage(t, filepath.Join(root, "images", "base.ext4"), 8<<20, 64<<10, 4)
	var wg sync.WaitGroup
	paths := make([]string, 8)
	errs := make([]error, 8)
	for i := range paths {
		wg.Go(func() { paths[i], errs[i] = d.Clone(context.Background(), "base", sb1) })
	}
	wg.Wait()
	for i := range paths {
		if errs[i] != nil || paths[i] != d.Path(sb1) {
			t.Fatalf("clone %d = %q, %v", i, paths[i], errs[i])
		}
	}
	entries, err := os.ReadDir(filepath.Join(root, "overlays"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != sb1+".ext4" {
		t.Fatalf("overlays = %v, want the one disk and no temporary files", entries)
	}
	if sum(t, d.Path(sb1)) != want {
		t.Fatal("disk differs from the image")
	}
}

func TestPrebuild(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	d := New(Config{StateDir: root, Log: quiet})
	src := filepath.Join(t.TempDir(), "base.ext4")
	writeImage(t, src, 8<<20, 64<<10, 2)
	if err := d.CreateImage(ctx, "base", src, 16<<20); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(root, "images", "base.ext4")); err != nil || fi.Size() != 16<<20 {
		t.Fatalf("image not grown to 16 MiB: %v %v", fi, err)
	}
	if err := d.CreateImage(ctx, "base", src, 0); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("second CreateImage: %v, want ErrExists", err)
	}
	p1, err := d.Clone(ctx, "base", sb1)
	if err != nil {
		t.Fatal(err)
	}
	writeAt(t, p1, 4096, []byte("first"))
	if err := d.Prebuild(ctx, ws1, sb1); err != nil {
		t.Fatal(err)
	}
	writeAt(t, p1, 4096, []byte("second"))
	if err := d.Prebuild(ctx, ws1, sb1); err != nil {
		t.Fatal(err)
	}
	p2, err := d.CloneFrom(ctx, storage.Prebuild(ws1), sb2)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAt(t, p2, 4096, 6); string(got) != "second" {
		t.Fatalf("clone of the prebuild reads %q, want the newer prebuild", got)
	}
	if err := d.Prebuild(ctx, ws1, "n3wn3wn3wn3w"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("prebuild of a missing sandbox: %v", err)
	}
	if _, err := d.CloneFrom(ctx, storage.Prebuild("q1q1q1q1q1q1"), "n3wn3wn3wn3w"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("clone of a missing prebuild: %v", err)
	}
	for range 2 {
		if err := d.DeletePrebuild(ctx, ws1); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "prebuilds", ws1+".ext4")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("prebuild still there: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(root, "*", ".*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

func TestResize(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	d := New(Config{StateDir: root, Log: quiet})
	if err := os.MkdirAll(filepath.Join(root, "images"), 0o755); err != nil {
		t.Fatal(err)
	}
	want := writeImage(t, filepath.Join(root, "images", "base.ext4"), 4<<20, 4096, 4)
	path, err := d.Clone(ctx, "base", sb1)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		id      string
		size    int64
		want    int64
		wantErr error
		wantMsg string
	}{
		{name: "grow", id: sb1, size: 64 << 20, want: 64 << 20},
		{name: "same size", id: sb1, size: 64 << 20, want: 64 << 20},
		{name: "shrink refused", id: sb1, size: 1 << 20, want: 64 << 20, wantMsg: "shrinking"},
		{name: "absent", id: sb2, size: 1 << 30, want: 64 << 20, wantErr: storage.ErrNotFound},
		{name: "invalid id", id: "../images/base", size: 1 << 30, want: 64 << 20, wantErr: storage.ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := d.Resize(ctx, tc.id, tc.size)
			switch {
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			case tc.wantMsg != "" && (err == nil || !strings.Contains(err.Error(), tc.wantMsg)):
				t.Fatalf("err = %v, want %q", err, tc.wantMsg)
			case tc.wantErr == nil && tc.wantMsg == "" && err != nil:
				t.Fatal(err)
			}
			fi, err := os.Stat(path)
			if err != nil || fi.Size() != tc.want {
				t.Fatalf("size = %v (%v), want %d", fi.Size(), err, tc.want)
			}
		})
	}
	// Growth keeps the data and adds zeros.
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, f, 4<<20); err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(h.Sum(nil)) != want {
		t.Fatal("resize changed the data")
	}
}

func TestDelete(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	d := New(Config{StateDir: root, Log: quiet})
	if err := os.MkdirAll(filepath.Join(root, "images"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeImage(t, filepath.Join(root, "images", "base.ext4"), 1<<20, 4096, 1)
	path, err := d.Clone(ctx, "base", sb1)
	if err != nil {
		t.Fatal(err)
	}
	// What a clone killed mid-copy leaves, and a neighbour's disk.
	leftover := filepath.Join(root, "overlays", "."+sb1+".ext4.123456.tmp")
	other := filepath.Join(root, "overlays", sb2+".ext4")
	for _, p := range []string{leftover, other} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 {
		if err := d.Delete(ctx, sb1); err != nil {
			t.Fatalf("delete %d: %v", i, err)
		}
	}
	for _, p := range []string{path, leftover} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there: %v", p, err)
		}
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("delete removed another sandbox's disk: %v", err)
	}
	if err := d.Delete(ctx, "k3v9x2m4p8q*"); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("delete with a glob: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("glob id removed a disk: %v", err)
	}
}

// TestDeleteImage removes an image's file and what a crashed import left,
// and nothing else.
func TestDeleteImage(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	d := New(Config{StateDir: root, Log: quiet})
	dir := filepath.Join(root, "images")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeImage(t, filepath.Join(dir, "base.ext4"), 1<<20, 4096, 1)
	writeImage(t, filepath.Join(dir, "other.ext4"), 1<<20, 4096, 1)
	leftover := filepath.Join(dir, ".base.ext4.99.tmp")
	if err := os.WriteFile(leftover, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := d.DeleteImage(ctx, "base"); err != nil {
			t.Fatalf("delete image %d: %v", i, err)
		}
	}
	for _, p := range []string{filepath.Join(dir, "base.ext4"), leftover} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there: %v", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "other.ext4")); err != nil {
		t.Errorf("another image went: %v", err)
	}
	for _, bad := range []string{"../overlays/x", "*", ""} {
		if err := d.DeleteImage(ctx, bad); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("delete image %q: %v, want ErrInvalid", bad, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "other.ext4")); err != nil {
		t.Errorf("a bad id removed an image: %v", err)
	}
}

func TestListAndUsage(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	d := New(Config{StateDir: root, Log: quiet})
	if vols, err := d.List(ctx); err != nil || len(vols) != 0 {
		t.Fatalf("List of an empty root = %v, %v", vols, err)
	}
	src := filepath.Join(t.TempDir(), "src.ext4")
	writeImage(t, src, 2<<20, 4096, 2)
	if err := d.CreateImage(ctx, "dev-base", src, 0); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{sb1, sb2} {
		if _, err := d.Clone(ctx, "dev-base", id); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Prebuild(ctx, ws1, sb1); err != nil {
		t.Fatal(err)
	}
	if err := d.Resize(ctx, sb2, 8<<20); err != nil {
		t.Fatal(err)
	}
	// Foreign files are not volumes.
	for _, name := range []string{"notes.txt", "." + sb1 + ".ext4.1.tmp", "BAD.ext4", "ab.ext4"} {
		if err := os.WriteFile(filepath.Join(root, "overlays", name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	vols, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	type brief struct {
		Name   string
		Kind   storage.Kind
		Path   string
		Size   int64
		Origin string
	}
	var got []brief
	for _, v := range vols {
		got = append(got, brief{v.Name, v.Kind, v.Path, v.SizeBytes, v.Origin})
		if v.UsedBytes <= 0 {
			t.Errorf("%s: used %d", v.Name, v.UsedBytes)
		}
		if v.Driver != storage.DriverFile {
			t.Errorf("%s: driver %q", v.Name, v.Driver)
		}
		if one, err := d.Stat(ctx, v.Kind, v.ID); err != nil || one != v {
			t.Errorf("Stat(%s) = %+v, %v; want %+v", v.Name, one, err, v)
		}
	}
	if _, err := d.Stat(ctx, storage.KindSandbox, "n0n0n0n0n0n0"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat of a missing volume: %v, want ErrNotFound", err)
	}
	want := []brief{
		{"image-dev-base", storage.KindImage, filepath.Join(root, "images", "dev-base.ext4"), 2 << 20, ""},
		{"prebuild-" + ws1, storage.KindPrebuild, filepath.Join(root, "prebuilds", ws1+".ext4"), 2 << 20, "sandbox-" + sb1},
		{"sandbox-" + sb1, storage.KindSandbox, filepath.Join(root, "overlays", sb1+".ext4"), 2 << 20, "image-dev-base"},
		{"sandbox-" + sb2, storage.KindSandbox, filepath.Join(root, "overlays", sb2+".ext4"), 8 << 20, "image-dev-base"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("List =\n %+v\nwant\n %+v", got, want)
	}
	u, err := d.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if u.Driver != "file" || u.Volumes != 4 || u.VirtualBytes != 14<<20 || u.TotalBytes <= 0 ||
		u.UsedBytes <= 0 || u.UsedBytes > u.TotalBytes || u.DataPercent <= 0 || u.DataPercent > 100 {
		t.Fatalf("usage = %+v", u)
	}
}

func TestGuardsAndInvalidInput(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	if err := os.MkdirAll(filepath.Join(root, "images"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeImage(t, filepath.Join(root, "images", "base.ext4"), 1<<20, 4096, 1)

	// No filesystem is 100 % free, so this limit always refuses.
	full := New(Config{StateDir: root, MinFreePercent: 100, Log: quiet})
	_, err := full.Clone(ctx, "base", sb1)
	if !errors.Is(err, storage.ErrPoolFull) || !strings.Contains(err.Error(), "limit: keep 100% free") {
		t.Fatalf("clone on a full filesystem: %v", err)
	}

	d := New(Config{StateDir: root, Log: quiet})
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := d.Clone(cancelled, "base", sb1); !errors.Is(err, context.Canceled) {
		t.Fatalf("clone with a cancelled context: %v", err)
	}
	if _, err := d.Clone(ctx, "missing", sb1); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("clone of a missing image: %v", err)
	}
	bad := map[string]error{}
	_, bad["clone bad id"] = d.Clone(ctx, "base", "../../etc/x")
	_, bad["clone bad image"] = d.Clone(ctx, "../overlays/"+sb2, sb1)
	_, bad["clone from sandbox"] = d.CloneFrom(ctx, storage.Source{Kind: storage.KindSandbox, ID: sb2}, sb1)
	bad["image bad id"] = d.CreateImage(ctx, "Base", filepath.Join(root, "images", "base.ext4"), 0)
	bad["prebuild bad ws"] = d.Prebuild(ctx, "ws", sb1)
	bad["prebuild bad sandbox"] = d.Prebuild(ctx, ws1, "")
	bad["delete prebuild bad"] = d.DeletePrebuild(ctx, "../images/base")
	for name, err := range bad {
		if !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(root, "overlays", "*")); len(left) != 0 {
		t.Fatalf("refused clones left files: %v", left)
	}
	if left, _ := filepath.Glob(filepath.Join(root, "overlays", ".*")); len(left) != 0 {
		t.Fatalf("refused clones left files: %v", left)
	}
	if d.Path("x/y") != "" {
		t.Fatal("Path of an invalid id is not empty")
	}
}
