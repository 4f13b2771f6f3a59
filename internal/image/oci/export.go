package oci

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"golang.org/x/sys/unix"

	"atelier/internal/bootcontract"
	"atelier/internal/image/manifest"
)

// Labels the exported image's config carries.
const (
	LabelID       = "dev.atelier.image.id"
	LabelManifest = "dev.atelier.image.manifest"
	// LabelVersionPrefix + name is one entry of the manifest's versions.
	LabelVersionPrefix = "dev.atelier.image.version."
)

// Entrypoint is the exported image's ENTRYPOINT: the agent's init as the
// kubernetes runtime starts it (the Pod spec repeats it as its command and
// adds the serve flags as arguments).
var Entrypoint = []string{bootcontract.InitPath, "init", "--kernel-cmdline=false", "--"}

// epoch is every entry's mtime and the image's created time when the
// manifest names no build time: the same tree always gives the same digest.
var epoch = time.Unix(0, 0).UTC()

// ExportOptions for ExportTree and ExportExt4.
type ExportOptions struct {
	// ID names the image when its tree has no manifest (the manifest's id
	// wins otherwise).
	ID string
	// WorkDir holds the compressed layer (default the system temp dir).
	WorkDir string
}

// Exported is an Atelier image as a single-layer OCI image whose layer is
// a gzip file in a work dir; Close removes it.
type Exported struct {
	Image    v1.Image
	Manifest *manifest.Manifest // nil when the tree has none
	ID       string
	Stats    Stats
	// LayerBytes is the compressed layer's size.
	LayerBytes int64
	work       string
}

// Close removes the layer file.
func (e *Exported) Close() error {
	if e == nil || e.work == "" {
		return nil
	}
	err := os.RemoveAll(e.work)
	e.work = ""
	return err
}

// ExportTree makes the tree at dir (an image build's root, or a mounted
// image) into a single-layer OCI image: regular files, directories,
// symbolic and hard links with their owners and modes (setuid bits
// included), security.capability and user.* extended attributes; device
// nodes, FIFOs and sockets are left out (the runtime provides /dev), as is
// the file system's lost+found. Every entry has the same mtime and entries
// come in name order, so the same tree gives the same digest.
func ExportTree(ctx context.Context, dir string, o ExportOptions) (exp *Exported, err error) {
	work, err := os.MkdirTemp(o.WorkDir, "atelier-export-")
	if err != nil {
		return nil, fmt.Errorf("export: work dir: %w", err)
	}
	exp = &Exported{work: work, ID: o.ID}
	defer func() {
		if err != nil {
			exp.Close()
			exp = nil
		}
	}()
	// Through an os.Root: the image's manifest may be a symbolic link, and
	// one to /etc/shadow must not put the host's file in a label.
	root, err := os.OpenRoot(dir)
	if err != nil {
		return exp, fmt.Errorf("export: %w", err)
	}
	b, err := readSmall(root, strings.TrimPrefix(manifest.Path, "/"))
	root.Close()
	if err == nil {
		m, err := manifest.Parse(b)
		if err != nil {
			return exp, fmt.Errorf("export: the image's %s: %w", manifest.Path, err)
		}
		exp.Manifest, exp.ID = m, m.ID
	} else if !errors.Is(err, fs.ErrNotExist) {
		return exp, fmt.Errorf("export: the image's %s: %w", manifest.Path, err)
	}
	if exp.ID == "" {
		return exp, errors.New("export: the image has no manifest and no id was given")
	}
	layerPath := filepath.Join(work, "layer.tar.gz")
	l, st, err := writeLayer(ctx, dir, layerPath)
	exp.Stats = st
	if err != nil {
		return exp, fmt.Errorf("export: %w", err)
	}
	exp.LayerBytes = l.size
	layer, err := partial.CompressedToLayer(l)
	if err != nil {
		return exp, fmt.Errorf("export: %w", err)
	}
	exp.Image, err = imageOf(layer, exp.ID, exp.Manifest)
	if err != nil {
		return exp, fmt.Errorf("export: %w", err)
	}
	return exp, nil
}

// ExportExt4 exports the ext4 image file (or block device) at image,
// mounted read-only and detached (see mountExt4).
func ExportExt4(ctx context.Context, image string, o ExportOptions) (*Exported, error) {
	root, release, err := mountExt4(image)
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", image, err)
	}
	defer release()
	return ExportTree(ctx, root, o)
}

