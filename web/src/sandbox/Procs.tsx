import { useEffect, useRef, useState } from 'react';
import { api, unwrap } from '../api/client';
import { agent, type ProcessStatus, type ProcKind } from '../api/agent';
import { useStore } from '../state';
import { Badge, Dialog, Empty, ErrorBanner, Field, toast, useAsync, useVisibleInterval } from '../ui';

function stateTone(p: ProcessStatus): 'ok' | 'busy' | 'idle' | 'bad' {
  if (p.state === 'running') return 'ok';
  if (p.state === 'failed' || (p.state === 'exited' && p.exitCode)) return 'bad';
  if (p.state === 'backoff' || p.state === 'stopping') return 'busy';
  return 'idle';
}

function ProcState({ p }: { p: ProcessStatus }) {
  return (
    <Badge tone={stateTone(p)}>
      {p.state}
      {p.state === 'exited' && p.exitCode !== undefined ? ` (${p.exitCode})` : ''}
    </Badge>
  );
}

export function Services({ id }: { id: string }) {
  const list = useAsync(() => agent.procs(id, 'services'), [id]);
  const [logs, setLogs] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const act = async (name: string, action: 'restart' | 'stop' | 'start') => {
    setError(null);
    try {
      await agent.procAction(id, 'services', name, action);
      toast(`${action === 'stop' ? 'Stopped' : action === 'start' ? 'Started' : 'Restarted'} ${name}`);
    } catch (e) {
      setError(e);
    }
    await list.reload();
  };
  return (
    <div className="stack">
      <div className="panel-head">
        <h2>Services</h2>
        <button type="button" className="btn btn-sm" onClick={() => void list.reload()}>
          Refresh
        </button>
      </div>
      <ErrorBanner error={list.error || error} onDismiss={error ? () => setError(null) : undefined} />
      {list.data && list.data.length === 0 && <Empty title="No services">The image starts none in this sandbox.</Empty>}
      {list.data && list.data.length > 0 && (
        <ul className="procs" aria-label="Services">
          {list.data.map((p) => (
            <li key={p.name} className="proc">
              <div className="proc-head">
                <strong>{p.name}</strong> <ProcState p={p} />
                {p.port ? <span className="muted">port {p.port}</span> : null}
                {p.restarts ? <span className="muted">{p.restarts} restarts</span> : null}
              </div>
              {p.lastError && <div className="error-text">{p.lastError}</div>}
              <div className="actions">
                <button type="button" className="btn btn-sm" onClick={() => void act(p.name, 'restart')} aria-label={`Restart ${p.name}`}>
                  Restart
                </button>
                {p.running ? (
                  <button type="button" className="btn btn-sm" onClick={() => void act(p.name, 'stop')} aria-label={`Stop ${p.name}`}>
                    Stop
                  </button>
                ) : null}
                <button type="button" className="btn btn-sm" onClick={() => setLogs(logs === p.name ? null : p.name)} aria-expanded={logs === p.name} aria-label={`Logs of ${p.name}`}>
                  Logs
                </button>
              </div>
              {logs === p.name && <LogView id={id} kind="services" name={p.name} />}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

export function DevCommands({ id }: { id: string }) {
  const list = useAsync(() => agent.procs(id, 'dev'), [id]);
  const { tick } = useStore();
  const routes = useAsync(async () => (await unwrap(api.GET('/api/sandboxes/{id}/routes', { params: { path: { id } } }))).routes ?? [], [id, tick]);
  const [logs, setLogs] = useState<string | null>(null);
  const [expose, setExpose] = useState<ProcessStatus | null>(null);
  const [error, setError] = useState<unknown>(null);
  const reload = async () => {
    await Promise.all([list.reload(), routes.reload()]);
  };
  const act = async (fn: () => Promise<unknown>, done: string) => {
    setError(null);
    try {
      await fn();
      toast(done);
    } catch (e) {
      setError(e);
    }
    await reload();
  };
  return (
    <div className="stack">
      <div className="panel-head">
        <h2>Dev commands</h2>
        <button type="button" className="btn btn-sm" onClick={() => void reload()}>
          Refresh
        </button>
      </div>
      <ErrorBanner error={list.error || error} onDismiss={error ? () => setError(null) : undefined} />
      <StartDev id={id} onStarted={(n) => { setLogs(n); void reload(); }} />
      {list.data && list.data.length === 0 && <Empty title="No dev commands running">Start one above: a dev server, a watcher, a build.</Empty>}
      {list.data && list.data.length > 0 && (
        <ul className="procs" aria-label="Dev commands">
          {list.data.map((p) => {
            const urls = (routes.data ?? []).filter((r) => r.kind === 'dev' && r.name === p.name);
            return (
              <li key={p.name} className="proc">
                <div className="proc-head">
                  <strong>{p.name}</strong> <ProcState p={p} />
                  {p.port ? <span className="muted">port {p.port}</span> : null}
                  <code className="muted">{p.shell ?? (p.argv ?? []).join(' ')}</code>
                </div>
                {p.lastError && <div className="error-text">{p.lastError}</div>}
                {urls.length > 0 && (
                  <ul className="links" aria-label={`Addresses of ${p.name}`}>
                    {urls.map((r) => (
                      <li key={r.host}>
                        <a href={r.url} target="_blank" rel="noopener noreferrer">
                          {r.url}
                        </a>{' '}
                        <span className="muted">
                          {r.alias ? `alias ${r.alias}, ` : ''}port {r.port}
                          {r.public ? ', public' : ', owner only'}
                        </span>
                      </li>
                    ))}
                  </ul>
                )}
                <div className="actions">
                  {p.running ? (
                    <button type="button" className="btn btn-sm" onClick={() => void act(() => agent.procAction(id, 'dev', p.name, 'stop'), `Stopped ${p.name}`)} aria-label={`Stop ${p.name}`}>
                      Stop
                    </button>
                  ) : null}
                  <button type="button" className="btn btn-sm" onClick={() => void act(() => agent.procAction(id, 'dev', p.name, 'restart'), `Restarted ${p.name}`)} aria-label={`Restart ${p.name}`}>
                    Restart
                  </button>
                  <button type="button" className="btn btn-sm" onClick={() => setExpose(p)} aria-label={urls.length ? `Change exposure of ${p.name}` : `Expose ${p.name}`}>
                    {urls.length ? 'Change exposure' : 'Expose'}
                  </button>
                  {urls.length > 0 && (
                    <button
                      type="button"
                      className="btn btn-sm"
                      aria-label={`Unexpose ${p.name}`}
                      onClick={() =>
                        void act(() => unwrap(api.DELETE('/api/sandboxes/{id}/dev/{name}/expose', { params: { path: { id, name: p.name } } })), `${p.name} is no longer exposed`)
                      }
                    >
                      Unexpose
                    </button>
                  )}
                  <button type="button" className="btn btn-sm" onClick={() => setLogs(logs === p.name ? null : p.name)} aria-expanded={logs === p.name} aria-label={`Logs of ${p.name}`}>
                    Logs
                  </button>
                </div>
                {logs === p.name && <LogView id={id} kind="dev" name={p.name} />}
              </li>
            );
          })}
        </ul>
      )}
      <ExposeDialog id={id} proc={expose} onClose={() => setExpose(null)} onDone={() => void reload()} />
    </div>
  );
}

function StartDev({ id, onStarted }: { id: string; onStarted: (name: string) => void }) {
  const [name, setName] = useState('web');
  const [cmd, setCmd] = useState('');
  const [port, setPort] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  return (
    <form
      className="card stack"
      aria-label="Start a dev command"
      onSubmit={async (e) => {
        e.preventDefault();
        setBusy(true);
        setError(null);
        try {
          await agent.startDev(id, name.trim(), { shell: cmd, port: port ? Number(port) : undefined });
          toast(`Started ${name}`);
          onStarted(name.trim());
        } catch (err) {
          setError(err);
        } finally {
          setBusy(false);
        }
      }}
    >
      <h3>Start a dev command</h3>
      <div className="row">
        <Field label="Name">{(fid) => <input id={fid} value={name} onChange={(e) => setName(e.target.value)} required pattern="[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?" />}</Field>
        <Field label="Command">{(fid) => <input id={fid} className="grow" value={cmd} onChange={(e) => setCmd(e.target.value)} required placeholder="npm run dev" />}</Field>
        <Field label="Port">{(fid) => <input id={fid} type="number" min={1} max={65535} value={port} onChange={(e) => setPort(e.target.value)} placeholder="5173" />}</Field>
      </div>
      <ErrorBanner error={error} />
      <div>
        <button type="submit" className="btn btn-primary" disabled={busy}>
          {busy ? 'Starting…' : 'Start'}
        </button>
      </div>
    </form>
  );
}

function ExposeDialog({ id, proc, onClose, onDone }: { id: string; proc: ProcessStatus | null; onClose: () => void; onDone: () => void }) {
  const [port, setPort] = useState('');
  const [def, setDef] = useState(false);
  const [pub, setPub] = useState(false);
  const [aliases, setAliases] = useState('');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    setPort(proc?.port ? String(proc.port) : '');
    setError(null);
  }, [proc]);
  return (
    <Dialog open={!!proc} title={`Expose ${proc?.name ?? ''}`} onClose={onClose}>
      {proc && (
        <form
          className="stack"
          onSubmit={async (e) => {
            e.preventDefault();
            setBusy(true);
            setError(null);
            try {
              const list = aliases
                .split(/[\s,]+/)
                .filter(Boolean)
                .map((a) => {
                  const [alias, p] = a.split(':');
                  return { alias, port: Number(p) };
                });
              const r = await unwrap(
                api.POST('/api/sandboxes/{id}/dev/{name}/expose', {
                  params: { path: { id, name: proc.name } },
                  body: { port: port ? Number(port) : undefined, default: def, public: pub, aliases: list.length ? list : undefined },
                }),
              );
              toast(`${proc.name} exposed at ${(r.routes ?? []).map((x) => x.url).join(', ')}`);
              onDone();
              onClose();
            } catch (err) {
              setError(err);
            } finally {
              setBusy(false);
            }
          }}
        >
          <Field label="Port" hint="The port the command serves; empty for the port it was started with.">
            {(fid) => <input id={fid} type="number" min={1} max={65535} value={port} onChange={(e) => setPort(e.target.value)} />}
          </Field>
          <Field label="Aliases" hint="Extra hosts for other ports, as alias:port, e.g. api:8000.">
            {(fid) => <input id={fid} value={aliases} onChange={(e) => setAliases(e.target.value)} placeholder="api:8000" />}
          </Field>
          <label className="check">
            <input type="checkbox" checked={def} onChange={(e) => setDef(e.target.checked)} /> Also the sandbox&apos;s default dev host (dev-{'{id}'})
          </label>
          <label className="check">
            <input type="checkbox" checked={pub} onChange={(e) => setPub(e.target.checked)} /> Public: anyone with the URL, no login
          </label>
          <ErrorBanner error={error} />
          <div className="dialog-actions">
            <button type="button" className="btn" onClick={onClose}>
              Cancel
            </button>
            <button type="submit" className="btn btn-primary" disabled={busy}>
              Expose
            </button>
          </div>
        </form>
      )}
    </Dialog>
  );
}

/** A process's log, tailed while open: the agent has no log stream, so new bytes are read by offset every second. */
export function LogView({ id, kind, name }: { id: string; kind: ProcKind; name: string }) {
  const [text, setText] = useState('');
  const [error, setError] = useState<unknown>(null);
  const [follow, setFollow] = useState(true);
  const offset = useRef(-1);
  const pre = useRef<HTMLPreElement>(null);
  const busy = useRef(false);
  const read = async () => {
    if (busy.current) return;
    busy.current = true;
    try {
      if (offset.current < 0) {
        // First read: the last 64 KiB.
        const head = await agent.logs(id, kind, name, 0, 1);
        offset.current = Math.max(0, head.size - 65536);
      }
      for (let i = 0; i < 16; i++) {
        const c = await agent.logs(id, kind, name, offset.current);
        if (c.content) setText((t) => (t + c.content).slice(-200000));
        const more = c.nextOffset < c.size;
        offset.current = c.nextOffset;
        if (!more) break;
      }
      setError(null);
    } catch (e) {
      setError(e);
    } finally {
      busy.current = false;
    }
  };
  useEffect(() => {
    offset.current = -1;
    setText('');
    void read();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [id, kind, name]);
  useVisibleInterval(() => void read(), 1000, follow);
  useEffect(() => {
    if (follow && pre.current) pre.current.scrollTop = pre.current.scrollHeight;
  }, [text, follow]);
  return (
    <div className="logview">
      <div className="logview-bar">
        <label className="check">
          <input type="checkbox" checked={follow} onChange={(e) => setFollow(e.target.checked)} /> Follow
        </label>
      </div>
      <ErrorBanner error={error} />
      <pre ref={pre} className="log" tabIndex={0} aria-label={`Log of ${name}`}>
        {text || 'No output yet.'}
      </pre>
    </div>
  );
}
