import { useId, useState, type ReactNode } from 'react';
import { api, unwrap, type Schemas } from '../api/client';
import { bytes, date, pct } from '../format';
import { seedFixes, useStore } from '../state';
import { Badge, ConfirmDialog, ErrorBanner, Field, Meter, toast, useAsync, type Confirmation } from '../ui';

export function SystemPage() {
  const { tick, systemTick } = useStore();
  // Host numbers are re-read when a sandbox changes or the reconciler fixes
  // something (both come over the event stream), or on request.
  const stats = useAsync(() => unwrap(api.GET('/api/system/stats')), [tick, systemTick]);
  const storage = useAsync(() => unwrap(api.GET('/api/system/storage')), [tick, systemTick]);
  const network = useAsync(() => unwrap(api.GET('/api/system/network')), [tick, systemTick]);
  const health = useAsync(() => unwrap(api.GET('/health')), []);
  const s = stats.data;
  return (
    <section aria-labelledby="system-title" className="stack">
      <div className="page-head">
        <h1 id="system-title">System</h1>
        {health.data && <span className="muted">Atelier {health.data.version}</span>}
        <button
          type="button"
          className="btn btn-sm"
          onClick={() => void Promise.all([stats.reload(), storage.reload(), network.reload(), health.reload()])}
        >
          Refresh
        </button>
      </div>
      <ErrorBanner error={stats.error || health.error} />
      <div className="grid">
        <Card title="Host">
          {s ? (
            <div className="meters">
              <Meter label="CPU" value={s.cpuPercent} detail={`${pct(s.cpuPercent)} of ${s.cpuCount} CPUs · load ${s.load1.toFixed(2)}`} />
              <Meter label="Memory" value={s.memoryPercent} detail={`${bytes(s.memoryUsedBytes)} of ${bytes(s.memoryTotalBytes)}`} />
              <Meter label="Disk" value={s.diskPercent} detail={`${bytes(s.diskUsedBytes)} of ${bytes(s.diskTotalBytes)} (${s.diskPath})`} />
            </div>
          ) : (
            <p className="muted">Loading…</p>
          )}
        </Card>
        <Card title="Sandboxes">
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
        </Card>
        <StorageCard data={storage.data} error={storage.error} />
        <NetworkCard data={network.data} error={network.error} />
        <Card title="Manager">
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
        </Card>
        <Cleanup />
      </div>
      <Reconciler />
      <NpmCache />
    </section>
  );
}

/** A card named by its heading, so it is a landmark a screen reader (and a test) finds by name. */
function Card({ title, children, wide }: { title: string; children: ReactNode; wide?: boolean }) {
  const id = useId();
  return (
    <section className={wide ? 'card stack' : 'card'} aria-labelledby={id}>
      <h2 id={id}>{title}</h2>
      {children}
    </section>
  );
}

function ratio(n: number): string {
  return `${n.toFixed(2)}×`;
}

function StorageCard({ data: d, error }: { data?: Schemas['StorageBody']; error: unknown }) {
  return (
    <Card title="Storage pool">
      <ErrorBanner error={error} />
      {d ? (
        <div className="stack">
          <div className="meters">
            <Meter label="Pool fill" value={d.physicalBytes ? (100 * d.usedBytes) / d.physicalBytes : 0} detail={`${bytes(d.usedBytes)} of ${bytes(d.physicalBytes)}`} />
          </div>
          <dl className="facts">
            <div>
              <dt>New volumes</dt>
              <dd>{d.driver || 'none'}</dd>
            </div>
            <div>
              <dt>Allocated</dt>
              <dd>
                {bytes(d.allocatedBytes)} to {d.sandboxes} sandbox{d.sandboxes === 1 ? '' : 'es'}
              </dd>
            </div>
            <div>
              <dt>Overcommit</dt>
              <dd className={d.overcommitRatio > 1 ? 'error-text' : ''}>{ratio(d.overcommitRatio)} of physical</dd>
            </div>
          </dl>
          {(d.pools ?? []).map((p) => (
            <dl className="facts" key={p.driver} aria-label={`Pool ${p.driver}`}>
              <div>
                <dt>{p.driver} pool</dt>
                <dd>
                  {bytes(p.usedBytes)} of {bytes(p.totalBytes)} · data {pct(p.dataPercent)} · metadata {pct(p.metadataPercent)}
                </dd>
              </div>
              <div>
                <dt>Volumes</dt>
                <dd>
                  {p.volumes}, {bytes(p.virtualBytes)} virtual · {ratio(p.overcommitRatio)}
                  {p.overcommitMax ? ` (limit ${ratio(p.overcommitMax)})` : ''}
                </dd>
              </div>
            </dl>
          ))}
          {d.error && <p className="error-text">{d.error}</p>}
        </div>
      ) : (
        !error && <p className="muted">Loading…</p>
      )}
    </Card>
  );
}

const firewallWords: Record<string, string> = {
  ok: 'ok: every expected rule present',
  degraded: 'degraded: rules missing',
  missing: 'missing: run atelier network setup',
  mock: 'none in mock mode',
  checking: 'NetworkPolicies: checking that the cluster enforces them',
  enforced: 'NetworkPolicies: enforced by the cluster',
  'not-enforced': 'NetworkPolicies: NOT enforced by the cluster',
  unknown: 'NetworkPolicies: enforcement unknown (the check failed)',
};

