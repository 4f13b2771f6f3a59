package sandbox

import (
	"context"

	"atelier/internal/agent"
	"atelier/internal/store"
)

// Instance is everything a runtime needs to boot one sandbox.
type Instance struct {
	ID string
	// Owner is the sandbox's owner id (a cluster runtime labels with it).
	Owner     string
	Vcpus     int
	MemoryMB  int
	IP        string
	MAC       string
	Gateway   string
	PrefixLen int
	DNS       []string
	// Disk is the path of the sandbox's root volume (Volumes.Clone).
	Disk string
	// Link is the host-side network device (Network.Attach).
	Link string
}

// Runtime runs sandbox guests. Stop and Destroy treat an unknown or already
// stopped instance as success, so teardown can be retried.
type Runtime interface {
	// Boot starts the guest; it fails when the instance is already running.
	Boot(ctx context.Context, inst Instance) error
	// Stop shuts the guest down; its volume and link stay.
	Stop(ctx context.Context, id string) error
	// Destroy stops the guest and removes its runtime files (sockets, pid, log).
	Destroy(ctx context.Context, id string) error
	Alive(ctx context.Context, id string) (bool, error)
}

// AddressedRuntime is a Runtime whose guests get their address from
// elsewhere (a cluster's pod network) rather than from the leased one:
// after Boot the service records Address on the row, so the edge and the
// SSH proxy dial it as they dial a leased address.
type AddressedRuntime interface {
	Address(ctx context.Context, id string) (string, error)
}

// Network gives a sandbox its host-side link on the bridge.
type Network interface {
	// Attach creates, or reuses, the sandbox's link for the leased address.
	Attach(ctx context.Context, id string, lease store.Lease) (link string, err error)
	// Detach removes the link; an absent link is success.
	Detach(ctx context.Context, id string) error
}

// Volumes holds sandbox root volumes.
type Volumes interface {
	// Clone makes the sandbox's copy-on-write volume from image. When the
	// sandbox already has a volume, Clone returns its path untouched: a
	// retried create or the start of a sandbox whose create failed must
	// never overwrite user data.
	Clone(ctx context.Context, image, id string) (path string, err error)
	// Delete removes the sandbox's volume; an absent volume is success.
	Delete(ctx context.Context, id string) error
}

// VolumeSet is Volumes over several drivers (storage/pool.Set). New volumes
// go to Driver(), which Create records on the row; a sandbox's volume then
// stays on the driver the row names, whatever the host's choice for new
// volumes becomes.
type VolumeSet interface {
	// Driver is where new volumes go.
	Driver() string
	// CloneOn is Clone on the named driver ("" for a row that names none:
	// wherever the volume is, else Driver()); used is the driver holding
	// the volume. A named driver that is not available is an error, never
	// a fresh volume elsewhere.
	CloneOn(ctx context.Context, driver, image, id string) (path, used string, err error)
}

// ImageSizer reports an image's virtual size: the size of every sandbox
// volume cloned from it, counted against the owner's disk quota. An image
// that does not exist is storage.ErrNotFound.
type ImageSizer interface {
	ImageSize(ctx context.Context, image string) (int64, error)
}

// Drivers are the host mechanisms the lifecycle drives.
type Drivers struct {
	Runtime Runtime
	Network Network
	Volumes Volumes
}

// Hooks are optional callbacks for the parts of the host that follow a
// sandbox's state: edge routes and the SSH proxy. An error from a hook fails
// the operation like any other step.
type Hooks struct {
	// OnRunning is called once the guest has booted, before the sandbox is
	// marked running. c is the pooled client of the sandbox's agent, which
	// has just answered (Service.Agent serves running sandboxes only); nil
	// when the runtime has no agent.
	OnRunning func(ctx context.Context, v View, c *agent.Client) error
	// OnStopped is called after the guest stopped (and when a start is undone).
	OnStopped func(ctx context.Context, id string) error
	// OnDestroyed is called during destroy, after the lease is released, and
	// when a create is undone.
	OnDestroyed func(ctx context.Context, id string) error
}
