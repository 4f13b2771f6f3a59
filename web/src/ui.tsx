import { useCallback, useEffect, useId, useRef, useState, useSyncExternalStore, type ReactNode } from 'react';
import { errorText, type SandboxStatus } from './api/client';

/** An API error shown with its detail (and the fields it names), never swallowed. */
export function ErrorBanner({ error, onDismiss }: { error: unknown; onDismiss?: () => void }) {
  if (!error) return null;
  return (
    <div className="banner banner-error" role="alert">
      <span>{errorText(error)}</span>
      {onDismiss && (
        <button type="button" className="btn btn-ghost btn-sm" onClick={onDismiss} aria-label="Dismiss error">
          ×
        </button>
      )}
    </div>
  );
}

const statusTone: Record<SandboxStatus, string> = {
  running: 'ok',
  creating: 'busy',
  starting: 'busy',
  stopping: 'busy',
  destroying: 'busy',
  stopped: 'idle',
  error: 'bad',
};

export function StatusBadge({ status }: { status: SandboxStatus }) {
  return <span className={`badge badge-${statusTone[status]}`}>{status}</span>;
}

export function Badge({ tone = 'idle', children }: { tone?: 'ok' | 'busy' | 'idle' | 'bad'; children: ReactNode }) {
  return <span className={`badge badge-${tone}`}>{children}</span>;
}

/** A modal dialog on the native <dialog> (focus kept inside, Escape closes). */
export function Dialog({ open, title, onClose, children, wide }: { open: boolean; title: string; onClose: () => void; children: ReactNode; wide?: boolean }) {
  const ref = useRef<HTMLDialogElement>(null);
  const id = useId();
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (open && !d.open) d.showModal();
    if (!open && d.open) d.close();
  }, [open]);
  return (
    <dialog ref={ref} className={wide ? 'dialog dialog-wide' : 'dialog'} aria-labelledby={id} onClose={onClose} onCancel={onClose}>
      {open && (
        <>
          <header className="dialog-head">
            <h2 id={id}>{title}</h2>
            <button type="button" className="btn btn-ghost btn-sm" onClick={onClose} aria-label="Close dialog">
              ×
            </button>
          </header>
          <div className="dialog-body">{children}</div>
        </>
      )}
    </dialog>
  );
}

export interface Confirmation {
  title: string;
  body: ReactNode;
  action: string;
  danger?: boolean;
  run: () => Promise<unknown>;
}

/** Asks before an action, runs it, and shows its error in place if it fails. */
export function ConfirmDialog({ confirm, onDone }: { confirm: Confirmation | null; onDone: () => void }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => setError(null), [confirm]);
  return (
    <Dialog open={!!confirm} title={confirm?.title ?? ''} onClose={onDone}>
      {confirm && (
        <form
          onSubmit={async (e) => {
            e.preventDefault();
            setBusy(true);
            setError(null);
            try {
              await confirm.run();
              onDone();
            } catch (err) {
              setError(err);
            } finally {
              setBusy(false);
            }
          }}
        >
          <div className="stack">{confirm.body}</div>
          <ErrorBanner error={error} />
          <div className="dialog-actions">
            <button type="button" className="btn" onClick={onDone}>
              Cancel
            </button>
            <button type="submit" className={confirm.danger ? 'btn btn-danger' : 'btn btn-primary'} disabled={busy} autoFocus>
              {busy ? 'Working…' : confirm.action}
            </button>
          </div>
        </form>
      )}
    </Dialog>
  );
}

export function CopyButton({ text, label = 'Copy' }: { text: string; label?: string }) {
  const [done, setDone] = useState(false);
  return (
    <button
      type="button"
      className="btn btn-sm"
      onClick={async () => {
        try {
          await navigator.clipboard.writeText(text);
        } catch {
          // No clipboard permission (plain HTTP on another name): select the text instead.
          const r = document.createRange();
          const el = document.querySelector(`[data-copy="${CSS.escape(text)}"]`);
          if (el) {
            r.selectNodeContents(el);
            getSelection()?.removeAllRanges();
            getSelection()?.addRange(r);
          }
        }
        setDone(true);
        setTimeout(() => setDone(false), 1500);
      }}
    >
      {done ? 'Copied' : label}
    </button>
  );
}

