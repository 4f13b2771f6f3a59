package kubernetes

import (
	"errors"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"atelier/internal/sandbox"
)

// snapshotter is the CSI driver: a snapshot is ready as soon as made.
func snapshotter(action k8stesting.Action) (bool, runtime.Object, error) {
	u := action.(k8stesting.CreateAction).GetObject().(*unstructured.Unstructured)
	unstructured.SetNestedField(u.Object, true, "status", "readyToUse")
	return false, nil, nil
}

func TestPrebuildSnapshots(t *testing.T) {
	dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{SnapshotGVR: "VolumeSnapshotList"})
	dyn.PrependReactor("create", "volumesnapshots", snapshotter)
	b := newBed(t, func(o *Options) { o.Snapshots, o.SnapshotClass = dyn, "csi-snapclass" })
	const src, ws = "k8sprebsrc01", "ws1"
	if _, err := b.d.Clone(b.ctx, "dev-base", src); err != nil {
		t.Fatal(err)
	}
	list := func() []unstructured.Unstructured {
		l, err := dyn.Resource(SnapshotGVR).Namespace(ns).List(b.ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return l.Items
	}
	for range 2 {
		if err := b.d.Prebuild(b.ctx, ws, src); err != nil {
			t.Fatal(err)
		}
	}
	snaps := list()
	if len(snaps) != 1 {
		t.Fatalf("%d snapshots after two prebuilds: the old one must go", len(snaps))
	}
	s := snaps[0]
	if pvc, _, _ := unstructured.NestedString(s.Object, "spec", "source", "persistentVolumeClaimName"); pvc != ClaimName(src) {
		t.Fatalf("source %q", pvc)
	}
	if cls, _, _ := unstructured.NestedString(s.Object, "spec", "volumeSnapshotClassName"); cls != "csi-snapclass" {
		t.Fatalf("class %q", cls)
	}

	const id = "k8sprebnew01"
	disk, _, err := b.d.CloneFromPrebuild(b.ctx, ws, id)
	if err != nil {
		t.Fatal(err)
	}
	pvc, _ := b.cs.CoreV1().PersistentVolumeClaims(ns).Get(b.ctx, disk, metav1.GetOptions{})
	if pvc.Spec.DataSource == nil || pvc.Spec.DataSource.Name != s.GetName() || pvc.Annotations[AnnotImage] != "dev-base" || pvc.Annotations[AnnotFilled] == "" {
		t.Fatalf("disk from prebuild %+v %v", pvc.Spec.DataSource, pvc.Annotations)
	}
	if b.k.created[RoleFill] != 1 {
		t.Fatalf("fills %d: a disk from a prebuild is not copied", b.k.created[RoleFill])
	}
	if err := b.d.Boot(b.ctx, sandbox.Instance{ID: id, Vcpus: 1, MemoryMB: 512}); err != nil {
		t.Fatal(err)
	}
	if err := b.d.DeletePrebuild(b.ctx, ws); err != nil {
		t.Fatal(err)
	}
	if n := len(list()); n != 0 {
		t.Fatalf("%d snapshots after delete", n)
	}
	if _, _, err := b.d.CloneFromPrebuild(b.ctx, ws, "k8sprebnew02"); err == nil {
		t.Fatal("a clone from a deleted prebuild")
	}
	if err := b.d.Prebuild(b.ctx, "bad/ws", src); err == nil {
		t.Fatal("a bad workspace id accepted")
	}
}

func TestPrebuildWithoutSnapshotAPI(t *testing.T) {
	b := newBed(t)
	if err := b.d.Prebuild(b.ctx, "ws1", "k8sprebsrc01"); !errors.Is(err, sandbox.ErrNoPrebuilds) {
		t.Fatalf("prebuild without the snapshot API: %v", err)
	}
	if err := b.d.DeletePrebuild(b.ctx, "ws1"); err != nil {
		t.Fatalf("delete of prebuilds that cannot exist: %v", err)
	}
}
