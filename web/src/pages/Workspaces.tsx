import { useEffect, useState } from 'react';
import { api, unwrap } from '../api/client';
import { date } from '../format';
import { navigate } from '../router';
import { Badge, ConfirmDialog, Dialog, Empty, ErrorBanner, Field, toast, useAsync, type Confirmation } from '../ui';

// Lines of KEY=VALUE into a map; a line without "=" is a key with an empty value.
function pairs(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const l = line.trim();
    if (!l) continue;
    const i = l.indexOf('=');
    if (i < 0) out[l] = '';
    else out[l.slice(0, i).trim()] = l.slice(i + 1);
  }
  return out;
}

export function WorkspacesPage() {
  const list = useAsync(async () => (await unwrap(api.GET('/api/workspaces'))).workspaces ?? [], []);
  const [adding, setAdding] = useState(false);
  const [confirm, setConfirm] = useState<Confirmation | null>(null);
  const [busy, setBusy] = useState('');
  const [error, setError] = useState<unknown>(null);
  return (
    <section aria-labelledby="workspaces-title" className="stack">
      <div className="page-head">
        <h1 id="workspaces-title">Workspaces</h1>
        <button type="button" className="btn btn-sm btn-primary" onClick={() => setAdding(true)}>
          New workspace
        </button>
      </div>
      <p className="muted">
        A workspace says what a sandbox clones and how it is set up. Its secrets are sealed on the server and shown here by name only.
      </p>
      <ErrorBanner error={list.error ?? error} onDismiss={() => setError(null)} />
      {list.loading && list.data === undefined && <p className="muted">Loading…</p>}
      {list.data && list.data.length === 0 && <Empty title="No workspaces">Create one to start sandboxes with your repository cloned and set up.</Empty>}
      {list.data && list.data.length > 0 && (
        <div className="grid">
          {list.data.map((w) => (
            <article key={w.id} className="card" aria-label={`Workspace ${w.name}`}>
              <header className="repo-head">
                <h2>{w.name}</h2>
                <PrebuildBadge id={w.id} />
              </header>
              <dl className="facts">
                {(w.config.repos ?? []).map((r) => (
                  <div key={r.path}>
                    <dt>{r.path}</dt>
                    <dd className="mono">
                      {r.url} ({r.branch})
                    </dd>
                  </div>
                ))}
                {(w.config.devCommands ?? []).map((d) => (
                  <div key={d.name}>
                    <dt>dev {d.name}</dt>
                    <dd className="mono">
                      {d.command}
                      {d.port ? ` on ${d.port}` : ''}
                    </dd>
                  </div>
                ))}
                <div>
                  <dt>Secrets</dt>
                  <dd>{[...(w.secretEnv ?? []), ...(w.secretFiles ?? []).map((f) => f.path)].join(', ') || 'none'}</dd>
                </div>
                <div>
                  <dt>Updated</dt>
                  <dd>{date(w.updatedAt)}</dd>
                </div>
              </dl>
              <div className="row">
                <button
                  type="button"
                  className="btn btn-sm btn-primary"
                  disabled={busy === w.id}
                  onClick={async () => {
                    setBusy(w.id);
                    setError(null);
                    try {
                      const sb = await unwrap(api.POST('/api/sandboxes', { params: { query: { wait: 'false' } }, body: { workspaceId: w.id } }));
                      toast(`Creating sandbox ${sb.id} from ${w.name}`);
                      navigate(`/sandboxes/${sb.id}`);
                    } catch (err) {
                      setError(err);
                    } finally {
                      setBusy('');
                    }
                  }}
                >
                  Create sandbox
                </button>
                <button
                  type="button"
                  className="btn btn-sm"
                  onClick={async () => {
                    setError(null);
                    try {
                      await unwrap(api.POST('/api/workspaces/{id}/prebuild', { params: { path: { id: w.id } } }));
                      toast(`Prebuild of ${w.name} started`);
                      await list.reload();
                    } catch (err) {
                      setError(err);
                    }
                  }}
                >
                  Prebuild
                </button>
                <button
                  type="button"
                  className="btn btn-sm btn-danger-outline"
                  aria-label={`Delete workspace ${w.name}`}
                  onClick={() =>
                    setConfirm({
                      title: 'Delete workspace?',
                      body: <p>Delete {w.name}, its secrets and its prebuild? Refused while sandboxes of it exist.</p>,
                      action: 'Delete',
                      danger: true,
                      run: async () => {
                        await unwrap(api.DELETE('/api/workspaces/{id}', { params: { path: { id: w.id } } }));
                        toast(`Deleted workspace ${w.name}`);
                        await list.reload();
                      },
                    })
                  }
                >
                  Delete
                </button>
              </div>
            </article>
          ))}
        </div>
      )}
      <NewWorkspaceDialog open={adding} onClose={() => setAdding(false)} onAdded={() => void list.reload()} />
      <ConfirmDialog confirm={confirm} onDone={() => setConfirm(null)} />
    </section>
  );
}

