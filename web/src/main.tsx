import { createRoot } from 'react-dom/client';
import { api, unwrap } from './api/client';
import { App } from './App';
import { loadSession } from './session';
import { fetchSandboxes, loadSandboxes, startEvents } from './state';
import './styles.css';

// Everything the first page needs is asked for at once, before React renders:
// the config, who we are, and the sandbox list.
const config = unwrap(api.GET('/config'));
const me = unwrap(api.GET('/api/me'));
const list = fetchSandboxes();
list.catch(() => undefined);

void loadSession(config, me).then((ok) => {
  if (!ok) return;
  void loadSandboxes(list).then(startEvents);
});

createRoot(document.getElementById('root')!).render(<App />);
