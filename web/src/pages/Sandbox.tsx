import { lazy, Suspense, useEffect, useState, type ReactNode } from 'react';
import { api, ApiError, unwrap, type Sandbox } from '../api/client';
import { busyStatuses, deleteSandbox, label, promoteSandbox, restartSandbox, startSandbox, stopSandbox } from '../actions';
import { Link, navigate, setQuery, useLocation } from '../router';
import { useSession } from '../session';
import { putSandbox, useStore } from '../state';
import { ConfirmDialog, CopyButton, ErrorBanner, StatusBadge, toast, type Confirmation } from '../ui';
import { Overview } from '../sandbox/Overview';
import { ToolFrame } from '../sandbox/Tools';

// The heavier panels load when first opened: xterm.js only with a terminal.
const Terminals = lazy(() => import('../sandbox/Terminal').then((m) => ({ default: m.Terminals })));
const Services = lazy(() => import('../sandbox/Procs').then((m) => ({ default: m.Services })));
const DevCommands = lazy(() => import('../sandbox/Procs').then((m) => ({ default: m.DevCommands })));
const Git = lazy(() => import('../sandbox/Git').then((m) => ({ default: m.Git })));
const Files = lazy(() => import('../sandbox/Files').then((m) => ({ default: m.Files })));

export type Tab = 'overview' | 'terminal' | 'vscode' | 'opencode' | 'browser' | 'services' | 'dev' | 'git' | 'files';

const tabs: { id: Tab; label: string; tool?: boolean }[] = [
  { id: 'overview', label: 'Overview' },
  { id: 'terminal', label: 'Terminal', tool: true },
  { id: 'vscode', label: 'VS Code', tool: true },
  { id: 'opencode', label: 'OpenCode', tool: true },
  { id: 'browser', label: 'Browser', tool: true },
  { id: 'services', label: 'Services' },
  { id: 'dev', label: 'Dev commands' },
  { id: 'git', label: 'Git' },
  { id: 'files', label: 'Files' },
];

