import { useEffect, useMemo, useState } from 'react';
import { api, unwrap, type Sandbox, type SandboxStatus } from '../api/client';
import { deleteSandbox, label, restartSandbox, startSandbox, stopSandbox } from '../actions';
import { age, mib, ms } from '../format';
import { Link, navigate, setQuery, useLocation } from '../router';
import { refreshMe, useSession } from '../session';
import { putSandbox, useStore } from '../state';
import { ConfirmDialog, Dialog, Empty, ErrorBanner, Field, StatusBadge, toast, useAsync, type Confirmation } from '../ui';

const statuses: SandboxStatus[] = ['running', 'creating', 'starting', 'stopping', 'stopped', 'error', 'destroying'];

export function SandboxesPage() {
  const { sandboxes, loaded, loadError, tick } = useStore();
  const { me } = useSession();
  const { query } = useLocation();
  const q = query.get('q') ?? '';
  const status = query.get('status') ?? '';
  const [creating, setCreating] = useState(false);
  const [confirm, setConfirm] = useState<Confirmation | null>(null);
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), 15000);
    return () => clearInterval(t);
  }, []);
  // Quota usage follows the list: a sandbox event may change it.
  useEffect(() => {
    if (tick > 1) void refreshMe();
  }, [tick]);
  const users = useAsync(async () => (me?.admin ? (await unwrap(api.GET('/api/users'))).users ?? [] : []), [me?.admin]);
  const owners = useMemo(() => new Map((users.data ?? []).map((u) => [u.id, u.login])), [users.data]);

  const list = useMemo(() => {
    const needle = q.trim().toLowerCase();
    return [...sandboxes.values()]
      .filter((sb) => !status || sb.status === status)
      .filter((sb) => !needle || [sb.id, sb.name ?? '', sb.image, owners.get(sb.ownerId) ?? sb.ownerId].some((f) => f.toLowerCase().includes(needle)))
      .sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt));
  }, [sandboxes, q, status, owners]);

  const ask = (sb: Sandbox, action: 'stop' | 'restart' | 'delete') => {
    const what = label(sb);
    const c: Record<typeof action, Confirmation> = {
      stop: { title: 'Stop sandbox?', body: <p>Stop {what}? Its processes end; its disk is kept, and you can start it again.</p>, action: 'Stop', run: () => stopSandbox(sb.id).then(() => toast(`Stopped ${what}`)) },
      restart: { title: 'Restart sandbox?', body: <p>Restart {what}? Its processes end and it boots again.</p>, action: 'Restart', run: () => restartSandbox(sb.id).then(() => toast(`Restarted ${what}`)) },
      delete: {
        title: 'Delete sandbox?',
        body: <p>Delete {what} and its disk? This cannot be undone.</p>,
        action: 'Delete',
        danger: true,
        run: () => deleteSandbox(sb.id).then(() => toast(`Deleted ${what}`)),
      },
    };
    setConfirm(c[action]);
  };

  return (
    <section aria-labelledby="sandboxes-title">
      <div className="page-head">
        <h1 id="sandboxes-title">Sandboxes</h1>
        <button type="button" className="btn btn-primary" onClick={() => setCreating(true)}>
          New sandbox
        </button>
      </div>
      <Quotas />
      <div className="toolbar" role="search">
        <Field label="Search">
          {(id) => <input id={id} type="search" placeholder="Name, id, image or owner" value={q} onChange={(e) => setQuery({ q: e.target.value })} />}
        </Field>
        <Field label="Status">
          {(id) => (
            <select id={id} value={status} onChange={(e) => setQuery({ status: e.target.value })}>
              <option value="">All</option>
              {statuses.map((s) => (
                <option key={s} value={s}>
                  {s}
                </option>
              ))}
            </select>
          )}
        </Field>
      </div>
      {loadError && <ErrorBanner error={new Error(loadError)} />}
      {!loaded ? (
        <p className="muted">Loading sandboxes…</p>
      ) : list.length === 0 ? (
        sandboxes.size === 0 ? (
          <Empty title="No sandboxes yet">
            <p>A sandbox is an isolated Linux machine with VS Code, OpenCode, a browser, a terminal and SSH. It boots in seconds.</p>
            <button type="button" className="btn btn-primary" onClick={() => setCreating(true)}>
              Create your first sandbox
            </button>
          </Empty>
        ) : (
          <Empty title="No sandbox matches">
            <button type="button" className="btn" onClick={() => setQuery({ q: null, status: null })}>
              Clear the filters
            </button>
          </Empty>
        )
      ) : (
        <table className="table sandboxes" aria-label="Your sandboxes">
          <thead>
            <tr>
              <th scope="col">Sandbox</th>
              <th scope="col">State</th>
              <th scope="col">Image</th>
              <th scope="col">Resources</th>
              <th scope="col">Age</th>
              {me?.admin && <th scope="col">Owner</th>}
              <th scope="col">
                <span className="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {list.map((sb) => (
              <tr key={sb.id} data-sandbox={sb.id}>
                <td data-label="Sandbox">
                  <Link to={`/sandboxes/${sb.id}`} className="sb-name">
                    {sb.name || sb.id}
                  </Link>
                  {sb.name && <span className="muted mono"> {sb.id}</span>}
                  {sb.status === 'error' && sb.error && <div className="error-text">{sb.error}</div>}
                </td>
                <td data-label="State">
                  <StatusBadge status={sb.status} />
                </td>
                <td data-label="Image">{sb.image}</td>
                <td data-label="Resources">
                  {sb.vcpus} vCPU · {mib(sb.memoryMb)}
                </td>
                <td data-label="Age">
                  <time dateTime={sb.createdAt} title={new Date(sb.createdAt).toLocaleString()}>
                    {age(sb.createdAt, now)}
                  </time>
                </td>
                {me?.admin && <td data-label="Owner">{sb.pooled ? 'warm pool' : owners.get(sb.ownerId) ?? sb.ownerId}</td>}
                <td className="row-actions">
                  <RowActions sb={sb} ask={ask} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <CreateDialog open={creating} onClose={() => setCreating(false)} />
      <ConfirmDialog confirm={confirm} onDone={() => setConfirm(null)} />
    </section>
  );
}

export function RowActions({ sb, ask }: { sb: Sandbox; ask: (sb: Sandbox, a: 'stop' | 'restart' | 'delete') => void }) {
  const name = sb.name || sb.id;
  const [starting, setStarting] = useState(false);
  return (
    <div className="actions">
      {sb.status === 'running' && (
        <>
          <button type="button" className="btn btn-sm" onClick={() => ask(sb, 'stop')} aria-label={`Stop ${name}`}>
            Stop
          </button>
          <button type="button" className="btn btn-sm" onClick={() => ask(sb, 'restart')} aria-label={`Restart ${name}`}>
            Restart
          </button>
        </>
      )}
      {sb.status === 'stopped' && (
        <button
          type="button"
          className="btn btn-sm"
          disabled={starting}
          aria-label={`Start ${name}`}
          onClick={async () => {
            setStarting(true);
            try {
              await startSandbox(sb.id);
              toast(`Started ${label(sb)}`);
            } catch (e) {
              toast(`Could not start ${label(sb)}: ${e instanceof Error ? e.message : e}`, 'bad');
            } finally {
              setStarting(false);
            }
          }}
        >
          Start
        </button>
      )}
      {sb.status !== 'destroying' && (
        <button type="button" className="btn btn-sm btn-danger-outline" onClick={() => ask(sb, 'delete')} aria-label={`Delete ${name}`}>
          Delete
        </button>
      )}
    </div>
  );
}

function Quotas() {
  const { me } = useSession();
  const qs = (me?.quotas ?? []).filter((q) => q.limit > 0);
  if (!qs.length) return null;
  const names: Record<string, string> = {
    'quotas.runningPerUser': 'running',
    'quotas.sandboxesPerUser': 'sandboxes',
    'quotas.diskGbPerUser': 'disk',
  };
  return (
    <p className="quotas muted" aria-label="Your quotas">
      {qs.map((q) => (
        <span key={q.name} className={q.used >= q.limit ? 'quota quota-full' : 'quota'}>
          {names[q.name] ?? q.name}: {q.unit === 'GiB' ? q.used.toFixed(1) : q.used} of {q.limit}
          {q.unit === 'GiB' ? ' GiB' : ''}
        </span>
      ))}
    </p>
  );
}

const phaseOrder = ['queue', 'lease', 'ip', 'volume', 'clone', 'link', 'network', 'boot', 'agent', 'hooks', 'total'];

export function Phases({ sb }: { sb: Sandbox }) {
  const t = sb.timings;
  if (!t || !Object.keys(t).length) return null;
  const keys = Object.keys(t).sort((a, b) => {
    const ia = phaseOrder.indexOf(a), ib = phaseOrder.indexOf(b);
    return (ia < 0 ? 50 : ia) - (ib < 0 ? 50 : ib) || a.localeCompare(b);
  });
  return (
    <dl className="phases" aria-label="Boot phases">
      {keys.map((k) => (
        <div key={k}>
          <dt>{k}</dt>
          <dd>{ms(t[k])}</dd>
        </div>
      ))}
    </dl>
  );
}

function CreateDialog({ open, onClose }: { open: boolean; onClose: () => void }) {
  const { sandboxes } = useStore();
  const [name, setName] = useState('');
  const [image, setImage] = useState('');
  const [vcpus, setVcpus] = useState('2');
  const [memory, setMemory] = useState('2048');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [id, setId] = useState<string | null>(null);
  const [started, setStarted] = useState(0);
  const [now, setNow] = useState(0);
  const sb = id ? sandboxes.get(id) : undefined;
  const booting = !!sb && ['creating', 'starting'].includes(sb.status);
  useEffect(() => {
    if (!booting) return;
    const t = setInterval(() => setNow(Date.now()), 100);
    return () => clearInterval(t);
  }, [booting]);
  useEffect(() => {
    if (!open) {
      setId(null);
      setError(null);
      setName('');
    }
  }, [open]);
  // The list leaves timings out; the running sandbox's event carries them.
  useEffect(() => {
    if (sb?.status === 'running' && !sb.timings) {
      void unwrap(api.GET('/api/sandboxes/{id}', { params: { path: { id: sb.id } } })).then(putSandbox, () => undefined);
    }
  }, [sb?.status, sb?.timings, sb?.id]);

  return (
    <Dialog open={open} title={id ? 'Creating sandbox' : 'New sandbox'} onClose={onClose}>
      {!id ? (
        <form
          className="stack"
          onSubmit={async (e) => {
            e.preventDefault();
            setBusy(true);
            setError(null);
            try {
              const body: Record<string, unknown> = { vcpus: Number(vcpus), memoryMb: Number(memory) };
              if (name.trim()) body.name = name.trim();
              if (image.trim()) body.image = image.trim();
              const created = await unwrap(
                api.POST('/api/sandboxes', { params: { query: { wait: 'false' } }, body: body as never }),
              );
              putSandbox(created);
              setStarted(Date.now());
              setNow(Date.now());
              setId(created.id);
            } catch (err) {
              setError(err);
            } finally {
              setBusy(false);
            }
          }}
        >
          <Field label="Name" hint="Optional. Lowercase letters, digits and dashes; unique among your sandboxes.">
            {(fid) => <input id={fid} value={name} onChange={(e) => setName(e.target.value)} pattern="[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?" autoComplete="off" />}
          </Field>
          <Field label="Image" hint="Leave empty for the default image.">
            {(fid) => <input id={fid} value={image} onChange={(e) => setImage(e.target.value)} placeholder="dev-base" autoComplete="off" />}
          </Field>
          <div className="row">
            <Field label="vCPUs">
              {(fid) => (
                <select id={fid} value={vcpus} onChange={(e) => setVcpus(e.target.value)}>
                  {[1, 2, 4, 8].map((n) => (
                    <option key={n} value={n}>
                      {n}
                    </option>
                  ))}
                </select>
              )}
            </Field>
            <Field label="Memory">
              {(fid) => (
                <select id={fid} value={memory} onChange={(e) => setMemory(e.target.value)}>
                  {[512, 1024, 2048, 4096, 8192, 16384].map((n) => (
                    <option key={n} value={n}>
                      {mib(n)}
                    </option>
                  ))}
                </select>
              )}
            </Field>
          </div>
          <ErrorBanner error={error} />
          <div className="dialog-actions">
            <button type="button" className="btn" onClick={onClose}>
              Cancel
            </button>
            <button type="submit" className="btn btn-primary" disabled={busy}>
              {busy ? 'Creating…' : 'Create'}
            </button>
          </div>
        </form>
      ) : (
        <div className="stack" aria-live="polite">
          <p>
            <strong>{sb?.name || id}</strong> {sb && <StatusBadge status={sb.status} />}
          </p>
          {booting && <p className="muted">Booting… {ms(Math.max(0, now - started))}</p>}
          {sb?.status === 'error' && <ErrorBanner error={new Error(sb.error || 'the sandbox failed to boot')} />}
          {sb && <Phases sb={sb} />}
          <div className="dialog-actions">
            <button type="button" className="btn" onClick={onClose}>
              Close
            </button>
            {sb?.status === 'running' && (
              <button
                type="button"
                className="btn btn-primary"
                onClick={() => {
                  onClose();
                  navigate(`/sandboxes/${sb.id}`);
                }}
              >
                Open sandbox
              </button>
            )}
          </div>
        </div>
      )}
    </Dialog>
  );
}