// Toasts: short confirmations of actions done ("Sandbox stopped").
type Toast = { id: number; text: string; tone: 'ok' | 'bad' };
let toasts: Toast[] = [];
const toastListeners = new Set<() => void>();
let nextToast = 1;

export function toast(text: string, tone: 'ok' | 'bad' = 'ok') {
  const t = { id: nextToast++, text, tone };
  toasts = [...toasts, t];
  toastListeners.forEach((fn) => fn());
  setTimeout(() => {
    toasts = toasts.filter((x) => x.id !== t.id);
    toastListeners.forEach((fn) => fn());
  }, 5000);
}

export function Toasts() {
  const list = useSyncExternalStore(
    (fn) => {
      toastListeners.add(fn);
      return () => toastListeners.delete(fn);
    },
    () => toasts,
  );
  return (
    <div className="toasts" role="status" aria-live="polite">
      {list.map((t) => (
        <div key={t.id} className={`toast toast-${t.tone}`}>
          {t.text}
        </div>
      ))}
    </div>
  );
}

/** Loads data once per key; reload() refetches. The previous data stays shown while reloading. */
export function useAsync<T>(fn: () => Promise<T>, deps: unknown[]): { data: T | undefined; error: unknown; loading: boolean; reload: () => Promise<void> } {
  const [data, setData] = useState<T>();
  const [error, setError] = useState<unknown>(null);
  const [loading, setLoading] = useState(true);
  const seq = useRef(0);
  // eslint-disable-next-line react-hooks/exhaustive-deps
  const run = useCallback(fn, deps);
  const reload = useCallback(async () => {
    const n = ++seq.current;
    setLoading(true);
    try {
      const d = await run();
      if (n === seq.current) {
        setData(d);
        setError(null);
      }
    } catch (e) {
      if (n === seq.current) setError(e);
    } finally {
      if (n === seq.current) setLoading(false);
    }
  }, [run]);
  useEffect(() => {
    void reload();
  }, [reload]);
  return { data, error, loading, reload };
}

/** Runs fn every ms while the page is visible and the component mounted. */
export function useVisibleInterval(fn: () => void, ms: number, enabled = true) {
  const ref = useRef(fn);
  ref.current = fn;
  useEffect(() => {
    if (!enabled) return;
    const t = window.setInterval(() => {
      if (document.visibilityState === 'visible') ref.current();
    }, ms);
    return () => window.clearInterval(t);
  }, [ms, enabled]);
}

export function Field({ label, hint, children }: { label: string; hint?: ReactNode; children: (id: string) => ReactNode }) {
  const id = useId();
  return (
    <div className="field">
      <label htmlFor={id}>{label}</label>
      {children(id)}
      {hint && <small className="hint">{hint}</small>}
    </div>
  );
}

export function Empty({ title, children }: { title: string; children?: ReactNode }) {
  return (
    <div className="empty">
      <p className="empty-title">{title}</p>
      {children && <div className="empty-body">{children}</div>}
    </div>
  );
}

export function Meter({ label, value, detail }: { label: string; value: number; detail?: string }) {
  const v = Math.max(0, Math.min(100, value));
  return (
    <div className="meter">
      <div className="meter-head">
        <span>{label}</span>
        <span>{detail ?? `${Math.round(v)}%`}</span>
      </div>
      <div className="meter-bar" role="meter" aria-label={label} aria-valuemin={0} aria-valuemax={100} aria-valuenow={Math.round(v)}>
        <div className={v > 90 ? 'meter-fill meter-hot' : 'meter-fill'} style={{ width: `${v}%` }} />
      </div>
    </div>
  );
}
