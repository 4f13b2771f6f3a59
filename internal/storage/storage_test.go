package storage_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"atelier/internal/storage"
	"atelier/internal/storage/internal/script"
)

func TestDetect(t *testing.T) {
	yes := func(context.Context) bool { return true }
	no := func(context.Context) bool { return false }
	tests := []struct {
		method   string
		thinPool func(context.Context) bool
		dm       func(context.Context) bool
		want     string
		wantErr  bool
	}{
		{method: "lvm", thinPool: no, dm: no, want: "lvm"},
		{method: "file", thinPool: yes, dm: yes, want: "file"},
		{method: "loop", thinPool: no, dm: yes, want: "lvm"},
		{method: "loop", thinPool: yes, dm: no, want: "file"},
		{method: "device", thinPool: no, dm: yes, want: "lvm"},
		{method: "device", thinPool: no, dm: no, want: "file"},
		{method: "", thinPool: yes, dm: no, want: "lvm"},
		{method: "", thinPool: no, dm: yes, want: "file"},
		{method: "zfs", thinPool: yes, dm: yes, wantErr: true},
	}
	for _, tc := range tests {
		c, err := storage.Detect(context.Background(), tc.method, storage.Probe{ThinPool: tc.thinPool, DeviceMapper: tc.dm})
		if tc.wantErr {
			if err == nil {
				t.Errorf("Detect(%q) = %+v, want an error", tc.method, c)
			}
			continue
		}
		if err != nil || c.Driver != tc.want || c.Reason == "" {
			t.Errorf("Detect(%q, pool %v, dm %v) = %+v, %v; want %s", tc.method, tc.thinPool(context.Background()), tc.dm(context.Background()), c, err, tc.want)
		}
	}
}

func TestDetectAsksEveryTime(t *testing.T) {
	// Storage set up after start must be seen without a restart.
	pool := false
	p := storage.Probe{ThinPool: func(context.Context) bool { return pool }}
	for _, want := range []string{"file", "lvm"} {
		c, err := storage.Detect(context.Background(), "", p)
		if err != nil || c.Driver != want {
			t.Fatalf("Detect = %+v, %v; want %s", c, err, want)
		}
		pool = true
	}
}

func TestProbes(t *testing.T) {
	ctx := context.Background()
	lvs := []string{"/usr/sbin/lvs", "--noheadings", "-o", "lv_name", "sandbox-vg/thin-pool"}
	if !storage.ThinPoolExists(ctx, script.New(t, script.Cmd(lvs...).Returns("  thin-pool\n"))) {
		t.Error("thin pool not seen")
	}
	if storage.ThinPoolExists(ctx, script.New(t, script.Cmd(lvs...).Fails(`  Volume group "sandbox-vg" not found`))) {
		t.Error("missing volume group seen as a thin pool")
	}
	// The control node is missing (or gives ENODEV): no command runs.
	if storage.DeviceMapperWorks(ctx, script.New(t), filepath.Join(t.TempDir(), "control")) {
		t.Error("device-mapper seen without a control node")
	}
	control := filepath.Join(t.TempDir(), "control")
	if err := os.WriteFile(control, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	targets := "thin             v1.22.0\nthin-pool        v1.22.0\nstriped          v1.6.0\n"
	if !storage.DeviceMapperWorks(ctx, script.New(t, script.Cmd("/usr/sbin/dmsetup", "targets").Returns(targets)), control) {
		t.Error("thin-pool target not seen")
	}
	if storage.DeviceMapperWorks(ctx, script.New(t, script.Cmd("/usr/sbin/dmsetup", "targets").Returns("striped v1.6.0\nthin v1.22.0\n")), control) {
		t.Error("thin-pool seen where only thin is listed")
	}
}

func TestIDs(t *testing.T) {
	valid := map[storage.Kind][]string{
		storage.KindImage:    {"dev-base", "node.20", "a", "x_y", strings.Repeat("a", 63)},
		storage.KindSandbox:  {"k3v9x2m4p8qa"},
		storage.KindPrebuild: {"w5e8r1t4y7ua"},
	}
	invalid := map[storage.Kind][]string{
		storage.KindImage:    {"", "-rf", ".hidden", "Dev", "a/b", "../x", "a b", strings.Repeat("a", 64), "a\n"},
		storage.KindSandbox:  {"", "k3v9x2m4p8q", "K3V9X2M4P8QA", "k3v9x2m4p8q/", "k3v9x2m4p8qa0"},
		storage.KindPrebuild: {"ws", "../../../../x"},
		"snapshot":           {"k3v9x2m4p8qa"},
	}
	for kind, list := range valid {
		for _, id := range list {
			if err := storage.CheckID(kind, id); err != nil {
				t.Errorf("CheckID(%s, %q) = %v", kind, id, err)
			}
			k, got, ok := storage.ParseName(storage.VolumeName(kind, id))
			if !ok || k != kind || got != id {
				t.Errorf("ParseName(%s) = %s %s %v", storage.VolumeName(kind, id), k, got, ok)
			}
		}
	}
	for kind, list := range invalid {
		for _, id := range list {
			if err := storage.CheckID(kind, id); !errors.Is(err, storage.ErrInvalid) {
				t.Errorf("CheckID(%s, %q) = %v, want ErrInvalid", kind, id, err)
			}
		}
	}
	for _, name := range []string{"thin-pool", "prebuild-w5e8r1t4y7ua-old", "sandbox-", "image-", "scratch"} {
		if _, _, ok := storage.ParseName(name); ok {
			t.Errorf("ParseName(%q) accepted", name)
		}
	}
	if err := storage.Image("dev-base").Validate(); err != nil {
		t.Error(err)
	}
	if err := (storage.Source{Kind: storage.KindSandbox, ID: "k3v9x2m4p8qa"}).Validate(); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("a sandbox accepted as a clone source: %v", err)
	}
}

