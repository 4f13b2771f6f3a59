// The sandboxes the user may see, kept live from GET /api/events: the list is
// fetched once, then every sandbox.created / updated / deleted event (which
// carries the whole sandbox) updates it. A dropped stream resumes with
// Last-Event-ID (the browser sends it on its own reconnects; after a failed
// one we reopen with ?since=), and a "reset" (history too old) refetches.
import { useSyncExternalStore } from 'react';
import { api, ApiError, type Sandbox, type Schemas } from './api/client';

export type Fix = Schemas['Fix'];
export type ImageBuild = Schemas['ImageBuildView'];
/** A build as last heard of, with when (this browser's clock): elapsed times grow from there. */
export type LiveBuild = ImageBuild & { receivedAt: number };
export type FailedBuild = { id: string; stage: string; at: number };

export type StreamState = 'connecting' | 'live' | 'reconnecting';

interface State {
  sandboxes: Map<string, Sandbox>;
  loaded: boolean;
  loadError?: string;
  stream: StreamState;
  /** Bumped on every sandbox event: pages that show derived host data refresh on it. */
  tick: number;
  /**
   * The reconciler's newest fixes, newest first: seeded from
   * GET /api/system/reconciler by the system page, then grown by the
   * system.reconciled events only admins' streams carry. Null until seeded.
   */
  fixes: Fix[] | null;
  /** Bumped on every system.reconciled event. */
  systemTick: number;
  /** Image builds running on the host, from GET /api/images and the image.build events. */
  builds: Map<string, LiveBuild>;
  /** Builds that failed since the page loaded (image.failed), newest first. */
  failedBuilds: FailedBuild[];
  /** Bumped when a build ends: the images list changed. */
  imageTick: number;
}

const fixesKept = 50;

let state: State = {
  sandboxes: new Map(),
  loaded: false,
  stream: 'connecting',
  tick: 0,
  fixes: null,
  systemTick: 0,
  builds: new Map(),
  failedBuilds: [],
  imageTick: 0,
};
const listeners = new Set<() => void>();

function set(next: Partial<State>) {
  state = { ...state, ...next };
  listeners.forEach((fn) => fn());
}

function subscribe(fn: () => void) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function useStore(): State {
  return useSyncExternalStore(subscribe, () => state);
}

export function getSandbox(id: string): Sandbox | undefined {
  return state.sandboxes.get(id);
}

/** Applies a sandbox the API answered with (create, stop, …), unless the store holds a newer one. */
export function putSandbox(sb: Sandbox) {
  const cur = state.sandboxes.get(sb.id);
  if (cur && Date.parse(cur.updatedAt) > Date.parse(sb.updatedAt)) return;
  const m = new Map(state.sandboxes);
  // The list omits timings; keep the ones a single get or an event brought.
  m.set(sb.id, cur?.timings && !sb.timings ? { ...sb, timings: cur.timings } : sb);
  set({ sandboxes: m, tick: state.tick + 1 });
}

export function dropSandbox(id: string) {
  if (!state.sandboxes.has(id)) return;
  const m = new Map(state.sandboxes);
  m.delete(id);
  set({ sandboxes: m, tick: state.tick + 1 });
}

/** Seeds the fixes from the reconciler's list, keeping any newer ones an event brought. */
export function seedFixes(list: Fix[]) {
  const newest = list.length ? Date.parse(list[0].at) : 0;
  const newer = (state.fixes ?? []).filter((f) => Date.parse(f.at) > newest);
  set({ fixes: [...newer, ...list].slice(0, fixesKept) });
}

function addFixes(report: Schemas['Report']) {
  const fresh = [...(report.fixes ?? [])].reverse();
  set({ fixes: state.fixes ? [...fresh, ...state.fixes].slice(0, fixesKept) : null, systemTick: state.systemTick + 1 });
}

/** Seeds the builds from the images list (which has the ones running when it was answered). */
export function seedBuilds(list: ImageBuild[]) {
  const now = Date.now();
  set({ builds: new Map(list.filter((b) => !b.failed).map((b) => [b.id, { ...b, receivedAt: now }])) });
}

function putBuild(b: ImageBuild) {
  const m = new Map(state.builds);
  m.set(b.id, { ...b, receivedAt: Date.now() });
  set({ builds: m });
}

