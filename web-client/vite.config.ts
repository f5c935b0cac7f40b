// Builds the client into dist/: index.html plus content-hashed bundles in dist/assets/, all served by the
// gateway from its own origin. No inline scripts or styles are emitted (the gateway's CSP forbids them).
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
  },
  worker: { format: 'es' },
})
