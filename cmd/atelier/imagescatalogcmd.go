package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"atelier/internal/config"
	"atelier/internal/image/catalog"
	"atelier/internal/image/oci"
	"atelier/internal/storage"
	"atelier/internal/storage/file"
	"atelier/internal/storage/pool"
	"atelier/internal/store"
)

// imageInfo is GET /api/images/{id}'s answer.
type imageInfo struct {
	ID            string            `json:"id"`
	Driver        string            `json:"driver"`
	SizeBytes     int64             `json:"sizeBytes"`
	UsedBytes     int64             `json:"usedBytes"`
	CreatedAt     time.Time         `json:"createdAt"`
	Source        string            `json:"source"`
	Base          string            `json:"base"`
	Built         string            `json:"built"`
	User          string            `json:"user"`
	Workdir       string            `json:"workdir"`
	Versions      map[string]string `json:"versions"`
	Services      []imageService    `json:"services"`
	ManifestError string            `json:"manifestError"`
	SandboxCount  int               `json:"sandboxCount"`
	UsedBy        []string          `json:"usedBy"`
	Prebuilds     []string          `json:"prebuilds"`
}

type imageService struct {
	Name      string `json:"name"`
	Role      string `json:"role"`
	Autostart bool   `json:"autostart"`
	Port      int    `json:"port"`
}

func (g *globals) images(ctx context.Context) ([]imageInfo, error) {
	c, err := g.client()
	if err != nil {
		return nil, err
	}
	var out struct {
		Images []imageInfo `json:"images"`
	}
	err = c.Do(ctx, "GET", "/api/images", nil, &out)
	return out.Images, err
}

func (g *globals) listImages(cmd *cobra.Command) error {
	list, err := g.images(cmd.Context())
	if err != nil {
		return err
	}
	if g.json {
		return printJSON(cmd.OutOrStdout(), list)
	}
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSIZE\tUSED\tCREATED\tSOURCE\tSANDBOXES\tVERSIONS")
	for _, im := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", im.ID, humanBytes(im.SizeBytes), humanBytes(im.UsedBytes),
			when(&im.CreatedAt, "-"), im.Source, im.SandboxCount, versionList(im.Versions))
	}
	return tw.Flush()
}

func versionList(v map[string]string) string {
	if len(v) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+" "+v[k])
	}
	return strings.Join(parts, ", ")
}

func newImagesListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the host's images (--json: the API's image objects)",
		Args:    cobra.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return g.listImages(cmd) },
	}
}

func newImagesGetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show one image: size, versions, services, the sandboxes using it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var im imageInfo
			if err := c.Do(cmd.Context(), "GET", "/api/images/"+url.PathEscape(args[0]), nil, &im); err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), im)
			}
			printImage(cmd.OutOrStdout(), im)
			return nil
		},
	}
}

func printImage(w io.Writer, im imageInfo) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(tw, "%s:\t%s\n", k, v)
	}
	row("ID", im.ID)
	row("Driver", im.Driver)
	row("Size", fmt.Sprintf("%s (%s allocated)", humanBytes(im.SizeBytes), humanBytes(im.UsedBytes)))
	row("Created", when(&im.CreatedAt, "-"))
	row("Source", im.Source)
	row("Built", im.Built)
	row("Base", im.Base)
	row("User", im.User)
	row("Workdir", im.Workdir)
	row("Versions", versionList(im.Versions))
	var svcs []string
	for _, s := range im.Services {
		d := fmt.Sprintf("%s (port %d", s.Name, s.Port)
		if s.Role != "" {
			d += ", " + s.Role
		}
		if !s.Autostart {
			d += ", on demand"
		}
		svcs = append(svcs, d+")")
	}
	row("Services", strings.Join(svcs, ", "))
	if im.ManifestError != "" {
		row("Manifest", im.ManifestError)
	}
	row("Sandboxes", fmt.Sprintf("%d %s", im.SandboxCount, strings.Join(im.UsedBy, " ")))
	row("Prebuilds", strings.Join(im.Prebuilds, " "))
	tw.Flush()
}

func newImagesRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rm ID...",
		Short: "Remove images (admins; refused while sandboxes or prebuilds use them)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			for _, id := range args {
				if err := c.Do(cmd.Context(), "DELETE", "/api/images/"+url.PathEscape(id), nil, nil); err != nil {
					return fmt.Errorf("remove image %s: %w", id, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed image %s\n", id)
			}
			return nil
		},
	}
}

