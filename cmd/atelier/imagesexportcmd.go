package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/cobra"

	"atelier/internal/config"
	"atelier/internal/image/oci"
	"atelier/internal/storage"
	"atelier/internal/storage/file"
	"atelier/internal/storage/pool"
)

// ociOut is where an export goes: any of an OCI layout directory, an OCI
// tar file, a registry, the node's containerd.
type ociOut struct {
	layout, tarFile, push, tag, workDir string
	containerd                          bool
	ctrAddress, ctrNamespace            string
}

func (o *ociOut) any() bool {
	return o.layout != "" || o.tarFile != "" || o.push != "" || o.containerd
}

// check validates the flags before anything is read or written; errors
// name the flag.
func (o *ociOut) check() error {
	if o.tag != "" {
		if _, err := name.NewTag(o.tag, name.StrictValidation); err != nil {
			return fmt.Errorf("--tag %q: must be a full image reference with a tag (e.g. localhost/atelier/dev-base:1): %w", o.tag, err)
		}
	}
	if o.push != "" {
		if _, err := name.ParseReference(o.push, name.StrictValidation); err != nil {
			return fmt.Errorf("--push %q: must be a full image reference (registry/repository:tag): %w", o.push, err)
		}
	}
	if o.layout != "" {
		if ents, err := os.ReadDir(o.layout); err == nil && len(ents) > 0 {
			return fmt.Errorf("--oci-layout %s: the directory is not empty", o.layout)
		} else if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("--oci-layout %s: %w", o.layout, err)
		}
	}
	if o.tarFile != "" {
		if fi, err := os.Stat(o.tarFile); err == nil && fi.IsDir() {
			return fmt.Errorf("--oci-tar %s: is a directory", o.tarFile)
		}
		if _, err := os.Stat(filepath.Dir(o.tarFile)); err != nil {
			return fmt.Errorf("--oci-tar %s: %w", o.tarFile, err)
		}
	}
	if o.containerd && o.ctrNamespace == "" {
		return errors.New("--containerd-namespace: must not be empty")
	}
	return nil
}

func (o *ociOut) flags(c *cobra.Command, prefix bool) {
	f := c.Flags()
	f.StringVar(&o.layout, "oci-layout", "", "write the image as an OCI image layout in this (new or empty) directory")
	f.StringVar(&o.tarFile, "oci-tar", "", "write the image as an OCI layout tar file (docker load and ctr images import read it)")
	if prefix {
		return
	}
	f.StringVar(&o.push, "push", "", "push the image to this reference (credentials from the docker config)")
	f.StringVar(&o.tag, "tag", "", "the image's name in the layout, the tar and containerd (default localhost/atelier/<id>:latest)")
	f.StringVar(&o.workDir, "work-dir", "", "directory for the compressed layer (default the system temp dir)")
	f.BoolVar(&o.containerd, "containerd-import", false, "import the image into the node's containerd (ctr images import), for a single-node cluster")
	f.StringVar(&o.ctrAddress, "containerd-address", "/run/containerd/containerd.sock", "containerd's socket for --containerd-import")
	f.StringVar(&o.ctrNamespace, "containerd-namespace", "k8s.io", "containerd namespace for --containerd-import (the kubelet's is k8s.io)")
}

