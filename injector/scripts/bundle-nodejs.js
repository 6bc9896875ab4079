#!/usr/bin/env node
// Bundles the Node.js distro (@lumigo/opentelemetry and everything it requires) into one file,
// so that every injected pod copies a few files instead of an npm tree of thousands:
//   OUT/lumigo.js                  the distro and its dependencies (CommonJS, not minified)
//   OUT/package.json               the distro's name and version, which it reads at start-up
//   OUT/THIRD-PARTY-LICENSES.txt   the license and notice files of every bundled package
// register.js (payload/nodejs) requires lumigo.js inside `try`, as it required the package.
//   usage: bundle-nodejs.js ROOT OUT     (ROOT: where `npm ci` installed the lock, esbuild included)
//
// What bundling would change, and what is done about it (each checked here, so a distro bump
// that moves them fails the build instead of shipping a tracer that silently does less):
// - The distro enables an instrumentation only when its module resolves from the distro's own
//   location (or NODE_PATH, or the working directory). Its npm tree brings `pg` and `redis`
//   itself, so those two were always on; with no tree beside the bundle they would be on only for
//   applications whose working directory holds them. The modules that resolved from the
//   installed distro are recorded at build time and still count as resolvable.
// - protobufjs loads `long` through a helper that calls `require` with a variable, which no
//   bundler can follow (it would find nothing beside the bundle); the helper is replaced by one
//   that requires the same names statically.
// - The distro reads its version from a package.json beside its code: OUT/package.json.
// The instrumentations themselves hook the application's modules through require-in-the-middle,
// which patches Node's module loader, so bundling the tracer changes nothing there; node's
// built-in modules stay outside the bundle (platform node).
'use strict';

const fs = require('fs');
const path = require('path');
const { isBuiltin } = require('module');

const [root, out] = process.argv.slice(2).map((p) => p && path.resolve(p));
if (!root || !out) {
  console.error('usage: bundle-nodejs.js ROOT OUT');
  process.exit(2);
}
const modules = path.join(root, 'node_modules');
const esbuild = require(path.join(modules, 'esbuild'));
const DISTRO = '@lumigo/opentelemetry';
const distroDir = path.join(modules, DISTRO);
const distro = readJson(path.join(distroDir, 'package.json'));
// The oldest Node.js the distro supports (`engines`); older ones are turned away by the distro's
// own version check, which is only reached if they can parse the bundle: register.js catches
// the SyntaxError of one that cannot.
const oldest = /^>=\s*(\d+)/.exec(distro.engines && distro.engines.node);
if (!oldest) fail(`no lower bound in ${DISTRO}'s engines.node (${JSON.stringify(distro.engines)})`);

function readJson(file) {
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}

function fail(message) {
  console.error(`bundle-nodejs: ${message}`);
  process.exit(1);
}

function walk(dir, found = []) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) walk(full, found);
    else if (entry.name.endsWith('.js')) found.push(full);
  }
  return found;
}

