#!/usr/bin/env python3
"""The injector's acceptance tests, against the built .so files and real programs.

    harness.py [golden] [matrix] [bootstrap] [e2e]      (all when none is named)

golden  the shipped objects import and export no dynamic symbol, need no library, link no
        panic machinery, fit the size budget;
matrix  small C programs built for {x86_64, aarch64 (qemu-user)} x {glibc, musl}, built like
        the runtimes the injector serves (exporting their C API, linking their library) or not,
        print what they see through getenv and environ; plus static, libc-free, `sh`, 64 KB
        values, kill switch, missing payload, child processes;
bootstrap  the Python bootstrap's unit tests (tests/test_bootstrap.py: glibc/musl detection,
        package set selection);
e2e     real node, every CPython 3.9 to 3.13 on this machine (pyenv's, by path; an absent one is
        reported as skipped) (and java when the agent was downloaded) with the real payload tree
        send spans to an OTLP/HTTP receiver run here; without LD_PRELOAD they send none. Python
        2.7 and 3.8, and an interpreter the payload has no build for, decline with one `lumigo:`
        line and run untouched. The Python trees of both CPUs carry compiled code of that CPU
        only, and of the C library of their layer, stripped (and each served CPython here runs its
        glibc set's); they hold nothing the tracer does not read (no .pyc, setuptools, tests...).
        Each CPU's whole tree is within 60 MB, its python/ within its own budget. Java
        gets only the LUMIGO_* variables, which the agent's embedded Lumigo extension maps
        (endpoints, token header, enable switches, service name); a user's own OTEL_* win.

Prints one PASS/FAIL line per check and ends with 'N passed, N failed'; exits 1 on any failure.
"""

import gzip
import http.server
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
INJECTOR = HERE.parent
CACHE = Path(os.environ["LUMIGO_CACHE"]) / "injector"
DIST = CACHE / "dist"
HOST = platform.machine()
SIZE_BUDGET = 32 * 1024

results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(f"{'PASS' if ok else 'FAIL'} {name}" + ("" if ok or not detail else f"\n     {detail}"), flush=True)
    return ok


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


# ---------------------------------------------------------------------------------- golden

def golden():
    for arch, machine in (("x86_64", "X86-64"), ("aarch64", "AArch64")):
        so = DIST / arch / "lumigo_injector.so"
        unstripped = DIST / arch / "lumigo_injector.unstripped.so"
        header = run(["readelf", "-h", "-W", str(so)]).stdout
        check(f"golden {arch}: built for {machine}", f"Machine:" in header and machine in header, header)
        dynsyms = run(["readelf", "--dyn-syms", "-W", str(so)]).stdout
        # readelf lists the mandatory null entry as symbol 0; anything numbered 1+ is a symbol.
        symbols = [l for l in dynsyms.splitlines() if l.strip()[:2].rstrip(":").isdigit() and not l.strip().startswith("0:")]
        check(f"golden {arch}: no imported or exported dynamic symbol", not symbols, "\n".join(symbols))
        dynamic = run(["readelf", "-d", "-W", str(so)]).stdout
        bad_tags = [t for t in ("(NEEDED)", "(TEXTREL)", "(VERNEED)", "(VERDEF)") if t in dynamic]
        check(f"golden {arch}: no DT_NEEDED, text relocation or symbol versions", not bad_tags, str(bad_tags))
        check(f"golden {arch}: runs from .init_array", "(INIT_ARRAY)" in dynamic, dynamic)
        relocs = run(["readelf", "-r", "-W", str(so)]).stdout
        kinds = {l.split()[2] for l in relocs.splitlines() if l[:1] in "0123456789abcdef" and len(l.split()) > 2}
        check(f"golden {arch}: only relative relocations", kinds <= {"R_X86_64_RELATIVE", "R_AARCH64_RELATIVE"}, str(kinds))
        segments = run(["readelf", "-l", "-W", str(so)]).stdout
        stack = [l for l in segments.splitlines() if "GNU_STACK" in l]
        check(f"golden {arch}: non-executable stack", len(stack) == 1 and " RWE " not in stack[0], str(stack))
        static_symbols = run(["nm", "-a", str(unstripped)]).stdout
        panicky = [l for l in static_symbols.splitlines() if any(w in l.lower() for w in ("panic", "unwind", "fmt"))]
        check(f"golden {arch}: no panic, unwinding or formatting machinery",
              bool(static_symbols.strip()) and not panicky, "\n".join(panicky[:10]) or "no symbols to inspect")
        size = so.stat().st_size
        check(f"golden {arch}: {size} bytes <= {SIZE_BUDGET}", size <= SIZE_BUDGET)


# ---------------------------------------------------------------------------------- matrix

ARCHES = {
    "x86_64": {
        "run": [],
        "cc": {"glibc": ["gcc"], "musl": ["musl-gcc"]},
        "interp": "/lib64/ld-linux-x86-64.so.2",
    },
    "aarch64": {
        "run": ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"],
        "cc": {"glibc": ["aarch64-linux-gnu-gcc"],
               "musl": ["aarch64-linux-gnu-gcc", "-specs", "/usr/lib/aarch64-linux-musl/musl-gcc.specs"]},
        "interp": "/lib/ld-linux-aarch64.so.1",
    },
}
VARS = ("NODE_OPTIONS", "PYTHONPATH", "JAVA_TOOL_OPTIONS")
UNSET = "<unset>"


def payload_tree(root, arch, with_targets):
    """A payload tree whose targets are empty files: enough for the injector's checks."""
    (root / "injector").mkdir(parents=True)
    shutil.copy(DIST / arch / "lumigo_injector.so", root / "injector")
    if with_targets:
        for f in ("nodejs/register.js", "python/bootstrap/sitecustomize.py", "java/javaagent.jar"):
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            (root / f).write_text("")
    return root


def launch(arch, exe, args, env, preload):
    """Runs `exe` for `arch` with exactly `env` (plus PATH), LD_PRELOAD'ing `preload`."""
    spec = ARCHES[arch]
    full_env = {"PATH": "/usr/bin:/bin", **env}
    if spec["run"]:
        # The preload must reach the guest, not qemu itself (a host process).
        cmd = spec["run"] + (["-E", f"LD_PRELOAD={preload}"] if preload else []) + [str(exe)] + args
    else:
        cmd = [str(exe)] + args
        if preload:
            full_env["LD_PRELOAD"] = str(preload)
    return run(cmd, env=full_env)


