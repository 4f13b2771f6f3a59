import { lazy, Suspense, useEffect, useRef, useState } from 'react';
import { errorText } from './api/client';
import { Link, match, navigate, useLocation } from './router';
import { Login } from './pages/Login';
import { SandboxesPage } from './pages/Sandboxes';
import { SandboxPage } from './pages/Sandbox';
import { signOut, useSession } from './session';
import { useStore } from './state';
import { Toasts } from './ui';

// Pages a user opens less often load on demand, keeping the first load small.
const SystemPage = lazy(() => import('./pages/System').then((m) => ({ default: m.SystemPage })));
const WorkspacesPage = lazy(() => import('./pages/Workspaces').then((m) => ({ default: m.WorkspacesPage })));
const ImagesPage = lazy(() => import('./pages/Images').then((m) => ({ default: m.ImagesPage })));
const SettingsPage = lazy(() => import('./pages/Settings').then((m) => ({ default: m.SettingsPage })));

export function App() {
  const s = useSession();
  const { path } = useLocation();
  if (!s.ready) {
    return (
      <div className="boot" aria-busy="true">
        <span className="sr-only">Loading Atelier…</span>
      </div>
    );
  }
  if (s.error) {
    return (
      <main className="centered">
        <h1>Atelier is not answering</h1>
        <p role="alert">{errorText(s.error)}</p>
        <button className="btn btn-primary" onClick={() => location.reload()}>
          Try again
        </button>
      </main>
    );
  }
  if (s.signedOut || path === '/login') return <Login />;
  return (
    <Shell>
      <Suspense fallback={<p className="muted">Loading…</p>}>
        <Route path={path} admin={!!s.me?.admin} />
      </Suspense>
    </Shell>
  );
}

function Route({ path, admin }: { path: string; admin: boolean }) {
  useEffect(() => {
    if (path === '/') navigate('/sandboxes', { replace: true });
  }, [path]);
  if (path === '/' || path === '/sandboxes') return <SandboxesPage />;
  const m = match('/sandboxes/:id', path);
  if (m) return <SandboxPage id={m.id} />;
  if (path === '/system') return admin ? <SystemPage /> : <NotAllowed what="The system page" />;
  if (path === '/images') return <ImagesPage />;
  if (path === '/workspaces') return <WorkspacesPage />;
  if (path === '/settings') return <SettingsPage />;
  return (
    <section>
      <h1>Page not found</h1>
      <p>
        Nothing lives at <code>{path}</code>. <Link to="/sandboxes">Go to your sandboxes</Link>.
      </p>
    </section>
  );
}

function NotAllowed({ what }: { what: string }) {
  return (
    <section>
      <h1>Admins only</h1>
      <p>{what} shows the whole host; it is for the administrators named in auth.admins.</p>
    </section>
  );
}

const nav = [
  { to: '/sandboxes', label: 'Sandboxes' },
  { to: '/workspaces', label: 'Workspaces' },
  { to: '/images', label: 'Images' },
  { to: '/system', label: 'System', admin: true },
  { to: '/settings', label: 'Settings' },
];

function Shell({ children }: { children: React.ReactNode }) {
  const { path } = useLocation();
  const s = useSession();
  const { stream } = useStore();
  return (
    <div className="shell">
      <a className="skip" href="#main">
        Skip to content
      </a>
      <header className="topbar">
        <Link to="/sandboxes" className="brand" aria-label="Atelier, your sandboxes">
          <img src="/assets/logo.svg" alt="" width={24} height={24} />
          <span>Atelier</span>
        </Link>
        <nav aria-label="Main" className="nav">
          {nav
            .filter((n) => !n.admin || s.me?.admin)
            .map((n) => (
              <Link key={n.to} to={n.to} aria-current={path === n.to || path.startsWith(n.to + '/') ? 'page' : undefined}>
                {n.label}
              </Link>
            ))}
          <a href="/docs" target="_blank" rel="noopener">
            API
          </a>
        </nav>
        <span className={`stream stream-${stream}`} title="Live updates from the manager">
          <span className="dot" aria-hidden="true" />
          {stream === 'live' ? 'Live' : stream === 'connecting' ? 'Connecting…' : 'Reconnecting…'}
        </span>
        <UserMenu />
      </header>
      <main id="main" className="content" tabIndex={-1}>
        {children}
      </main>
      <Toasts />
    </div>
  );
}

function UserMenu() {
  const { me, config } = useSession();
  const [open, setOpen] = useState(false);
  const ref = useRef<HTMLDivElement>(null);
  useEffect(() => {
    if (!open) return;
    const close = (e: MouseEvent | KeyboardEvent) => {
      if (e instanceof KeyboardEvent ? e.key === 'Escape' : !ref.current?.contains(e.target as Node)) setOpen(false);
    };
    document.addEventListener('mousedown', close);
    document.addEventListener('keydown', close);
    return () => {
      document.removeEventListener('mousedown', close);
      document.removeEventListener('keydown', close);
    };
  }, [open]);
  if (!me) return null;
  const mock = config?.authMode === 'none';
  const initials = (me.name || me.login).slice(0, 2).toUpperCase();
  return (
    <div className="usermenu" ref={ref}>
      <button type="button" className="avatar" aria-haspopup="menu" aria-expanded={open} onClick={() => setOpen(!open)}>
        <span aria-hidden="true">{initials}</span>
        <span className="sr-only">Account menu of {me.login}</span>
      </button>
      {open && (
        <div className="menu" role="menu">
          <div className="menu-head">
            <strong>{me.name || me.login}</strong>
            <span className="muted">
              {mock ? 'Mock mode: the local user, no login' : `@${me.login}`}
              {me.admin ? ' · admin' : ''}
            </span>
          </div>
          <Link to="/settings" role="menuitem" onClick={() => setOpen(false)}>
            Settings: keys, tokens, sessions
          </Link>
          <a href="/docs" role="menuitem" target="_blank" rel="noopener">
            API reference
          </a>
          {!mock && (
            <button type="button" role="menuitem" onClick={() => void signOut()}>
              Sign out
            </button>
          )}
        </div>
      )}
    </div>
  );
}
