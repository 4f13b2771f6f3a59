// /docs: Swagger UI (bundled, served by Atelier) over the manager's own
// /openapi.json. No validator badge (it would call a public validator).
declare global {
  interface Window {
    SwaggerUIBundle?: (opts: Record<string, unknown>) => unknown;
  }
}

function add<K extends 'link' | 'script'>(tag: K, attrs: Record<string, string>): Promise<void> {
  return new Promise((resolve, reject) => {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    el.addEventListener('load', () => resolve());
    el.addEventListener('error', () => reject(new Error(`could not load ${attrs.src ?? attrs.href}`)));
    document.head.appendChild(el);
  });
}

async function main() {
  await Promise.all([
    add('link', { rel: 'stylesheet', href: '/assets/docs/swagger-ui.css' }),
    add('script', { src: '/assets/docs/swagger-ui-bundle.js' }),
  ]);
  const root = document.getElementById('docs')!;
  root.textContent = '';
  window.SwaggerUIBundle!({
    url: '/openapi.json',
    domNode: root,
    validatorUrl: null,
    deepLinking: true,
    tryItOutEnabled: false,
    withCredentials: true,
  });
}

main().catch((e: Error) => {
  const root = document.getElementById('docs')!;
  root.textContent = `The API reference could not load: ${e.message}. The document itself is at /openapi.json.`;
});

export {};