def seen(output):
    """{(how, NAME): value} from showenv's lines."""
    out = {}
    for line in output.splitlines():
        how, _, rest = line.partition(" ")
        name, _, value = rest.partition("=")
        out[(how, name)] = value
    return out


def check_env(name, proc, expected):
    if proc.returncode != 0:
        return check(name, False, f"exit {proc.returncode}: {proc.stderr[-500:]}")
    got = seen(proc.stdout)
    wrong = []
    for var in VARS:
        want = expected.get(var, UNSET)
        for how in ("getenv", "environ"):
            have = got.get((how, var))
            if have != want:
                wrong.append(f"{how} {var}: want {want[:120]!r} have {str(have)[:120]!r}")
    return check(name, not wrong, "; ".join(wrong) + (f" stderr: {proc.stderr[-300:]}" if proc.stderr else ""))


def build_programs(cc, out):
    """showenv built as each kind of process the injector must tell apart. Returns the first
    failed build, or the last one."""
    src = str(HERE / "c/showenv.c")
    (out / "named").mkdir()
    steps = [
        ["-o", out / "showenv", src],
        ["-o", out / "named/node", src],
        # What Node.js and a statically built CPython export for native extensions.
        ["-o", out / "node", src, "-DEXPORT=node_module_register", "-rdynamic"],
        ["-o", out / "python3.11", src, "-DEXPORT=Py_BytesMain", "-rdynamic"],
    ]
    # Stand-ins for the libraries: what counts is the name a program's DT_NEEDED records.
    for lib in ("libjli.so", "libpython3.99.so", "libjvm.so"):
        steps.append(["-shared", "-fPIC", f"-Wl,-soname,{lib}", "-o", out / lib, "-x", "c", "/dev/null"])
    for name, lib in (("java", "libjli.so"), ("javac", "libjli.so"), ("embeds-libpython", "libpython3.99.so"),
                      ("embeds-libjvm", "libjvm.so")):
        steps.append(["-o", out / name, src, "-Wl,--no-as-needed", out / lib, "-Wl,-rpath,$ORIGIN"])
    for step in steps:
        built = run(cc + ["-O2"] + [str(a) for a in step])
        if built.returncode != 0:
            break
    return built