function endBuild(b: ImageBuild, failed: boolean) {
  const m = new Map(state.builds);
  m.delete(b.id);
  const failedBuilds = failed
    ? [{ id: b.id, stage: b.failed || 'unknown', at: Date.now() }, ...state.failedBuilds.filter((f) => f.id !== b.id)].slice(0, 10)
    : state.failedBuilds.filter((f) => f.id !== b.id);
  set({ builds: m, failedBuilds, imageTick: state.imageTick + 1 });
}

export type ListResult = { sandboxes: Sandbox[] | null; lastEventId: string };

/** GET /api/sandboxes, with the id of the newest event at the time of the list. */
export async function fetchSandboxes(): Promise<ListResult> {
  const { data, error, response } = await api.GET('/api/sandboxes');
  if (!response.ok || !data) throw new ApiError(response.status, error);
  return { sandboxes: data.sandboxes, lastEventId: response.headers.get('Last-Event-ID') ?? '' };
}

export async function loadSandboxes(prefetched?: Promise<ListResult>) {
  try {
    const r = await (prefetched ?? fetchSandboxes());
    const m = new Map<string, Sandbox>();
    for (const sb of r.sandboxes ?? []) {
      const cur = state.sandboxes.get(sb.id);
      // An event that arrived while the list was in flight may be newer.
      m.set(sb.id, cur && Date.parse(cur.updatedAt) > Date.parse(sb.updatedAt) ? cur : sb);
    }
    set({ sandboxes: m, loaded: true, loadError: undefined, tick: state.tick + 1 });
    // The stream resumes after the list: no history replayed, no change missed.
    if (!lastId || Number(r.lastEventId) > Number(lastId)) lastId = r.lastEventId;
  } catch (e) {
    set({ loaded: true, loadError: e instanceof Error ? e.message : String(e) });
  }
}

let source: EventSource | null = null;
let lastId = '';
let retry = 1000;
let retryTimer: number | undefined;

/** Opens the event stream (once). */
export function startEvents() {
  if (source) return;
  const url = '/api/events' + (lastId ? `?since=${encodeURIComponent(lastId)}` : '');
  const es = new EventSource(url, { withCredentials: true });
  source = es;
  const track = (e: MessageEvent) => {
    if (e.lastEventId) lastId = e.lastEventId;
  };
  es.onopen = () => {
    retry = 1000;
    set({ stream: 'live' });
  };
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) {
      // The browser gave up (an error status): reopen ourselves, resuming after lastId.
      source = null;
      set({ stream: 'reconnecting' });
      window.clearTimeout(retryTimer);
      retryTimer = window.setTimeout(startEvents, retry);
      retry = Math.min(retry * 2, 30000);
    } else {
      set({ stream: 'reconnecting' });
    }
  };
  const onSandbox = (e: MessageEvent) => {
    track(e);
    try {
      putSandbox(JSON.parse(e.data) as Sandbox);
    } catch {
      /* malformed event: ignore */
    }
  };
  es.addEventListener('sandbox.created', onSandbox);
  es.addEventListener('sandbox.updated', onSandbox);
  es.addEventListener('sandbox.deleted', (e) => {
    track(e as MessageEvent);
    try {
      dropSandbox((JSON.parse((e as MessageEvent).data) as Sandbox).id);
    } catch {
      /* ignore */
    }
  });
  es.addEventListener('system.reconciled', (e) => {
    track(e as MessageEvent);
    try {
      addFixes(JSON.parse((e as MessageEvent).data) as Schemas['Report']);
    } catch {
      /* ignore */
    }
  });
  const onBuild = (end: 'no' | 'built' | 'failed') => (e: Event) => {
    track(e as MessageEvent);
    try {
      const b = JSON.parse((e as MessageEvent).data) as ImageBuild;
      if (end === 'no') putBuild(b);
      else endBuild(b, end === 'failed');
    } catch {
      /* ignore */
    }
  };
  es.addEventListener('image.build', onBuild('no'));
  es.addEventListener('image.built', onBuild('built'));
  es.addEventListener('image.failed', onBuild('failed'));
  es.addEventListener('reset', () => {
    // The history we would resume from is gone: take the list afresh.
    void loadSandboxes();
  });
}

export function stopEvents() {
  source?.close();
  source = null;
  window.clearTimeout(retryTimer);
}
