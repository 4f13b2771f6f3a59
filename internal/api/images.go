package api

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/danielgtaylor/huma/v2"

	"atelier/internal/image/catalog"
	"atelier/internal/store"
)

type imageServiceView struct {
	Name      string `json:"name"`
	Role      string `json:"role" doc:"Tool host the service answers: vscode, opencode, browser, or empty."`
	Autostart bool   `json:"autostart" doc:"Started at boot; otherwise on demand."`
	Port      int    `json:"port" doc:"Default port; the host's advanced.vm.* settings override it for services with a role."`
}

type imageView struct {
	ID        string    `json:"id"`
	Driver    string    `json:"driver" doc:"Volume driver holding the image: lvm or file."`
	SizeBytes int64     `json:"sizeBytes" doc:"Virtual size: the root disk size of every sandbox made from the image."`
	UsedBytes int64     `json:"usedBytes" doc:"Space the image's volume has allocated."`
	CreatedAt time.Time `json:"createdAt" doc:"When the image entered this host's catalog."`
	Source    string    `json:"source" enum:"build,import,disk" doc:"build: atelier images build; import: atelier images import; disk: found in the volume driver."`
	Base      string    `json:"base" doc:"Image this one was built on; empty when none."`
	Built     string    `json:"built" doc:"When the image was built (RFC 3339), from its manifest; empty when unknown."`
	User      string    `json:"user" doc:"Default unix user of sessions, from the manifest."`
	Workdir   string    `json:"workdir" doc:"Default working directory, from the manifest."`
	// Versions and services come from /etc/atelier/image.json inside the image.
	Versions      map[string]string  `json:"versions" doc:"Versions of the tools the image carries, from its manifest."`
	Services      []imageServiceView `json:"services" doc:"Services the agent supervises, from the manifest."`
	ManifestError string             `json:"manifestError" doc:"Why the image has no usable manifest; empty when it has one."`
	SandboxCount  int                `json:"sandboxCount" doc:"How many sandboxes use the image, everyone's."`
	UsedBy        []string           `json:"usedBy" doc:"Ids of the sandboxes using the image that you may see: your own, or all for an admin."`
	Prebuilds     []string           `json:"prebuilds" doc:"Workspaces whose prebuild was made from the image."`
}

type imageBuildStageView struct {
	Name    string  `json:"name" doc:"Stage, e.g. dev-base/root, dev-base/setup, image, volume."`
	Seconds float64 `json:"seconds" doc:"How long it took; 0 when it came from the build cache."`
	Cached  bool    `json:"cached" doc:"The stage's result came from the build cache."`
}

type imageBuildView struct {
	ID                  string                `json:"id" doc:"Image being built."`
	Started             time.Time             `json:"started"`
	Stage               string                `json:"stage" doc:"Stage running now; empty between stages."`
	StageStarted        time.Time             `json:"stageStarted"`
	ElapsedSeconds      float64               `json:"elapsedSeconds" doc:"Time since the build started, as of this answer."`
	StageElapsedSeconds float64               `json:"stageElapsedSeconds" doc:"Time since the current stage started, as of this answer."`
	Done                []imageBuildStageView `json:"done" doc:"Stages finished, in order."`
	Failed              string                `json:"failed" doc:"Stage that failed, for a failed build no manager has reported yet; empty while it runs."`
}

func newImageBuildView(b catalog.Build) imageBuildView {
	v := imageBuildView{ID: b.ID, Started: b.Started, Stage: b.Stage, StageStarted: b.StageStarted,
		ElapsedSeconds: b.ElapsedSeconds, StageElapsedSeconds: b.StageElapsedSeconds, Failed: b.Failed,
		Done: make([]imageBuildStageView, 0, len(b.Done))}
	for _, d := range b.Done {
		v.Done = append(v.Done, imageBuildStageView{Name: d.Name, Seconds: d.Seconds, Cached: d.Cached})
	}
	return v
}

func newImageView(im catalog.Image, visible func(id string) bool) imageView {
	v := imageView{ID: im.ID, Driver: im.Driver, SizeBytes: im.SizeBytes, UsedBytes: im.UsedBytes, CreatedAt: im.CreatedAt,
		Source: im.Source, ManifestError: im.ManifestError, SandboxCount: len(im.Sandboxes),
		Versions: map[string]string{}, Services: []imageServiceView{}, UsedBy: []string{}, Prebuilds: append([]string{}, im.Prebuilds...)}
	if m := im.Manifest; m != nil {
		v.Base, v.Built, v.User, v.Workdir = m.Base, m.Built, m.User, m.Workdir
		for k, ver := range m.Versions {
			v.Versions[k] = ver
		}
		for _, s := range m.Services {
			v.Services = append(v.Services, imageServiceView{Name: s.Name, Role: s.Role, Autostart: s.Autostart, Port: s.Process.Port})
		}
	}
	for _, id := range im.Sandboxes {
		if visible(id) {
			v.UsedBy = append(v.UsedBy, id)
		}
	}
	return v
}

