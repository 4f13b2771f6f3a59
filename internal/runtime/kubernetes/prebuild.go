package kubernetes

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"atelier/internal/sandbox"
)

// SnapshotGVR is the CSI VolumeSnapshot resource.
var SnapshotGVR = schema.GroupVersionResource{Group: snapshotGroup, Version: "v1", Resource: "volumesnapshots"}

// LabelWorkspace marks a workspace's prebuild snapshots.
const (
	LabelWorkspace = "atelier.dev/workspace-id"
	RolePrebuild   = "prebuild"
)

var _ sandbox.Prebuilder = (*Driver)(nil)

// ErrNoSnapshots: prebuilds on a cluster are CSI VolumeSnapshots, which
// need the snapshot API (Options.Snapshots).
var ErrNoSnapshots = fmt.Errorf("%w: prebuilds on a cluster are CSI VolumeSnapshots, and the snapshot API is not configured", sandbox.ErrNoPrebuilds)

func (d *Driver) snapshots() (dynamic.ResourceInterface, error) {
	if d.opts.Snapshots == nil {
		return nil, ErrNoSnapshots
	}
	return d.opts.Snapshots.Resource(SnapshotGVR).Namespace(d.opts.Namespace), nil
}

func checkWorkspace(ws string) error {
	if !labelValueRe.MatchString(ws) || len(ws) > 40 {
		return fmt.Errorf("workspace id %q: not a valid id", ws)
	}
	return nil
}

// Prebuild snapshots a stopped sandbox's disk as the workspace's prebuild;
// the previous snapshots go only once the new one is ready to use.
func (d *Driver) Prebuild(ctx context.Context, workspaceID, sandboxID string) error {
	if err := errors.Join(checkWorkspace(workspaceID), checkID(sandboxID)); err != nil {
		return err
	}
	snaps, err := d.snapshots()
	if err != nil {
		return err
	}
	pvc, err := d.cs.CoreV1().PersistentVolumeClaims(d.opts.Namespace).Get(ctx, ClaimName(sandboxID), metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("prebuild of %s: disk of %s: %w", workspaceID, sandboxID, err)
	}
	suffix := make([]byte, 4)
	rand.Read(suffix)
	name := "atelier-prebuild-" + workspaceID + "-" + hex.EncodeToString(suffix)
	spec := map[string]any{"source": map[string]any{"persistentVolumeClaimName": pvc.Name}}
	if d.opts.SnapshotClass != "" {
		spec["volumeSnapshotClassName"] = d.opts.SnapshotClass
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": snapshotGroup + "/v1",
		"kind":       "VolumeSnapshot",
		"metadata": map[string]any{
			"name": name, "namespace": d.opts.Namespace,
			"labels":      map[string]any{LabelManaged: ManagedBy, LabelWorkspace: workspaceID, LabelRole: RolePrebuild},
			"annotations": map[string]any{AnnotImage: pvc.Annotations[AnnotImage]},
		},
		"spec": spec,
	}}
	if _, err := snaps.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("prebuild of %s: create snapshot: %w", workspaceID, err)
	}
	if err := d.waitSnapshot(ctx, snaps, name); err != nil {
		_ = ignoreGone(snaps.Delete(context.WithoutCancel(ctx), name, metav1.DeleteOptions{}))
		return fmt.Errorf("prebuild of %s: %w", workspaceID, err)
	}
	return d.deleteSnapshots(ctx, workspaceID, name)
}

func (d *Driver) waitSnapshot(ctx context.Context, snaps dynamic.ResourceInterface, name string) error {
	ctx, cancel := context.WithTimeout(ctx, d.opts.PodTimeout)
	defer cancel()
	t := time.NewTicker(d.opts.Poll)
	defer t.Stop()
	for {
		s, err := snaps.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("snapshot %s: %w", name, err)
		}
		if ready, _, _ := unstructured.NestedBool(s.Object, "status", "readyToUse"); ready {
			return nil
		}
		if msg, ok, _ := unstructured.NestedString(s.Object, "status", "error", "message"); ok && msg != "" {
			return fmt.Errorf("snapshot %s: %s", name, msg)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("snapshot %s not ready: %w", name, ctx.Err())
		case <-t.C:
		}
	}
}

// deleteSnapshots removes the workspace's snapshots but keep.
func (d *Driver) deleteSnapshots(ctx context.Context, workspaceID, keep string) error {
	snaps, err := d.snapshots()
	if err != nil {
		return err
	}
	l, err := snaps.List(ctx, metav1.ListOptions{LabelSelector: managedSelector + "," + LabelWorkspace + "=" + workspaceID})
	if err != nil {
		return fmt.Errorf("list prebuilds of %s: %w", workspaceID, err)
	}
	var errs []error
	for _, s := range l.Items {
		if s.GetName() != keep {
			errs = append(errs, ignoreGone(snaps.Delete(ctx, s.GetName(), metav1.DeleteOptions{})))
		}
	}
	return errors.Join(errs...)
}

// DeletePrebuild removes the workspace's prebuild snapshots.
func (d *Driver) DeletePrebuild(ctx context.Context, workspaceID string) error {
	if err := checkWorkspace(workspaceID); err != nil {
		return err
	}
	if d.opts.Snapshots == nil {
		return nil // none can exist
	}
	return d.deleteSnapshots(ctx, workspaceID, "")
}

// CloneFromPrebuild makes the sandbox's disk from the workspace's newest
// ready snapshot; a disk already filled is returned untouched.
func (d *Driver) CloneFromPrebuild(ctx context.Context, workspaceID, id string) (string, string, error) {
	if err := errors.Join(checkWorkspace(workspaceID), checkID(id)); err != nil {
		return "", "", err
	}
	claims := d.cs.CoreV1().PersistentVolumeClaims(d.opts.Namespace)
	if pvc, err := claims.Get(ctx, ClaimName(id), metav1.GetOptions{}); err == nil && pvc.Annotations[AnnotFilled] != "" {
		return pvc.Name, "", nil
	}
	snaps, err := d.snapshots()
	if err != nil {
		return "", "", err
	}
	l, err := snaps.List(ctx, metav1.ListOptions{LabelSelector: managedSelector + "," + LabelWorkspace + "=" + workspaceID})
	if err != nil {
		return "", "", fmt.Errorf("prebuild of %s: %w", workspaceID, err)
	}
	items := slices.DeleteFunc(l.Items, func(s unstructured.Unstructured) bool {
		ready, _, _ := unstructured.NestedBool(s.Object, "status", "readyToUse")
		return !ready || s.GetDeletionTimestamp() != nil
	})
	if len(items) == 0 {
		return "", "", fmt.Errorf("prebuild of %s: no ready snapshot", workspaceID)
	}
	slices.SortFunc(items, func(a, b unstructured.Unstructured) int {
		return b.GetCreationTimestamp().Compare(a.GetCreationTimestamp().Time)
	})
	snap := items[0]
	image := snap.GetAnnotations()[AnnotImage]
	img, err := d.image(image)
	if err != nil {
		return "", "", fmt.Errorf("prebuild of %s: %w", workspaceID, err)
	}
	img.Snapshot = snap.GetName()
	pvc, err := claims.Create(ctx, d.opts.buildClaim(id, "", image, img), metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// An unfilled disk a crashed create left: made again from the prebuild.
		if err := claims.Delete(ctx, ClaimName(id), metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return "", "", err
		}
		return "", "", fmt.Errorf("disk of %s: an unfilled disk was in the way and is being removed; retry", id)
	}
	if err != nil {
		return "", "", fmt.Errorf("disk of %s: %w", id, err)
	}
	return pvc.Name, "", nil
}
