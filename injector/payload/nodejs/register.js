// Loaded through `NODE_OPTIONS=--require` by lumigo_injector.so. The bare specifier resolves
// from this directory's node_modules, never the application's, and a tracer that fails to
// load (an unsupported Node.js version, say) must not stop the application.
'use strict';
try {
  require('@lumigo/opentelemetry');
} catch (err) {
  if (String(process.env.LUMIGO_DEBUG).toLowerCase() === 'true') {
    console.error('lumigo: tracer not loaded:', err);
  }
}
