package kubetest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"
)

// ImageFile is one entry of a single-layer test image: a regular file (Data,
// Mode) or, when Link is set, a symbolic link to Link. Parent directories are
// added automatically.
type ImageFile struct {
	Name string // path inside the image, e.g. "bin/busybox"
	Mode int64  // permission bits of a regular file; 0644 when 0
	Data []byte
	Link string
}

// WriteImage writes an OCI image layout tarball at dst holding one
// uncompressed layer made of files, with ref (e.g.
// "localhost/atelier-kubetest/busybox:1") as its name and entrypoint as its
// ENTRYPOINT. `ctr images import` takes it as is, so a test image needs no
// registry and no image tooling.
func WriteImage(dst, ref string, entrypoint []string, files ...ImageFile) error {
	if ref == "" || strings.ContainsAny(ref, " \t\n") {
		return fmt.Errorf("image ref %q: must be a non-empty reference", ref)
	}
	layer, err := layerTar(files)
	if err != nil {
		return err
	}
	layerDigest := digest(layer)
	arch := runtime.GOARCH
	config, err := json.Marshal(map[string]any{
		"architecture": arch,
		"os":           "linux",
		"created":      time.Unix(0, 0).UTC(),
		"config": map[string]any{
			"Entrypoint": entrypoint,
			"Env":        []string{"PATH=/bin:/usr/bin:/sbin:/usr/sbin"},
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	if err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{
			"mediaType": "application/vnd.oci.image.config.v1+json",
			"digest":    digest(config),
			"size":      len(config),
		},
		"layers": []map[string]any{{
			"mediaType": "application/vnd.oci.image.layer.v1.tar",
			"digest":    layerDigest,
			"size":      len(layer),
		}},
	})
	if err != nil {
		return fmt.Errorf("image manifest: %w", err)
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"manifests": []map[string]any{{
			"mediaType": "application/vnd.oci.image.manifest.v1+json",
			"digest":    digest(manifest),
			"size":      len(manifest),
			"platform":  map[string]string{"architecture": arch, "os": "linux"},
			"annotations": map[string]string{
				"io.containerd.image.name":          ref,
				"org.opencontainers.image.ref.name": ref,
			},
		}},
	})
	if err != nil {
		return fmt.Errorf("image index: %w", err)
	}

	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	add := func(name string, data []byte) error {
		hdr := &tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, e := range []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{blobPath(config), config},
		{blobPath(manifest), manifest},
		{blobPath(layer), layer},
	} {
		if err := add(e.name, e.data); err != nil {
			return fmt.Errorf("write %s: %w", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("close image tar: %w", err)
	}
	if err := os.WriteFile(dst, out.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write image: %w", err)
	}
	return nil
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func blobPath(b []byte) string {
	return "blobs/sha256/" + strings.TrimPrefix(digest(b), "sha256:")
}

// layerTar makes the layer: parent directories first, then the entries in
// name order, so the same files always give the same digest.
func layerTar(files []ImageFile) ([]byte, error) {
	dirs := map[string]bool{}
	entries := map[string]ImageFile{}
	for _, f := range files {
		name := path.Clean(strings.TrimPrefix(f.Name, "/"))
		if name == "." || strings.HasPrefix(name, "../") || name == ".." {
			return nil, fmt.Errorf("image file %q: must be a path inside the image", f.Name)
		}
		if _, dup := entries[name]; dup {
			return nil, fmt.Errorf("image file %q: given twice", f.Name)
		}
		entries[name] = f
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	dirNames := make([]string, 0, len(dirs))
	for d := range dirs {
		dirNames = append(dirNames, d)
	}
	sort.Strings(dirNames)
	for _, d := range dirNames {
		if err := tw.WriteHeader(&tar.Header{Name: d + "/", Mode: 0o755, Typeflag: tar.TypeDir, ModTime: epoch}); err != nil {
			return nil, fmt.Errorf("layer dir %s: %w", d, err)
		}
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		f := entries[n]
		if f.Link != "" {
			if err := tw.WriteHeader(&tar.Header{Name: n, Linkname: f.Link, Mode: 0o777, Typeflag: tar.TypeSymlink, ModTime: epoch}); err != nil {
				return nil, fmt.Errorf("layer link %s: %w", n, err)
			}
			continue
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: mode, Size: int64(len(f.Data)), Typeflag: tar.TypeReg, ModTime: epoch}); err != nil {
			return nil, fmt.Errorf("layer file %s: %w", n, err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, fmt.Errorf("layer file %s: %w", n, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close layer: %w", err)
	}
	return buf.Bytes(), nil
}

// busyboxApplets are linked into the busybox test image's /bin.
var busyboxApplets = []string{"sh", "cat", "echo", "ls", "mkdir", "sleep", "httpd", "wget", "true", "false", "env", "id", "ps"}

// busyboxFiles is /bin/busybox (Debian's busybox-static) plus its applet links.
func busyboxFiles(busybox []byte) []ImageFile {
	files := []ImageFile{{Name: "bin/busybox", Mode: 0o755, Data: busybox}}
	for _, a := range busyboxApplets {
		files = append(files, ImageFile{Name: "bin/" + a, Link: "busybox"})
	}
	return files
}