function PrebuildBadge({ id }: { id: string }) {
  const pb = useAsync(async () => await unwrap(api.GET('/api/workspaces/{id}/prebuild', { params: { path: { id } } })), [id]);
  const p = pb.data;
  if (!p) return null;
  if (p.status === 'building') return <Badge tone="busy">prebuilding</Badge>;
  if (p.status === 'failed')
    return (
      <>
        <Badge tone="bad">{p.ready ? 'prebuild ready, last build failed' : 'prebuild failed'}</Badge>{' '}
        {p.ready && <PrebuildSource source={p.source} sandbox={p.sourceSandboxId} />}
      </>
    );
  if (p.ready)
    return (
      <>
        <Badge tone="ok">{p.stale ? 'prebuild stale' : 'prebuild ready'}</Badge> <PrebuildSource source={p.source} sandbox={p.sourceSandboxId} />
      </>
    );
  return <Badge>no prebuild</Badge>;
}

// Where the ready prebuild came from: a build, or a sandbox saved as it.
function PrebuildSource({ source, sandbox }: { source?: string; sandbox?: string }) {
  if (source === 'promote') return <Badge>{sandbox ? `saved from sandbox ${sandbox}` : 'saved from a sandbox'}</Badge>;
  if (source === 'build') return <Badge>built</Badge>;
  return null;
}

