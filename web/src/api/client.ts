// The typed API client: openapi-fetch over the types openapi-typescript
// generates from the manager's own OpenAPI document (make web), so a field
// renamed on the server fails `tsc`, not the page.
import createClient from 'openapi-fetch';
import type { components, paths } from './schema';

export type Schemas = components['schemas'];
export type Sandbox = Schemas['View'];
export type SandboxStatus = Sandbox['status'];
export type Problem = Schemas['Problem'];
export type Me = Schemas['MeBody'];
export type DashboardConfig = Schemas['ConfigBody'];

/** An error answer of the API, carrying its problem+json detail. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly fields: { location?: string; message?: string }[];
  readonly quota?: Schemas['QuotaDetail'];

  constructor(status: number, body: unknown) {
    const p = (body && typeof body === 'object' ? body : {}) as Partial<Problem> & { field?: string };
    const detail = p.detail || (typeof body === 'string' && body.trim()) || `request failed with status ${status}`;
    super(detail);
    this.name = 'ApiError';
    this.status = status;
    this.code = p.code ?? '';
    this.fields = (p.errors ?? []).map((e) => ({ location: e.location, message: e.message }));
    // The agent's own problems name their field in `field`.
    if (p.field && !this.fields.length) this.fields = [{ location: p.field, message: detail }];
    this.quota = p.quota;
  }
}

type Listener = () => void;
const unauthorizedListeners = new Set<Listener>();

/** Called when any request answers 401: the session ended (logout elsewhere, revoked, expired). */
export function onUnauthorized(fn: Listener): () => void {
  unauthorizedListeners.add(fn);
  return () => unauthorizedListeners.delete(fn);
}

export function notifyUnauthorized() {
  unauthorizedListeners.forEach((fn) => fn());
}

export const api = createClient<paths>({ baseUrl: '', credentials: 'same-origin' });

api.use({
  onResponse({ response }) {
    if (response.status === 401) notifyUnauthorized();
    return undefined;
  },
});

/** Unwraps an openapi-fetch result: the data, or an ApiError thrown. */
export async function unwrap<T>(p: Promise<{ data?: T; error?: unknown; response: Response }>): Promise<T> {
  const { data, error, response } = await p;
  if (!response.ok) throw new ApiError(response.status, error);
  return data as T;
}

/**
 * A plain same-origin request for routes the generated types do not describe
 * precisely yet (the agent's routes, /api/images): JSON in, JSON out, a
 * problem+json answer thrown as ApiError.
 */
export async function request<T>(method: string, path: string, body?: unknown, init?: RequestInit): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  let payload: BodyInit | undefined;
  if (body instanceof Blob || body instanceof ArrayBuffer || body instanceof Uint8Array) {
    payload = body as BodyInit;
    headers['Content-Type'] = 'application/octet-stream';
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers['Content-Type'] = 'application/json';
  }
  const res = await fetch(path, { method, headers, body: payload, credentials: 'same-origin', ...init });
  const text = await res.text();
  let parsed: unknown = text;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      /* not JSON: keep the text */
    }
  }
  if (!res.ok) {
    if (res.status === 401) notifyUnauthorized();
    throw new ApiError(res.status, parsed);
  }
  return (text ? parsed : undefined) as T;
}

/** The message to show for any thrown value. */
export function errorText(e: unknown): string {
  if (e instanceof ApiError) {
    const fields = e.fields
      .filter((f) => f.location || f.message)
      .map((f) => `${(f.location ?? '').replace(/^body\./, '')}: ${f.message ?? ''}`)
      .filter((s) => !e.message.includes(s));
    return [e.message, ...fields].join(' — ');
  }
  if (e instanceof Error) return e.message;
  return String(e);
}
