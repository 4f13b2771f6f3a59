import { useEffect, useState } from 'react';
import { listCatalog, type ImageInfo } from '../api/images';
import { bytes, date, duration } from '../format';
import { Link } from '../router';
import { seedBuilds, useStore, type LiveBuild } from '../state';
import { Badge, Empty, ErrorBanner, useAsync, useVisibleInterval } from '../ui';

export function ImagesPage() {
  const { tick, imageTick, builds, failedBuilds } = useStore();
  // A build's end (imageTick) brings the new image: the list is refetched then, never polled.
  // A fresh closure per render: useAsync refetches when its function changes, and a
  // module function passed as is would never change, whatever the deps.
  const catalog = useAsync(() => listCatalog(), [tick, imageTick]);
  const list = catalog.data?.images;
  const images = catalog;
  useEffect(() => {
    if (catalog.data) seedBuilds(catalog.data.builds);
  }, [catalog.data]);
  const running = [...builds.values()].sort((a, b) => a.id.localeCompare(b.id));
  return (
    <section aria-labelledby="images-title" className="stack">
      <div className="page-head">
        <h1 id="images-title">Images</h1>
        <button type="button" className="btn btn-sm" onClick={() => void images.reload()}>
          Refresh
        </button>
      </div>
      <ErrorBanner error={images.error} />
      {failedBuilds.map((f) => (
        <p key={f.id} role="alert" className="banner banner-error">
          The build of {f.id} failed at stage {f.stage}. The output of <code>atelier images build {f.id}</code> on the
          host says why.
        </p>
      ))}
      {running.length > 0 && (
        <section aria-labelledby="builds-title" className="stack">
          <h2 id="builds-title">Building</h2>
          <div className="grid">
            {running.map((b) => (
              <BuildCard key={b.id} build={b} />
            ))}
          </div>
        </section>
      )}
      {images.loading && list === undefined && <p className="muted">Loading…</p>}
      {list && list.length === 0 && running.length === 0 && (
        <Empty title="No images">
          <p>
            No image is installed on this host. Build one with <code>atelier images build dev-base</code> or bring
            your own with <code>atelier images import</code>.
          </p>
        </Empty>
      )}
      {list && list.length > 0 && (
        <div className="grid">
          {list.map((img) => (
            <ImageCard key={img.id} img={img} />
          ))}
        </div>
      )}
    </section>
  );
}

/** A build in progress: its stage and times, counted on this browser's clock from when the server last said. */
function BuildCard({ build }: { build: LiveBuild }) {
  const [now, setNow] = useState(Date.now());
  useVisibleInterval(() => setNow(Date.now()), 1000);
  const since = Math.max(0, (now - build.receivedAt) / 1000);
  const done = build.done ?? [];
  return (
    <article className="card" aria-label={`Build of ${build.id}`}>
      <header className="repo-head">
        <h3>{build.id}</h3>
        <Badge tone="busy">building</Badge>
      </header>
      <dl className="facts">
        <div>
          <dt>Stage</dt>
          <dd>
            {build.stage ? (
              <>
                {build.stage} for {duration(build.stageElapsedSeconds + since)}
              </>
            ) : (
              'between stages'
            )}
          </dd>
        </div>
        <div>
          <dt>Elapsed</dt>
          <dd>{duration(build.elapsedSeconds + since)}</dd>
        </div>
      </dl>
      {done.length > 0 && (
        <>
          <h4>Stages done</h4>
          <ul className="links" aria-label={`Stages done of ${build.id}`}>
            {done.map((d) => (
              <li key={d.name}>
                {d.name}: {d.cached ? 'cached' : duration(d.seconds)}
              </li>
            ))}
          </ul>
        </>
      )}
    </article>
  );
}

function ImageCard({ img }: { img: ImageInfo }) {
  const { sandboxes, builds } = useStore();
  const usedBy = img.usedBy ?? [];
  const others = img.sandboxCount - usedBy.length;
  const versions = Object.entries(img.versions ?? {}).sort(([a], [b]) => a.localeCompare(b));
  return (
    <article className="card" aria-label={`Image ${img.id}`}>
      <header className="repo-head">
        <h2>{img.id}</h2>
        {builds.has(img.id) && <Badge tone="busy">rebuilding</Badge>}
        {img.manifestError ? <Badge tone="idle">no manifest</Badge> : <Badge tone="ok">available</Badge>}
      </header>
      <dl className="facts">
        <div>
          <dt>Size</dt>
          <dd>{bytes(img.sizeBytes)}</dd>
        </div>
        <div>
          <dt>Allocated</dt>
          <dd>{bytes(img.usedBytes)}</dd>
        </div>
        <div>
          <dt>Created</dt>
          <dd>{date(img.createdAt)}</dd>
        </div>
        <div>
          <dt>Source</dt>
          <dd>
            {img.source} ({img.driver})
          </dd>
        </div>
        {img.user && (
          <div>
            <dt>User</dt>
            <dd>
              {img.user} in {img.workdir}
            </dd>
          </div>
        )}
        {versions.map(([k, v]) => (
          <div key={k}>
            <dt>{k}</dt>
            <dd>{v}</dd>
          </div>
        ))}
      </dl>
      {img.manifestError && <p className="muted">{img.manifestError}</p>}
      {(img.services ?? []).length > 0 && (
        <>
          <h3>Services</h3>
          <ul className="links">
            {(img.services ?? []).map((s) => (
              <li key={s.name}>
                {s.name}
                {s.role ? ` (${s.role})` : ''} on port {s.port}
                {s.autostart ? '' : ', on demand'}
              </li>
            ))}
          </ul>
        </>
      )}
      <h3>Used by</h3>
      {img.sandboxCount === 0 ? (
        <p className="muted">No sandbox.</p>
      ) : (
        <ul className="links" aria-label={`Sandboxes using ${img.id}`}>
          {usedBy.map((id) => (
            <li key={id}>
              <Link to={`/sandboxes/${id}`}>{sandboxes.get(id)?.name || id}</Link>
            </li>
          ))}
          {others > 0 && (
            <li className="muted">
              {others} {others === 1 ? 'sandbox' : 'sandboxes'} of other users
            </li>
          )}
        </ul>
      )}
    </article>
  );
}
