package file

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"atelier/internal/storage"
	"atelier/internal/storage/internal/looptest"
)

// BenchmarkClone measures reflink clones of sparse images of three sizes
// (each holding 64 MiB of random data) on a loop-mounted XFS pool, against
// one full byte copy and one sparse copy of the 2 GiB image. The loop times
// the 2 GiB reflink clone; the figures are reported as metrics:
// clone-<size>-ms (median of 5), full-copy-2GiB-ms, sparse-copy-2GiB-ms
// and x-reflink-speedup (full copy / reflink clone of the 2 GiB image).
func BenchmarkClone(b *testing.B) {
	pool := looptest.Mount(b, "xfs", 6<<30)
	ctx := context.Background()
	d := New(Config{StateDir: pool, Log: quiet})
	if err := os.MkdirAll(filepath.Join(pool, ImagesDir), 0o755); err != nil {
		b.Fatal(err)
	}
	sizes := []struct {
		name, image string
		size        int64
	}{{"256MiB", "img256m", 256 << 20}, {"2GiB", "img2g", 2 << 30}, {"8GiB", "img8g", 8 << 30}}
	for _, s := range sizes {
		fillImage(b, filepath.Join(pool, ImagesDir, s.image+".ext4"), s.size, 1<<20, 64)
	}
	// Clones straight after a write flush the dirty pages first; time the
	// clone, not the flush.
	unix.Sync()

	n := 0
	nextID := func() string { n++; return fmt.Sprintf("bench%07d", n) }
	median := map[string]time.Duration{}
	for _, s := range sizes {
		var runs []time.Duration
		for range 5 {
			id := nextID()
			start := time.Now()
			if _, err := d.Clone(ctx, s.image, id); err != nil {
				b.Fatal(err)
			}
			runs = append(runs, time.Since(start))
			if err := d.Delete(ctx, id); err != nil {
				b.Fatal(err)
			}
		}
		slices.Sort(runs)
		median[s.name] = runs[len(runs)/2]
	}
	if st := d.Stats(); st.Copies != 0 {
		b.Fatalf("clones fell back to copies: %+v", st)
	}

	src := filepath.Join(pool, ImagesDir, "img2g.ext4")
	full := timedCopy(b, src, filepath.Join(pool, "full.ext4"), fullCopy)
	sparse := timedCopy(b, src, filepath.Join(pool, "sparse.ext4"), sparseCopy)

	for b.Loop() {
		id := nextID()
		if _, err := d.Clone(ctx, "img2g", id); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := d.Delete(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	// Reported after the loop: b.Loop's reset would drop them.
	for _, s := range sizes {
		b.ReportMetric(ms(median[s.name]), "clone-"+s.name+"-ms")
	}
	b.ReportMetric(ms(full), "full-copy-2GiB-ms")
	b.ReportMetric(ms(sparse), "sparse-copy-2GiB-ms")
	b.ReportMetric(float64(full)/float64(max(median["2GiB"], time.Microsecond)), "x-reflink-speedup")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// fullCopy writes every byte of src, zeros included, to dst: what a clone
// costs without copy-on-write. A plain read/write loop, because io.Copy
// would use copy_file_range, which XFS serves with a reflink.
func fullCopy(out, in *os.File) error {
	buf := make([]byte, 4<<20)
	for {
		n, err := in.Read(buf)
		if n > 0 {
			if _, werr := out.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// sparseCopy is the driver's fallback copy.
func sparseCopy(out, in *os.File) error {
	_, err := storage.CopySparse(context.Background(), out, in, true)
	return err
}

// timedCopy times copying src to a new dst with copy, synced; dst is
// removed afterwards.
func timedCopy(b *testing.B, src, dst string, copy func(out, in *os.File) error) time.Duration {
	b.Helper()
	in, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(dst)
	defer out.Close()
	start := time.Now()
	if err := copy(out, in); err != nil {
		b.Fatal(err)
	}
	if err := out.Sync(); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}
