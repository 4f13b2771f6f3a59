// Hand-typed client for the sandbox agent's routes, which the manager
// proxies under /api/sandboxes/{id}/… The OpenAPI document lists these
// routes without their bodies yet, so their types are written here from the
// agent's wire contract (internal/agent/types.go). Replace with generated
// types once the document describes them.
import { request } from './client';

export interface ProcessStatus {
  name: string;
  kind: 'service' | 'dev';
  state: 'running' | 'backoff' | 'stopping' | 'stopped' | 'exited' | 'failed';
  running: boolean;
  pid?: number;
  port?: number;
  argv?: string[];
  shell?: string;
  cwd?: string;
  restart: string;
  restarts: number;
  startedAt?: string;
  exitedAt?: string;
  exitCode?: number;
  signal?: string;
  lastError?: string;
}

export interface LogChunk {
  name: string;
  content: string;
  offset: number;
  nextOffset: number;
  size: number;
}

export interface TerminalInfo {
  id: string;
  title: string;
  cmd: string[];
  pid: number;
  cols: number;
  rows: number;
  viewers: number;
  createdAt: string;
}

export interface Usage {
  total: number;
  used: number;
  free: number;
}

export interface Metrics {
  cpuPercent: number;
  load1: number;
  memory: Usage;
  disk: Usage;
  processes: number;
  timestamp: string;
}

export interface FileInfo {
  path: string;
  name: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  mode: string;
  linkTarget?: string;
  modTime: string;
}

export interface ListResult {
  path: string;
  entries: FileInfo[];
  truncated: boolean;
}

export interface FileContent {
  path: string;
  content: string;
  encoding: 'utf8' | 'base64';
  size: number;
  truncated: boolean;
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export interface AgentProblem {
  code: string;
  detail: string;
}

export interface GitRepoStatus {
  path: string;
  branch?: string;
  upstream?: string;
  dirty: boolean;
  changed: number;
  ahead: number;
  behind: number;
  lastCommit?: { hash: string; subject: string };
  error?: AgentProblem;
}

export interface GitFileDiff {
  path: string;
  added: number;
  removed: number;
  binary?: boolean;
  untracked?: boolean;
}

export interface GitRepoDiff {
  path: string;
  files: GitFileDiff[] | null;
  totalAdded: number;
  totalRemoved: number;
  error?: AgentProblem;
}

export type ProcKind = 'services' | 'dev';

const base = (id: string) => `/api/sandboxes/${encodeURIComponent(id)}`;
const seg = encodeURIComponent;

export const agent = {
  metrics: (id: string) => request<Metrics>('GET', `${base(id)}/metrics`),
  exec: (id: string, shell: string, timeoutMs = 15000) =>
    request<ExecResult>('POST', `${base(id)}/exec`, { shell, timeoutMs }),

  procs: (id: string, kind: ProcKind) =>
    request<{ processes: ProcessStatus[] | null }>('GET', `${base(id)}/${kind}`).then((r) => r.processes ?? []),
  startDev: (id: string, name: string, spec: { shell: string; port?: number; cwd?: string; restart?: string }) =>
    request<ProcessStatus>('POST', `${base(id)}/dev/${seg(name)}/start`, spec),
  procAction: (id: string, kind: ProcKind, name: string, action: 'stop' | 'restart' | 'start') =>
    request<ProcessStatus>('POST', `${base(id)}/${kind}/${seg(name)}/${action}`),
  logs: (id: string, kind: ProcKind, name: string, offset: number, limit = 65536) =>
    request<LogChunk>('GET', `${base(id)}/${kind}/${seg(name)}/logs?offset=${offset}&limit=${limit}`),

  terminals: (id: string) =>
    request<{ terminals: TerminalInfo[] | null }>('GET', `${base(id)}/terminals`).then((r) => r.terminals ?? []),
  createTerminal: (id: string, cols: number, rows: number) =>
    request<TerminalInfo>('POST', `${base(id)}/terminals`, { cols, rows }),
  closeTerminal: (id: string, tid: string) => request<void>('DELETE', `${base(id)}/terminals/${seg(tid)}`),
  attachURL: (id: string, tid: string) => {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${proto}//${location.host}${base(id)}/terminals/${seg(tid)}/attach`;
  },

  list: (id: string, path: string) => request<ListResult>('GET', `${base(id)}/files/list?path=${seg(path)}`),
  read: (id: string, path: string, encoding?: 'base64') =>
    request<FileContent>('GET', `${base(id)}/files?path=${seg(path)}${encoding ? `&encoding=${encoding}` : ''}`),
  write: (id: string, path: string, data: Blob) =>
    request<FileInfo>('PUT', `${base(id)}/files?path=${seg(path)}`, data),

  gitStatus: (id: string, paths: string[]) =>
    request<{ repos: GitRepoStatus[] | null }>('POST', `${base(id)}/git/status`, { paths }).then((r) => r.repos ?? []),
  gitDiff: (id: string, paths: string[]) =>
    request<{ repos: GitRepoDiff[] | null }>('POST', `${base(id)}/git/diff`, { paths }).then((r) => r.repos ?? []),
  gitCommit: (id: string, path: string, message: string) =>
    request<{ hash: string; branch?: string }>('POST', `${base(id)}/git/commit`, { path, message }),
  gitPush: (id: string, path: string) => request<{ output: string; branch: string; remote: string }>('POST', `${base(id)}/git/push`, { path }),
};
