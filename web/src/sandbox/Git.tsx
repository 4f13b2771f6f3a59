import { useState } from 'react';
import { agent, type GitRepoDiff, type GitRepoStatus } from '../api/agent';
import { Badge, Empty, ErrorBanner, Field, toast, useAsync } from '../ui';
import { homeOf } from './home';

// Repositories are found under the user's home (three levels deep), then
// each gets its status and diff from the agent.
async function discover(id: string): Promise<{ status: GitRepoStatus[]; diff: GitRepoDiff[] }> {
  const home = await homeOf(id);
  const r = await agent.exec(id, `find "${home.replace(/"/g, '')}" -maxdepth 4 -name .git -not -path '*/node_modules/*' 2>/dev/null | head -50`);
  const paths = r.stdout
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .map((p) => p.replace(/\/\.git$/, ''));
  if (!paths.length) return { status: [], diff: [] };
  const [status, diff] = await Promise.all([agent.gitStatus(id, paths), agent.gitDiff(id, paths)]);
  return { status, diff };
}

export function Git({ id }: { id: string }) {
  const repos = useAsync(() => discover(id), [id]);
  return (
    <div className="stack">
      <div className="panel-head">
        <h2>Git</h2>
        <button type="button" className="btn btn-sm" onClick={() => void repos.reload()}>
          Refresh
        </button>
      </div>
      <ErrorBanner error={repos.error} />
      {repos.loading && !repos.data && <p className="muted">Looking for repositories…</p>}
      {repos.data && repos.data.status.length === 0 && <Empty title="No repositories">No git repository under your home directory yet. Clone one in the terminal.</Empty>}
      {repos.data?.status.map((st) => (
        <Repo key={st.path} id={id} st={st} diff={repos.data!.diff.find((d) => d.path === st.path)} onChange={() => void repos.reload()} />
      ))}
    </div>
  );
}

function Repo({ id, st, diff, onChange }: { id: string; st: GitRepoStatus; diff?: GitRepoDiff; onChange: () => void }) {
  const [msg, setMsg] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [output, setOutput] = useState('');
  const run = async (fn: () => Promise<unknown>) => {
    setBusy(true);
    setError(null);
    try {
      await fn();
      onChange();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <article className="card repo" aria-label={`Repository ${st.path}`}>
      <header className="repo-head">
        <h3 className="mono">{st.path}</h3>
        <span>{st.branch ? `on ${st.branch}` : 'detached'}</span>
        {st.dirty ? <Badge tone="busy">{st.changed} changed</Badge> : <Badge tone="ok">clean</Badge>}
        {st.ahead > 0 && <Badge>{st.ahead} ahead</Badge>}
        {st.behind > 0 && <Badge>{st.behind} behind</Badge>}
      </header>
      {st.error && <ErrorBanner error={new Error(st.error.detail)} />}
      {st.lastCommit && (
        <p className="muted">
          Last commit <code>{st.lastCommit.hash.slice(0, 10)}</code> {st.lastCommit.subject}
        </p>
      )}
      {diff && (diff.files ?? []).length > 0 && (
        <table className="table diff" aria-label={`Changes in ${st.path}`}>
          <thead>
            <tr>
              <th scope="col">File</th>
              <th scope="col">Added</th>
              <th scope="col">Removed</th>
            </tr>
          </thead>
          <tbody>
            {(diff.files ?? []).map((f) => (
              <tr key={f.path}>
                <td className="mono">
                  {f.path}
                  {f.untracked ? ' (new)' : ''}
                </td>
                <td className="add">{f.binary ? 'binary' : `+${f.added}`}</td>
                <td className="del">{f.binary ? '' : `−${f.removed}`}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <form
        className="row"
        onSubmit={(e) => {
          e.preventDefault();
          void run(async () => {
            const r = await agent.gitCommit(id, st.path, msg);
            toast(`Committed ${r.hash.slice(0, 10)}`);
            setMsg('');
          });
        }}
      >
        <Field label="Commit message">{(fid) => <input id={fid} className="grow" value={msg} onChange={(e) => setMsg(e.target.value)} required disabled={!st.dirty} />}</Field>
        <button type="submit" className="btn" disabled={busy || !st.dirty}>
          Commit all
        </button>
        <button
          type="button"
          className="btn"
          disabled={busy}
          onClick={() =>
            void run(async () => {
              const r = await agent.gitPush(id, st.path);
              setOutput(r.output);
              toast(`Pushed ${r.branch} to ${r.remote}`);
            })
          }
        >
          Push
        </button>
      </form>
      <ErrorBanner error={error} />
      {output && <pre className="log">{output}</pre>}
    </article>
  );
}
