import { useEffect, useRef, useState } from 'react';
import { agent, type FileContent, type FileInfo } from '../api/agent';
import { bytes, date } from '../format';
import { ErrorBanner, toast, useAsync } from '../ui';
import { homeOf } from './home';

function join(dir: string, name: string) {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}

function parent(p: string) {
  const i = p.lastIndexOf('/');
  return i <= 0 ? '/' : p.slice(0, i);
}

function toBlob(fc: FileContent): Blob {
  if (fc.encoding === 'base64') {
    const bin = atob(fc.content);
    const buf = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) buf[i] = bin.charCodeAt(i);
    return new Blob([buf]);
  }
  return new Blob([fc.content], { type: 'text/plain;charset=utf-8' });
}

export function Files({ id }: { id: string }) {
  const [dir, setDir] = useState<string | null>(null);
  const [view, setView] = useState<FileContent | null>(null);
  const [error, setError] = useState<unknown>(null);
  const upload = useRef<HTMLInputElement>(null);
  useEffect(() => {
    homeOf(id).then(setDir, (e) => {
      setError(e);
      setDir('/');
    });
  }, [id]);
  const list = useAsync(async () => (dir ? await agent.list(id, dir) : null), [id, dir]);
  const entries = [...(list.data?.entries ?? [])].sort((a, b) => (a.type === 'dir' ? 0 : 1) - (b.type === 'dir' ? 0 : 1) || a.name.localeCompare(b.name));

  const open = async (f: FileInfo) => {
    setError(null);
    if (f.type === 'dir') {
      setView(null);
      setDir(f.path);
      return;
    }
    try {
      setView(await agent.read(id, f.path));
    } catch (e) {
      setError(e);
    }
  };
  const download = async (f: FileInfo) => {
    try {
      const fc = await agent.read(id, f.path, 'base64');
      const url = URL.createObjectURL(toBlob(fc));
      const a = document.createElement('a');
      a.href = url;
      a.download = f.name;
      a.click();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) {
      setError(e);
    }
  };
  return (
    <div className="stack">
      <div className="panel-head">
        <h2>Files</h2>
        <span className="mono crumbs" aria-label="Current directory">
          {dir}
        </span>
        <div className="actions">
          <button type="button" className="btn btn-sm" disabled={!dir || dir === '/'} onClick={() => dir && setDir(parent(dir))}>
            Up
          </button>
          <button type="button" className="btn btn-sm" onClick={() => upload.current?.click()} disabled={!dir}>
            Upload
          </button>
          <input
            ref={upload}
            type="file"
            hidden
            aria-label="File to upload"
            onChange={async (e) => {
              const f = e.target.files?.[0];
              e.target.value = '';
              if (!f || !dir) return;
              try {
                await agent.write(id, join(dir, f.name), f);
                toast(`Uploaded ${f.name}`);
                await list.reload();
              } catch (err) {
                setError(err);
              }
            }}
          />
        </div>
      </div>
      <ErrorBanner error={list.error || error} onDismiss={error ? () => setError(null) : undefined} />
      <table className="table files" aria-label="Directory listing">
        <thead>
          <tr>
            <th scope="col">Name</th>
            <th scope="col">Size</th>
            <th scope="col">Modified</th>
            <th scope="col">
              <span className="sr-only">Actions</span>
            </th>
          </tr>
        </thead>
        <tbody>
          {entries.map((f) => (
            <tr key={f.path}>
              <td data-label="Name">
                <button type="button" className="linkish" onClick={() => void open(f)}>
                  {f.type === 'dir' ? `${f.name}/` : f.name}
                </button>
              </td>
              <td data-label="Size">{f.type === 'dir' ? '' : bytes(f.size)}</td>
              <td data-label="Modified">{date(f.modTime)}</td>
              <td>
                {f.type === 'file' && (
                  <button type="button" className="btn btn-sm" onClick={() => void download(f)} aria-label={`Download ${f.name}`}>
                    Download
                  </button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {list.data?.truncated && <p className="muted">Only the first entries are shown.</p>}
      {view && (
        <div className="card">
          <div className="panel-head">
            <h3 className="mono">{view.path}</h3>
            <button type="button" className="btn btn-sm" onClick={() => setView(null)}>
              Close
            </button>
          </div>
          {view.encoding === 'base64' ? (
            <p className="muted">Binary file, {bytes(view.size)}: download it to open.</p>
          ) : (
            <pre className="log" tabIndex={0} aria-label={`Contents of ${view.path}`}>
              {view.content}
              {view.truncated ? '\n…' : ''}
            </pre>
          )}
        </div>
      )}
    </div>
  );
}
