import { useState } from 'react';
import { api, unwrap, type Schemas } from '../api/client';
import { bytes, pct } from '../format';
import { useStore } from '../state';
import { ConfirmDialog, ErrorBanner, Field, Meter, toast, useAsync, type Confirmation } from '../ui';

export function SystemPage() {
  const { tick } = useStore();
  // Host numbers are re-read when a sandbox changes (the event stream) or on request.
  const stats = useAsync(() => unwrap(api.GET('/api/system/stats')), [tick]);
  const health = useAsync(() => unwrap(api.GET('/health')), []);
  const [report, setReport] = useState<Schemas['Report'] | null>(null);
  const [confirm, setConfirm] = useState<Confirmation | null>(null);
  const s = stats.data;
  return (
    <section aria-labelledby="system-title" className="stack">
      <div className="page-head">
        <h1 id="system-title">System</h1>
        <button type="button" className="btn btn-sm" onClick={() => void Promise.all([stats.reload(), health.reload()])}>
          Refresh
        </button>
      </div>
      <ErrorBanner error={stats.error || health.error} />
      <div className="grid">
        <div className="card">
          <h2>Host</h2>
          {s ? (
            <div className="meters">
              <Meter label="CPU" value={s.cpuPercent} detail={`${pct(s.cpuPercent)} of ${s.cpuCount} CPUs · load ${s.load1.toFixed(2)}`} />
              <Meter label="Memory" value={s.memoryPercent} detail={`${bytes(s.memoryUsedBytes)} of ${bytes(s.memoryTotalBytes)}`} />
              <Meter label="Disk" value={s.diskPercent} detail={`${bytes(s.diskUsedBytes)} of ${bytes(s.diskTotalBytes)} (${s.diskPath})`} />
            </div>
          ) : (
            <p className="muted">Loading…</p>
          )}
        </div>
        <div className="card">
          <h2>Sandboxes</h2>
          {s && (
            <>
              <Meter label="Active" value={s.maxSandboxes ? (100 * s.activeSandboxes) / s.maxSandboxes : 0} detail={`${s.activeSandboxes} of ${s.maxSandboxes}`} />
              <dl className="facts">
                {Object.entries(s.byStatus)
                  .filter(([, n]) => n > 0)
                  .map(([k, n]) => (
                    <div key={k}>
                      <dt>{k}</dt>
                      <dd>{n}</dd>
                    </div>
                  ))}
              </dl>
            </>
          )}
        </div>
        <div className="card">
          <h2>Manager</h2>
          {health.data && (
            <dl className="facts">
              <div>
                <dt>Version</dt>
                <dd>{health.data.version}</dd>
              </div>
              <div>
                <dt>Mode</dt>
                <dd>{health.data.mode}</dd>
              </div>
              <div>
                <dt>Up</dt>
                <dd>{Math.round(health.data.uptimeSeconds / 60)} min</dd>
              </div>
              {Object.entries(health.data.checks).map(([k, v]) => (
                <div key={k}>
                  <dt>{k}</dt>
                  <dd className={v === 'ok' ? '' : 'error-text'}>{v}</dd>
                </div>
              ))}
            </dl>
          )}
        </div>
        <div className="card">
          <h2>Cleanup</h2>
          <p>Runs the reconciler now: settles sandboxes a crash left mid-operation and removes runtimes, links, volumes and leases that belong to no sandbox.</p>
          <button
            type="button"
            className="btn"
            onClick={() =>
              setConfirm({
                title: 'Run cleanup?',
                body: <p>Remove every leftover resource that belongs to no sandbox? Running sandboxes are not touched.</p>,
                action: 'Run cleanup',
                run: async () => {
                  setReport(await unwrap(api.POST('/api/system/cleanup')));
                  toast('Cleanup done');
                },
              })
            }
          >
            Run cleanup
          </button>
          {report && (
            <dl className="facts" aria-label="Cleanup report">
              {Object.entries(report).map(([k, v]) => (
                <div key={k}>
                  <dt>{k}</dt>
                  <dd>{v}</dd>
                </div>
              ))}
            </dl>
          )}
        </div>
      </div>
      <NpmCache />
      <ConfirmDialog confirm={confirm} onDone={() => setConfirm(null)} />
    </section>
  );
}

function NpmCache() {
  const st = useAsync(() => unwrap(api.GET('/api/registry')), []);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [days, setDays] = useState('');
  const [confirm, setConfirm] = useState<Confirmation | null>(null);
  const d = st.data;
  const act = async (fn: () => Promise<unknown>, done: string) => {
    setBusy(true);
    setError(null);
    try {
      await fn();
      toast(done);
      await st.reload();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <div className="card stack">
      <h2>npm cache</h2>
      <ErrorBanner error={st.error || error} />
      {d && (
        <>
          <dl className="facts">
            <div>
              <dt>State</dt>
              <dd>{d.enabled ? (d.online ? 'enabled, online' : 'enabled, not answering') : 'disabled'}</dd>
            </div>
            <div>
              <dt>Packages</dt>
              <dd>{d.packageCount}</dd>
            </div>
            <div>
              <dt>Disk</dt>
              <dd>{bytes(d.diskUsedBytes)}</dd>
            </div>
            <div>
              <dt>Eviction</dt>
              <dd>after {d.evictionDays} days unused</dd>
            </div>
            <div>
              <dt>Uplink</dt>
              <dd>
                {d.uplink.url} {d.uplink.healthy ? '(healthy)' : '(unreachable)'}
              </dd>
            </div>
            <div>
              <dt>Guests reach it at</dt>
              <dd className="mono">{d.url}</dd>
            </div>
          </dl>
          <div className="actions">
            {d.enabled ? (
              <button type="button" className="btn" disabled={busy} onClick={() => void act(() => unwrap(api.POST('/api/registry/disable')), 'npm cache disabled')}>
                Disable
              </button>
            ) : (
              <button type="button" className="btn btn-primary" disabled={busy} onClick={() => void act(() => unwrap(api.POST('/api/registry/enable')), 'npm cache enabled')}>
                Enable
              </button>
            )}
            <button
              type="button"
              className="btn btn-danger-outline"
              disabled={busy}
              onClick={() =>
                setConfirm({
                  title: 'Purge the npm cache?',
                  body: <p>Delete every cached package? The next installs fetch them from the uplink again.</p>,
                  action: 'Purge',
                  danger: true,
                  run: () => act(() => unwrap(api.POST('/api/registry/purge')), 'npm cache purged'),
                })
              }
            >
              Purge
            </button>
          </div>
          <form
            className="row"
            onSubmit={(e) => {
              e.preventDefault();
              void act(() => unwrap(api.PUT('/api/registry/settings', { body: { evictionDays: Number(days) } })), 'Eviction period saved');
            }}
          >
            <Field label="Eviction days">
              {(id) => <input id={id} type="number" min={1} max={365} value={days || String(d.evictionDays)} onChange={(e) => setDays(e.target.value)} />}
            </Field>
            <button type="submit" className="btn" disabled={busy}>
              Save
            </button>
          </form>
        </>
      )}
      <ConfirmDialog confirm={confirm} onDone={() => setConfirm(null)} />
    </div>
  );
}
