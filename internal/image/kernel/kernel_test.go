package kernel

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The fragment and the check are two statements of one requirement: the
// kernel Atelier builds must pass its own check, recommended options
// included.
func TestFragmentSatisfiesTheCheck(t *testing.T) {
	cfg := ParseConfig(Fragment)
	if miss := MissingRequired(cfg); len(miss) > 0 {
		t.Errorf("the fragment lacks required options: %v", miss)
	}
	for name := range Recommended {
		if cfg[name] != "y" {
			t.Errorf("the fragment lacks recommended %s", name)
		}
	}
	for name, v := range cfg {
		if v == "m" {
			t.Errorf("%s=m: the guest loads no modules", name)
		}
	}
	if cfg["CONFIG_MODULES"] != "n" || cfg["CONFIG_BLK_DEV_INITRD"] != "n" {
		t.Error("the fragment must turn modules and the initrd off")
	}
}

func TestParseConfig(t *testing.T) {
	got := ParseConfig([]byte("# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\nCONFIG_D=32\nNOT_CONFIG=y\n  CONFIG_E=m  \n"))
	want := map[string]string{"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": `"x y"`, "CONFIG_D": "32", "CONFIG_E": "m"}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

// Kconfig drops an option whose dependency is off without a word; the
// build must notice, or a kernel without virtio-blk ships.
func TestFragmentDropped(t *testing.T) {
	frag := []byte("CONFIG_VIRTIO_BLK=y\n# CONFIG_MODULES is not set\nCONFIG_NR_CPUS=32\n")
	cfg := []byte("CONFIG_NR_CPUS=32\n# CONFIG_VIRTIO_BLK is not set\nCONFIG_MODULES=y\n")
	got := FragmentDropped(frag, cfg)
	want := []string{"CONFIG_MODULES=n (got y)", "CONFIG_VIRTIO_BLK=y (got n)"}
	if !slices.Equal(got, want) {
		t.Fatalf("dropped %v, want %v", got, want)
	}
	if d := FragmentDropped(frag, []byte("CONFIG_VIRTIO_BLK=y\nCONFIG_NR_CPUS=32\n")); len(d) != 0 {
		t.Fatalf("an absent option is off, as the fragment asks: %v", d)
	}
}

func TestMissingRequired(t *testing.T) {
	cfg := ParseConfig(Fragment)
	cfg["CONFIG_VIRTIO_BLK"] = "m"
	delete(cfg, "CONFIG_VIRTIO_VSOCKETS")
	cfg["CONFIG_ACPI"] = "n"
	cfg["CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES"] = "n"
	got := MissingRequired(cfg)
	want := []string{"CONFIG_VIRTIO_BLK=y", "CONFIG_VIRTIO_VSOCKETS=y", "CONFIG_ACPI=y and CONFIG_PCI=y (or CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y)"}
	if !slices.Equal(got, want) {
		t.Fatalf("missing %v, want %v", got, want)
	}
	cfg["CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES"] = "y" // legacy device discovery will do
	if got := MissingRequired(cfg); len(got) != 2 {
		t.Fatalf("missing %v", got)
	}
}

// tinyELF writes a minimal x86-64 ELF executable with, when pvh, the Xen
// PVH entry note QEMU's microvm looks for.
func tinyELF(t *testing.T, path string, pvh bool, typ uint16) {
	t.Helper()
	var note bytes.Buffer
	le := binary.LittleEndian
	_ = binary.Write(&note, le, []uint32{4, 8, 18})
	note.WriteString("Xen\x00")
	note.Write(make([]byte, 8))
	var b bytes.Buffer
	phnum := uint16(0)
	if pvh {
		phnum = 1
	}
	// ELF header.
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0})
	b.Write(make([]byte, 8))
	_ = binary.Write(&b, le, typ)            // e_type
	_ = binary.Write(&b, le, uint16(62))     // e_machine: x86-64
	_ = binary.Write(&b, le, uint32(1))      // e_version
	_ = binary.Write(&b, le, uint64(0x1000)) // e_entry
	_ = binary.Write(&b, le, uint64(64))     // e_phoff
	_ = binary.Write(&b, le, uint64(0))      // e_shoff
	_ = binary.Write(&b, le, uint32(0))      // e_flags
	_ = binary.Write(&b, le, uint16(64))     // e_ehsize
	_ = binary.Write(&b, le, uint16(56))     // e_phentsize
	_ = binary.Write(&b, le, phnum)
	_ = binary.Write(&b, le, uint16(64)) // e_shentsize
	_ = binary.Write(&b, le, uint16(0))
	_ = binary.Write(&b, le, uint16(0))
	if pvh {
		off := uint64(64 + 56)
		_ = binary.Write(&b, le, uint32(4)) // PT_NOTE
		_ = binary.Write(&b, le, uint32(4))
		_ = binary.Write(&b, le, off)
		_ = binary.Write(&b, le, uint64(0))
		_ = binary.Write(&b, le, uint64(0))
		_ = binary.Write(&b, le, uint64(note.Len()))
		_ = binary.Write(&b, le, uint64(note.Len()))
		_ = binary.Write(&b, le, uint64(4))
		b.Write(note.Bytes())
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	good := strings.Join(func() []string {
		var l []string
		for k, v := range ParseConfig(Fragment) {
			if v == "n" {
				l = append(l, "# "+k+" is not set")
			} else {
				l = append(l, k+"="+v)
			}
		}
		return l
	}(), "\n")

	t.Run("config beside the kernel", func(t *testing.T) {
		k := filepath.Join(dir, "a")
		tinyELF(t, k, true, 2)
		if err := os.WriteFile(k+".config", []byte(good), 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := Check(k)
		if err != nil || !r.OK() || !r.PVH || r.ConfigSource != k+".config" || len(r.Degraded) != 0 {
			t.Fatalf("Check = %+v, %v", r, err)
		}
	})
	t.Run("embedded config lacking virtio-blk", func(t *testing.T) {
		k := filepath.Join(dir, "b")
		tinyELF(t, k, false, 2)
		var z bytes.Buffer
		zw := gzip.NewWriter(&z)
		_, _ = zw.Write([]byte(strings.Replace(good, "CONFIG_VIRTIO_BLK=y", "CONFIG_VIRTIO_BLK=m", 1)))
		_ = zw.Close()
		f, _ := os.OpenFile(k, os.O_APPEND|os.O_WRONLY, 0)
		_, _ = f.Write(append(append([]byte("IKCFG_ST"), z.Bytes()...), "IKCFG_ED"...))
		f.Close()
		r, err := Check(k)
		if err != nil || r.OK() || r.PVH || !strings.Contains(r.ConfigSource, "IKCONFIG") || !slices.Equal(r.Missing, []string{"CONFIG_VIRTIO_BLK=y"}) {
			t.Fatalf("Check = %+v, %v", r, err)
		}
		if !strings.Contains(r.String(), "lacks CONFIG_VIRTIO_BLK=y") {
			t.Errorf("report %q", r)
		}
	})
	t.Run("unknown config", func(t *testing.T) {
		k := filepath.Join(dir, "c")
		tinyELF(t, k, false, 2)
		r, err := Check(k)
		if err != nil || !r.OK() || r.ConfigSource != "" || !strings.Contains(r.String(), "cannot be checked") {
			t.Fatalf("Check = %+v, %v", r, err)
		}
	})
	t.Run("bzImage or garbage", func(t *testing.T) {
		k := filepath.Join(dir, "d")
		if err := os.WriteFile(k, []byte("MZ\x00\x00HdrS bzImage"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Check(k); !errors.Is(err, ErrNotVmlinux) {
			t.Fatalf("Check = %v, want ErrNotVmlinux", err)
		}
		tinyELF(t, k, false, 3) // ET_DYN: a shared object, not a kernel
		if _, err := Check(k); !errors.Is(err, ErrNotVmlinux) {
			t.Fatalf("Check(ET_DYN) = %v, want ErrNotVmlinux", err)
		}
	})
	t.Run("missing", func(t *testing.T) {
		if _, err := Check(filepath.Join(dir, "none")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Check = %v", err)
		}
	})
}

func TestCache(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(out, []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ConfigPath(out), []byte("CONFIG_A=y\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sum, _ := fileSHA256(out)
	m := Manifest{SourcePackage: SourcePackage, SourceVersion: "6.1.1-1", ConfigKind: "fragment", ConfigSHA256: sha256Hex(Fragment), Recipe: recipe, VmlinuxSHA: sum}
	b, _ := json.Marshal(m)
	if err := os.WriteFile(ManifestPath(out), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok := cached(out, m); !ok {
		t.Fatal("same inputs: not cached")
	}
	for name, mod := range map[string]func(*Manifest){
		"source version": func(m *Manifest) { m.SourceVersion = "6.1.2-1" },
		"config":         func(m *Manifest) { m.ConfigSHA256 = sha256Hex([]byte("other")) },
		"config kind":    func(m *Manifest) { m.ConfigKind = "operator" },
		"recipe":         func(m *Manifest) { m.Recipe++ },
	} {
		w := m
		mod(&w)
		if _, ok := cached(out, w); ok {
			t.Errorf("a different %s reuses the cached kernel", name)
		}
	}
	// A kernel replaced after its build is not the one the manifest names.
	if err := os.WriteFile(out, []byte("other kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok := cached(out, m); ok {
		t.Error("a replaced vmlinux is reused")
	}
}

func TestBuildRejects(t *testing.T) {
	ctx := context.Background()
	if _, err := Build(ctx, Options{Output: "vmlinux"}); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Errorf("relative output: %v", err)
	}
	out := filepath.Join(t.TempDir(), "vmlinux")
	_, err := Build(ctx, Options{Output: out, Source: "/nonexistent/linux.tar.xz"})
	if err == nil || !strings.Contains(err.Error(), SourcePackage) {
		t.Errorf("missing source: %v (the error must name the package to install)", err)
	}
	src := filepath.Join(t.TempDir(), "src.tar.xz")
	if err := os.WriteFile(src, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Build(ctx, Options{Output: out, Source: src, Config: []byte(`{"server": {}}`)})
	if err == nil || !strings.Contains(err.Error(), "not a kernel .config") {
		if err == nil || !strings.Contains(err.Error(), "missing") {
			t.Errorf("an Atelier config given as kernel config: %v", err)
		}
	}
}

// CI builds the kernel the QEMU boot test uses (.ci/run); it must be the
// one this fragment describes, and pass the check.
func TestCIKernel(t *testing.T) {
	path := os.Getenv("ATELIER_TEST_KERNEL")
	if path == "" {
		path = "/var/cache/atelier-test/kernel/vmlinux" // where .ci/run and make kernel build it
	}
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("ATELIER_TEST_STRICT") == "1" {
			t.Fatalf("no test kernel at %s (.ci/run builds it): %v", path, err)
		}
		t.Skipf("no test kernel at %s (build one: make kernel): %v", path, err)
	}
	r, err := Check(path)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() || len(r.Degraded) != 0 || !r.PVH || r.ConfigSource != ConfigPath(path) {
		t.Fatalf("check: %s", r)
	}
	b, err := os.ReadFile(ManifestPath(path))
	if err != nil {
		t.Fatal(err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m.ConfigKind != "fragment" || m.ConfigSHA256 != sha256Hex(Fragment) || m.Recipe != recipe {
		t.Fatalf("the test kernel was built from another config or recipe: %+v", m)
	}
	cfg, _ := os.ReadFile(ConfigPath(path))
	if d := FragmentDropped(Fragment, cfg); len(d) > 0 {
		t.Fatalf("the test kernel's config dropped %v", d)
	}
	if emb, err := embeddedConfig(path); err != nil || !bytes.Equal(emb, cfg) {
		t.Errorf("the kernel's embedded config differs from the one recorded beside it (%v)", err)
	}
}
