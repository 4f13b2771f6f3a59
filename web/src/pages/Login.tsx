import { useLocation } from '../router';
import { useSession } from '../session';

const reasons: Record<string, string> = {
  denied: 'You cancelled the sign-in at GitHub. Nothing was shared; try again when you are ready.',
  unauthorized:
    'GitHub confirmed who you are, but your account is not allowed on this Atelier. Ask its administrator to add your GitHub login, or to invite you to the organization (an invitation must be accepted: pending membership does not count).',
  failed: 'Signing in failed on the server (GitHub could not be reached, or the login expired). Try again; if it keeps failing, the manager\'s log says why.',
};

export function Login() {
  const { config } = useSession();
  const { query, path } = useLocation();
  const err = query.get('login_error');
  const next = path === '/login' ? query.get('next') || '/' : path + location.search;
  const org = config?.allowedOrg;
  return (
    <main className="login" id="main">
      <div className="login-card">
        <h1>
          <img src="/assets/logo.svg" alt="" width={32} height={32} /> Sign in to Atelier
        </h1>
        <p>Atelier gives you isolated Linux sandboxes with VS Code, OpenCode, a browser, a terminal and SSH.</p>
        {err && (
          <div className="banner banner-error" role="alert">
            {reasons[err] ?? `Sign-in failed (${err}).`}
          </div>
        )}
        <a className="btn btn-primary btn-lg" href={`/auth/github?next=${encodeURIComponent(next.replace(/[?&]login_error=[^&]*/, ''))}`}>
          Sign in with GitHub
        </a>
        <p className="muted">
          Who may sign in: {org ? <>members of the GitHub organization <strong>{org}</strong>, and </> : null}the GitHub accounts this
          Atelier&apos;s administrator allowed by name. Atelier asks GitHub only who you are{org ? ' and whether you are a member' : ''}.
        </p>
      </div>
    </main>
  );
}
