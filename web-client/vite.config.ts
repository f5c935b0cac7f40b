// Builds the client into dist/: index.html plus content-hashed bundles in dist/assets/, all served by the
// gateway from its own origin. welcome.html is the short page the gateway shows at / (no script). No inline scripts or styles are emitted (the gateway's CSP forbids them).
import { defineConfig } from 'vite'

export default defineConfig({
  base: '/',
  build: {
    outDir: 'dist',
    assetsDir: 'assets',
    emptyOutDir: true,
    sourcemap: false,
    target: ['chrome111', 'firefox114', 'safari16.4'],
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    rollupOptions: { input: { index: 'index.html', welcome: 'welcome.html' } },
  },
  worker: { format: 'es' },
})