function NewWorkspaceDialog({ open, onClose, onAdded }: { open: boolean; onClose: () => void; onAdded: () => void }) {
  const sources = useAsync(async () => (open ? ((await unwrap(api.GET('/api/git-sources'))).sources ?? []) : []), [open]);
  const [name, setName] = useState('');
  const [url, setURL] = useState('');
  const [branch, setBranch] = useState('main');
  const [sourceId, setSourceId] = useState('');
  const source = (sources.data ?? []).find((s) => s.id === sourceId);
  const isGitHub = source?.type === 'github';
  const connected = (sources.data ?? []).some((s) => s.kind === 'oauth');
  // owner/name picked from a github source's repositories, or the URL whose
  // branches git ls-remote lists for any other source.
  const [repo, setRepo] = useState('');
  const [lsURL, setLsURL] = useState('');
  const repos = useAsync(
    async () => (open && isGitHub ? ((await unwrap(api.GET('/api/git-sources/{id}/repos', { params: { path: { id: sourceId } } }))).repos ?? []) : null),
    [open, sourceId, isGitHub],
  );
  const branches = useAsync(async () => {
    if (!open) return null;
    const id = sourceId || 'public';
    if (isGitHub && repo) return (await unwrap(api.GET('/api/git-sources/{id}/branches', { params: { path: { id }, query: { repo } } }))).branches ?? [];
    if (!isGitHub && lsURL) return (await unwrap(api.GET('/api/git-sources/{id}/branches', { params: { path: { id }, query: { url: lsURL } } }))).branches ?? [];
    return null;
  }, [open, sourceId, isGitHub, repo, lsURL]);
  const branchNames = (branches.data ?? []).map((b) => b.name);
  useEffect(() => {
    if (branchNames.length && !branchNames.includes(branch)) setBranch(branchNames.includes('main') ? 'main' : branchNames[0]);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [branches.data]);
  const [init, setInit] = useState('');
  const [devName, setDevName] = useState('web');
  const [devPort, setDevPort] = useState('3000');
  const [devCmd, setDevCmd] = useState('');
  const [env, setEnv] = useState('');
  const [secrets, setSecrets] = useState('');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const close = () => {
    setName('');
    setURL('');
    setRepo('');
    setLsURL('');
    setSourceId('');
    setInit('');
    setDevCmd('');
    setEnv('');
    setSecrets('');
    setError(null);
    onClose();
  };
  return (
    <Dialog open={open} title="New workspace" onClose={close} wide>
      <form
        className="stack"
        onSubmit={async (e) => {
          e.preventDefault();
          setBusy(true);
          setError(null);
          try {
            await unwrap(
              api.POST('/api/workspaces', {
                body: {
                  name,
                  config: {
                    repos: url ? [{ url, branch, sourceId: sourceId || undefined }] : [],
                    initCommands: init.split('\n').filter((l) => l.trim()),
                    devCommands: devCmd ? [{ name: devName, command: devCmd, port: Number(devPort) || 0, default: !!Number(devPort) }] : [],
                    env: pairs(env),
                  },
                  secretEnv: pairs(secrets),
                },
              }),
            );
            toast(`Created workspace ${name}`);
            onAdded();
            close();
          } catch (err) {
            setError(err);
          } finally {
            setBusy(false);
          }
        }}
      >
        <Field label="Name">{(id) => <input id={id} value={name} onChange={(e) => setName(e.target.value)} required maxLength={100} />}</Field>
        <div className="row">
          <Field label="Git source" hint="Whose token clones a private repository.">
            {(id) => (
              <select
                id={id}
                value={sourceId}
                onChange={(e) => {
                  setSourceId(e.target.value);
                  setRepo('');
                  setLsURL('');
                }}
              >
                <option value="">none (public repository)</option>
                {(sources.data ?? []).map((s) => (
                  <option key={s.id} value={s.id}>
                    {s.name} ({s.kind === 'oauth' ? `GitHub: ${s.githubLogin}` : s.kind === 'app' ? `GitHub App installation ${s.installationId}` : s.host})
                  </option>
                ))}
              </select>
            )}
          </Field>
          {sources.data && !connected && (
            <a className="btn" href={'/auth/github/connect?next=' + encodeURIComponent('/workspaces')}>
              Connect GitHub
            </a>
          )}
        </div>
        {isGitHub ? (
          <Field label="Repository" hint="The repositories this source reads on GitHub.">
            {(id) => (
              <select
                id={id}
                value={repo}
                disabled={!repos.data}
                onChange={(e) => {
                  const r = (repos.data ?? []).find((x) => x.fullName === e.target.value);
                  setRepo(e.target.value);
                  setURL(r?.cloneUrl ?? '');
                  if (r?.defaultBranch) setBranch(r.defaultBranch);
                }}
              >
                <option value="">{repos.loading ? 'loading repositories…' : 'choose a repository'}</option>
                {(repos.data ?? []).map((r) => (
                  <option key={r.fullName} value={r.fullName}>
                    {r.fullName}
                    {r.private ? ' (private)' : ''}
                  </option>
                ))}
              </select>
            )}
          </Field>
        ) : (
          <div className="row">
            <Field label="Repository URL" hint="https://… of the repository; leave empty for none.">
              {(id) => <input id={id} className="grow" value={url} onChange={(e) => setURL(e.target.value)} placeholder="https://git.example.com/acme/web.git" />}
            </Field>
            <button type="button" className="btn" disabled={!url} onClick={() => setLsURL(url)}>
              List branches
            </button>
          </div>
        )}
        <ErrorBanner error={repos.error ?? branches.error} />
        <Field label="Branch">
          {(id) =>
            branchNames.length ? (
              <select id={id} value={branch} onChange={(e) => setBranch(e.target.value)}>
                {branchNames.map((b) => (
                  <option key={b} value={b}>
                    {b}
                  </option>
                ))}
              </select>
            ) : (
              <input id={id} value={branch} onChange={(e) => setBranch(e.target.value)} />
            )
          }
        </Field>
        <Field label="Init commands" hint="One per line, run once in order after the clone (in the prebuild when there is one).">
          {(id) => <textarea id={id} value={init} onChange={(e) => setInit(e.target.value)} rows={3} spellCheck={false} placeholder="npm ci" />}
        </Field>
        <Field label="Dev command" hint="Started in every sandbox and reachable at dev-NAME-<id>.">
          {(id) => <input id={id} value={devCmd} onChange={(e) => setDevCmd(e.target.value)} placeholder="npm run dev -- --host 0.0.0.0" />}
        </Field>
        <Field label="Dev command name">{(id) => <input id={id} value={devName} onChange={(e) => setDevName(e.target.value)} />}</Field>
        <Field label="Dev command port">{(id) => <input id={id} value={devPort} onChange={(e) => setDevPort(e.target.value)} inputMode="numeric" />}</Field>
        <Field label="Environment" hint="KEY=VALUE per line; visible to whoever sees the workspace.">
          {(id) => <textarea id={id} value={env} onChange={(e) => setEnv(e.target.value)} rows={2} spellCheck={false} />}
        </Field>
        <Field label="Secret variables" hint="KEY=VALUE per line; sealed on the server and never shown again.">
          {(id) => <textarea id={id} value={secrets} onChange={(e) => setSecrets(e.target.value)} rows={2} spellCheck={false} autoComplete="off" />}
        </Field>
        <ErrorBanner error={error} />
        <div className="dialog-actions">
          <button type="button" className="btn" onClick={close}>
            Cancel
          </button>
          <button type="submit" className="btn btn-primary" disabled={busy}>
            Create workspace
          </button>
        </div>
      </form>
    </Dialog>
  );
}