type imageIDInput struct {
	ID string `path:"id" minLength:"1" maxLength:"63" pattern:"^[a-z0-9][a-z0-9._-]{0,62}$" doc:"Image id, e.g. dev-base."`
}

// imageVisibility says which sandbox ids the caller may learn: an admin
// all, anyone else their own.
func (s *Server) imageVisibility(ctx context.Context) (func(string) bool, error) {
	p := principal(ctx)
	if p.Admin {
		return func(string) bool { return true }, nil
	}
	own, err := s.d.Store.ListSandboxes(ctx, store.SandboxFilter{OwnerID: p.User.ID, NoTimings: true})
	if err != nil {
		return nil, err
	}
	mine := make(map[string]bool, len(own))
	for _, sb := range own {
		mine[sb.ID] = true
	}
	return func(id string) bool { return mine[id] }, nil
}

func (s *Server) imageProblem(ctx context.Context, id string, err error) error {
	var inUse *catalog.InUseError
	switch {
	case errors.As(err, &inUse):
		return newProblem(http.StatusConflict, "image_in_use", inUse.Error())
	case errors.Is(err, catalog.ErrNotFound):
		return newProblem(http.StatusNotFound, "not_found", "image "+id+" not found")
	case errors.Is(err, catalog.ErrInvalid):
		return newProblem(http.StatusBadRequest, "invalid_input", "validation failed: id: "+err.Error(),
			&huma.ErrorDetail{Location: "path.id", Message: err.Error()})
	}
	return toProblem(ctx, s.d.Log, err)
}

func (s *Server) registerImages() {
	tags := []string{"images"}
	unavailable := func() error {
		return newProblem(http.StatusServiceUnavailable, "unavailable", "this manager has no image catalog")
	}
	type listImagesOut struct {
		Body struct {
			Images []imageView `json:"images"`
			// Builds run as another process (atelier images build); the
			// catalog reads their progress records.
			Builds []imageBuildView `json:"builds" doc:"Image builds running on this host (atelier images build), with their stage; the image.build, image.built and image.failed events follow them."`
		}
	}
	huma.Register(s.api, huma.Operation{
		OperationID: "list-images", Method: http.MethodGet, Path: "/api/images", Tags: tags,
		Summary: "List the host's images", Security: securityAuthed,
		Description: "Every image the volume driver holds, with its size, creation time, the versions and services " +
			"its manifest declares, and the sandboxes using it; and the image builds in progress.",
		Errors: []int{http.StatusUnauthorized, http.StatusServiceUnavailable},
	}, func(ctx context.Context, _ *struct{}) (*listImagesOut, error) {
		if s.d.Images == nil {
			return nil, unavailable()
		}
		list, err := s.d.Images.List(ctx)
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		visible, err := s.imageVisibility(ctx)
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		builds, err := s.d.Images.Builds()
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		out := &listImagesOut{}
		out.Body.Images = make([]imageView, 0, len(list))
		for _, im := range list {
			out.Body.Images = append(out.Body.Images, newImageView(im, visible))
		}
		out.Body.Builds = make([]imageBuildView, 0, len(builds))
		for _, b := range builds {
			out.Body.Builds = append(out.Body.Builds, newImageBuildView(b))
		}
		return out, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "get-image", Method: http.MethodGet, Path: "/api/images/{id}", Tags: tags,
		Summary: "Get one image", Security: securityAuthed,
		Errors: []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotFound, http.StatusServiceUnavailable},
	}, func(ctx context.Context, in *imageIDInput) (*struct{ Body imageView }, error) {
		if s.d.Images == nil {
			return nil, unavailable()
		}
		im, err := s.d.Images.Get(ctx, in.ID)
		if err != nil {
			return nil, s.imageProblem(ctx, in.ID, err)
		}
		visible, err := s.imageVisibility(ctx)
		if err != nil {
			return nil, toProblem(ctx, s.d.Log, err)
		}
		return &struct{ Body imageView }{newImageView(im, visible)}, nil
	})

	huma.Register(s.api, huma.Operation{
		OperationID: "delete-image", Method: http.MethodDelete, Path: "/api/images/{id}", Tags: tags,
		Summary: "Remove an image (admins only)", Security: securityAuthed, DefaultStatus: http.StatusNoContent,
		Description: "Deletes the image's volume. Refused with 409 while sandboxes or prebuilds use the image: " +
			"destroy them first.",
		Errors: []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound,
			http.StatusConflict, http.StatusServiceUnavailable},
	}, func(ctx context.Context, in *imageIDInput) (*struct{}, error) {
		if err := requireAdmin(ctx, "removing an image"); err != nil {
			return nil, err
		}
		if s.d.Images == nil {
			return nil, unavailable()
		}
		if err := s.d.Images.Remove(ctx, in.ID); err != nil {
			return nil, s.imageProblem(ctx, in.ID, err)
		}
		return nil, nil
	})
}
