// Package storage holds what Atelier's copy-on-write volume drivers share:
// the volume and usage types, the errors callers branch on, the validation of
// every id before it reaches a device name or a path, the argv command runner,
// a sparse copy, and the choice between the lvm and file drivers.
//
// The drivers live in storage/lvm (thin snapshots in sandbox-vg/thin-pool)
// and storage/file (reflink clones, else sparse copies, of ext4 files), and
// storage/pool prepares the host for either.
package storage

import (
	"errors"
	"fmt"
	"regexp"

	"atelier/internal/ids"
)

// Kind is what a volume is for. Names follow the seed: image-{imageId},
// prebuild-{workspaceId}, sandbox-{sandboxId}.
type Kind string

const (
	KindImage    Kind = "image"
	KindPrebuild Kind = "prebuild"
	KindSandbox  Kind = "sandbox"
)

// Volume is one volume a driver holds.
type Volume struct {
	// Name is {kind}-{id}: the LV name for lvm, the same logical name for file.
	Name string `json:"name"`
	Kind Kind   `json:"kind"`
	ID   string `json:"id"`
	// Path is what a runtime attaches: a block device or an ext4 file.
	Path string `json:"path"`
	// SizeBytes is the virtual size the guest sees.
	SizeBytes int64 `json:"sizeBytes"`
	// UsedBytes is what the volume has allocated; shared (copy-on-write)
	// blocks count for every volume that shares them.
	UsedBytes int64 `json:"usedBytes"`
	// Origin is the volume this one was cloned from ({kind}-{id}), when the
	// driver knows it.
	Origin string `json:"origin,omitempty"`
	// Driver is the driver holding the volume, DriverLVM or DriverFile.
	Driver string `json:"driver"`
}

// Usage is how full a driver's pool is.
type Usage struct {
	Driver     string `json:"driver"`
	TotalBytes int64  `json:"totalBytes"`
	UsedBytes  int64  `json:"usedBytes"`
	// VirtualBytes sums the sizes of every volume: what the guests could
	// write if each filled its disk. Far above TotalBytes means overcommit.
	VirtualBytes    int64   `json:"virtualBytes"`
	DataPercent     float64 `json:"dataPercent"`
	MetadataPercent float64 `json:"metadataPercent"`
	Volumes         int     `json:"volumes"`
}

// Errors callers branch on; drivers wrap them with the details.
var (
	ErrNotFound = errors.New("volume not found")
	ErrExists   = errors.New("volume already exists")
	// ErrPoolFull is returned before an operation could run the pool dry;
	// the message carries the numbers and the limit.
	ErrPoolFull = errors.New("storage pool full")
	ErrInvalid  = errors.New("invalid volume id")
)

var imageIDRe = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidImageID reports whether s can name an image: it becomes part of an
// LV name and a file name, so it is checked before either is built.
func ValidImageID(s string) bool { return imageIDRe.MatchString(s) }

// CheckID validates the id of a volume of the given kind.
func CheckID(kind Kind, id string) error {
	switch kind {
	case KindImage:
		if !ValidImageID(id) {
			return fmt.Errorf("%w: image id %q must match %s", ErrInvalid, id, imageIDRe)
		}
	case KindPrebuild:
		if !ids.ValidSandboxID(id) {
			return fmt.Errorf("%w: workspace id %q must be 12 characters [a-z0-9]", ErrInvalid, id)
		}
	case KindSandbox:
		if !ids.ValidSandboxID(id) {
			return fmt.Errorf("%w: sandbox id %q must be 12 characters [a-z0-9]", ErrInvalid, id)
		}
	default:
		return fmt.Errorf("%w: unknown volume kind %q", ErrInvalid, kind)
	}
	return nil
}

// Source is what a sandbox volume is cloned from: an image or a
// workspace's prebuild.
type Source struct {
	Kind Kind   `json:"kind"`
	ID   string `json:"id"`
}

// Image names an image as a clone source.
func Image(id string) Source { return Source{Kind: KindImage, ID: id} }

// Prebuild names a workspace's prebuild as a clone source.
func Prebuild(workspaceID string) Source { return Source{Kind: KindPrebuild, ID: workspaceID} }

// Validate refuses sources a sandbox cannot be cloned from.
func (s Source) Validate() error {
	if s.Kind != KindImage && s.Kind != KindPrebuild {
		return fmt.Errorf("%w: clone source must be an image or a prebuild, not %q", ErrInvalid, s.Kind)
	}
	return CheckID(s.Kind, s.ID)
}

// Name is the source's volume name, {kind}-{id}.
func (s Source) Name() string { return VolumeName(s.Kind, s.ID) }

// VolumeName is {kind}-{id}, the seed's naming for every volume.
func VolumeName(kind Kind, id string) string { return string(kind) + "-" + id }

// ParseName splits a volume name into kind and id; ok is false for names
// that are not Atelier volumes or carry an invalid id.
func ParseName(name string) (kind Kind, id string, ok bool) {
	for _, k := range []Kind{KindImage, KindPrebuild, KindSandbox} {
		p := string(k) + "-"
		if len(name) > len(p) && name[:len(p)] == p {
			id = name[len(p):]
			if CheckID(k, id) != nil {
				return "", "", false
			}
			return k, id, true
		}
	}
	return "", "", false
}
