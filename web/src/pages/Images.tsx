import { listImages, type ImageInfo } from '../api/images';
import { bytes, date } from '../format';
import { Link } from '../router';
import { useStore } from '../state';
import { Badge, Empty, ErrorBanner, useAsync } from '../ui';

export function ImagesPage() {
  const { tick } = useStore();
  const images = useAsync(listImages, [tick]);
  const list = images.data;
  return (
    <section aria-labelledby="images-title" className="stack">
      <div className="page-head">
        <h1 id="images-title">Images</h1>
        <button type="button" className="btn btn-sm" onClick={() => void images.reload()}>
          Refresh
        </button>
      </div>
      <ErrorBanner error={images.error} />
      {images.loading && list === undefined && <p className="muted">Loading…</p>}
      {list && list.length === 0 && (
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

function ImageCard({ img }: { img: ImageInfo }) {
  const { sandboxes } = useStore();
  const usedBy = img.usedBy ?? [];
  const others = img.sandboxCount - usedBy.length;
  const versions = Object.entries(img.versions ?? {}).sort(([a], [b]) => a.localeCompare(b));
  return (
    <article className="card" aria-label={`Image ${img.id}`}>
      <header className="repo-head">
        <h2>{img.id}</h2>
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
