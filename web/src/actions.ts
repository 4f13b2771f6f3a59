// Lifecycle actions shared by the list and the sandbox page.
import { api, unwrap, type Sandbox } from './api/client';
import { dropSandbox, putSandbox } from './state';

const p = (id: string) => ({ params: { path: { id } } });

export async function stopSandbox(id: string) {
  putSandbox(await unwrap(api.POST('/api/sandboxes/{id}/stop', p(id))));
}
export async function startSandbox(id: string) {
  putSandbox(await unwrap(api.POST('/api/sandboxes/{id}/start', p(id))));
}
export async function restartSandbox(id: string) {
  putSandbox(await unwrap(api.POST('/api/sandboxes/{id}/restart', p(id))));
}
// promoteSandbox saves a running sandbox's disk as its workspace's
// prebuild; the sandbox is stopped and started again meanwhile.
export async function promoteSandbox(id: string) {
  await unwrap(api.POST('/api/sandboxes/{id}/promote', p(id)));
}
export async function deleteSandbox(id: string) {
  await unwrap(api.DELETE('/api/sandboxes/{id}', p(id)));
  dropSandbox(id);
}

export function label(sb: Sandbox): string {
  return sb.name ? `${sb.name} (${sb.id})` : sb.id;
}

export const busyStatuses = new Set(['creating', 'starting', 'stopping', 'destroying']);
