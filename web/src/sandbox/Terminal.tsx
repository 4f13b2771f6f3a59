// Terminals: xterm.js over the agent's PTY WebSocket, proxied by the
// manager (same origin, so the session cookie and the Origin check apply).
// Input and output are binary frames; resizes are JSON text frames; a
// reconnect gets the agent's replay of recent output first.
import { FitAddon } from '@xterm/addon-fit';
import { Terminal } from '@xterm/xterm';
import '@xterm/xterm/css/xterm.css';
import { useEffect, useRef, useState } from 'react';
import { agent, type TerminalInfo } from '../api/agent';
import { ErrorBanner, useAsync } from '../ui';

export function Terminals({ id }: { id: string }) {
  const list = useAsync(() => agent.terminals(id), [id]);
  const [active, setActive] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [creating, setCreating] = useState(false);
  const terms = list.data ?? [];
  const create = async () => {
    setCreating(true);
    setError(null);
    try {
      const t = await agent.createTerminal(id, 100, 30);
      await list.reload();
      setActive(t.id);
    } catch (e) {
      setError(e);
    } finally {
      setCreating(false);
    }
  };
  // Open one terminal at once when there is none: one click to a shell.
  useEffect(() => {
    if (list.data && list.data.length === 0 && !creating && !error) void create();
    if (list.data && list.data.length > 0 && (!active || !list.data.some((t) => t.id === active))) setActive(list.data[0].id);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [list.data]);
  const close = async (t: TerminalInfo) => {
    try {
      await agent.closeTerminal(id, t.id);
    } catch (e) {
      setError(e);
    }
    if (active === t.id) setActive(null);
    await list.reload();
  };
  return (
    <div className="terminals">
      <div className="term-tabs" role="tablist" aria-label="Terminal sessions">
        {terms.map((t, i) => (
          <span key={t.id} className={t.id === active ? 'term-tab term-tab-active' : 'term-tab'}>
            <button type="button" role="tab" aria-selected={t.id === active} onClick={() => setActive(t.id)}>
              {t.title || `Terminal ${i + 1}`}
            </button>
            <button type="button" className="term-close" aria-label={`Close ${t.title || `terminal ${i + 1}`}`} onClick={() => void close(t)}>
              ×
            </button>
          </span>
        ))}
        <button type="button" className="btn btn-sm" onClick={() => void create()} disabled={creating} aria-label="New terminal">
          +
        </button>
        <a className="btn btn-sm term-window" href={`/sandboxes/${encodeURIComponent(id)}?tab=terminal`} target="_blank" rel="noopener">
          Open in a new window
        </a>
      </div>
      <ErrorBanner error={list.error || error} />
      {terms.map((t) => (
        <TerminalPane key={t.id} sandbox={id} tid={t.id} visible={t.id === active} />
      ))}
    </div>
  );
}

type Conn = 'connecting' | 'open' | 'closed' | 'ended';

function TerminalPane({ sandbox, tid, visible }: { sandbox: string; tid: string; visible: boolean }) {
  const host = useRef<HTMLDivElement>(null);
  const [conn, setConn] = useState<Conn>('connecting');
  const [attempt, setAttempt] = useState(0);
  const termRef = useRef<{ term: Terminal; fit: FitAddon } | null>(null);
  const wsRef = useRef<WebSocket | null>(null);

  useEffect(() => {
    const term = new Terminal({
      fontSize: 14,
      scrollback: 10000,
      cursorBlink: true,
      fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, monospace',
      theme: { background: '#111418', foreground: '#e6e6e6' },
    });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(host.current!);
    termRef.current = { term, fit };
    const enc = new TextEncoder();
    const input = term.onData((d) => {
      const ws = wsRef.current;
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d));
    });
    const resize = term.onResize(({ cols, rows }) => {
      const ws = wsRef.current;
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'resize', cols, rows }));
    });
    const ro = new ResizeObserver(() => {
      if (host.current && host.current.offsetWidth > 0) fit.fit();
    });
    ro.observe(host.current!);
    return () => {
      ro.disconnect();
      input.dispose();
      resize.dispose();
      term.dispose();
      termRef.current = null;
    };
  }, []);

  useEffect(() => {
    const t = termRef.current;
    if (!t) return;
    let retry: number | undefined;
    let ended = false;
    setConn('connecting');
    // The agent replays recent output on attach: start from a clean screen.
    t.term.reset();
    const ws = new WebSocket(agent.attachURL(sandbox, tid));
    ws.binaryType = 'arraybuffer';
    wsRef.current = ws;
    ws.onopen = () => {
      setConn('open');
      if (host.current && host.current.offsetWidth > 0) t.fit.fit();
      ws.send(JSON.stringify({ type: 'resize', cols: t.term.cols, rows: t.term.rows }));
      if (visible) t.term.focus();
    };
    ws.onmessage = (m) => {
      if (typeof m.data === 'string') {
        try {
          const c = JSON.parse(m.data) as { type: string; exitCode?: number };
          if (c.type === 'exit') {
            ended = true;
            t.term.write(`\r\n\x1b[2m[process exited${c.exitCode !== undefined ? ` with ${c.exitCode}` : ''}]\x1b[0m\r\n`);
          }
        } catch {
          /* not a control message */
        }
        return;
      }
      t.term.write(new Uint8Array(m.data as ArrayBuffer));
    };
    ws.onclose = () => {
      if (wsRef.current !== ws) return;
      if (ended) {
        setConn('ended');
        return;
      }
      setConn('closed');
      // Reconnect by itself after a drop; the replay restores the screen.
      retry = window.setTimeout(() => setAttempt((a) => a + 1), 2000);
    };
    return () => {
      window.clearTimeout(retry);
      wsRef.current = null;
      ws.close();
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [sandbox, tid, attempt]);

  useEffect(() => {
    const t = termRef.current;
    if (visible && t) {
      requestAnimationFrame(() => {
        if (host.current && host.current.offsetWidth > 0) t.fit.fit();
        t.term.focus();
      });
    }
  }, [visible]);

  return (
    <div className="term-pane" hidden={!visible}>
      <div className="term-status" aria-live="polite">
        {conn === 'connecting' && 'Connecting…'}
        {conn === 'closed' && (
          <>
            Disconnected; reconnecting…{' '}
            <button type="button" className="btn btn-sm" onClick={() => setAttempt((a) => a + 1)}>
              Reconnect now
            </button>
          </>
        )}
        {conn === 'ended' && 'Session ended.'}
      </div>
      <div ref={host} className="term-host" aria-label="Terminal" />
    </div>
  );
}