func TestCopySparse(t *testing.T) {
	dir := t.TempDir()
	src, err := os.Create(filepath.Join(dir, "src"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	const size = 64 << 20
	if err := src.Truncate(size); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 8192) // 128 KiB
	for _, off := range []int64{0, 10 << 20, size - int64(len(data))} {
		if _, err := src.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}
	// A block of written zeros is data to SEEK_DATA but must not be copied.
	if _, err := src.WriteAt(make([]byte, 1<<20), 20<<20); err != nil {
		t.Fatal(err)
	}
	dst, err := os.Create(filepath.Join(dir, "dst"))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	n, err := storage.CopySparse(context.Background(), dst, src, true)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3*int64(len(data)) {
		t.Errorf("wrote %d bytes, want %d", n, 3*len(data))
	}
	a, _ := os.ReadFile(src.Name())
	b, _ := os.ReadFile(dst.Name())
	if !bytes.Equal(a, b) {
		t.Fatal("copy differs")
	}
	var st unix.Stat_t
	if err := unix.Stat(dst.Name(), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 1<<20 {
		t.Fatalf("copy allocates %d bytes for 384 KiB of data", st.Blocks*512)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	other, err := os.Create(filepath.Join(dir, "other"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := storage.CopySparse(ctx, other, src, true); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled copy: %v", err)
	}
}

func TestExec(t *testing.T) {
	ctx := context.Background()
	out, err := storage.Exec{}.Run(ctx, "/usr/bin/env")
	if err != nil || !strings.Contains(string(out), "LC_ALL=C") {
		t.Fatalf("env: %v %q", err, out)
	}
	_, err = storage.Exec{}.Run(ctx, "/usr/bin/ls", "/atelier-no-such-path")
	var ee *storage.ExecError
	if !errors.As(err, &ee) || ee.Code != 2 || !strings.Contains(ee.Stderr, "No such file") ||
		!strings.Contains(err.Error(), "/usr/bin/ls /atelier-no-such-path") {
		t.Fatalf("failed command: %#v", err)
	}
	if !storage.StderrContains(err, "No such file") {
		t.Error("StderrContains missed the message")
	}
	if _, err := (storage.Exec{}).Run(ctx, "ls"); err == nil {
		t.Fatal("a relative binary ran")
	}
}
