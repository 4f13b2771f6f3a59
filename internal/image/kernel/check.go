package kernel

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// Required are the options without which a guest cannot boot under the
// boot contract or its agent cannot work: each must be built in (=y).
var Required = []string{
	"CONFIG_64BIT",
	"CONFIG_KVM_GUEST",       // kvm-clock
	"CONFIG_VIRTIO_MMIO",     // Firecracker's device transport
	"CONFIG_VIRTIO_BLK",      // the root drive
	"CONFIG_VIRTIO_NET",      // eth0
	"CONFIG_VSOCKETS",        // the agent's channel
	"CONFIG_VIRTIO_VSOCKETS", // ... over Firecracker's vsock device
	"CONFIG_EXT4_FS",         // the root filesystem
	"CONFIG_BINFMT_ELF",
	"CONFIG_MULTIUSER",
	"CONFIG_FUTEX",
	"CONFIG_EPOLL",
	"CONFIG_PROC_FS",
	"CONFIG_SYSFS",
	"CONFIG_DEVTMPFS",
	"CONFIG_TMPFS",
	"CONFIG_UNIX",
	"CONFIG_INET",
	"CONFIG_UNIX98_PTYS", // terminals and SSH sessions
}

// Recommended are options whose absence degrades a guest without breaking
// it; a check reports them.
var Recommended = map[string]string{
	"CONFIG_IP_PNP":           "the kernel cannot apply ip=; PID 1 then runs ip(8), which the image must have",
	"CONFIG_SERIO_I8042":      "no clean shutdown: Ctrl-Alt-Del never reaches the guest, so every stop waits and kills",
	"CONFIG_KEYBOARD_ATKBD":   "no clean shutdown: Ctrl-Alt-Del never reaches the guest, so every stop waits and kills",
	"CONFIG_SWAP":             "no swap file",
	"CONFIG_HW_RANDOM_VIRTIO": "no entropy device",
	"CONFIG_IKCONFIG":         "the kernel does not carry its own config",
}

// MissingRequired lists what a parsed .config lacks of Required, and of
// the device discovery Firecracker offers (ACPI, or the legacy
// virtio_mmio.device= arguments).
func MissingRequired(cfg map[string]string) []string {
	var out []string
	for _, name := range Required {
		if cfg[name] != "y" {
			out = append(out, name+"=y")
		}
	}
	acpi := cfg["CONFIG_ACPI"] == "y" && cfg["CONFIG_PCI"] == "y"
	if !acpi && cfg["CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES"] != "y" {
		out = append(out, "CONFIG_ACPI=y and CONFIG_PCI=y (or CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y)")
	}
	return out
}

// Report is what Check found out about a kernel.
type Report struct {
	Path string
	// ConfigSource is where the config came from: the file recorded beside
	// the kernel, the kernel's embedded copy (CONFIG_IKCONFIG), or "" when
	// neither exists and the options cannot be checked.
	ConfigSource string
	// Missing are Required options the kernel lacks: it cannot boot a
	// sandbox.
	Missing []string
	// Degraded are Recommended options it lacks, with what they cost.
	Degraded []string
	// PVH says whether the kernel has the PVH entry QEMU's microvm needs
	// (Firecracker boots either way).
	PVH bool
}

// OK reports whether nothing required is known to be missing.
func (r Report) OK() bool { return len(r.Missing) == 0 }

// String is a short human summary.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "kernel %s: ", r.Path)
	switch {
	case r.ConfigSource == "":
		b.WriteString("ELF vmlinux; its config is unknown (no .config beside it, no embedded config), so its options cannot be checked")
	case r.OK():
		fmt.Fprintf(&b, "has every option the boot contract needs (config: %s)", r.ConfigSource)
	default:
		fmt.Fprintf(&b, "lacks %s (config: %s)", strings.Join(r.Missing, ", "), r.ConfigSource)
	}
	for _, d := range r.Degraded {
		fmt.Fprintf(&b, "\n  warning: %s", d)
	}
	return b.String()
}

// ErrNotVmlinux is a kernel file Firecracker cannot boot at all.
var ErrNotVmlinux = errors.New("not an x86-64 ELF vmlinux (Firecracker boots an uncompressed vmlinux, not a bzImage)")

// Check inspects the kernel at path: that it is an x86-64 ELF, and, where
// its config can be found (<path>.config, or the copy the kernel embeds
// with CONFIG_IKCONFIG), that it has every Required option. An unknown
// config is not an error: the report says it could not be checked.
func Check(path string) (Report, error) {
	r := Report{Path: path}
	f, err := elf.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) {
			return r, fmt.Errorf("kernel %s: %w", path, err)
		}
		return r, fmt.Errorf("kernel %s: %w", path, ErrNotVmlinux)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		return r, fmt.Errorf("kernel %s: %w", path, ErrNotVmlinux)
	}
	r.PVH = hasPVHNote(f)
	var cfg []byte
	if b, err := os.ReadFile(ConfigPath(path)); err == nil {
		cfg, r.ConfigSource = b, ConfigPath(path)
	} else if b, err := embeddedConfig(path); err == nil {
		cfg, r.ConfigSource = b, "embedded in the kernel (CONFIG_IKCONFIG)"
	}
	if cfg == nil {
		return r, nil
	}
	parsed := ParseConfig(cfg)
	r.Missing = MissingRequired(parsed)
	for name, why := range Recommended {
		if parsed[name] != "y" {
			r.Degraded = append(r.Degraded, name+" is off: "+why)
		}
	}
	sort.Strings(r.Degraded)
	return r, nil
}

// hasPVHNote looks for the Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY).
func hasPVHNote(f *elf.File) bool {
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		b, err := io.ReadAll(io.LimitReader(p.Open(), 1<<20))
		if err != nil {
			continue
		}
		for len(b) >= 12 {
			order := f.ByteOrder
			namesz, descsz, typ := order.Uint32(b), order.Uint32(b[4:]), order.Uint32(b[8:])
			name := b[12:min(len(b), 12+int(namesz))]
			if typ == 18 && bytes.HasPrefix(name, []byte("Xen")) {
				return true
			}
			step := 12 + align4(int(namesz)) + align4(int(descsz))
			if step <= 12 || step > len(b) {
				break
			}
			b = b[step:]
		}
	}
	return false
}

func align4(n int) int { return (n + 3) &^ 3 }

// embeddedConfig extracts the gzip'd .config a kernel built with
// CONFIG_IKCONFIG carries between the IKCFG_ST and IKCFG_ED markers.
func embeddedConfig(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	start := bytes.Index(b, []byte("IKCFG_ST"))
	if start < 0 {
		return nil, errors.New("no embedded config")
	}
	rest := b[start+len("IKCFG_ST"):]
	end := bytes.Index(rest, []byte("IKCFG_ED"))
	if end < 0 {
		return nil, errors.New("no end of embedded config")
	}
	zr, err := gzip.NewReader(bytes.NewReader(rest[:end]))
	if err != nil {
		return nil, fmt.Errorf("embedded config: %w", err)
	}
	out, err := io.ReadAll(io.LimitReader(zr, 8<<20))
	if err != nil {
		return nil, fmt.Errorf("embedded config: %w", err)
	}
	return out, nil
}
