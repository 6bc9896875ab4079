// Loaded through `NODE_OPTIONS=--require` by lumigo_injector.so. lumigo.js beside it is the
// Lumigo distro (@lumigo/opentelemetry) bundled with its dependencies by
// scripts/bundle-nodejs.js; a relative path, so nothing resolves through the application's
// node_modules. A tracer that fails to load (a Node.js version too old to parse the bundle,
// say) must not stop the application, so this file itself uses only the oldest syntax.
'use strict';
try {
  require('./lumigo.js');
} catch (err) {
  if (String(process.env.LUMIGO_DEBUG).toLowerCase() === 'true') {
    console.error('lumigo: tracer not loaded:', err);
  }
}
