// Package oci turns an OCI image (an OCI image layout directory or a
// `docker save` tarball, read with go-containerregistry) into an Atelier
// image: its layers flattened into one tree (whiteouts applied, nothing
// written outside the tree), the Atelier agent installed as the image's
// init per the boot contract, a manifest written when the image has none,
// and the tree made into an ext4 file with mkfs.ext4 -d, which the image
// catalog then checks and hands to the volume driver.
package oci

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"atelier/internal/bootcontract"
	"atelier/internal/image/ext4img"
	"atelier/internal/image/manifest"
)

// Open reads the image at src: a directory is an OCI image layout (its
// index must name exactly one image, or one for linux/amd64), a file a
// `docker save` tarball holding one image.
func Open(src string) (v1.Image, error) {
	fi, err := os.Stat(src)
	if err != nil {
		return nil, fmt.Errorf("open image: %w", err)
	}
	if !fi.IsDir() {
		img, err := tarball.ImageFromPath(src, nil)
		if err != nil {
			return nil, fmt.Errorf("open image %s as a docker save tarball: %w", src, err)
		}
		return img, nil
	}
	idx, err := layout.ImageIndexFromPath(src)
	if err != nil {
		return nil, fmt.Errorf("open image %s as an OCI image layout: %w", src, err)
	}
	return pickImage(idx, src)
}

// pickImage finds the one image of an index, descending into nested
// indexes (a multi-platform image) for linux/amd64.
func pickImage(idx v1.ImageIndex, src string) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("open image %s: %w", src, err)
	}
	var found []v1.Hash
	var nested []v1.Hash
	for _, d := range im.Manifests {
		if d.Platform != nil && (d.Platform.OS != "linux" || d.Platform.Architecture != "amd64") {
			continue
		}
		switch {
		case d.MediaType.IsImage():
			found = append(found, d.Digest)
		case d.MediaType.IsIndex():
			nested = append(nested, d.Digest)
		}
	}
	if len(found) == 0 && len(nested) == 1 {
		child, err := idx.ImageIndex(nested[0])
		if err != nil {
			return nil, fmt.Errorf("open image %s: %w", src, err)
		}
		return pickImage(child, src)
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("open image %s: the layout holds %d linux/amd64 images; import needs exactly one", src, len(found))
	}
	return idx.Image(found[0])
}

// Options for Build.
type Options struct {
	// ID is the image id the manifest names.
	ID string
	// Agent is the atelier-agent binary (statically linked) installed at
	// bootcontract.InitPath.
	Agent string
	// WorkDir holds the flattened tree and the ext4 file (default the
	// system temp dir); it needs about twice the image's size.
	WorkDir string
	// SizeBytes of the ext4 image; 0 sizes it from the content.
	SizeBytes int64
	// Progress receives one line per stage with its time; nil discards.
	Progress io.Writer
}

// Result is a built ext4 file, to hand to the catalog, and what went in.
type Result struct {
	// Path of the ext4 file; Cleanup removes it and the work tree.
	Path     string
	Cleanup  func()
	Stats    Stats
	Manifest *manifest.Manifest
	// HadManifest says the image carried its own /etc/atelier/image.json.
	HadManifest bool
	Digest      string
}

// Build flattens img into an ext4 file. Nothing it makes survives an error.
func Build(ctx context.Context, img v1.Image, o Options) (res Result, err error) {
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if err := checkStatic(o.Agent); err != nil {
		return res, err
	}
	work, err := os.MkdirTemp(o.WorkDir, "atelier-import-")
	if err != nil {
		return res, fmt.Errorf("import: work dir: %w", err)
	}
	cleanup := func() { _ = os.RemoveAll(work) }
	defer func() {
		if err != nil {
			cleanup()
		}
	}()
	tree := filepath.Join(work, "root")
	if err := os.Mkdir(tree, 0o755); err != nil {
		return res, fmt.Errorf("import: %w", err)
	}
	stage := func(name string, start time.Time) {
		fmt.Fprintf(o.Progress, "%-28s %6.2fs\n", name, time.Since(start).Seconds())
	}

	t := time.Now()
	cfg, err := img.ConfigFile()
	if err != nil {
		return res, fmt.Errorf("import: read image config: %w", err)
	}
	if cfg.OS != "" && cfg.OS != "linux" || cfg.Architecture != "" && cfg.Architecture != "amd64" {
		return res, fmt.Errorf("import: image is %s/%s; sandboxes run linux/amd64", cfg.OS, cfg.Architecture)
	}
	if d, err := img.Digest(); err == nil {
		res.Digest = d.String()
	}
	st, err := Flatten(ctx, img, tree)
	res.Stats = st
	if err != nil {
		return res, fmt.Errorf("import: %w", err)
	}
	stage(fmt.Sprintf("flatten %d layers", st.Layers), t)

	t = time.Now()
	root, err := os.OpenRoot(tree)
	if err != nil {
		return res, fmt.Errorf("import: %w", err)
	}
	defer root.Close()
	if err := installAgent(root, o.Agent); err != nil {
		return res, fmt.Errorf("import: install the agent: %w", err)
	}
	m, had, err := imageManifest(root, o.ID, cfg, res.Digest)
	if err != nil {
		return res, fmt.Errorf("import: %w", err)
	}
	res.Manifest, res.HadManifest = m, had
	stage("install agent and manifest", t)

	t = time.Now()
	size := o.SizeBytes
	if size == 0 {
		size = sizeFor(st)
	}
	out := filepath.Join(work, "image.ext4")
	if err := ext4img.Make(ctx, tree, out, size, labelFor(o.ID)); err != nil {
		return res, fmt.Errorf("import: %w", err)
	}
	stage(fmt.Sprintf("mkfs.ext4 (%d MiB)", size>>20), t)
	// The tree is no longer needed; the ext4 file is.
	_ = os.RemoveAll(tree)
	res.Path, res.Cleanup = out, cleanup
	return res, nil
}