func imageOf(layer v1.Layer, id string, m *manifest.Manifest) (v1.Image, error) {
	labels := map[string]string{LabelID: id}
	created := epoch
	user := "0"
	if m != nil {
		b, err := json.Marshal(m)
		if err != nil {
			return nil, err
		}
		labels[LabelManifest] = string(b)
		for k, v := range m.Versions {
			labels[LabelVersionPrefix+k] = v
		}
		if t, err := time.Parse(time.RFC3339, m.Built); err == nil {
			created = t.UTC()
		}
	}
	cfg := &v1.ConfigFile{
		Architecture: "amd64",
		OS:           "linux",
		Created:      v1.Time{Time: created},
		Config: v1.Config{
			Entrypoint: Entrypoint,
			Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
				"LANG=C.UTF-8"},
			User:       user,
			WorkingDir: "/",
			Labels:     labels,
		},
		RootFS: v1.RootFS{Type: "layers"},
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err := mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, err
	}
	return mutate.Append(img, mutate.Addendum{Layer: layer, MediaType: types.OCILayer,
		History: v1.History{Created: v1.Time{Time: created}, CreatedBy: "atelier images export " + id}})
}

// fileLayer is the gzip layer file; its digests were taken while writing.
type fileLayer struct {
	path           string
	digest, diffID v1.Hash
	size           int64
}

func (l *fileLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *fileLayer) Size() (int64, error)                { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }

type countHash struct {
	h hash.Hash
	n int64
}

func (c *countHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.h.Write(p)
}

func (c *countHash) sum() v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(c.h.Sum(nil))}
}

// writeLayer tars dir into a gzip file at out, hashing both streams.
func writeLayer(ctx context.Context, dir, out string) (*fileLayer, Stats, error) {
	var st Stats
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, st, err
	}
	defer f.Close()
	gzSum := &countHash{h: sha256.New()}
	bw := bufio.NewWriterSize(io.MultiWriter(f, gzSum), 1<<20)
	zw, err := gzip.NewWriterLevel(bw, gzip.BestSpeed)
	if err != nil {
		return nil, st, err
	}
	tarSum := &countHash{h: sha256.New()}
	tw := tar.NewWriter(io.MultiWriter(zw, tarSum))
	w := &treeWalker{ctx: ctx, base: dir, tw: tw, st: &st, links: map[[2]uint64]string{}}
	if err := w.walk(""); err != nil {
		return nil, st, err
	}
	for _, c := range []io.Closer{tw, zw} {
		if err := c.Close(); err != nil {
			return nil, st, err
		}
	}
	if err := bw.Flush(); err != nil {
		return nil, st, err
	}
	if err := f.Close(); err != nil {
		return nil, st, err
	}
	st.Layers = 1
	return &fileLayer{path: out, digest: gzSum.sum(), diffID: tarSum.sum(), size: gzSum.n}, st, nil
}

type treeWalker struct {
	ctx   context.Context
	base  string
	tw    *tar.Writer
	st    *Stats
	links map[[2]uint64]string // (dev, inode) of a multiply linked file → its first name
	buf   []byte
}

