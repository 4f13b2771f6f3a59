import { listImages } from '../api/images';
import { bytes, date } from '../format';
import { Link } from '../router';
import { useStore } from '../state';
import { Badge, Empty, ErrorBanner, useAsync } from '../ui';

export function ImagesPage() {
  const { tick, sandboxes } = useStore();
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
      {list === null && (
        <Empty title="No image listing on this manager">
          <p>This Atelier does not list its images yet. Sandboxes still boot from the images in its state directory.</p>
        </Empty>
      )}
      {list && list.length === 0 && <Empty title="No images">No base image is installed on this host.</Empty>}
      {list && list.length > 0 && (
        <div className="grid">
          {list.map((img) => (
            <article key={img.id} className="card" aria-label={`Image ${img.id}`}>
              <header className="repo-head">
                <h2>{img.id}</h2>
                {img.building ? <Badge tone="busy">building: {img.building.stage}</Badge> : <Badge tone="ok">available</Badge>}
              </header>
              <dl className="facts">
                <div>
                  <dt>Size</dt>
                  <dd>{bytes(img.sizeBytes)}</dd>
                </div>
                <div>
                  <dt>Created</dt>
                  <dd>{date(img.createdAt)}</dd>
                </div>
                {img.building && (
                  <div>
                    <dt>Build started</dt>
                    <dd>{date(img.building.startedAt)}</dd>
                  </div>
                )}
                {Object.entries(img.versions ?? {}).map(([k, v]) => (
                  <div key={k}>
                    <dt>{k}</dt>
                    <dd>{v}</dd>
                  </div>
                ))}
              </dl>
              <h3>Used by</h3>
              {(img.usedBy ?? []).length === 0 ? (
                <p className="muted">No sandbox.</p>
              ) : (
                <ul className="links">
                  {(img.usedBy ?? []).map((id) => (
                    <li key={id}>
                      <Link to={`/sandboxes/${id}`}>{sandboxes.get(id)?.name || id}</Link>
                    </li>
                  ))}
                </ul>
              )}
            </article>
          ))}
        </div>
      )}
    </section>
  );
}
