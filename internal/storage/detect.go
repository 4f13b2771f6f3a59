package storage

import (
	"context"
	"fmt"
	"os"
	"strings"
)

// Driver names.
const (
	DriverLVM  = "lvm"
	DriverFile = "file"
)

// The seed's names for the LVM layout.
const (
	VolumeGroup = "sandbox-vg"
	ThinPool    = "thin-pool"
)

// Binaries the probes run; absolute so $PATH cannot substitute them.
const (
	lvsBin     = "/usr/sbin/lvs"
	dmsetupBin = "/usr/sbin/dmsetup"
)

// Probe answers the host questions Detect asks. Each call asks the host
// again: nothing is cached, so storage set up after the manager started is
// seen without a restart.
type Probe struct {
	// ThinPool reports whether sandbox-vg/thin-pool exists.
	ThinPool func(ctx context.Context) bool
	// DeviceMapper reports whether the kernel can run thin pools.
	DeviceMapper func(ctx context.Context) bool
}

// HostProbe asks the real host through r.
func HostProbe(r Runner) Probe {
	return Probe{
		ThinPool: func(ctx context.Context) bool { return ThinPoolExists(ctx, r) },
		DeviceMapper: func(ctx context.Context) bool {
			return DeviceMapperWorks(ctx, r, "/dev/mapper/control")
		},
	}
}

// Choice is the driver Detect picked and why.
type Choice struct {
	Driver string `json:"driver"`
	Reason string `json:"reason"`
}

// Detect picks the volume driver. method is setup.storage.method: "lvm" and
// "file" name the driver; "loop" and "device" name how the pool was set up,
// which gave a thin pool when device-mapper works and an XFS pool for the
// file driver otherwise; "" looks for the thin pool.
func Detect(ctx context.Context, method string, p Probe) (Choice, error) {
	switch method {
	case DriverLVM:
		return Choice{DriverLVM, "setup.storage.method is lvm"}, nil
	case DriverFile:
		return Choice{DriverFile, "setup.storage.method is file"}, nil
	case "loop", "device":
		if p.DeviceMapper != nil && p.DeviceMapper(ctx) {
			return Choice{DriverLVM, fmt.Sprintf("setup.storage.method is %s and device-mapper has thin-pool", method)}, nil
		}
		return Choice{DriverFile, fmt.Sprintf("setup.storage.method is %s and device-mapper has no thin-pool target", method)}, nil
	case "":
		if p.ThinPool != nil && p.ThinPool(ctx) {
			return Choice{DriverLVM, VolumeGroup + "/" + ThinPool + " exists"}, nil
		}
		return Choice{DriverFile, "no " + VolumeGroup + "/" + ThinPool + " found"}, nil
	default:
		return Choice{}, fmt.Errorf("detect storage driver: unknown setup.storage.method %q (want lvm, file, loop or device)", method)
	}
}

// ThinPoolExists reports whether sandbox-vg/thin-pool is there. Any failure,
// a missing lvs included, means no.
func ThinPoolExists(ctx context.Context, r Runner) bool {
	out, err := r.Run(ctx, lvsBin, "--noheadings", "-o", "lv_name", VolumeGroup+"/"+ThinPool)
	return err == nil && strings.TrimSpace(string(out)) == ThinPool
}

// DeviceMapperWorks reports whether thin pools can be made: the control node
// opens (it exists but gives ENODEV on a kernel without device-mapper) and
// dmsetup lists the thin-pool target.
func DeviceMapperWorks(ctx context.Context, r Runner, control string) bool {
	f, err := os.OpenFile(control, os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	out, err := r.Run(ctx, dmsetupBin, "targets")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == "thin-pool" {
			return true
		}
	}
	return false
}