def matrix(tmp):
    big = "--max-old-space-size=64 " + "x" * (64 * 1024)
    for arch, spec in ARCHES.items():
        root = payload_tree(tmp / arch / "lumigo", arch, True)
        bare = payload_tree(tmp / arch / "bare", arch, False)
        so, bare_so = root / "injector/lumigo_injector.so", bare / "injector/lumigo_injector.so"
        N = f"--require {root}/nodejs/register.js"
        P = f"{root}/python/bootstrap"
        J = f"-javaagent:{root}/java/javaagent.jar"
        for libc, cc in spec["cc"].items():
            tag = f"{arch}/{libc}"
            bin_dir = tmp / arch / libc
            bin_dir.mkdir(parents=True)
            built = build_programs(cc, bin_dir)
            if not check(f"{tag}: build test programs", built.returncode == 0, built.stderr):
                continue
            show = lambda name, env, so_=so: launch(arch, bin_dir / name, list(VARS), env, so_)
            # Classification reads the binary, not its name.
            check_env(f"{tag}: a plain program named node is not served",
                      show("named/node", {"NODE_OPTIONS": "--inspect"}), {"NODE_OPTIONS": "--inspect"})
            check_env(f"{tag}: javac (links libjli, not started as java) is not served", show("javac", {}), {})
            check_env(f"{tag}: node gets --require first", show("node", {}), {"NODE_OPTIONS": N})
            check_env(f"{tag}: node keeps the user's NODE_OPTIONS",
                      show("node", {"NODE_OPTIONS": "--max-old-space-size=64"}),
                      {"NODE_OPTIONS": f"{N} --max-old-space-size=64"})
            check_env(f"{tag}: python gets the bootstrap first on PYTHONPATH",
                      show("python3.11", {"PYTHONPATH": "/app"}), {"PYTHONPATH": f"{P}:/app"})
            check_env(f"{tag}: java gets -javaagent appended",
                      show("java", {"JAVA_TOOL_OPTIONS": "-Xmx64m"}), {"JAVA_TOOL_OPTIONS": f"-Xmx64m {J}"})
            user = {"NODE_OPTIONS": "--inspect", "PYTHONPATH": "/app", "JAVA_TOOL_OPTIONS": "-Xss1m"}
            check_env(f"{tag}: a non-served program sees its environment unchanged", show("showenv", user), user)
            check_env(f"{tag}: an inherited value is not added twice",
                      show("node", {"NODE_OPTIONS": f"--inspect {N}"}), {"NODE_OPTIONS": f"--inspect {N}"})
            check_env(f"{tag}: kill switch LUMIGO_INJECTOR_DISABLED=true",
                      show("node", {"LUMIGO_INJECTOR_DISABLED": "true"}), {})
            check_env(f"{tag}: LUMIGO_INJECTOR_DISABLED=false leaves it on",
                      show("python3.11", {"LUMIGO_INJECTOR_DISABLED": "false"}), {"PYTHONPATH": P})
            check_env(f"{tag}: nothing added when the payload file is missing",
                      show("node", {"NODE_OPTIONS": "--inspect"}, bare_so), {"NODE_OPTIONS": "--inspect"})
            check_env(f"{tag}: 64 KB user NODE_OPTIONS is kept whole",
                      show("node", {"NODE_OPTIONS": big}), {"NODE_OPTIONS": f"{N} {big}"})
            if not spec["run"]:
                # Without binfmt_misc the kernel cannot exec a foreign binary, so the real
                # parent-to-child inheritance is exercised natively only.
                child = launch(arch, bin_dir / "node", ["--exec-self", *VARS], {"NODE_OPTIONS": "--inspect"}, so)
                check_env(f"{tag}: the child of an injected process does not get it twice", child,
                          {"NODE_OPTIONS": f"{N} --inspect"})
            static = bin_dir / "static-node"
            build = run(cc + ["-O2", "-static", "-rdynamic", "-DEXPORT=node_module_register", "-o", str(static),
                              str(HERE / "c/showenv.c")])
            if check(f"{tag}: build static program", build.returncode == 0, build.stderr):
                # The kernel loads no dynamic loader for it, so LD_PRELOAD cannot apply.
                check_env(f"{tag}: a static binary runs untouched",
                          launch(arch, static, list(VARS), {"NODE_OPTIONS": "--inspect"}, so),
                          {"NODE_OPTIONS": "--inspect"})
            check_env(f"{tag}: a program linking libpython is served", show("embeds-libpython", {}), {"PYTHONPATH": P})
            check_env(f"{tag}: a program linking libjvm is served",
                      show("embeds-libjvm", {}), {"JAVA_TOOL_OPTIONS": J})
        nolibc = tmp / arch / "nolibc"
        build = run(spec["cc"]["glibc"] + ["-O2", "-nostdlib", "-fPIE", "-pie", "-rdynamic",
                                           f"-Wl,--dynamic-linker={spec['interp']}",
                                           "-o", str(nolibc), str(HERE / "c/nolibc.c")])
        if check(f"{arch}: build libc-free dynamic program", build.returncode == 0, build.stderr):
            # It exports Node.js's addon API, so the injector gets past classification and
            # must then find no libc.
            proc = launch(arch, nolibc, [], {}, so)
            check(f"{arch}: a libc-free dynamically linked program classified as node runs",
                  proc.returncode == 0 and proc.stdout == "nolibc ran\n" and not proc.stderr,
                  f"exit {proc.returncode} out {proc.stdout!r} err {proc.stderr!r}")
    so = tmp / HOST / "lumigo/injector/lumigo_injector.so"
    proc = run(["sh", "-c", 'printf "%s|%s" "$NODE_OPTIONS" "${PYTHONPATH-unset}"'],
               env={"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(so), "NODE_OPTIONS": "--inspect"})
    check("sh runs and sees its environment unchanged",
          proc.returncode == 0 and proc.stdout == "--inspect|unset" and not proc.stderr, f"{proc.stdout!r} {proc.stderr!r}")


# ------------------------------------------------------------------------------------- e2e

def pb_fields(buf):
    """(field number, wire type, value) of one protobuf message; enough for OTLP."""
    i = 0

    def varint():
        nonlocal i
        shift = value = 0
        while True:
            b = buf[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value

    while i < len(buf):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            yield field, wire, varint()
        elif wire == 1:
            yield field, wire, buf[i:i + 8]
            i += 8
        elif wire == 2:
            n = varint()
            yield field, wire, buf[i:i + n]
            i += n
        elif wire == 5:
            yield field, wire, buf[i:i + 4]
            i += 4
        else:
            raise ValueError(f"wire type {wire}")


def pb_attributes(fields, number):
    """KeyValue attributes (string values only) under field `number`."""
    attrs = {}
    for f, _, kv in fields:
        if f != number:
            continue
        kvf = list(pb_fields(kv))
        key = next((v.decode() for n, _, v in kvf if n == 1), "")
        for n, _, any_value in kvf:
            if n == 2:
                for an, _, av in pb_fields(any_value):
                    if an == 1:
                        attrs[key] = av.decode()
    return attrs


def decode_otlp(content_type, body):
    """[(service.name, span name, span string attributes)] from an OTLP/HTTP trace export."""
    spans = []
    if "json" in content_type:
        for rs in json.loads(body).get("resourceSpans", []):
            res = {a["key"]: a["value"].get("stringValue") for a in rs.get("resource", {}).get("attributes", [])}
            for ss in rs.get("scopeSpans", []):
                for s in ss.get("spans", []):
                    attrs = {a["key"]: a["value"].get("stringValue") for a in s.get("attributes", [])}
                    spans.append((res.get("service.name"), s.get("name"), attrs))
        return spans
    for f, _, rs in pb_fields(body):
        if f != 1:
            continue
        rsf = list(pb_fields(rs))
        res = {}
        for n, _, resource in rsf:
            if n == 1:
                res = pb_attributes(list(pb_fields(resource)), 1)
        for n, _, ss in rsf:
            if n != 2:
                continue
            for sn, _, span in pb_fields(ss):
                if sn == 2:
                    sf = list(pb_fields(span))
                    name = next((v.decode() for k, _, v in sf if k == 5), None)
                    spans.append((res.get("service.name"), name, pb_attributes(sf, 9)))
    return spans


class Receiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP receiver that keeps every export with its path and Authorization header, and
    the app's HTTP target."""

    def __init__(self):
        self.posts = []  # (path, Authorization header or None, content type, body)
        self.hits = 0
        super().__init__(("127.0.0.1", 0), self.Handler)

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.server.hits += 1
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def do_POST(self):
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            self.server.posts.append((self.path, self.headers.get("Authorization"),
                                      self.headers.get("Content-Type", ""), body))
            json_reply = "json" in self.headers.get("Content-Type", "")
            reply = b"{}" if json_reply else b""
            self.send_response(200)
            self.send_header("Content-Type", "application/json" if json_reply else "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    def trace_exports(self, service, path=None):
        """[(path, Authorization, spans of `service`)] of the trace exports holding any."""
        out = []
        for p, auth, ct, body in list(self.posts):
            if p.endswith("/v1/traces") and path in (None, p):
                spans = [s for s in decode_otlp(ct, body) if s[0] == service]
                if spans:
                    out.append((p, auth, spans))
        return out

    def spans(self, service, path=None):
        return [s for _, _, spans in self.trace_exports(service, path) for s in spans]

    def log_exports(self, service):
        """[(path, Authorization)] of the log exports naming `service` (a resource attribute's
        string is in the protobuf as is)."""
        return [(p, auth) for p, auth, _, body in list(self.posts)
                if p.endswith("/v1/logs") and service.encode() in body]

    def wait_for(self, what, timeout=20):
        deadline = time.time() + timeout
        while not what() and time.time() < deadline:
            time.sleep(0.2)
        return what()


NODE_APP = """
const http = require('http');
// From the app's own node_modules (a stand-in, NODE_PG): the distro must patch the
// application's packages, not only node's built-in modules.
const { Client } = require('pg');
// The app serves /ping and calls itself there, after its call to TARGET_URL.
const server = http.createServer((req, res) => res.end('pong'));
server.listen(0, 'localhost', () => {
  // The distro initialises asynchronously (resource detection): like a service that calls out
  // once it is up, the app makes its calls a moment after start.
  setTimeout(() => {
    http.get(process.env.TARGET_URL, (res) => {
      res.resume();
      res.on('end', () => {
        console.log('app status', res.statusCode);
        http.get(`http://localhost:${server.address().port}/ping`, (ping) => {
          ping.resume();
          ping.on('end', () => {
            new Client().query('SELECT 1 AS one', (err, result) => {
              console.log('app ping', ping.statusCode, 'query', err || result.rowCount);
              server.close();
              server.closeAllConnections();
            });
          });
        });
      });
    });
  }, 1000);
});
// The distro exports in batches on a timer and does not flush when the event loop drains.
setTimeout(() => {}, 3000);
"""
# A stand-in for the pg driver (no database needed): the client API the pg instrumentation wraps.
NODE_PG = {
    "package.json": '{"name": "pg", "version": "8.11.3", "main": "lib/index.js"}\n',
    "lib/index.js": """
class Client {
  constructor() {
    this.database = 'shop';
    this.connectionParameters = { host: 'db.local', port: 5432, database: 'shop', user: 'app' };
  }
  connect(cb) { setImmediate(() => cb && cb(null)); }
  query(text, cb) { setImmediate(() => cb(null, { command: 'SELECT', rowCount: 1, rows: [{ one: 1 }] })); }
}
module.exports = { Client };
""",
}
# What the Node.js distro (@lumigo/opentelemetry 1.53.1) logged as "Instrumented modules" with
# LUMIGO_DEBUG=true when it was shipped as its npm tree, before it was bundled into one file:
# from a directory without node_modules (http is built in; pg and redis came with the tree), and
# from one whose node_modules holds every module it instruments (logs and the AWS SDK
# instrumentation switched on). The bundle must enable the same.
NODE_INSTRUMENTED_BARE = ["http", "pg", "redis"]
NODE_INSTRUMENTED_ALL = ["amqplib", "express", "@grpc/grpc-js", "@nestjs/core", "fastify", "http", "ioredis", "kafkajs",
                         "mongodb", "pg", "@prisma/client", "redis", "@aws-sdk/client-sqs", "winston", "bunyan", "pino"]
# nodejs/ of the payload tree: register.js, the bundle, its package.json and the licenses,
# 3.4 MB in 4 files when measured (the npm tree was 103 MB in 12,442 files).
NODE_TREE_BUDGET = (5 * 1024 * 1024, 8)
# The whole payload tree of one CPU (injector/, nodejs/, python/, java/) is copied into every pod
# that has no image volumes (issue #13): at most 60 MB, apparent size as `du -sb` counts it (files
# and directories). python/ has a budget of its own: when measured (lumigo-opentelemetry 1.0.201)
# it was 19.4 MB on x86_64 and 21.6 MB on aarch64 in 2,003 entries (the whole trees 49.4 and
# 51.5 MB, java/ 26.5 MB of each), down from 41.6 and 43.8 MB in 4,838 before pip's .pyc files,
# setuptools, type stubs, .proto sources, test suites and debug symbols were left out.
PAYLOAD_BUDGET = 60 * 1000 * 1000
PYTHON_TREE_BUDGET = 24 * 1000 * 1000

PYTHON_APP = """
import os, requests
print("app status", requests.get(os.environ["TARGET_URL"]).status_code)
"""
# For the interpreters the bootstrap declines: no dependency, Python 2 syntax too.
PLAIN_PYTHON_APP = 'print("app ran")\n'
# The CPython versions the payload serves (payload/python/lock: one set per version and libc).
SERVED_PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
# Interpreters it must decline, when this machine has them.
DECLINED_PYTHONS = ("2.7", "3.8")

JAVA_APP = """
public class App {
    public static void main(String[] args) throws Exception {
        var client = java.net.http.HttpClient.newHttpClient();
        var request = java.net.http.HttpRequest.newBuilder(java.net.URI.create(System.getenv("TARGET_URL"))).build();
        var response = client.send(request, java.net.http.HttpResponse.BodyHandlers.ofString());
        // A log record for the agent's java.util.logging capture (exported when logs are on).
        java.util.logging.Logger.getLogger("app").info("app called " + response.statusCode());
        System.out.println("app status " + response.statusCode());
    }
}
"""
TOKEN = "t_0123456789abcdef01234"


def find_python(version):
    """This machine's interpreter of a Python version: pyenv's (by path: the active pyenv version
    is left alone) or one on PATH, checked by running it; None if there is none."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = sorted(pyenv.glob(f"{version}.*/bin/python")) + [Path(p) for p in (shutil.which(f"python{version}"),) if p]
    for candidate in candidates:
        probe = run([str(candidate), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], env={"PATH": os.environ["PATH"]})
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return str(candidate)
    return None


def python_app_deps(python=sys.executable, tag="cp%d%d" % sys.version_info[:2]):
    """`requests` for the Python app, as the application's own dependency on its PYTHONPATH
    (per interpreter version: its dependencies are compiled)."""
    deps = CACHE / f"e2e-python-deps-{tag}"
    if not deps.is_dir():
        tmp = Path(tempfile.mkdtemp(dir=CACHE))
        pip = run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                   "--root-user-action=ignore", "--target", str(tmp), "requests==2.32.3"], timeout=300)
        if pip.returncode != 0:
            raise RuntimeError(pip.stderr)
        tmp.rename(deps)
    return deps


ELF_MACHINES = {"x86_64": 62, "aarch64": 183}  # e_machine: EM_X86_64, EM_AARCH64
GLIBC_LIBRARIES = ("libc.so.6", "libpthread.so.0", "libm.so.6", "libdl.so.2", "librt.so.1")


def python_payload(tree, arch):
    """The Python tree of one CPU: every locked layer present, every served interpreter's set,
    and compiled code only of that CPU and of its layer's C library."""
    packages = tree / "python/packages"
    rows = (INJECTOR / "payload/python/lock/layers.txt").read_text().splitlines()
    layers = [r.split()[0] for r in rows if r.strip() and not r.startswith("#")]
    missing = [layer for layer in layers if not (packages / layer).is_dir()]
    check(f"payload {arch}: python/packages holds every locked layer ({' '.join(layers)})", not missing, str(missing))
    wanted = {f"cp{v.replace('.', '')}-{libc}" for v in SERVED_PYTHONS for libc in ("manylinux", "musllinux")}
    check(f"payload {arch}: CPython {SERVED_PYTHONS[0]} to {SERVED_PYTHONS[-1]} served on glibc and musl",
          wanted <= set(layers), str(sorted(wanted - set(layers))))
    wrong, compiled, unstripped = [], {}, []
    for so in sorted(packages.rglob("*.so")):
        rel = so.relative_to(packages)
        sections = run(["readelf", "-S", "-W", str(so)]).stdout
        debug = sorted({w for w in sections.split() if w == ".symtab" or w.startswith(".debug_")})
        exports = run(["readelf", "--dyn-syms", "-W", str(so)]).stdout.split()
        init = "PyInit_" + so.name.split(".")[0]
        if debug or init not in exports:
            unstripped.append(f"{rel}: {' '.join(debug) or 'no ' + init}")
        layer = rel.parts[0]
        tag, _, libc = layer.rpartition("-") if "-" in layer else ("", "", layer)
        with open(so, "rb") as f:
            header = f.read(20)
        machine = int.from_bytes(header[18:20], "little")
        if header[:4] != b"\x7fELF" or machine != ELF_MACHINES[arch]:
            wrong.append(f"{rel}: e_machine {machine}")
        if libc not in ("manylinux", "musllinux"):
            wrong.append(f"{rel}: compiled code in the pure layer {layer}")
            continue
        needed = [line.split("[", 1)[1].rstrip("]") for line in run(["readelf", "-d", "-W", str(so)]).stdout.splitlines()
                  if "(NEEDED)" in line]
        if libc == "musllinux" and any(n in GLIBC_LIBRARIES or n.startswith("ld-linux") for n in needed):
            wrong.append(f"{rel}: a musl layer's code needs glibc: {needed}")
        if libc == "manylinux" and any("musl" in n for n in needed):
            wrong.append(f"{rel}: a glibc layer's code needs musl: {needed}")
        # A version's set holds that version's extension modules (or version-free ones).
        if tag and not (f".cpython-{tag[2:]}-" in so.name or so.name.endswith(".abi3.so")):
            wrong.append(f"{rel}: not built for {tag}")
        compiled[layer] = compiled.get(layer, 0) + 1
    check(f"payload {arch}: the {sum(compiled.values())} .so under python/ are {arch}, each linked to its layer's C library",
          not wrong and bool(compiled), "\n     ".join(wrong[:20]))
    check(f"payload {arch}: every served interpreter's set carries its compiled code (wrapt, charset-normalizer)",
          all(compiled.get(layer) for layer in wanted), str(compiled))
    check(f"payload {arch}: the compiled modules are stripped and still export their PyInit_ function",
          not unstripped, "\n     ".join(unstripped[:20]))
    # What payload.sh's python_prune and the lock's LEFT_OUT keep out of the tree.
    left_out = {canonical(line.split(":")[1]) for line in (INJECTOR / "payload/python/lock/common.txt").read_text().splitlines()
                if line.startswith("# Left out on purpose:")}
    unread = []
    for path in packages.rglob("*"):
        rel = path.relative_to(packages)
        top = len(rel.parts) == 2
        if (path.name == "__pycache__" or path.suffix in (".pyc", ".pyi", ".proto")
                or (path.parent.suffix == ".dist-info" and path.name in ("RECORD", "INSTALLER", "REQUESTED"))
                or (top and path.name in ("bin", "test", "ci"))
                or (top and path.suffix == ".dist-info" and canonical(path.name.split("-")[0]) in left_out)
                or (top and path.name in ("setuptools", "pkg_resources", "_distutils_hack"))):
            unread.append(str(rel))
    check(f"payload {arch}: python/ holds no bytecode, type stubs, .proto sources, pip bookkeeping, console scripts, "
          f"test suites, nor the packages the lock leaves out ({', '.join(sorted(left_out))})",
          not unread, "\n     ".join(sorted(unread)[:20]))
    size, entries = apparent_size(tree / "python"), sum(1 for _ in (tree / "python").rglob("*"))
    layers_mb = ", ".join(f"{d.name} {apparent_size(d) / 1e6:.1f}" for d in sorted(packages.iterdir()))
    check(f"payload {arch}: python/ is {size / 1e6:.1f} MB in {entries} entries, within {PYTHON_TREE_BUDGET / 1e6:.0f} MB",
          size <= PYTHON_TREE_BUDGET, layers_mb)
    print(f"     payload {arch}: python/packages in MB: {layers_mb}")


def payload_budget(tree, arch):
    """The whole tree of one CPU, as the init container copies it."""
    parts = ", ".join(f"{d.name}/ {apparent_size(d) / 1e6:.1f}" for d in sorted(tree.iterdir()))
    size = apparent_size(tree)
    check(f"payload {arch}: {size / 1e6:.1f} MB in all ({parts}), within {PAYLOAD_BUDGET / 1e6:.0f} MB",
          size <= PAYLOAD_BUDGET)
    if not (tree / "java").is_dir():
        print(f"     payload {arch}: without java/ (no javac or Maven Central here): the budget was checked without it")


def apparent_size(root):
    """Bytes as `du -sb` counts them: every file's, directory's and link's own size."""
    total = os.lstat(root).st_size
    for parent, dirs, files in os.walk(root):
        total += sum(os.lstat(os.path.join(parent, name)).st_size for name in dirs + files)
    return total


def canonical(name):
    """A distribution's name as the lock and pip compare them."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def e2e(tmp):
    tree = tmp / "opt-lumigo"
    made = run([str(INJECTOR / "scripts/payload.sh"), str(tree)], timeout=900)
    if not check("e2e: payload tree assembled by the recipe", made.returncode == 0, made.stderr[-2000:]):
        return
    print("     " + made.stdout.strip())
    python_payload(tree, HOST)
    payload_budget(tree, HOST)
    e2e_python_compiled(tree)
    # The other CPU's tree, as the image build assembles it from this one.
    other = "aarch64" if HOST == "x86_64" else "x86_64"
    foreign = tmp / f"opt-lumigo-{other}"
    made = run([str(INJECTOR / "scripts/payload.sh"), str(foreign), other], timeout=900)
    if check(f"payload {other}: assembled by the recipe", made.returncode == 0, made.stderr[-2000:]):
        python_payload(foreign, other)
        payload_budget(foreign, other)
    shutil.rmtree(foreign, ignore_errors=True)
    so = tree / "injector/lumigo_injector.so"
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    port = receiver.server_address[1]
    apps = tmp / "apps"
    apps.mkdir()
    (apps / "app.js").write_text(NODE_APP)
    for name, text in NODE_PG.items():
        (apps / "node_modules/pg" / name).parent.mkdir(parents=True, exist_ok=True)
        (apps / "node_modules/pg" / name).write_text(text)
    (apps / "app.py").write_text(PYTHON_APP)
    (apps / "App.java").write_text(JAVA_APP)
    # The application's own sitecustomize, which the bootstrap's must run after its own work.
    (apps / "site").mkdir()
    (apps / "site/sitecustomize.py").write_text('print("app sitecustomize ran")\n')
    # What the operator sets on an instrumented container.
    lumigo = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        # The Node.js distro ignores calls to its endpoint's host, so the app calls the same
        # server under another name.
        "TARGET_URL": f"http://localhost:{port}/hello",
        "LUMIGO_TRACER_TOKEN": TOKEN,
        "LUMIGO_ENDPOINT": f"http://127.0.0.1:{port}/v1/traces",
        "LUMIGO_REPORT_DEPENDENCIES": "false",
    }
    # The Node.js and Python runs also get these, as they always have (the batch delay makes
    # Node.js export within the app's lifetime).
    base = {
        **lumigo,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    # The Java agent gets no OTEL_* variable: its embedded Lumigo extension maps these.
    java_base = {
        **lumigo,
        "LUMIGO_LOGS_ENDPOINT": f"http://127.0.0.1:{port}/v1/logs",
        "LUMIGO_ENABLE_TRACES": "true",
        "LUMIGO_ENABLE_LOGS": "true",
    }
    # Each interpreter on this machine, as the shell would find it, sees the composed variable.
    pythons = sorted({sys.executable, *(p for p in ("/usr/bin/python3",) if os.path.exists(p))})
    for cmd, var in [(["node", "-p", "process.env.NODE_OPTIONS"], "NODE_OPTIONS"),
                     *[([p, "-c", "import os; print(os.environ['PYTHONPATH'])"], "PYTHONPATH") for p in pythons]]:
        proc = run(cmd, env={"PATH": os.environ["PATH"], "LD_PRELOAD": str(so), "LUMIGO_SWITCH_OFF": "true"})
        want = f"--require {tree}/nodejs/register.js" if var == "NODE_OPTIONS" else f"{tree}/python/bootstrap"
        # The last line: the switched-off distro may say so first.
        check(f"e2e {cmd[0]}: sees {var}={want}", proc.stdout.strip().splitlines()[-1:] == [want], f"{proc.stdout!r} {proc.stderr[-500:]}")
    runtimes = [("node", [shutil.which("node") or "node", str(apps / "app.js")], {})]
    # Every CPython the payload serves, plus the distribution's own python3 (Debian's 3.11, the
    # interpreter of the e2e shop image) when it is one of them.
    served = [(f"python{v}", find_python(v)) for v in SERVED_PYTHONS]
    system = run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]) \
        if os.path.exists("/usr/bin/python3") else None
    if system and system.stdout.strip() in SERVED_PYTHONS:
        served.append(("python-usr-bin", "/usr/bin/python3"))
    for name, python in served:
        if python is None:
            print(f"SKIP e2e {name}: no such interpreter on this machine")
            continue
        version = run([python, "-c", "import sys; print('cp%d%d' % sys.version_info[:2])"]).stdout.strip()
        deps = python_app_deps(python, version)
        runtimes.append((name, [python, str(apps / "app.py")], {"PYTHONPATH": f"{deps}:{apps / 'site'}"}))
    if (tree / "java/javaagent.jar").is_file() and shutil.which("java"):
        # Compiled ahead: in source-file mode the agent sees a JDK tool and stays off.
        javac = run(["javac", "-d", str(apps), str(apps / "App.java")])
        if check("e2e java: test app compiled", javac.returncode == 0, javac.stderr):
            runtimes.append(("java", ["java", "-cp", str(apps), "App"], {}))
    else:
        print("     java: agent or JVM unavailable, Java end to end not run")
    e2e_node_tree(tree, so, receiver, tmp)
    for name, cmd, extra in runtimes:
        for preload in (True, False):
            service = f"e2e-{name}-{'injected' if preload else 'plain'}"
            if name == "java":
                # The service name too comes from what the operator sets.
                env = {**java_base, **extra, "LUMIGO_CONTAINER_NAME": service}
            else:
                env = {**base, **extra, "OTEL_SERVICE_NAME": service}
            if preload:
                env["LD_PRELOAD"] = str(so)
            hits = receiver.hits
            proc = run(cmd, env=env, cwd=apps, timeout=180)
            ran = proc.returncode == 0 and "app status 200" in proc.stdout and receiver.hits > hits
            if not check(f"e2e {name}{'' if preload else ' without LD_PRELOAD'}: app made its HTTP call", ran,
                         f"exit {proc.returncode}: {proc.stdout[-500:]} {proc.stderr[-1500:]}"):
                continue
            if name.startswith("python"):
                check(f"e2e {name}{'' if preload else ' without LD_PRELOAD'}: the app's own sitecustomize ran",
                      "app sitecustomize ran" in proc.stdout, proc.stdout[-500:])
            if preload:
                spans = receiver.wait_for(lambda: receiver.spans(service))
                client = [s for s in spans if any(str(v).endswith("/hello") for v in s[2].values())]
                check(f"e2e {name}: spans exported under service {service}, incl. the HTTP call",
                      bool(client), f"spans: {[(s[1], s[2]) for s in spans][:5]}; stderr: {proc.stderr[-1500:]}")
                if name == "node":
                    e2e_node_spans(receiver, service, proc)
                if name == "java":
                    auths = {(p, a) for p, a, _ in receiver.trace_exports(service)}
                    check("e2e java: spans sent to LUMIGO_ENDPOINT with 'Authorization: LumigoToken <token>'",
                          auths == {("/v1/traces", f"LumigoToken {TOKEN}")}, str(auths))
                    logs = set(receiver.wait_for(lambda: receiver.log_exports(service)))
                    check("e2e java: LUMIGO_ENABLE_LOGS=true sends logs to LUMIGO_LOGS_ENDPOINT with the token",
                          logs == {("/v1/logs", f"LumigoToken {TOKEN}")}, f"{logs}; stderr: {proc.stderr[-1500:]}")
                    check("e2e java: the token is not printed", TOKEN not in proc.stdout + proc.stderr)
            else:
                time.sleep(1)
                spans = receiver.spans(service)
                check(f"e2e {name} without LD_PRELOAD: no spans", not spans, str(spans[:3]))
    e2e_python_declines(tree, apps, base)
    if any(name == "java" for name, _, _ in runtimes):
        e2e_java_config(receiver, so, java_base, apps)
    receiver.shutdown()


# Run by every served CPython with only its glibc set's layers on sys.path (no site-packages,
# which may hold their own wrapt or protobuf): the payload's compiled modules, stripped, load and
# work.
PYTHON_COMPILED_PROBE = """
import json, sys
sys.path[:0] = sys.argv[1:]
import charset_normalizer, charset_normalizer.cd, charset_normalizer.md, wrapt, wrapt._wrappers
from google.protobuf import struct_pb2
from google.protobuf.internal import api_implementation
message = struct_pb2.Struct()
message["k"] = "v"
assert struct_pb2.Struct.FromString(message.SerializeToString())["k"] == "v"
@wrapt.decorator
def twice(wrapped, instance, args, kwargs):
    return 2 * wrapped(*args, **kwargs)
assert twice(lambda: 21)() == 42
assert charset_normalizer.from_bytes("Bonjour, ça va très bien à Paris".encode("cp1252")).best() is not None
print(json.dumps({"files": [m.__file__ for m in (wrapt._wrappers, charset_normalizer.md, charset_normalizer.cd)],
                  "protobuf": api_implementation.Type()}))
"""


def e2e_python_compiled(tree):
    packages = tree / "python/packages"
    for version in SERVED_PYTHONS:
        python = find_python(version)
        if python is None:
            continue
        layer = f"cp{version.replace('.', '')}-manylinux"
        path = [str(packages / d) for d in (layer, "manylinux", layer.split("-")[0], "common")]
        proc = run([python, "-I", "-S", "-c", PYTHON_COMPILED_PROBE, *path])
        try:
            seen = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            seen = {}
        ok = (proc.returncode == 0 and seen.get("protobuf") == "upb" and len(seen.get("files", [])) == 3
              and all(f.startswith(str(packages / layer) + "/") and f.endswith(".so") for f in seen["files"]))
        check(f"e2e python{version}: the payload's stripped compiled modules (wrapt, charset-normalizer, protobuf's upb) "
              "load and work", ok, f"exit {proc.returncode}: {proc.stdout[-800:]} {proc.stderr[-1500:]}")


def e2e_python_declines(tree, apps, base):
    """What the bootstrap cannot serve runs untouched, with one `lumigo:` line on stderr."""
    (apps / "plain.py").write_text(PLAIN_PYTHON_APP)
    so = tree / "injector/lumigo_injector.so"
    cases = []
    for version in DECLINED_PYTHONS:
        python = find_python(version)
        if python is None:
            print(f"SKIP e2e python{version} declined: no such interpreter on this machine")
            continue
        cases.append((f"python{version}", python, so, {}, f"Python {version} is not supported" if version < "3"
                      else f"no build for CPython {version} on glibc"))
    # A served interpreter whose set this payload lacks: the bootstrap and another version's set.
    partial = apps.parent / "partial-lumigo"
    (partial / "injector").mkdir(parents=True)
    shutil.copy(so, partial / "injector")
    shutil.copytree(tree / "python/bootstrap", partial / "python/bootstrap")
    for layer in ("common", "cp39-manylinux"):
        (partial / "python/packages" / layer).mkdir(parents=True)
    here = "%d.%d" % sys.version_info[:2]
    partial_so = partial / "injector/lumigo_injector.so"
    cases.append((f"python{here} on a payload without its set", sys.executable, partial_so, {},
                  f"no build for CPython {here} on glibc in this payload (it serves CPython 3.9 there)"))
    cases.append((f"python{here} on a payload without its set, LUMIGO_SWITCH_OFF=true", sys.executable, partial_so,
                  {"LUMIGO_SWITCH_OFF": "true"}, None))
    for name, python, preload, extra, why in cases:
        env = {**base, **extra, "OTEL_SERVICE_NAME": "e2e-declined", "LD_PRELOAD": str(preload),
               "PYTHONPATH": str(apps / "site")}
        proc = run([python, str(apps / "plain.py")], env=env, cwd=apps)
        lines = proc.stderr.splitlines()
        said = lines == [] if why is None else (len(lines) == 1 and lines[0].startswith("lumigo: ") and why in lines[0])
        check(f"e2e {name}: declined ({'silently' if why is None else repr(why)}), the app and its own sitecustomize ran",
              proc.returncode == 0 and proc.stdout.splitlines() == ["app sitecustomize ran", "app ran"] and said,
              f"exit {proc.returncode}: {proc.stdout[-500:]!r} {proc.stderr[-1500:]!r}")


def node_json_spans(receiver, service):
    """[(span name, OTLP span kind, attributes)] of `service`: the Node.js distro exports OTLP/JSON."""
    out = []
    for path, _, ct, body in list(receiver.posts):
        if not path.endswith("/v1/traces") or "json" not in ct:
            continue
        for rs in json.loads(body).get("resourceSpans", []):
            attrs = {a["key"]: a["value"] for a in rs.get("resource", {}).get("attributes", [])}
            if attrs.get("service.name", {}).get("stringValue") != service:
                continue
            for ss in rs.get("scopeSpans", []):
                for s in ss.get("spans", []):
                    span_attrs = {a["key"]: next(iter(a["value"].values()), None) for a in s.get("attributes", [])}
                    out.append((s.get("name"), s.get("kind"), span_attrs))
    return out


def e2e_node_spans(receiver, service, proc):
    """The Node.js app's own server, its call to it, and its pg query, traced by the bundled distro."""
    spans = receiver.wait_for(lambda: [s for s in node_json_spans(receiver, service) if s[0].startswith("pg.")])
    spans = node_json_spans(receiver, service)
    shown = f"spans: {[(n, k) for n, k, _ in spans]}; stdout: {proc.stdout[-300:]}"
    ping = {k for _, k, a in spans if any(str(v).endswith("/ping") for v in a.values())}
    # OTLP's SpanKind: 2 server, 3 client.
    check("e2e node: the app's HTTP server (server span) and its call to it (client span) are traced",
          "app ping 200" in proc.stdout and ping == {2, 3}, shown)
    check("e2e node: the app's own pg package is patched (a pg.query span)",
          any(n.startswith("pg.query") and a.get("db.statement") == "SELECT 1 AS one" for n, _, a in spans), shown)


def e2e_node_tree(tree, so, receiver, tmp):
    """nodejs/ stays small, and enables every instrumentation the npm tree did."""
    files = [f for f in (tree / "nodejs").rglob("*") if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    check(f"e2e node: nodejs/ is {size} bytes in {len(files)} files, within {NODE_TREE_BUDGET[0]} bytes and "
          f"{NODE_TREE_BUDGET[1]} files", size <= NODE_TREE_BUDGET[0] and len(files) <= NODE_TREE_BUDGET[1],
          str(sorted(f.name for f in files)[:20]))
    version = next(line.split("=", 1)[1] for line in (INJECTOR / "scripts/payload.sh").read_text().splitlines()
                   if line.startswith("NODE_DISTRO_VERSION="))
    bare, stubs = tmp / "node-bare", tmp / "node-stubs"
    bare.mkdir()
    for module in NODE_INSTRUMENTED_ALL:
        if module != "http":
            (stubs / "node_modules" / module).mkdir(parents=True)
            (stubs / "node_modules" / module / "package.json").write_text(json.dumps({"name": module, "version": "0.0.0"}))
            (stubs / "node_modules" / module / "index.js").write_text("")
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "LD_PRELOAD": str(so),
           "LUMIGO_DEBUG": "true", "LUMIGO_TRACER_TOKEN": TOKEN, "LUMIGO_REPORT_DEPENDENCIES": "false",
           "LUMIGO_ENDPOINT": f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"}
    for cwd, extra, want in ((bare, {}, NODE_INSTRUMENTED_BARE),
                             (stubs, {"LUMIGO_ENABLE_LOGS": "true", "LUMIGO_USE_AWS_SDK_INSTRUMENTATION": "true"},
                              NODE_INSTRUMENTED_ALL)):
        proc = run(["node", "-e", "setTimeout(() => {}, 200)"], env={**env, **extra}, cwd=cwd)
        out = proc.stdout + proc.stderr
        said = [line.split("Instrumented modules:", 1)[1].strip() for line in out.splitlines() if "Instrumented modules:" in line]
        have = said[0].split(", ") if said else []
        check(f"e2e node: from a directory with {'every instrumented module' if cwd == stubs else 'no node_modules'}, "
              f"the distro enables {len(want)} instrumentations, as its npm tree did",
              proc.returncode == 0 and sorted(have) == sorted(want),
              f"exit {proc.returncode}; want {want}; have {have}; {out[-800:] if not said else ''}")
        if cwd == bare:
            check(f"e2e node: the bundled distro reads its version ({version})",
                  f"Lumigo OpenTelemetry Distro v{version} started" in out, out[-800:])


def e2e_java_config(receiver, so, java_base, apps):
    """The Lumigo extension adds defaults only: the user's own settings win."""
    port = receiver.server_address[1]
    cmd = ["java", "-cp", str(apps), "App"]

    def java(env):
        proc = run(cmd, env={**java_base, **env, "LD_PRELOAD": str(so)}, cwd=apps, timeout=180)
        ok = proc.returncode == 0 and "app status 200" in proc.stdout
        return proc, ok

    user_path = "/user/v1/traces"
    proc, ok = java({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{port}{user_path}",
                     "OTEL_SERVICE_NAME": "e2e-java-user", "LUMIGO_CONTAINER_NAME": "e2e-java-container",
                     "LUMIGO_ENABLE_LOGS": "false"})
    if check("e2e java with the user's OTEL_* settings: app made its HTTP call", ok,
             f"exit {proc.returncode}: {proc.stdout[-500:]} {proc.stderr[-1500:]}"):
        exports = receiver.wait_for(lambda: receiver.trace_exports("e2e-java-user"))
        paths = {p for p, _, _ in exports}
        client = [s for _, _, spans in exports for s in spans if any(str(v).endswith("/hello") for v in s[2].values())]
        check("e2e java: the user's OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and OTEL_SERVICE_NAME win",
              paths == {user_path} and bool(client) and not receiver.spans("e2e-java-container"),
              f"paths {paths}; spans {[(s[1], s[2]) for s in client][:3]}; stderr: {proc.stderr[-1500:]}")
        check("e2e java: the token is not sent to the user's endpoint",
              {a for _, a, _ in exports} == {None}, str({a for _, a, _ in exports}))
        check("e2e java: LUMIGO_ENABLE_LOGS=false sends no logs", not receiver.log_exports("e2e-java-user"))

    bad = "t_not-a-token-123456"
    proc, ok = java({"LUMIGO_ENABLE_TRACES": "false", "LUMIGO_CONTAINER_NAME": "e2e-java-notraces",
                     "LUMIGO_TRACER_TOKEN": bad})
    if check("e2e java with LUMIGO_ENABLE_TRACES=false and a malformed token: app made its HTTP call", ok,
             f"exit {proc.returncode}: {proc.stdout[-500:]} {proc.stderr[-1500:]}"):
        logs = set(receiver.wait_for(lambda: receiver.log_exports("e2e-java-notraces")))
        check("e2e java: logs still exported, without a malformed token, which is not printed",
              logs == {("/v1/logs", None)} and bad not in proc.stdout + proc.stderr,
              f"{logs}; stderr: {proc.stderr[-1500:]}")
        check("e2e java: LUMIGO_ENABLE_TRACES=false exports no spans", not receiver.spans("e2e-java-notraces"))


def main():
    wanted = set(sys.argv[1:]) or {"golden", "matrix", "bootstrap", "e2e"}
    with tempfile.TemporaryDirectory(prefix="lumigo-injector-") as t:
        tmp = Path(t)
        if "golden" in wanted:
            golden()
        if "matrix" in wanted:
            matrix(tmp)
        if "bootstrap" in wanted:
            unit = run([sys.executable, "-m", "unittest", "-q", str(HERE / "test_bootstrap.py")])
            check("bootstrap: unit tests (libc detection, package set selection)", unit.returncode == 0,
                  unit.stderr[-3000:])
        if "e2e" in wanted:
            e2e(tmp)
    passed, failed = results.count(True), results.count(False)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not results else 0)


if __name__ == "__main__":
    main()
