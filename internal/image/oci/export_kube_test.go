package oci_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"atelier/internal/image/oci"
	"atelier/internal/kubetest"
	"atelier/internal/testimage"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// TestExportRunsOnTheCluster: the test image, exported as an OCI tar and
// imported into the bed's containerd by ContainerdImport (what
// --containerd-import runs: ctr images import, namespace k8s.io), runs a Pod to completion that
// prints the image's own files: its manifest and its setuid su.
func TestExportRunsOnTheCluster(t *testing.T) {
	img := buildTestImage(t)
	c := kubetest.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	exp, err := oci.ExportExt4(ctx, img, oci.ExportOptions{WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer exp.Close()
	b := make([]byte, 4)
	rand.Read(b)
	ref := "localhost/atelier/test:" + hex.EncodeToString(b)
	tarFile := filepath.Join(t.TempDir(), "test.tar")
	if err := exp.WriteTar(tarFile, ref); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := oci.ContainerdImport(ctx, c.ContainerdAddress(), "k8s.io", tarFile); err != nil {
		t.Fatal(err)
	}
	t.Logf("ctr images import: %s", time.Since(start).Round(time.Millisecond))

	cs := c.Clientset()
	ns := c.Namespace(t)
	_, err = cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "exported"},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "exported", Image: ref, ImagePullPolicy: corev1.PullNever,
				Command: []string{"/bin/sh", "-c", "cat /etc/atelier/image.json; echo; ls -l /bin/su; cat /etc/passwd"},
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod: %v", err)
	}
	for {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "exported", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Status.Phase == corev1.PodFailed {
			t.Fatalf("pod failed: %+v", p.Status)
		}
		if p.Status.Phase == corev1.PodSucceeded {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pod never succeeded: %+v", p.Status)
		case <-time.After(250 * time.Millisecond):
		}
	}
	logs, err := cs.CoreV1().Pods(ns).GetLogs("exported", &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := string(logs)
	t.Logf("pod output: %.400s", out)
	for _, want := range []string{fmt.Sprintf(`"id":%q`, testimage.ServicesManifest().ID), "-rwsr-xr-x", "dev:x:1000:1000"} {
		if !strings.Contains(strings.ReplaceAll(out, `"id": "`, `"id":"`), want) {
			t.Errorf("pod output lacks %q:\n%s", want, out)
		}
	}
}