// walk writes the entries below rel ("" is the root) in name order.
func (w *treeWalker) walk(rel string) error {
	ents, err := os.ReadDir(filepath.Join(w.base, rel) + "/")
	if err != nil {
		return err
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, n := range names {
		if err := w.ctx.Err(); err != nil {
			return err
		}
		if rel == "" && n == "lost+found" {
			continue
		}
		child := n
		if rel != "" {
			child = rel + "/" + n
		}
		isDir, err := w.entry(child)
		if err != nil {
			return fmt.Errorf("%s: %w", child, err)
		}
		if isDir {
			if err := w.walk(child); err != nil {
				return err
			}
		}
	}
	return nil
}

// entry writes one path's header (and contents) and reports a directory.
func (w *treeWalker) entry(rel string) (bool, error) {
	p := filepath.Join(w.base, rel)
	var s unix.Stat_t
	if err := unix.Lstat(p, &s); err != nil {
		return false, err
	}
	mode := int64(s.Mode & 0o7777)
	h := &tar.Header{Name: rel, Mode: mode, Uid: int(s.Uid), Gid: int(s.Gid), ModTime: epoch, Format: tar.FormatPAX}
	switch s.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		h.Typeflag, h.Name = tar.TypeDir, rel+"/"
	case unix.S_IFLNK:
		target, err := os.Readlink(p)
		if err != nil {
			return false, err
		}
		h.Typeflag, h.Linkname = tar.TypeSymlink, target
	case unix.S_IFREG:
		key := [2]uint64{uint64(s.Dev), s.Ino}
		if s.Nlink > 1 {
			if first, ok := w.links[key]; ok {
				h.Typeflag, h.Linkname = tar.TypeLink, first
				break
			}
			w.links[key] = rel
		}
		h.Typeflag, h.Size = tar.TypeReg, s.Size
	default:
		w.st.Skipped++
		return false, nil
	}
	if err := w.xattrs(p, h); err != nil {
		return false, err
	}
	if err := w.tw.WriteHeader(h); err != nil {
		return false, err
	}
	w.st.Entries++
	if h.Typeflag == tar.TypeReg {
		f, err := os.Open(p)
		if err != nil {
			return false, err
		}
		if w.buf == nil {
			w.buf = make([]byte, 1<<20)
		}
		n, err := io.CopyBuffer(w.tw, io.LimitReader(f, h.Size), w.buf)
		f.Close()
		if err != nil {
			return false, err
		}
		if n != h.Size {
			return false, fmt.Errorf("changed while being read (%d of %d bytes)", n, h.Size)
		}
		w.st.Bytes += n
	}
	return h.Typeflag == tar.TypeDir, nil
}

// xattrs adds the attributes the importer keeps, in PAX records.
func (w *treeWalker) xattrs(p string, h *tar.Header) error {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil || sz == 0 {
		// No xattr support (tmpfs without user.*) means none to keep.
		return nil
	}
	list := make([]byte, sz)
	sz, err = unix.Llistxattr(p, list)
	if err != nil {
		return nil
	}
	for _, n := range strings.Split(string(list[:sz]), "\x00") {
		if n == "" || !keptXattr(n) {
			continue
		}
		vs, err := unix.Lgetxattr(p, n, nil)
		if err != nil {
			continue
		}
		v := make([]byte, vs)
		vs, err = unix.Lgetxattr(p, n, v)
		if err != nil {
			continue
		}
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords["SCHILY.xattr."+n] = string(v[:vs])
		w.st.Xattrs++
	}
	return nil
}

// DefaultRef is the name an export takes without --tag.
func DefaultRef(id string) string { return "localhost/atelier/" + id + ":latest" }

// ContainerdName is ref as containerd stores it: a reference without a
// registry host is Docker Hub's, with library/ for a one-part name, as the
// kubelet resolves a Pod's image.
func ContainerdName(ref string) (string, error) {
	r, err := name.ParseReference(ref, name.WithDefaultTag("latest"))
	if err != nil {
		return "", err
	}
	repo := r.Context().RepositoryStr()
	host := r.Context().RegistryStr()
	if host == name.DefaultRegistry {
		host = "docker.io"
	}
	id := r.Identifier()
	sep := ":"
	if strings.HasPrefix(id, "sha256:") {
		sep = "@"
	}
	return host + "/" + repo + sep + id, nil
}

func annotations(ref string) (map[string]string, error) {
	cn, err := ContainerdName(ref)
	if err != nil {
		return nil, err
	}
	return map[string]string{"org.opencontainers.image.ref.name": ref, "io.containerd.image.name": cn}, nil
}

// WriteLayout writes the image as an OCI image layout at dir, which must
// not exist or be empty.
func (e *Exported) WriteLayout(dir, ref string) error {
	ann, err := annotations(ref)
	if err != nil {
		return fmt.Errorf("write OCI layout: tag %q: %w", ref, err)
	}
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return fmt.Errorf("write OCI layout: %s is not empty", dir)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("write OCI layout: %w", err)
	}
	if err := p.AppendImage(e.Image, layout.WithAnnotations(ann),
		layout.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"})); err != nil {
		return fmt.Errorf("write OCI layout: %w", err)
	}
	return nil
}

