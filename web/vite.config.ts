import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineConfig, type Plugin } from 'vite';

const require = createRequire(import.meta.url);
const here = fileURLToPath(new URL('.', import.meta.url));

// Swagger UI for /docs ships prebuilt: copied as is, never re-bundled, and
// loaded only by docs.html, so the dashboard's own pages never pay for it.
function swaggerUI(): Plugin {
  return {
    name: 'atelier-swagger-ui',
    apply: 'build',
    generateBundle() {
      for (const f of ['swagger-ui-bundle.js', 'swagger-ui.css']) {
        this.emitFile({
          type: 'asset',
          fileName: `assets/docs/${f}`,
          source: readFileSync(require.resolve(`swagger-ui-dist/${f}`)),
        });
      }
    },
  };
}

export default defineConfig({
  // JSX by esbuild alone: no React plugin (no fast refresh needed for an embedded build).
  esbuild: { jsx: 'automatic' },
  plugins: [swaggerUI()],
  build: {
    outDir: resolve(here, '../internal/dashboard/dist/app'),
    emptyOutDir: true,
    target: 'es2020',
    sourcemap: false,
    // Inline nothing: the CSP allows scripts and fonts from the origin only, no data: scripts.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    reportCompressedSize: true,
    rollupOptions: {
      input: {
        index: resolve(here, 'index.html'),
        docs: resolve(here, 'docs.html'),
      },
    },
  },
});
