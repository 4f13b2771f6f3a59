package fcapi

// The types below are the spec's definitions (firecracker-api-v1.14.1.yaml),
// named as there, with its JSON names. Optional properties are omitted when
// unset; only the properties Atelier uses are declared.

// InstanceInfo describes the microVM (GET /).
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
}

// InstanceInfo.State values.
const (
	StateNotStarted = "Not started"
	StateRunning    = "Running"
	StatePaused     = "Paused"
)

// MachineConfiguration sizes the guest.
type MachineConfiguration struct {
	VcpuCount       int    `json:"vcpu_count"`
	MemSizeMib      int    `json:"mem_size_mib"`
	Smt             *bool  `json:"smt,omitempty"`
	TrackDirtyPages *bool  `json:"track_dirty_pages,omitempty"`
	CPUTemplate     string `json:"cpu_template,omitempty"`
	HugePages       string `json:"huge_pages,omitempty"`
}

// BootSource is the kernel and its command line.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// Drive is a virtio-block device.
type Drive struct {
	DriveID      string `json:"drive_id"`
	IsRootDevice bool   `json:"is_root_device"`
	// IsReadOnly is required for virtio-block and must be omitted for
	// vhost-user-block, hence a pointer.
	IsReadOnly *bool  `json:"is_read_only,omitempty"`
	PathOnHost string `json:"path_on_host,omitempty"`
	PartUUID   string `json:"partuuid,omitempty"`
	CacheType  string `json:"cache_type,omitempty"`
	IOEngine   string `json:"io_engine,omitempty"`
}

// PartialDrive updates a drive after boot.
type PartialDrive struct {
	DriveID    string `json:"drive_id"`
	PathOnHost string `json:"path_on_host,omitempty"`
}

// NetworkInterface is a virtio-net device backed by a host TAP.
type NetworkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

// Vsock is the hybrid vsock device; UDSPath is where Firecracker listens.
type Vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// InstanceActionInfo is a synchronous action.
type InstanceActionInfo struct {
	ActionType string `json:"action_type"`
}

// InstanceActionInfo.ActionType values.
const (
	ActionInstanceStart  = "InstanceStart"
	ActionSendCtrlAltDel = "SendCtrlAltDel"
	ActionFlushMetrics   = "FlushMetrics"
)

// Vm is the requested microVM state (PATCH /vm).
type Vm struct {
	State string `json:"state"`
}

// Vm.State values.
const (
	VMPaused  = "Paused"
	VMResumed = "Resumed"
)

// SnapshotCreateParams asks for a snapshot of a paused microVM.
type SnapshotCreateParams struct {
	MemFilePath  string `json:"mem_file_path"`
	SnapshotPath string `json:"snapshot_path"`
	SnapshotType string `json:"snapshot_type,omitempty"`
}

// SnapshotCreateParams.SnapshotType values.
const (
	SnapshotFull = "Full"
	SnapshotDiff = "Diff"
)

// MemoryBackend is where a loaded snapshot's guest memory comes from.
type MemoryBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

// MemoryBackend.BackendType values.
const (
	BackendFile = "File"
	BackendUffd = "Uffd"
)

// NetworkOverride swaps the TAP behind an interface on snapshot load.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// SnapshotLoadParams loads a snapshot into a fresh process.
type SnapshotLoadParams struct {
	SnapshotPath     string            `json:"snapshot_path"`
	MemBackend       *MemoryBackend    `json:"mem_backend,omitempty"`
	TrackDirtyPages  bool              `json:"track_dirty_pages,omitempty"`
	ResumeVM         bool              `json:"resume_vm"`
	NetworkOverrides []NetworkOverride `json:"network_overrides,omitempty"`
}

// Logger configures Firecracker's log (PUT /logger).
type Logger struct {
	Level         string `json:"level,omitempty"`
	LogPath       string `json:"log_path,omitempty"`
	ShowLevel     *bool  `json:"show_level,omitempty"`
	ShowLogOrigin *bool  `json:"show_log_origin,omitempty"`
	Module        string `json:"module,omitempty"`
}

// FullVmConfiguration is GET /vm/config, restricted to what Atelier reads.
type FullVmConfiguration struct {
	BootSource        *BootSource           `json:"boot-source,omitempty"`
	MachineConfig     *MachineConfiguration `json:"machine-config,omitempty"`
	Drives            []Drive               `json:"drives,omitempty"`
	NetworkInterfaces []NetworkInterface    `json:"network-interfaces,omitempty"`
	Vsock             *Vsock                `json:"vsock,omitempty"`
	Logger            *Logger               `json:"logger,omitempty"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	FaultMessage string `json:"fault_message"`
}
