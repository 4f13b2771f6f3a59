package firecracker

import (
	"fmt"
	"log/slog"

	"atelier/internal/image/kernel"
)

const kernelKey = "advanced.server.firecracker.kernelPath (ATELIER_KERNEL_PATH)"

// CheckKernel refuses a guest kernel that cannot boot a sandbox under the
// boot contract: missing, not an x86-64 ELF vmlinux, or, when its config
// can be read (beside it, or embedded), lacking a required option. A kernel
// whose config is unknown is accepted with a warning, as are missing
// recommended options.
func CheckKernel(path string, log *slog.Logger) error {
	r, err := kernel.Check(path)
	if err != nil {
		return fmt.Errorf("%s: %w; build one with `atelier images kernel`", kernelKey, err)
	}
	if !r.OK() {
		return fmt.Errorf("%s: %s; build one with `atelier images kernel`", kernelKey, r)
	}
	if r.ConfigSource == "" {
		log.Warn("guest kernel's config is unknown: its options cannot be checked (keep its .config beside it as "+kernel.ConfigPath(path)+")", "kernel", path)
	}
	for _, d := range r.Degraded {
		log.Warn("guest kernel lacks a recommended option", "kernel", path, "warning", d)
	}
	return nil
}