// WriteTar writes the image as one tar file holding both an OCI image
// layout (oci-layout, index.json, blobs/) and a docker save manifest.json
// naming the same blobs, as docker save does since 25: `ctr images import`
// reads the layout, `atelier images import` and docker load the manifest.
// The file is written under a temporary name and renamed.
func (e *Exported) WriteTar(file, ref string) (err error) {
	ann, err := annotations(ref)
	if err != nil {
		return fmt.Errorf("write OCI tar: tag %q: %w", ref, err)
	}
	tag, err := name.NewTag(ref, name.WithDefaultTag("latest"))
	if err != nil {
		return fmt.Errorf("write OCI tar: tag %q must be a tag, not a digest: %w", ref, err)
	}
	rawCfg, err := e.Image.RawConfigFile()
	if err != nil {
		return fmt.Errorf("write OCI tar: %w", err)
	}
	rawMan, err := e.Image.RawManifest()
	if err != nil {
		return fmt.Errorf("write OCI tar: %w", err)
	}
	layers, err := e.Image.Layers()
	if err != nil || len(layers) != 1 {
		return fmt.Errorf("write OCI tar: layers: %v", err)
	}
	layerDigest, _ := layers[0].Digest()
	layerSize, _ := layers[0].Size()
	manDigest, manSize, err := v1.SHA256(strings.NewReader(string(rawMan)))
	if err != nil {
		return err
	}
	cfgDigest, _, _ := v1.SHA256(strings.NewReader(string(rawCfg)))
	blob := func(h v1.Hash) string { return "blobs/sha256/" + h.Hex }
	index, err := json.Marshal(v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests: []v1.Descriptor{{MediaType: types.OCIManifestSchema1, Digest: manDigest, Size: manSize,
			Annotations: ann, Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	})
	if err != nil {
		return err
	}
	docker, err := json.Marshal([]map[string]any{{
		"Config": blob(cfgDigest), "RepoTags": []string{tag.String()}, "Layers": []string{blob(layerDigest)},
	}})
	if err != nil {
		return err
	}

	tmp := file + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("write OCI tar: %w", err)
	}
	defer func() {
		f.Close()
		if err != nil {
			os.Remove(tmp)
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	tw := tar.NewWriter(bw)
	add := func(n string, size int64, r io.Reader) error {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: size, Typeflag: tar.TypeReg, ModTime: epoch}); err != nil {
			return err
		}
		_, err := io.Copy(tw, r)
		return err
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Name: d, Mode: 0o755, Typeflag: tar.TypeDir, ModTime: epoch}); err != nil {
			return fmt.Errorf("write OCI tar: %w", err)
		}
	}
	small := []struct {
		n string
		b []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{"manifest.json", docker},
		{blob(cfgDigest), rawCfg},
		{blob(manDigest), rawMan},
	}
	for _, s := range small {
		if err := add(s.n, int64(len(s.b)), strings.NewReader(string(s.b))); err != nil {
			return fmt.Errorf("write OCI tar: %w", err)
		}
	}
	rc, err := layers[0].Compressed()
	if err != nil {
		return fmt.Errorf("write OCI tar: %w", err)
	}
	err = add(blob(layerDigest), layerSize, rc)
	rc.Close()
	if err != nil {
		return fmt.Errorf("write OCI tar: layer: %w", err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write OCI tar: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write OCI tar: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write OCI tar: %w", err)
	}
	return os.Rename(tmp, file)
}

// Push writes the image to ref's registry with the docker config's
// credentials (remote.Write); opts come after, so tests can pass a
// transport.
func (e *Exported) Push(ctx context.Context, ref string, opts ...remote.Option) error {
	r, err := name.ParseReference(ref)
	if err != nil {
		return fmt.Errorf("push: %q: %w", ref, err)
	}
	all := append([]remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}, opts...)
	if err := remote.Write(r, e.Image, all...); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return nil
}

// LayerPath is the gzip layer file (until Close).
func (e *Exported) LayerPath() string { return filepath.Join(e.work, "layer.tar.gz") }

// ContainerdImport imports an OCI tar (WriteTar) into the containerd at
// address with containerd's own importer (ctr images import), which
// unpacks it for the kubelet's snapshotter; the kubelet's namespace is
// k8s.io.
func ContainerdImport(ctx context.Context, address, namespace, tarFile string) error {
	ctr, err := exec.LookPath("ctr")
	if err != nil {
		return fmt.Errorf("ctr not found (apt-get install containerd): %w", err)
	}
	out, err := exec.CommandContext(ctx, ctr, "--address", address, "--namespace", namespace,
		"images", "import", tarFile).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr images import: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
