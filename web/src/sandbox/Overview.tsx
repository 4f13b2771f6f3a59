import { api, unwrap, type Sandbox } from '../api/client';
import { agent } from '../api/agent';
import { bytes, date, mib } from '../format';
import { Phases } from '../pages/Sandboxes';
import { useStore } from '../state';
import { ErrorBanner, Meter, useAsync, useVisibleInterval } from '../ui';

export function Overview({ sb, own }: { sb: Sandbox; own: boolean }) {
  const running = sb.status === 'running';
  return (
    <div className="overview">
      <div className="card">
        <h2>Details</h2>
        <dl className="facts">
          <div>
            <dt>Id</dt>
            <dd className="mono">{sb.id}</dd>
          </div>
          <div>
            <dt>Image</dt>
            <dd>{sb.image}</dd>
          </div>
          <div>
            <dt>Resources</dt>
            <dd>
              {sb.vcpus} vCPU · {mib(sb.memoryMb)}
              {sb.diskBytes ? ` · ${bytes(sb.diskBytes)} disk` : ''}
            </dd>
          </div>
          {sb.ipAddress && (
            <div>
              <dt>Address</dt>
              <dd className="mono">{sb.ipAddress}</dd>
            </div>
          )}
          <div>
            <dt>Created</dt>
            <dd>{date(sb.createdAt)}</dd>
          </div>
        </dl>
        {sb.timings && (
          <>
            <h3>Last boot</h3>
            <Phases sb={sb} />
          </>
        )}
      </div>
      {own && running && <Resources id={sb.id} />}
      <Hosts sb={sb} />
    </div>
  );
}

// The agent has no event stream: while this panel is on screen its numbers
// are refreshed every 5 s (the dashboard's one periodic read besides logs
// being followed).
function Resources({ id }: { id: string }) {
  const m = useAsync(() => agent.metrics(id), [id]);
  useVisibleInterval(() => void m.reload(), 5000);
  const d = m.data;
  return (
    <div className="card">
      <h2>Resource use</h2>
      <ErrorBanner error={m.error} />
      {d ? (
        <div className="meters">
          <Meter label="CPU" value={d.cpuPercent} detail={`${Math.round(d.cpuPercent)}% · load ${d.load1.toFixed(2)}`} />
          <Meter label="Memory" value={d.memory.total ? (100 * d.memory.used) / d.memory.total : 0} detail={`${bytes(d.memory.used)} of ${bytes(d.memory.total)}`} />
          <Meter label="Disk" value={d.disk.total ? (100 * d.disk.used) / d.disk.total : 0} detail={`${bytes(d.disk.used)} of ${bytes(d.disk.total)}`} />
          <p className="muted">{d.processes} processes</p>
        </div>
      ) : (
        !m.error && <p className="muted">Reading the agent…</p>
      )}
    </div>
  );
}

function Hosts({ sb }: { sb: Sandbox }) {
  const { tick } = useStore();
  const r = useAsync(async () => (await unwrap(api.GET('/api/sandboxes/{id}/routes', { params: { path: { id: sb.id } } }))).routes ?? [], [sb.id, tick]);
  const routes = r.data ?? [];
  return (
    <div className="card">
      <h2>Addresses</h2>
      <ErrorBanner error={r.error} />
      {routes.length === 0 ? (
        <p className="muted">{r.loading ? 'Loading…' : 'No hosts yet: they appear once the sandbox has run.'}</p>
      ) : (
        <ul className="links">
          {routes.map((rt) => (
            <li key={rt.host}>
              <a href={rt.url} target="_blank" rel="noopener noreferrer">
                {rt.url}
              </a>{' '}
              <span className="muted">
                {rt.kind === 'dev' ? `dev ${rt.name}${rt.alias ? ` (${rt.alias})` : ''} → port ${rt.port}` : rt.kind}
                {rt.public ? ' · public' : ''}
              </span>
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}
