// Who is using the dashboard: the manager's runtime config (GET /config) and
// the caller (GET /api/me). Nothing about the session is kept in the browser
// but the HttpOnly cookie the manager set: no token in localStorage.
import { useSyncExternalStore } from 'react';
import { ApiError, api, onUnauthorized, unwrap, type DashboardConfig, type Me } from './api/client';

interface Session {
  config?: DashboardConfig;
  me?: Me;
  /** The manager answered 401: show the login page. */
  signedOut: boolean;
  error?: unknown;
  ready: boolean;
}

let session: Session = { signedOut: false, ready: false };
const listeners = new Set<() => void>();
function set(next: Partial<Session>) {
  session = { ...session, ...next };
  listeners.forEach((fn) => fn());
}

export function useSession(): Session {
  return useSyncExternalStore(
    (fn) => {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
    () => session,
  );
}

onUnauthorized(() => {
  if (session.ready) set({ signedOut: true });
});

export async function loadSession(config: Promise<DashboardConfig>, me: Promise<Me>) {
  try {
    const [c, m] = await Promise.all([config, me.catch((e) => e as unknown)]);
    if (m instanceof ApiError && m.status === 401) {
      set({ config: c, signedOut: true, ready: true });
      return false;
    }
    if (m instanceof Error) throw m;
    set({ config: c, me: m as Me, signedOut: false, ready: true });
    return true;
  } catch (e) {
    set({ error: e, ready: true });
    return false;
  }
}

export async function refreshMe() {
  try {
    set({ me: await unwrap(api.GET('/api/me')) });
  } catch {
    /* a 401 flips signedOut through onUnauthorized */
  }
}

export async function signOut() {
  await fetch('/auth/logout', { method: 'POST', credentials: 'same-origin' });
  location.assign('/');
}