// The module names the distro's instrumentations check for (`getInstrumentedModule`), and of
// those the ones its installed tree resolves (not built-ins: those resolve from anywhere).
const sourceDir = path.join(distroDir, 'dist/src');
const instrumented = new Set();
for (const file of walk(path.join(sourceDir, 'instrumentations'))) {
  const text = fs.readFileSync(file, 'utf8');
  for (const m of text.matchAll(/getInstrumentedModule\(\)\s*\{\s*return\s*['"]([^'"]+)['"]/g)) instrumented.add(m[1]);
}
if (instrumented.size < 5) fail(`found only ${instrumented.size} instrumented module names in ${sourceDir}`);
const provided = [...instrumented].filter((name) => {
  if (isBuiltin(name)) return false;
  try {
    return !!require.resolve(name, { paths: [sourceDir] });
  } catch {
    return false;
  }
}).sort();

// Names protobufjs asks its optional-require helper for that are packages (built-ins are
// passed to the real `require`); checked against the bundled sources after the build.
const INQUIRED = ['long'];

const used = new Set();
const plugins = [{
  name: 'lumigo-bundle',
  setup(build) {
    build.onLoad({ filter: /[\\/]@lumigo[\\/]opentelemetry[\\/]dist[\\/]src[\\/]requireUtils\.js$/ }, (args) => {
      const text = fs.readFileSync(args.path, 'utf8');
      if (!/^exports\.canRequireModule = canRequireModule;$/m.test(text)) {
        fail(`${args.path} no longer defines canRequireModule as this script expects`);
      }
      used.add('requireUtils');
      return {
        loader: 'js',
        contents: `${text}
// Added by bundle-nodejs.js: modules the distro's npm tree provided, which resolved from its
// location before it was bundled.
const lumigoBundleProvided = new Set(${JSON.stringify(provided)});
exports.canRequireModule = (moduleSpecifier) =>
  lumigoBundleProvided.has(moduleSpecifier) || canRequireModule(moduleSpecifier);
`,
      };
    });
    build.onLoad({ filter: /[\\/]@protobufjs[\\/]inquire[\\/]index\.js$/ }, (args) => {
      used.add('inquire');
      const cases = INQUIRED.map((name) => `    case ${JSON.stringify(name)}: mod = require(${JSON.stringify(name)}); break;`);
      return {
        loader: 'js',
        resolveDir: path.dirname(args.path),
        contents: `"use strict";
// @protobufjs/inquire as bundle-nodejs.js writes it: the packages it may be asked for are
// required by name, so that they are bundled; built-in modules come from node.
module.exports = function inquire(moduleName) {
  try {
    var mod = null;
    switch (moduleName) {
${cases.join('\n')}
    default: if (require("module").isBuiltin(moduleName)) mod = require(moduleName);
    }
    if (mod && (mod.length || Object.keys(mod).length)) return mod;
  } catch (err) {
    // an optional module: absent
  }
  return null;
};
`,
      };
    });
  },
}];

async function main() {
  fs.mkdirSync(out, { recursive: true });
  const result = await esbuild.build({
    stdin: {
      contents: `module.exports = require(${JSON.stringify(DISTRO)});\n`,
      resolveDir: root,
      sourcefile: 'lumigo-entry.js',
      loader: 'js',
    },
    absWorkingDir: root,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: `node${oldest[1]}`,
    // Function and class names stay what the sources say (diagnostics, `constructor.name`).
    keepNames: true,
    minify: false,
    legalComments: 'eof',
    banner: {
      js: `// ${DISTRO} ${distro.version} and its dependencies, bundled by injector/scripts/bundle-nodejs.js.\n` +
        '// Their licenses: THIRD-PARTY-LICENSES.txt beside this file.',
    },
    outfile: path.join(out, 'lumigo.js'),
    metafile: true,
    logLevel: 'warning',
    plugins,
  });
  if (result.warnings.length) fail(`${result.warnings.length} warnings (printed above)`);
  if (!used.has('requireUtils')) fail("requireUtils.js was not bundled: the distro's sources changed");

  const inputs = Object.keys(result.metafile.inputs).filter((f) => f.startsWith('node_modules/'));
  for (const input of inputs) {
    const text = fs.readFileSync(path.join(root, input), 'utf8');
    for (const m of text.matchAll(/\binquire\(\s*["']([^"']+)["']\s*\)/g)) {
      if (!isBuiltin(m[1]) && !INQUIRED.includes(m[1])) fail(`${input} inquires "${m[1]}", which the replacement does not know`);
    }
  }

  // One package per node_modules/<name> or node_modules/@scope/<name> directory of an input.
  const packages = new Map();
  for (const input of inputs) {
    const m = /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(input);
    if (m && !packages.has(m[1])) packages.set(m[1], readJson(path.join(root, m[1], 'package.json')));
  }
  if (!packages.has(`node_modules/${DISTRO}`)) fail(`${DISTRO} itself is not in the bundle`);
  writeLicenses(packages);
  fs.writeFileSync(path.join(out, 'package.json'), JSON.stringify({
    name: distro.name,
    version: distro.version,
    description: `${distro.name} bundled with its dependencies into lumigo.js (register.js loads it)`,
    license: distro.license,
    private: true,
    type: 'commonjs',
  }, null, 2) + '\n');
  const size = fs.statSync(path.join(out, 'lumigo.js')).size;
  console.error(`bundle-nodejs: ${DISTRO} ${distro.version}: ${packages.size} packages, ${inputs.length} files -> ` +
    `lumigo.js ${(size / 1048576).toFixed(1)} MB (node${oldest[1]}); resolvable as before: ${provided.join(', ') || 'none'}`);
}

// Every bundled package with its license and notice files; identical texts (the many copies of
// the Apache License) are written once, after the list of the packages they belong to.
function writeLicenses(packages) {
  const byText = new Map();
  for (const [dir, pkg] of [...packages].sort((a, b) => a[0].localeCompare(b[0]))) {
    const id = `${pkg.name}@${pkg.version} (${dir})`;
    const files = fs.readdirSync(path.join(root, dir), { withFileTypes: true })
      .filter((f) => f.isFile() && /^(licen[cs]e|notice|copying)/i.test(f.name))
      .map((f) => f.name)
      .sort();
    const texts = files.map((f) => fs.readFileSync(path.join(root, dir, f), 'utf8').trim());
    const key = texts.length ? texts.join('\n\n') : '(no license file in the package)';
    if (!byText.has(key)) byText.set(key, []);
    const stated = pkg.license || pkg.licenses;
    byText.get(key).push(`${id}: ${typeof stated === 'string' ? stated : stated ? JSON.stringify(stated) : 'no license stated'}`);
  }
  const rule = '='.repeat(78);
  const parts = [`The packages bundled into lumigo.js, grouped by their license text.\n`];
  for (const [text, ids] of byText) parts.push(`${rule}\n${ids.join('\n')}\n${rule}\n\n${text}\n`);
  fs.writeFileSync(path.join(out, 'THIRD-PARTY-LICENSES.txt'), parts.join('\n'));
}

main().catch((err) => fail(err.stack || String(err)));