function NetworkCard({ data: d, error }: { data?: Schemas['NetworkBody']; error: unknown }) {
  const linkWord = d?.linkKind === 'veth' ? 'Veths' : 'Taps';
  return (
    <Card title="Network">
      <ErrorBanner error={error} />
      {d ? (
        <dl className="facts">
          <div>
            <dt>Bridge</dt>
            <dd>
              {d.bridge} · {d.linkKind === 'mock' ? 'not created in mock mode' : !d.bridgePresent ? 'absent' : d.bridgeUp ? 'up' : 'down'}
            </dd>
          </div>
          <div>
            <dt>Subnet</dt>
            <dd className="mono">
              {d.subnet} via {d.gateway}
            </dd>
          </div>
          {d.egress && (
            <div>
              <dt>Egress</dt>
              <dd>{d.egress}</dd>
            </div>
          )}
          <div>
            <dt>Firewall</dt>
            <dd>
              <Badge tone={d.firewall.state === 'ok' || d.firewall.state === 'enforced' ? 'ok' : d.firewall.state === 'mock' || d.firewall.state === 'checking' ? 'idle' : 'bad'}>
                {firewallWords[d.firewall.state]}
              </Badge>
              {d.firewall.rules > 0 && ` ${d.firewall.rules} rules`}
              {(d.firewall.missing ?? []).length > 0 && <span className="error-text"> missing: {(d.firewall.missing ?? []).join(', ')}</span>}
              {d.firewall.error && <span className="error-text"> {d.firewall.error}</span>}
            </dd>
          </div>
          <div>
            <dt>{linkWord}</dt>
            <dd>
              {d.links} ({d.linksUp} up)
            </dd>
          </div>
          <div>
            <dt>Leases</dt>
            <dd>{d.leases}</dd>
          </div>
          {Object.entries(d.firewall.drops).some(([, n]) => n > 0) && (
            <div>
              <dt>Dropped</dt>
              <dd>
                {Object.entries(d.firewall.drops)
                  .filter(([, n]) => n > 0)
                  .map(([k, n]) => `${k} ${n}`)
                  .join(' · ')}
              </dd>
            </div>
          )}
          {d.error && (
            <div>
              <dt>Error</dt>
              <dd className="error-text">{d.error}</dd>
            </div>
          )}
        </dl>
      ) : (
        !error && <p className="muted">Loading…</p>
      )}
    </Card>
  );
}

function FixList({ fixes, label }: { fixes: Schemas['Fix'][]; label: string }) {
  return (
    <ul className="fixes" aria-label={label}>
      {fixes.map((f, i) => (
        <li key={`${f.at}-${f.sandboxId}-${f.kind}-${i}`}>
          <span className="mono">{f.sandboxId}</span> <Badge tone="busy">{f.kind}</Badge> {f.detail}
          <span className="muted"> · {date(f.at)}</span>
        </li>
      ))}
    </ul>
  );
}

function Cleanup() {
  const [report, setReport] = useState<Schemas['Report'] | null>(null);
  const [confirm, setConfirm] = useState<Confirmation | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const ask = async () => {
    setBusy(true);
    setError(null);
    try {
      // A dry run first: the dialog names what will be cleaned.
      const preview = await unwrap(api.GET('/api/system/cleanup'));
      const todo = preview.fixes ?? [];
      const n = todo.length;
      setConfirm({
        title: 'Run cleanup?',
        body: n ? (
          <>
            <p>
              {n} thing{n === 1 ? '' : 's'} to clean up. Running sandboxes are not touched.
            </p>
            <FixList fixes={todo} label="To be cleaned" />
          </>
        ) : (
          <p>Nothing to clean up right now. Run a pass anyway?</p>
        ),
        action: 'Run cleanup',
        run: async () => {
          setReport(await unwrap(api.POST('/api/system/cleanup')));
          toast('Cleanup done');
        },
      });
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Card title="Cleanup">
      <p>Runs the reconciler now: settles sandboxes a crash left mid-operation and removes runtimes, links, volumes and leases that belong to no sandbox.</p>
      <ErrorBanner error={error} />
      <button type="button" className="btn" disabled={busy} onClick={() => void ask()}>
        {busy ? 'Checking…' : 'Run cleanup…'}
      </button>
      {report && (
        <div role="status" aria-label="Cleanup result">
          <p>{report.fixes?.length ? `Cleanup fixed ${report.fixes.length}:` : 'Cleanup found nothing to fix.'}</p>
          {report.fixes?.length ? <FixList fixes={report.fixes} label="Cleaned" /> : null}
        </div>
      )}
      <ConfirmDialog confirm={confirm} onDone={() => setConfirm(null)} />
    </Card>
  );
}

function Reconciler() {
  const { fixes } = useStore();
  const st = useAsync(async () => {
    const r = await unwrap(api.GET('/api/system/reconciler'));
    seedFixes(r.fixes ?? []);
    return r;
  }, []);
  const last = st.data?.lastPass && !st.data.lastPass.startsWith('0001-') ? st.data.lastPass : null;
  return (
    <Card title="Reconciler fixes" wide>
      <ErrorBanner error={st.error} />
      <p className="muted">
        The reconciler compares the store with the host at start-up, every 30 s and on cleanup. {st.data && `${st.data.passes} passes; the last ${last ? date(last) : 'not yet'}.`}
      </p>
      {fixes && fixes.length > 0 ? <FixList fixes={fixes} label="Recent fixes" /> : fixes && <p>No fixes since the manager started.</p>}
    </Card>
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
