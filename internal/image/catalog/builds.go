package catalog

import (
	"context"
	"strconv"
	"time"

	"atelier/internal/image/progress"
)

// Event types WatchBuilds publishes; every user's stream carries them (an
// image is host-wide and Build holds no host path).
const (
	EventBuild  = "image.build"
	EventBuilt  = "image.built"
	EventFailed = "image.failed"
)

// Build is an image build in progress (or just failed), as users see it
// in GET /api/images and the image.* events: stage names and times, never
// the pid, a host path or the error text (which may name host paths: it
// goes to the manager's log).
type Build struct {
	ID           string           `json:"id"`
	Started      time.Time        `json:"started"`
	Stage        string           `json:"stage"`
	StageStarted time.Time        `json:"stageStarted"`
	Done         []progress.Stage `json:"done"`
	// Elapsed times as of when the build was read: a page adds its own
	// clock's time since, whatever the skew between the two clocks.
	ElapsedSeconds      float64 `json:"elapsedSeconds"`
	StageElapsedSeconds float64 `json:"stageElapsedSeconds"`
	// Failed is the stage that failed ("" while it runs).
	Failed string `json:"failed"`
}

func toBuild(r progress.Record) Build {
	b := Build{ID: r.ID, Started: r.Started, Stage: r.Stage, StageStarted: r.StageStarted,
		Done: append([]progress.Stage{}, r.Done...), Failed: r.Failed}
	if r.Failed == "" {
		b.ElapsedSeconds = max(0, time.Since(r.Started).Seconds())
		if r.Stage != "" {
			b.StageElapsedSeconds = max(0, time.Since(r.StageStarted).Seconds())
		}
	} else if !r.Ended.IsZero() {
		b.ElapsedSeconds = max(0, r.Ended.Sub(r.Started).Seconds())
	}
	return b
}

// Builds returns the builds in progress on this host, by id (and failed
// ones no manager has reported yet); stale records of killed builds are
// removed.
func (c *Catalog) Builds() ([]Build, error) {
	if c.o.BuildsDir == "" {
		return []Build{}, nil
	}
	recs, err := progress.List(c.o.BuildsDir)
	if err != nil {
		return nil, err
	}
	out := make([]Build, 0, len(recs))
	for _, r := range recs {
		out = append(out, toBuild(r))
	}
	return out, nil
}

// WatchBuilds looks at the build records every interval (a directory read;
// the records are rewritten only when a stage starts or ends) until ctx
// ends, and publishes: image.build when a build starts or changes stage,
// image.built when its record goes (after syncing the catalog, so a
// listing on that event has the new image), image.failed when the build
// marked a failure (the record is then removed: reported once) or was
// killed.
func (c *Catalog) WatchBuilds(ctx context.Context, every time.Duration) {
	if c.o.BuildsDir == "" || c.o.Publish == nil {
		return
	}
	if every <= 0 {
		every = time.Second
	}
	seen := map[string]string{}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		seen = c.watchOnce(ctx, seen)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// watchOnce compares the records with what the last pass saw (id →
// stage and count of stages done) and publishes the differences.
func (c *Catalog) watchOnce(ctx context.Context, seen map[string]string) map[string]string {
	live, killed, err := progress.Scan(c.o.BuildsDir)
	if err != nil {
		c.o.Log.Warn("read image build records", "err", err)
		return seen
	}
	publish := func(typ string, data any, id string) {
		if err := c.o.Publish(ctx, typ, data); err != nil {
			c.o.Log.Warn("publish image build event", "image", id, "type", typ, "err", err)
		}
	}
	now := map[string]string{}
	gone := map[string]bool{}
	for _, r := range killed {
		gone[r.ID] = true
		b := toBuild(r)
		b.Failed = r.Stage
		if b.Failed == "" {
			b.Failed = "prepare"
		}
		c.o.Log.Warn("image build killed: record removed", "image", r.ID, "stage", r.Stage)
		publish(EventFailed, b, r.ID)
	}
	for _, r := range live {
		if r.Failed != "" {
			gone[r.ID] = true
			c.o.Log.Warn("image build failed", "image", r.ID, "stage", r.Failed, "err", r.Error)
			if err := progress.Remove(c.o.BuildsDir, r.ID); err != nil {
				c.o.Log.Warn("remove failed image build record", "image", r.ID, "err", err)
			}
			publish(EventFailed, toBuild(r), r.ID)
			continue
		}
		sig := r.Stage + "\x00" + strconv.Itoa(len(r.Done))
		now[r.ID] = sig
		if seen[r.ID] != sig {
			publish(EventBuild, toBuild(r), r.ID)
		}
	}
	for id := range seen {
		if _, ok := now[id]; ok || gone[id] {
			continue
		}
		if err := c.Sync(ctx); err != nil {
			c.o.Log.Warn("image catalog sync after a build failed", "image", id, "err", err)
		}
		c.o.Log.Info("image built", "image", id)
		publish(EventBuilt, Build{ID: id}, id)
	}
	return now
}
