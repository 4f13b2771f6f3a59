import { useState } from 'react';
import { api, unwrap, type Schemas } from '../api/client';
import { date } from '../format';
import { useSession } from '../session';
import { generateEd25519 } from '../sshkey';
import { Badge, ConfirmDialog, CopyButton, Dialog, Empty, ErrorBanner, Field, toast, useAsync, type Confirmation } from '../ui';

export function SettingsPage() {
  const { config } = useSession();
  return (
    <section aria-labelledby="settings-title" className="stack">
      <h1 id="settings-title">Settings</h1>
      <GitHubConnection />
      <SSHKeys />
      <Tokens />
      {config?.authMode !== 'none' && <Sessions />}
    </section>
  );
}

function expiryBadge(expiresAt?: string | null) {
  if (!expiresAt) return null;
  const left = Date.parse(expiresAt) - Date.now();
  if (left <= 0) return <Badge tone="bad">expired</Badge>;
  if (left < 7 * 864e5) return <Badge tone="busy">expires soon</Badge>;
  return null;
}

function download(name: string, text: string) {
  const url = URL.createObjectURL(new Blob([text], { type: 'application/octet-stream' }));
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// The connected GitHub account: a repo-scoped token kept (sealed) as the
// user's github git source, separate from the login, which cannot read
// private repositories.
function GitHubConnection() {
  const sources = useAsync(async () => (await unwrap(api.GET('/api/git-sources'))).sources ?? [], []);
  const [confirm, setConfirm] = useState<Confirmation | null>(null);
  const connected = (sources.data ?? []).find((s) => s.kind === 'oauth');
  const outcome = new URLSearchParams(window.location.search);
  return (
    <div className="card stack" role="region" aria-labelledby="github-title">
      <div className="panel-head">
        <h2 id="github-title">GitHub</h2>
        <a className="btn btn-sm btn-primary" href={'/auth/github/connect?next=' + encodeURIComponent('/settings')}>
          {connected ? 'Reconnect GitHub' : 'Connect GitHub'}
        </a>
      </div>
      <p className="muted">
        Connecting lets your workspaces list and clone your private repositories. The token is sealed on the server, never shown again, and
        only reaches git in your own sandboxes when it asks for github.com.
      </p>
      {outcome.get('github') === 'connected' && <p role="status">GitHub connected.</p>}
      {outcome.get('github_error') && (
        <p role="alert" className="error-text">
          GitHub was not connected ({outcome.get('github_error')}).
        </p>
      )}
      <ErrorBanner error={sources.error} />
      {sources.data && !connected && <Empty title="GitHub not connected">Connect it to pick repositories and branches in the workspace form.</Empty>}
      {connected && (
        <div className="row">
          <span>
            Connected as <strong>{connected.githubLogin}</strong> (git source {connected.name})
          </span>
          <button
            type="button"
            className="btn btn-sm btn-danger-outline"
            onClick={() =>
              setConfirm({
                title: 'Disconnect GitHub?',
                body: <p>Delete the git source {connected.name}? Workspaces using it clone private repositories no more.</p>,
                action: 'Disconnect',
                danger: true,
                run: async () => {
                  await unwrap(api.DELETE('/api/git-sources/{id}', { params: { path: { id: connected.id } } }));
                  toast('GitHub disconnected');
                  await sources.reload();
                },
              })
            }
          >
            Disconnect
          </button>
        </div>
      )}
      <ConfirmDialog confirm={confirm} onDone={() => setConfirm(null)} />
    </div>
  );
}

function SSHKeys() {
  const keys = useAsync(async () => (await unwrap(api.GET('/api/ssh-keys'))).keys ?? [], []);
  const { config } = useSession();
  const [adding, setAdding] = useState(false);
  const [confirm, setConfirm] = useState<Confirmation | null>(null);
  return (
    <div className="card stack">
      <div className="panel-head">
        <h2>SSH keys</h2>
        <button type="button" className="btn btn-sm btn-primary" onClick={() => setAdding(true)}>
          Add SSH key
        </button>
      </div>
      <p className="muted">
        A key opens <code>ssh &lt;sandbox-id&gt;@{config?.sshHost || 'ssh host'} -p {config?.sshPort ?? 2222}</code> for your own sandboxes.
      </p>
      <ErrorBanner error={keys.error} />
      {keys.data && keys.data.length === 0 && <Empty title="No SSH keys">Add one to reach your sandboxes with ssh, scp, sftp and VS Code Remote.</Empty>}
      {keys.data && keys.data.length > 0 && (
        <table className="table" aria-label="SSH keys">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Fingerprint</th>
              <th scope="col">Expires</th>
              <th scope="col">
                <span className="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {keys.data.map((k) => (
              <tr key={k.id}>
                <td data-label="Name">{k.name}</td>
                <td data-label="Fingerprint" className="mono">
                  {k.type} {k.fingerprint}
                </td>
                <td data-label="Expires">
                  {date(k.expiresAt)} {expiryBadge(k.expiresAt)}
                </td>
                <td>
                  <button
                    type="button"
                    className="btn btn-sm btn-danger-outline"
                    aria-label={`Delete key ${k.name}`}
                    onClick={() =>
                      setConfirm({
                        title: 'Delete SSH key?',
                        body: <p>Delete {k.name}? New SSH connections with it are refused at once.</p>,
                        action: 'Delete',
                        danger: true,
                        run: async () => {
                          await unwrap(api.DELETE('/api/ssh-keys/{id}', { params: { path: { id: k.id } } }));
                          toast(`Deleted key ${k.name}`);
                          await keys.reload();
                        },
                      })
                    }
                  >
                    Delete
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <AddKeyDialog open={adding} onClose={() => setAdding(false)} onAdded={() => void keys.reload()} />
      <ConfirmDialog confirm={confirm} onDone={() => setConfirm(null)} />
    </div>
  );
}

function AddKeyDialog({ open, onClose, onAdded }: { open: boolean; onClose: () => void; onAdded: () => void }) {
  const [name, setName] = useState('');
  const [pub, setPub] = useState('');
  const [expires, setExpires] = useState('');
  const [priv, setPriv] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const close = () => {
    setPriv(null);
    setPub('');
    setName('');
    setExpires('');
    setError(null);
    onClose();
  };
  return (
    <Dialog open={open} title="Add an SSH key" onClose={close}>
      <form
        className="stack"
        onSubmit={async (e) => {
          e.preventDefault();
          setBusy(true);
          setError(null);
          try {
            await unwrap(
              api.POST('/api/ssh-keys', {
                body: { name, publicKey: pub, expiresAt: expires ? new Date(expires + 'T23:59:59').toISOString() : undefined },
              }),
            );
            toast(`Added key ${name}`);
            onAdded();
            if (!priv) close();
            else setPub('') ;
          } catch (err) {
            setError(err);
          } finally {
            setBusy(false);
          }
        }}
      >
        <Field label="Name" hint="Where the key lives, e.g. laptop.">
          {(id) => <input id={id} value={name} onChange={(e) => setName(e.target.value)} required maxLength={100} />}
        </Field>
        <Field label="Public key" hint="One line from your ~/.ssh/id_ed25519.pub, or generate a new pair.">
          {(id) => <textarea id={id} value={pub} onChange={(e) => setPub(e.target.value)} required rows={3} spellCheck={false} placeholder="ssh-ed25519 AAAA… you@laptop" />}
        </Field>
        <div>
          <button
            type="button"
            className="btn btn-sm"
            onClick={async () => {
              setError(null);
              try {
                const kp = await generateEd25519(`atelier-${name || 'key'}`);
                setPub(kp.publicKey);
                setPriv(kp.privateKey);
              } catch (err) {
                setError(new Error(`this browser cannot generate ed25519 keys (${err instanceof Error ? err.message : err}); paste a public key instead`));
              }
            }}
          >
            Generate an ed25519 key pair
          </button>
        </div>
        {priv && (
          <div className="banner banner-warn" role="status">
            <p>
              The private key exists only in this page. Download it now and keep it secret (e.g. <code>~/.ssh/atelier_ed25519</code>, mode 600); it
              is not shown again.
            </p>
            <button type="button" className="btn btn-sm" onClick={() => download(`atelier_ed25519_${name || 'key'}`, priv)}>
              Download private key
            </button>
          </div>
        )}
        <Field label="Expires on" hint="Optional: the key stops working after this day.">
          {(id) => <input id={id} type="date" value={expires} onChange={(e) => setExpires(e.target.value)} />}
        </Field>
        <ErrorBanner error={error} />
        <div className="dialog-actions">
          <button type="button" className="btn" onClick={close}>
            {priv ? 'Done' : 'Cancel'}
          </button>
          <button type="submit" className="btn btn-primary" disabled={busy || !pub}>
            Add key
          </button>
        </div>
      </form>
    </Dialog>
  );
}

function Tokens() {
  const { me } = useSession();
  const tokens = useAsync(async () => (await unwrap(api.GET('/api/tokens'))).tokens ?? [], []);
  const [name, setName] = useState('');
  const [scope, setScope] = useState<'read' | 'full' | 'admin'>('full');
  const [days, setDays] = useState('30');
  const [created, setCreated] = useState<(Schemas['TokenView'] & { token: string }) | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [confirm, setConfirm] = useState<Confirmation | null>(null);
  const live = (tokens.data ?? []).filter((t) => !t.revokedAt);
  return (
    <div className="card stack">
      <h2>API tokens</h2>
      <p className="muted">
        For the CLI and scripts: <code>Authorization: Bearer &lt;token&gt;</code>. A read token may only look.
      </p>
      <form
        className="row"
        aria-label="Create an API token"
        onSubmit={async (e) => {
          e.preventDefault();
          setError(null);
          try {
            const t = await unwrap(api.POST('/api/tokens', { body: { name, scope, ttlHours: Number(days) * 24 } }));
            // The document names only the secret; the answer carries the token's view too.
            setCreated(t as Schemas['TokenView'] & { token: string });
            setName('');
            await tokens.reload();
          } catch (err) {
            setError(err);
          }
        }}
      >
        <Field label="Token name">{(id) => <input id={id} value={name} onChange={(e) => setName(e.target.value)} required maxLength={100} placeholder="ci" />}</Field>
        <Field label="Scope">
          {(id) => (
            <select id={id} value={scope} onChange={(e) => setScope(e.target.value as typeof scope)}>
              <option value="read">read: look only</option>
              <option value="full">full: everything you may do</option>
              {me?.admin && <option value="admin">admin: also host-wide</option>}
            </select>
          )}
        </Field>
        <Field label="Expires after">
          {(id) => (
            <select id={id} value={days} onChange={(e) => setDays(e.target.value)}>
              {[1, 7, 30, 90].map((d) => (
                <option key={d} value={d}>
                  {d} {d === 1 ? 'day' : 'days'}
                </option>
              ))}
            </select>
          )}
        </Field>
        <button type="submit" className="btn btn-primary">
          Create token
        </button>
      </form>
      <ErrorBanner error={error || tokens.error} />
      {created && (
        <div className="banner banner-warn" role="status">
          <p>
            Token <strong>{created.name}</strong> ({created.scope}): copy it now, it is not shown again.
          </p>
          <code className="secret" data-copy={created.token}>
            {created.token}
          </code>{' '}
          <CopyButton text={created.token} label="Copy token" />{' '}
          <button type="button" className="btn btn-sm" onClick={() => setCreated(null)}>
            Done
          </button>
        </div>
      )}
      {live.length === 0 ? (
        <p className="muted">No tokens.</p>
      ) : (
        <table className="table" aria-label="API tokens">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Scope</th>
              <th scope="col">Prefix</th>
              <th scope="col">Last used</th>
              <th scope="col">Expires</th>
              <th scope="col">
                <span className="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {live.map((t) => (
              <tr key={t.id}>
                <td data-label="Name">{t.name}</td>
                <td data-label="Scope">{t.scope}</td>
                <td data-label="Prefix" className="mono">
                  {t.prefix}…
                </td>
                <td data-label="Last used">{date(t.lastUsedAt)}</td>
                <td data-label="Expires">
                  {date(t.expiresAt)} {expiryBadge(t.expiresAt)}
                </td>
                <td>
                  <button
                    type="button"
                    className="btn btn-sm btn-danger-outline"
                    aria-label={`Revoke token ${t.name}`}
                    onClick={() =>
                      setConfirm({
                        title: 'Revoke token?',
                        body: <p>Revoke {t.name}? Whatever uses it is refused from its next request.</p>,
                        action: 'Revoke',
                        danger: true,
                        run: async () => {
                          await unwrap(api.DELETE('/api/tokens/{id}', { params: { path: { id: t.id } } }));
                          toast(`Revoked ${t.name}`);
                          await tokens.reload();
                        },
                      })
                    }
                  >
                    Revoke
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <ConfirmDialog confirm={confirm} onDone={() => setConfirm(null)} />
    </div>
  );
}

function Sessions() {
  const sessions = useAsync(async () => (await unwrap(api.GET('/api/sessions'))).sessions ?? [], []);
  const [error, setError] = useState<unknown>(null);
  return (
    <div className="card stack">
      <h2>Sessions</h2>
      <p className="muted">Browsers signed in as you. Signing one out ends it at once.</p>
      <ErrorBanner error={error || sessions.error} />
      <ul className="sessions">
        {(sessions.data ?? []).map((s) => (
          <li key={s.id}>
            <span>
              Signed in {date(s.createdAt)}, until {date(s.expiresAt)} {s.current && <Badge tone="ok">this browser</Badge>}
            </span>
            <button
              type="button"
              className="btn btn-sm"
              onClick={async () => {
                try {
                  await unwrap(api.DELETE('/api/sessions/{id}', { params: { path: { id: s.id } } }));
                  if (s.current) location.assign('/');
                  else {
                    toast('Session signed out');
                    await sessions.reload();
                  }
                } catch (e) {
                  setError(e);
                }
              }}
            >
              Sign out{s.current ? ' here' : ''}
            </button>
          </li>
        ))}
      </ul>
    </div>
  );
}