export function SandboxPage({ id }: { id: string }) {
  const { sandboxes, loaded } = useStore();
  const { me } = useSession();
  const { query } = useLocation();
  const tab = (tabs.find((t) => t.id === query.get('tab'))?.id ?? 'overview') as Tab;
  const split = tabs.find((t) => t.tool && t.id === query.get('split') && t.id !== tab)?.id as Tab | undefined;
  const [missing, setMissing] = useState<unknown>(null);
  const [confirm, setConfirm] = useState<Confirmation | null>(null);
  const sb = sandboxes.get(id);

  // One GET brings the phase timings the list leaves out (and a sandbox the
  // list does not hold, e.g. one just created elsewhere).
  useEffect(() => {
    let stop = false;
    unwrap(api.GET('/api/sandboxes/{id}', { params: { path: { id } } }))
      .then((v) => !stop && putSandbox(v))
      .catch((e) => !stop && setMissing(e));
    return () => {
      stop = true;
    };
  }, [id]);

  if (!sb) {
    if (!loaded || !missing) return <p className="muted">Loading sandbox…</p>;
    return (
      <section>
        <h1>Sandbox not found</h1>
        <p>{missing instanceof ApiError && missing.status === 404 ? `No sandbox ${id} is yours to see. It may have been deleted.` : String(missing)}</p>
        <Link to="/sandboxes">Back to your sandboxes</Link>
      </section>
    );
  }
  const own = sb.ownerId === me?.id;
  const running = sb.status === 'running';
  const name = label(sb);

  const ask = (a: 'stop' | 'restart' | 'promote' | 'delete') =>
    setConfirm(
      {
        stop: { title: 'Stop sandbox?', body: <p>Stop {name}? Its processes end; its disk is kept.</p>, action: 'Stop', run: () => stopSandbox(sb.id).then(() => toast(`Stopped ${name}`)) },
        promote: {
          title: 'Save as prebuild?',
          body: <p>Save the disk of {name} as its workspace&apos;s prebuild? It is stopped while its disk is saved, then started again; new sandboxes of the workspace start from it.</p>,
          action: 'Save as prebuild',
          run: () => promoteSandbox(sb.id).then(() => toast(`Saved ${name} as its workspace's prebuild`)),
        },
        restart: { title: 'Restart sandbox?', body: <p>Restart {name}? Its processes end and it boots again.</p>, action: 'Restart', run: () => restartSandbox(sb.id).then(() => toast(`Restarted ${name}`)) },
        delete: {
          title: 'Delete sandbox?',
          body: <p>Delete {name} and its disk? This cannot be undone.</p>,
          action: 'Delete',
          danger: true,
          run: () =>
            deleteSandbox(sb.id).then(() => {
              toast(`Deleted ${name}`);
              navigate('/sandboxes');
            }),
        },
      }[a],
    );

  return (
    <section className="sandbox-page" aria-labelledby="sb-title">
      <nav aria-label="Breadcrumb" className="crumbs">
        <Link to="/sandboxes">Sandboxes</Link> / <span>{sb.name || sb.id}</span>
      </nav>
      <div className="page-head">
        <h1 id="sb-title">
          {sb.name || sb.id} <StatusBadge status={sb.status} />
        </h1>
        <div className="actions">
          {running && (
            <>
              <button type="button" className="btn" onClick={() => ask('stop')}>
                Stop
              </button>
              <button type="button" className="btn" onClick={() => ask('restart')}>
                Restart
              </button>
              {own && sb.workspaceId && (
                <button type="button" className="btn" onClick={() => ask('promote')}>
                  Save as prebuild
                </button>
              )}
            </>
          )}
          {sb.status === 'stopped' && <StartButton sb={sb} />}
          {sb.status !== 'destroying' && (
            <button type="button" className="btn btn-danger-outline" onClick={() => ask('delete')}>
              Delete
            </button>
          )}
        </div>
      </div>
      {sb.status === 'error' && <ErrorBanner error={new Error(sb.error || 'the last operation failed')} />}
      {sb.urls?.ssh && own && (
        <div className="sshline">
          <span className="muted">SSH</span> <code data-copy={sb.urls.ssh}>{sb.urls.ssh}</code> <CopyButton text={sb.urls.ssh} label="Copy SSH command" />
        </div>
      )}
      <div className="tabs" role="tablist" aria-label="Sandbox tools and panels">
        {tabs.map((t) => (
          <button
            key={t.id}
            type="button"
            role="tab"
            id={`tab-${t.id}`}
            aria-selected={tab === t.id}
            aria-controls="tabpanel"
            ref={tab === t.id ? (el) => el?.scrollIntoView({ block: 'nearest', inline: 'nearest' }) : undefined}
            className={tab === t.id ? 'tab tab-active' : 'tab'}
            onClick={() => setQuery({ tab: t.id === 'overview' ? null : t.id, split: split === t.id ? null : split ?? null })}
          >
            {t.label}
          </button>
        ))}
      </div>
      {tabs.find((t) => t.id === tab)?.tool && own && running && (
        <div className="splitbar">
          <label>
            Side by side with{' '}
            <select value={split ?? ''} onChange={(e) => setQuery({ split: e.target.value || null })}>
              <option value="">nothing</option>
              {tabs
                .filter((t) => t.tool && t.id !== tab)
                .map((t) => (
                  <option key={t.id} value={t.id}>
                    {t.label}
                  </option>
                ))}
            </select>
          </label>
        </div>
      )}
      <div id="tabpanel" role="tabpanel" aria-labelledby={`tab-${tab}`} className={split ? 'panel split' : 'panel'}>
        <Suspense fallback={<p className="muted">Loading…</p>}>
          <Panel sb={sb} tab={tab} own={own} />
          {split && <Panel sb={sb} tab={split} own={own} />}
        </Suspense>
      </div>
      <ConfirmDialog confirm={confirm} onDone={() => setConfirm(null)} />
    </section>
  );
}

function StartButton({ sb }: { sb: Sandbox }) {
  const [busy, setBusy] = useState(false);
  return (
    <button
      type="button"
      className="btn btn-primary"
      disabled={busy}
      onClick={async () => {
        setBusy(true);
        try {
          await startSandbox(sb.id);
          toast(`Started ${label(sb)}`);
        } catch (e) {
          toast(`Could not start: ${e instanceof Error ? e.message : e}`, 'bad');
        } finally {
          setBusy(false);
        }
      }}
    >
      {busy ? 'Starting…' : 'Start'}
    </button>
  );
}

function Panel({ sb, tab, own }: { sb: Sandbox; tab: Tab; own: boolean }): ReactNode {
  if (tab === 'overview') return <Overview sb={sb} own={own} />;
  if (!own) {
    return (
      <p className="notice">
        Only the sandbox&apos;s owner gets inside it (terminal, files, git, services, tools): an admin role manages sandboxes, it is not a key to other
        users&apos; code.
      </p>
    );
  }
  if (sb.status !== 'running') {
    return (
      <p className="notice">
        The sandbox is {sb.status}. {busyStatuses.has(sb.status) ? 'This panel opens once it is running.' : 'Start it to use this panel.'}
      </p>
    );
  }
  switch (tab) {
    case 'terminal':
      return <Terminals id={sb.id} />;
    case 'vscode':
      return <ToolFrame title="VS Code" url={sb.urls?.vscode} />;
    case 'opencode':
      return <ToolFrame title="OpenCode" url={sb.urls?.opencode} />;
    case 'browser':
      return <ToolFrame title="Browser" url={sb.urls?.browser} />;
    case 'services':
      return <Services id={sb.id} />;
    case 'dev':
      return <DevCommands id={sb.id} />;
    case 'git':
      return <Git id={sb.id} />;
    case 'files':
      return <Files id={sb.id} />;
  }
  return null;
}