// sizeFor is the content plus a quarter and 256 MiB of room (inodes,
// journal, the first writes), in whole MiB. Sandboxes grow their disk past
// it at boot when their volume is larger.
func sizeFor(st Stats) int64 {
	n := st.Bytes + st.Bytes/4 + int64(st.Entries)*4096 + 256<<20
	return (n + 1<<20 - 1) &^ (1<<20 - 1)
}

// labelFor is an ext4 label (at most 16 bytes) for the image.
func labelFor(id string) string {
	if len(id) > 16 {
		return id[:16]
	}
	return id
}

// installAgent puts the agent at the boot contract's init path, replacing
// whatever the image has there. The kernel (init=) and the container
// runtime both start that path, never the image's own init or entrypoint.
func installAgent(root *os.Root, agent string) error {
	rel := strings.TrimPrefix(bootcontract.InitPath, "/")
	if err := root.MkdirAll(filepath.Dir(rel), 0o755); err != nil {
		return err
	}
	if err := clear(root, rel, false); err != nil {
		return err
	}
	src, err := os.Open(agent)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Close(); err != nil {
		return err
	}
	if err := root.Lchown(rel, 0, 0); err != nil {
		return err
	}
	return root.Chmod(rel, 0o755)
}

// imageManifest returns the image's own manifest (renamed to id), or
// writes one: the image's USER (root when it names none) in its
// WORKDIR, or the user's home.
func imageManifest(root *os.Root, id string, cfg *v1.ConfigFile, digest string) (*manifest.Manifest, bool, error) {
	rel := strings.TrimPrefix(manifest.Path, "/")
	if b, err := readSmall(root, rel); err == nil {
		m, err := manifest.Parse(b)
		if err != nil {
			return nil, false, fmt.Errorf("the image's %s: %w", manifest.Path, err)
		}
		if m.ID != id {
			m.ID = id
			if err := writeManifest(root, rel, m); err != nil {
				return nil, false, err
			}
		}
		return m, true, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("the image's %s: %w", manifest.Path, err)
	}
	user, home := imageUser(root, cfg.Config.User)
	workdir := filepath.Clean(cfg.Config.WorkingDir)
	if cfg.Config.WorkingDir == "" || !filepath.IsAbs(workdir) {
		workdir = home
	}
	m := &manifest.Manifest{Schema: manifest.Schema, ID: id, User: user, Workdir: workdir}
	if !cfg.Created.IsZero() {
		m.Built = cfg.Created.UTC().Format(time.RFC3339)
	}
	if digest != "" {
		m.Versions = map[string]string{"oci-image": digest}
	}
	if err := writeManifest(root, rel, m); err != nil {
		return nil, false, err
	}
	return m, false, nil
}

func writeManifest(root *os.Root, rel string, m *manifest.Manifest) error {
	b, err := m.Marshal()
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if err := root.MkdirAll(filepath.Dir(rel), 0o755); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if err := clear(root, rel, false); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if err := root.WriteFile(rel, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	return nil
}

func readSmall(root *os.Root, rel string) ([]byte, error) {
	f, err := root.Open(rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 1<<20))
}

// imageUser maps the image's USER ("name", "uid", "name:group", "uid:gid")
// to a user name of its /etc/passwd and that user's home. Anything the
// passwd file does not name falls back to root: the manifest needs a name.
func imageUser(root *os.Root, spec string) (string, string) {
	u, _, _ := strings.Cut(spec, ":")
	passwd, _ := readSmall(root, "etc/passwd")
	for _, line := range strings.Split(string(passwd), "\n") {
		f := strings.Split(line, ":")
		if len(f) < 7 {
			continue
		}
		if f[0] == u || (u != "" && f[2] == u) {
			if _, err := strconv.Atoi(f[2]); err == nil && filepath.IsAbs(f[5]) {
				if m := (manifest.Manifest{Schema: manifest.Schema, ID: "x", User: f[0], Workdir: filepath.Clean(f[5])}); m.Validate() == nil {
					return f[0], filepath.Clean(f[5])
				}
			}
		}
	}
	return "root", "/root"
}

// checkStatic refuses an agent that needs a dynamic loader: the image may
// have no libc, or another one.
func checkStatic(path string) error {
	if path == "" {
		return errors.New("import: no agent binary given")
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("import: agent %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("import: agent %s is dynamically linked; build it with CGO_ENABLED=0 (make agent)", path)
		}
	}
	return nil
}
