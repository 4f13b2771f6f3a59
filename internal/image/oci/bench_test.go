package oci_test

import (
	"archive/tar"
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"atelier/internal/image/catalog"
	"atelier/internal/image/oci"
	"atelier/internal/storage/file"
	"atelier/internal/store"
	"atelier/internal/testenv"
)

// treeLayer is a layer of every file under dir (the Go source tree: ~11k
// files, ~150 MB), streamed from disk each time the layer is read.
func treeLayer(b *testing.B, dir string) v1.Layer {
	b.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() {
			tw := tar.NewWriter(pw)
			err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				fi, err := d.Info()
				if err != nil {
					return err
				}
				if !fi.Mode().IsRegular() && !fi.IsDir() {
					return nil
				}
				rel, _ := filepath.Rel(dir, p)
				h, err := tar.FileInfoHeader(fi, "")
				if err != nil {
					return err
				}
				h.Name = filepath.ToSlash(filepath.Join("usr/src/go", rel))
				if fi.IsDir() {
					h.Name += "/"
				}
				if err := tw.WriteHeader(h); err != nil {
					return err
				}
				if fi.Mode().IsRegular() {
					f, err := os.Open(p)
					if err != nil {
						return err
					}
					_, err = io.Copy(tw, f)
					f.Close()
					return err
				}
				return nil
			})
			if err == nil {
				err = tw.Close()
			}
			pw.CloseWithError(err)
		}()
		return pr, nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return l
}

// BenchmarkImport times an import of a ~150 MB, ~11k-file image end to
// end: flatten, agent and manifest, mkfs.ext4 -d, e2fsck, into the file
// driver.
func BenchmarkImport(b *testing.B) {
	if os.Geteuid() != 0 {
		testenv.Missing(b, "requires root: extraction sets owners")
	}
	agent := "/usr/bin/busybox"
	if _, err := os.Stat(agent); err != nil {
		testenv.Missing(b, "requires busybox-static at %s", agent)
	}
	ctx := context.Background()
	src := filepath.Join(runtime.GOROOT(), "src")
	built, err := imageFromLayers(treeLayer(b, src))
	if err != nil {
		b.Fatal(err)
	}
	// Written as a layout first, as a user's image arrives: compressed,
	// its digests known, so the import does not time the gzip.
	dir := filepath.Join(b.TempDir(), "layout")
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		b.Fatal(err)
	}
	if err := lp.AppendImage(built); err != nil {
		b.Fatal(err)
	}
	st, err := store.Open(ctx, b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	cat := catalog.New(catalog.Options{Store: st, Volumes: file.New(file.Config{StateDir: b.TempDir(), MinFreePercent: 0.001})})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		img, err := oci.Open(dir)
		if err != nil {
			b.Fatal(err)
		}
		res, err := oci.Build(ctx, img, oci.Options{ID: "bench", Agent: agent, WorkDir: b.TempDir(), Progress: os.Stderr})
		if err != nil {
			b.Fatal(err)
		}
		buildTime := time.Since(t0)
		if _, err := cat.Import(ctx, catalog.ImportRequest{ID: "bench", Path: res.Path, Foreign: true, RequireManifest: true}); err != nil {
			b.Fatal(err)
		}
		total := time.Since(t0)
		b.ReportMetric(float64(buildTime.Milliseconds()), "build-ms")
		b.ReportMetric(float64(total.Milliseconds()), "import-ms")
		b.ReportMetric(float64(res.Stats.Entries), "files")
		b.ReportMetric(float64(res.Stats.Bytes)/(1<<20), "content-MiB")
		res.Cleanup()
		if err := cat.Remove(ctx, "bench"); err != nil {
			b.Fatal(err)
		}
	}
}