func newImagesImportCmd(g *globals) *cobra.Command {
	var id, agent, workDir string
	var sizeMB int64
	c := &cobra.Command{
		Use:   "import SOURCE --name ID",
		Short: "Import an OCI image (layout directory or docker save tarball) as a sandbox image (root)",
		Long: `Turn an OCI image into a sandbox image: SOURCE is an OCI image layout directory (skopeo copy
oci:DIR, buildah push oci:DIR, docker buildx --output type=oci,tar=false) or a "docker save" tarball.

Its layers are flattened (whiteouts applied; an entry that would write outside the image's tree,
through "../" or a symbolic link, fails the import), the Atelier agent is installed as the image's
init (/sbin/atelier-agent: sandboxes never run the image's own init or entrypoint), a manifest
(/etc/atelier/image.json) is written when the image has none, with the image's USER (root when
none) and WORKDIR, and the tree becomes an ext4 image that must pass e2fsck before the volume
driver takes it. An import is whole or nothing: a failure leaves no image behind.

Runs on the manager's host as root: it writes the volume driver and the manager's database.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if id == "" {
				return errors.New("--name is required: the image id sandboxes will name (e.g. my-image)")
			}
			if !storage.ValidImageID(id) {
				return fmt.Errorf("--name %q: must be lowercase letters, digits and - (a DNS label, at most 63 characters)", id)
			}
			if os.Geteuid() != 0 {
				return errors.New("atelier images import writes the volume driver and the manager's database: run it as root on the manager's host")
			}
			cfg, err := g.loadConfig()
			if err != nil {
				return err
			}
			if agent == "" {
				if agent, err = findAgent(); err != nil {
					return err
				}
			}
			ctx := cmd.Context()
			w := cmd.OutOrStdout()
			start := time.Now()
			cat, closeCat, err := openCatalog(ctx, cfg)
			if err != nil {
				return err
			}
			defer closeCat()
			img, err := oci.Open(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "importing %s as image %s\n", args[0], id)
			res, err := oci.Build(ctx, img, oci.Options{ID: id, Agent: agent, WorkDir: workDir, SizeBytes: sizeMB << 20, Progress: w})
			if err != nil {
				return err
			}
			defer res.Cleanup()
			t := time.Now()
			im, err := cat.Import(ctx, catalog.ImportRequest{ID: id, Path: res.Path, Source: store.ImageSourceImport,
				Foreign: true, RequireManifest: true})
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "%-28s %6.2fs\n", "check and store ("+im.Driver+")", time.Since(t).Seconds())
			note := "manifest written (user " + res.Manifest.User + ")"
			if res.HadManifest {
				note = "the image's own manifest kept"
			}
			fmt.Fprintf(w, "image %s: %s, %d files, %s; %s; %.1fs\n", id, humanBytes(im.SizeBytes), res.Stats.Entries,
				res.Digest, note, time.Since(start).Seconds())
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&id, "name", "", "image id to create (required)")
	f.StringVar(&agent, "agent", "", "atelier-agent binary to install (default: atelier-agent beside this binary, then on PATH)")
	f.StringVar(&workDir, "work-dir", "", "directory for the flattened tree (default the system temp dir; needs twice the image's size)")
	f.Int64Var(&sizeMB, "size-mb", 0, "ext4 image size in MiB (default: the content plus a quarter and 256 MiB)")
	return c
}

// openCatalog opens the manager's store and volume drivers as the manager
// does: mock mode keeps images in the file driver's layout under the state dir.
func openCatalog(ctx context.Context, cfg *config.Config) (*catalog.Catalog, func(), error) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.Open(ctx, cfg.Server.DataDir)
	if err != nil {
		return nil, nil, err
	}
	var vols catalog.Volumes
	if cfg.Server.Mode == config.ModeMock {
		vols = file.New(file.Config{StateDir: cfg.Sandbox.StateDir, Log: log})
	} else {
		set, _, err := pool.OpenSet(ctx, cfg, storage.Exec{}, log)
		if err != nil {
			st.Close()
			return nil, nil, err
		}
		vols = set
	}
	return catalog.New(catalog.Options{Store: st, Volumes: vols, Log: log}), func() { st.Close() }, nil
}
