import { agent } from '../api/agent';

const homes = new Map<string, Promise<string>>();

/** The sandbox user's home directory, asked once per sandbox. */
export function homeOf(id: string): Promise<string> {
  let p = homes.get(id);
  if (!p) {
    p = agent.exec(id, 'printf %s "$HOME"').then((r) => r.stdout.trim() || '/');
    p.catch(() => homes.delete(id));
    homes.set(id, p);
  }
  return p;
}