// run exports the ext4 image at path and writes it everywhere asked.
func (o *ociOut) run(ctx context.Context, w io.Writer, path string) error {
	start := time.Now()
	exp, err := oci.ExportExt4(ctx, path, oci.ExportOptions{WorkDir: o.workDir, ID: strings.TrimSuffix(filepath.Base(path), ".ext4")})
	if err != nil {
		return err
	}
	defer exp.Close()
	d, err := exp.Image.Digest()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "exported %s: %d entries, %s of files, layer %s, %s (%.1fs)\n", exp.ID, exp.Stats.Entries,
		humanBytes(exp.Stats.Bytes), humanBytes(exp.LayerBytes), d, time.Since(start).Seconds())
	tag := o.tag
	if tag == "" {
		tag = oci.DefaultRef(exp.ID)
	}
	if o.layout != "" {
		if err := exp.WriteLayout(o.layout, tag); err != nil {
			return fmt.Errorf("--oci-layout: %w", err)
		}
		fmt.Fprintf(w, "wrote OCI layout %s (%s)\n", o.layout, tag)
	}
	tarFile := o.tarFile
	if tarFile == "" && o.containerd {
		tarFile = filepath.Join(filepath.Dir(exp.LayerPath()), "image.tar")
	}
	if tarFile != "" {
		if err := exp.WriteTar(tarFile, tag); err != nil {
			return fmt.Errorf("--oci-tar: %w", err)
		}
		if o.tarFile != "" {
			fmt.Fprintf(w, "wrote %s (%s)\n", tarFile, tag)
		}
	}
	if o.containerd {
		if err := oci.ContainerdImport(ctx, o.ctrAddress, o.ctrNamespace, tarFile); err != nil {
			return fmt.Errorf("--containerd-import: %w", err)
		}
		cn, _ := oci.ContainerdName(tag)
		fmt.Fprintf(w, "imported into containerd (%s) as %s\n", o.ctrNamespace, cn)
	}
	if o.push != "" {
		if err := exp.Push(ctx, o.push); err != nil {
			return fmt.Errorf("--push: %w", err)
		}
		fmt.Fprintf(w, "pushed %s@%s\n", o.push, d)
	}
	return nil
}

func newImagesExportCmd(g *globals) *cobra.Command {
	var o ociOut
	c := &cobra.Command{
		Use:   "export IMAGE (--oci-layout DIR | --oci-tar FILE | --push REF | --containerd-import) [--tag REF]",
		Short: "Export a sandbox image as an OCI image (root): a layout, a tar, a registry or containerd",
		Long: `Turn a sandbox image into a single-layer OCI image for the kubernetes runtime
(sandbox.kubernetes.images names it). IMAGE is an image id of the volume driver, or the path of an
ext4 image file or block device.

The image is mounted read-only and detached (never attached to a path), its tree becomes one layer
with owners, modes, symbolic and hard links and file capabilities (device nodes left out), every
mtime fixed: the same image always gives the same digest. The config's ENTRYPOINT is the agent's
init (/sbin/atelier-agent init --kernel-cmdline=false --), its labels carry the image manifest
(dev.atelier.image.manifest) and versions (dev.atelier.image.version.NAME).

--push uses the credentials of the docker config (~/.docker/config.json, DOCKER_CONFIG).
--containerd-import runs ctr images import against the node's containerd (namespace k8s.io), for
a single-node cluster without a registry.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !o.any() {
				return errors.New("one of --oci-layout, --oci-tar, --push or --containerd-import is required")
			}
			if err := o.check(); err != nil {
				return err
			}
			if os.Geteuid() != 0 {
				return errors.New("atelier images export mounts the image read-only: run it as root")
			}
			path, err := imagePath(cmd.Context(), g, args[0])
			if err != nil {
				return err
			}
			return o.run(cmd.Context(), cmd.OutOrStdout(), path)
		},
	}
	o.flags(c, false)
	return c
}

// imagePath resolves IMAGE: an existing path is itself; an id is looked up
// in the volume driver the config names.
func imagePath(ctx context.Context, g *globals, image string) (string, error) {
	if strings.ContainsRune(image, '/') || strings.HasSuffix(image, ".ext4") {
		if _, err := os.Stat(image); err != nil {
			return "", fmt.Errorf("image %s: %w", image, err)
		}
		return image, nil
	}
	if !imageNameRE.MatchString(image) {
		return "", fmt.Errorf("image %q: not an image id (lowercase letters, digits and -) nor a path", image)
	}
	cfg, err := g.loadConfig()
	if err != nil {
		return "", err
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var vols interface {
		List(ctx context.Context) ([]storage.Volume, error)
	}
	if cfg.Server.Mode == config.ModeMock {
		vols = file.New(file.Config{StateDir: cfg.Sandbox.StateDir, Log: log})
	} else {
		set, _, err := pool.OpenSet(ctx, cfg, storage.Exec{}, log)
		if err != nil {
			return "", err
		}
		vols = set
	}
	list, err := vols.List(ctx)
	if err != nil {
		return "", err
	}
	for _, v := range list {
		if v.Kind == storage.KindImage && v.ID == image {
			return v.Path, nil
		}
	}
	return "", fmt.Errorf("image %s: no such image in the volume driver (atelier images list)", image)
}
