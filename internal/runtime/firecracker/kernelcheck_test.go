package firecracker

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"atelier/internal/image/kernel"
)

func TestCheckKernel(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	err := CheckKernel(filepath.Join(dir, "none"), log)
	if err == nil || !strings.Contains(err.Error(), "ATELIER_KERNEL_PATH") || !strings.Contains(err.Error(), "atelier images kernel") {
		t.Errorf("missing kernel: %v", err)
	}
	bz := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(bz, []byte("MZ bzImage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CheckKernel(bz, log); err == nil || !strings.Contains(err.Error(), "vmlinux") {
		t.Errorf("bzImage: %v", err)
	}
	// An ELF (this test binary stands in) with a config lacking virtio-blk.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	k := filepath.Join(dir, "vmlinux")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(k, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CheckKernel(k, log); err != nil {
		t.Errorf("an ELF with an unknown config is accepted with a warning: %v", err)
	}
	cfg := strings.Replace(string(kernel.Fragment), "CONFIG_VIRTIO_BLK=y", "# CONFIG_VIRTIO_BLK is not set", 1)
	if err := os.WriteFile(kernel.ConfigPath(k), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CheckKernel(k, log); err == nil || !strings.Contains(err.Error(), "CONFIG_VIRTIO_BLK=y") {
		t.Errorf("kernel without virtio-blk: %v", err)
	}
	if err := os.WriteFile(kernel.ConfigPath(k), kernel.Fragment, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CheckKernel(k, log); err != nil {
		t.Errorf("kernel with the fragment's options: %v", err)
	}
}
