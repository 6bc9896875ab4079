//! The images the e2e node runs, assembled here as OCI archives (no Docker, no registry):
//! - the product's own, from the same recipes a release builds with `docker buildx`: the final
//!   stage of `images/autotrace.Dockerfile` and `images/operator.Dockerfile` gives the config and
//!   the layout, and each `COPY --from=<stage>` is fed the artifact that stage would have built
//!   here;
//! - the telemetry proxy: the collector built from `tools/otelcol` with the chart's components;
//! - small application images with real Node.js, Python and Java taken from this machine (a program
//!   plus the libraries `ldd` lists), and a static binary;
//! - the pod sandbox (`pause`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::dockerfile::{self, Copy};
use crate::error::{Error, IoContext, Result};
use crate::oci::{ImageBuilder, ImageInfo, LayerBuilder};

/// The application images' names; pods use them with `imagePullPolicy: Never`.
pub const NODE_APP: &str = "lumigo-e2e.local/shop-node:1";
pub const PYTHON_APP: &str = "lumigo-e2e.local/shop-python:1";
pub const JAVA_APP: &str = "lumigo-e2e.local/shop-java:1";
pub const STATIC_APP: &str = "lumigo-e2e.local/shop-static:1";
/// Where the Python image keeps its own LD_PRELOAD library (a test sets LD_PRELOAD to it).
pub const USER_PRELOAD_LIBRARY: &str = "/app/libuser_preload.so";
/// The collector image's repository; its tag is the collector's version.
pub const COLLECTOR_REPOSITORY: &str = "lumigo-e2e.local/otelcol";

const NONROOT: u32 = 65532;

/// Inputs built elsewhere (just recipes, cached under `$LUMIGO_CACHE`).
pub struct Artifacts {
    /// `/opt/lumigo` as `injector/scripts/payload.sh` assembles it for this architecture.
    pub payload: PathBuf,
    /// The static (musl) `lumigo-operator` binary.
    pub operator: PathBuf,
    /// The annotated policy module (`just policy::build`).
    pub policy_module: PathBuf,
    /// The collector binary from `tools/otelcol/build.sh`.
    pub collector: PathBuf,
    /// Its version, the chart's `telemetryProxy.image.tag`: the collector image's tag.
    pub collector_tag: String,
}

impl Artifacts {
    /// From the variables `e2e/image-inputs.sh` exports: `LUMIGO_PAYLOAD_DIR`,
    /// `LUMIGO_OPERATOR_BINARY`, `LUMIGO_POLICY_WASM`, `LUMIGO_COLLECTOR`, `LUMIGO_COLLECTOR_TAG`.
    pub fn from_env() -> Result<Self> {
        let var = |name: &str| {
            std::env::var_os(name).ok_or_else(|| {
                Error::Image(format!(
                    "{name} is not set: run through `just` (`eval \"$(e2e/image-inputs.sh)\"` \
                     sets it)"
                ))
            })
        };
        Ok(Self {
            payload: var("LUMIGO_PAYLOAD_DIR")?.into(),
            operator: var("LUMIGO_OPERATOR_BINARY")?.into(),
            policy_module: var("LUMIGO_POLICY_WASM")?.into(),
            collector: var("LUMIGO_COLLECTOR")?.into(),
            collector_tag: var("LUMIGO_COLLECTOR_TAG")?.to_string_lossy().into_owned(),
        })
    }
}

/// GOARCH of this machine: the architecture of every image built here.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default()
}

/// `images/autotrace.Dockerfile`: the payload tree and the static copy step (busybox).
pub fn autotrace(name: &str, payload: &Path, out: &Path) -> Result<ImageInfo> {
    from_dockerfile("autotrace.Dockerfile", name, out, |copy| {
        match (copy.from.as_deref(), copy.sources.as_slice()) {
            // The busybox:musl stage: Debian's busybox-static is the same static program.
            (Some("copier"), [source]) if source == "/bin/busybox" => {
                Ok(PathBuf::from("/bin/busybox"))
            }
            (Some("payload"), [source]) if source == "/out/opt/lumigo" => Ok(payload.to_owned()),
            _ => Err(unmapped(copy)),
        }
    })
}

/// `images/operator.Dockerfile`: the static binary and the policy module on a distroless base.
pub fn operator(name: &str, binary: &Path, policy_module: &Path, out: &Path) -> Result<ImageInfo> {
    from_dockerfile("operator.Dockerfile", name, out, |copy| {
        match (copy.from.as_deref(), copy.sources.as_slice()) {
            (Some("build"), [source]) if source == "/out/lumigo-operator" => Ok(binary.to_owned()),
            (Some("build"), [source]) if source == "/out/lumigo-policy.wasm" => {
                Ok(policy_module.to_owned())
            }
            _ => Err(unmapped(copy)),
        }
    })
}

fn unmapped(copy: &Copy) -> Error {
    Error::Image(format!(
        "no local artifact for `COPY --from={} {}`: teach e2e/src/images.rs what that stage builds",
        copy.from.as_deref().unwrap_or("<context>"),
        copy.sources.join(" ")
    ))
}

/// An image from a Dockerfile's final stage: its base (a stand-in built here, since nothing can be
/// pulled), then the stage's own config and COPY layers.
fn from_dockerfile(
    file: &str,
    name: &str,
    out: &Path,
    resolve: impl Fn(&Copy) -> Result<PathBuf>,
) -> Result<ImageInfo> {
    let path = repo().join("images").join(file);
    let stage = dockerfile::final_stage(&path)?;
    let mut image = ImageBuilder::new(name, arch());
    base_layer(&stage.base, &mut image)?;
    dockerfile::apply_final_stage(&stage, &mut image, resolve)?;
    image.write(out)
}

/// What the final stage's `FROM` provides that the image relies on. `scratch` is empty; the
/// distroless static base is a passwd/group naming uid 65532 `nonroot`, CA certificates, `/tmp`
/// and `/home/nonroot`, which is all of it that a static binary can use.
fn base_layer(base: &str, image: &mut ImageBuilder) -> Result<()> {
    match base {
        "scratch" => Ok(()),
        distroless if distroless.starts_with("gcr.io/distroless/static") => {
            let layer = image.layer();
            layer.created_by(&format!("stand-in for {distroless}"));
            nonroot_files(layer);
            layer.file(
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/ssl/certs/ca-certificates.crt",
                0o644,
                0,
                0,
            );
            Ok(())
        }
        other => Err(Error::Image(format!(
            "the final stage's base `{other}` has no stand-in in e2e/src/images.rs"
        ))),
    }
}

fn nonroot_files(layer: &mut LayerBuilder) {
    layer
        .bytes(
            format!(
                "root:x:0:0:root:/root:/sbin/nologin\n\
                 nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
            ),
            "/etc/passwd",
            0o644,
            0,
            0,
        )
        .bytes(
            format!("root:x:0:\nnonroot:x:{NONROOT}:\n"),
            "/etc/group",
            0o644,
            0,
            0,
        )
        .dir("/tmp", 0o1777, 0, 0)
        .dir("/home/nonroot", 0o700, NONROOT, NONROOT);
}

/// The telemetry proxy: the collector binary as `/otelcol`, non-root like upstream's images
/// (the chart passes `--config`).
pub fn collector(name: &str, binary: &Path, out: &Path) -> Result<ImageInfo> {
    let mut image = ImageBuilder::new(name, arch());
    image.user("10001:10001").entrypoint(["/otelcol"]);
    let layer = image.layer();
    nonroot_files(layer);
    layer
        .created_by("the collector built by tools/otelcol/build.sh")
        .file(binary, "/otelcol", 0o755, 0, 0);
    image.write(out)
}

/// The pod sandbox image containerd starts every pod with.
pub(crate) fn pause_image(binary: &Path, name: &str, out: &Path) -> Result<ImageInfo> {
    let mut image = ImageBuilder::new(name, arch());
    image.entrypoint(["/pause"]);
    image.layer().file(binary, "/pause", 0o755, 0, 0);
    image.write(out)
}

fn apps_dir() -> PathBuf {
    repo().join("e2e/apps")
}

/// Node.js from this machine (`node` on PATH) serving `e2e/apps/server.js`.
pub fn node_app(out: &Path) -> Result<ImageInfo> {
    let node = which("node")?;
    let mut image = ImageBuilder::new(NODE_APP, arch());
    image.entrypoint(["/usr/bin/node", "/app/server.js"]);
    let layer = image.layer();
    program_with_libraries(layer, &node, "/usr/bin/node")?;
    layer.dir("/tmp", 0o1777, 0, 0).file(
        apps_dir().join("server.js"),
        "/app/server.js",
        0o644,
        0,
        0,
    );
    image.write(out)
}

/// Debian's Python 3.11 (one of the interpreters the payload's Python packages serve) serving
/// `e2e/apps/server.py`, with `requests` as the application's own dependency on its PYTHONPATH and
/// a library of its own for LD_PRELOAD.
pub fn python_app(out: &Path, cache: &Path) -> Result<ImageInfo> {
    let python = PathBuf::from("/usr/bin/python3.11");
    let stdlib = PathBuf::from("/usr/lib/python3.11");
    let deps = cached(cache, "e2e-apps/python-requests-2.32.3", |dir| {
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--root-user-action=ignore",
                "--no-compile",
                "--target",
            ])
            .arg(dir)
            .arg("requests==2.32.3"))
    })?;
    let preload_source = apps_dir().join("user_preload.c");
    let preload_key = short_hash(
        &std::fs::read_to_string(&preload_source)
            .context(|| format!("reading {}", preload_source.display()))?,
    );
    let preload = cached(
        cache,
        &format!("e2e-apps/user-preload-{preload_key}"),
        |dir| {
            run(Command::new("gcc")
                .args(["-shared", "-fPIC", "-O2", "-o"])
                .arg(dir.join("libuser_preload.so"))
                .arg(&preload_source))
        },
    )?;
    let mut image = ImageBuilder::new(PYTHON_APP, arch());
    image
        .entrypoint(["/usr/bin/python3.11", "/app/server.py"])
        .env("PYTHONPATH", "/app/deps");
    let layer = image.layer();
    program_with_libraries(layer, &python, "/usr/bin/python3.11")?;
    let extensions: Vec<PathBuf> = std::fs::read_dir(stdlib.join("lib-dynload"))
        .context(|| "listing Python's lib-dynload".into())?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .collect();
    for library in libraries_of(&extensions, &[])? {
        let path = library.display().to_string();
        layer.file(&library, &path, 0o755, 0, 0);
    }
    layer
        .tree(&stdlib, "/usr/lib/python3.11", 0, 0)
        .symlink("python3.11", "/usr/bin/python3")
        .dir("/tmp", 0o1777, 0, 0)
        .tree(&deps, "/app/deps", 0, 0)
        .file(
            preload.join("libuser_preload.so"),
            USER_PRELOAD_LIBRARY,
            0o755,
            0,
            0,
        )
        .file(apps_dir().join("server.py"), "/app/server.py", 0o644, 0, 0);
    image.write(out)
}

/// A Java runtime made from this machine's JDK with jlink, serving `e2e/apps/Server.java`.
pub fn java_app(out: &Path, cache: &Path) -> Result<ImageInfo> {
    let javac = which("javac")?;
    let jdk = javac
        .canonicalize()
        .context(|| format!("resolving {}", javac.display()))?
        .parent()
        .and_then(Path::parent)
        .map(Path::to_owned)
        .ok_or_else(|| Error::Image("cannot find the JDK of javac".into()))?;
    let version = std::fs::read_to_string(jdk.join("release"))
        .context(|| format!("reading {}/release", jdk.display()))?;
    let version_key = short_hash(&version);
    let runtime = cached(cache, &format!("e2e-apps/jre-{version_key}"), |dir| {
        std::fs::remove_dir(dir).context(|| "making room for jlink's output".into())?;
        run(Command::new(jdk.join("bin/jlink"))
            .args([
                "--add-modules",
                "ALL-MODULE-PATH",
                "--strip-debug",
                "--no-man-pages",
            ])
            .args(["--no-header-files", "--output"])
            .arg(dir))
    })?;
    let source = apps_dir().join("Server.java");
    let source_key = short_hash(
        &std::fs::read_to_string(&source).context(|| format!("reading {}", source.display()))?,
    );
    let classes = cached(
        cache,
        &format!("e2e-apps/java-classes-{source_key}"),
        |dir| run(Command::new(&javac).arg("-d").arg(dir).arg(&source)),
    )?;
    let mut image = ImageBuilder::new(JAVA_APP, arch());
    image.entrypoint(["/opt/java/bin/java", "-cp", "/app", "Server"]);
    let layer = image.layer();
    let mut natives = vec![runtime.join("bin/java")];
    natives.extend(files_named(&runtime.join("lib"), ".so")?);
    for library in libraries_of(&natives, &[runtime.join("lib"), runtime.join("lib/server")])? {
        if !library.starts_with(&runtime) {
            let path = library.display().to_string();
            layer.file(&library, &path, 0o755, 0, 0);
        }
    }
    layer
        .tree(&runtime, "/opt/java", 0, 0)
        .dir("/tmp", 0o1777, 0, 0)
        .tree(&classes, "/app", 0, 0);
    image.write(out)
}

/// A static program (busybox httpd): LD_PRELOAD means nothing to it, and it must run unharmed.
pub fn static_app(out: &Path) -> Result<ImageInfo> {
    let mut image = ImageBuilder::new(STATIC_APP, arch());
    image.entrypoint([
        "/bin/busybox",
        "httpd",
        "-f",
        "-v",
        "-p",
        "8080",
        "-h",
        "/www",
    ]);
    image
        .layer()
        .file("/bin/busybox", "/bin/busybox", 0o755, 0, 0)
        .bytes("pong\n", "/www/ping", 0o644, 0, 0)
        .dir("/tmp", 0o1777, 0, 0);
    image.write(out)
}

/// `program` at `path` in the image, plus its dynamic loader and libraries at their own paths.
fn program_with_libraries(layer: &mut LayerBuilder, program: &Path, path: &str) -> Result<()> {
    layer.file(program, path, 0o755, 0, 0);
    for library in libraries_of(&[program.to_owned()], &[])? {
        let path = library.display().to_string();
        layer.file(&library, &path, 0o755, 0, 0);
    }
    Ok(())
}

/// The libraries (and the loader) `ldd` resolves for each of `objects`, by the paths it prints.
/// `search` adds directories a program finds its own libraries in at run time (the JVM's
/// `lib/server` for `libjvm.so`, say).
fn libraries_of(objects: &[PathBuf], search: &[PathBuf]) -> Result<BTreeSet<PathBuf>> {
    let mut libraries = BTreeSet::new();
    let library_path = std::env::join_paths(search)
        .map_err(|error| Error::Image(format!("a library directory: {error}")))?;
    for object in objects {
        let output = Command::new("ldd")
            .arg(object)
            .env("LD_LIBRARY_PATH", &library_path)
            .output()
            .context(|| format!("running ldd {}", object.display()))?;
        let listed = String::from_utf8_lossy(&output.stdout);
        // A library missing here would be missing in the image, where the container would fail
        // with far less of a clue.
        if !output.status.success() || listed.contains("not found") {
            return Err(Error::Image(format!(
                "ldd {} ({}): {}{}",
                object.display(),
                output.status,
                listed.trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        for line in listed.lines() {
            // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(path) = path.filter(|path| path.starts_with('/')) {
                libraries.insert(PathBuf::from(path));
            }
        }
    }
    Ok(libraries)
}

fn files_named(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .context(|| format!("listing {}", dir.display()))?
            .path();
        if path.is_dir() {
            found.extend(files_named(&path, suffix)?);
        } else if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    Ok(found)
}

fn which(program: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| Error::Image(format!("`{program}` is not on PATH")))
}

/// `cache/key`, made once by `fill` in a temporary directory renamed into place, so an
/// interrupted build never leaves an entry that looks complete.
fn cached(cache: &Path, key: &str, fill: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let dir = cache.join(key);
    if dir.is_dir() {
        return Ok(dir);
    }
    let parent = dir.parent().unwrap_or(cache);
    std::fs::create_dir_all(parent).context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(parent)
        .context(|| format!("creating a directory in {}", parent.display()))?;
    fill(tmp.path())?;
    if !tmp.path().exists() {
        return Err(Error::Image(format!("building {key} left nothing behind")));
    }
    std::fs::rename(tmp.path(), &dir).context(|| format!("moving {key} into the cache"))?;
    // Renamed away: nothing is left for the TempDir to delete.
    let _ = tmp.keep();
    Ok(dir)
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .context(|| format!("running {command:?}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Image(format!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

fn short_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(text.as_bytes());
    digest
        .iter()
        .take(6)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// `$LUMIGO_CACHE`, by default `~/.cache/lumigo-operator`: where the application images' inputs
/// (a jlink'd runtime, `requests`, compiled classes) are kept between runs.
pub fn cache_dir() -> Result<PathBuf> {
    std::env::var_os("LUMIGO_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/lumigo-operator"))
        })
        .ok_or_else(|| Error::Image("neither LUMIGO_CACHE nor HOME is set".into()))
}

/// The product's images carry the workspace's version, which the chart's appVersion must equal
/// (`images/build.sh` refuses to build otherwise).
pub fn autotrace_name() -> String {
    format!("ghcr.io/lumigo-rs/autotrace:{}", env!("CARGO_PKG_VERSION"))
}

pub fn operator_name() -> String {
    format!(
        "ghcr.io/lumigo-rs/lumigo-operator:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The reference that pins a built image by its manifest digest, `name@sha256:…`, printed and
/// written to `<archive>.digest` (the digest alone, as the chart's `injector.image.digest`
/// takes it), as `images/build.sh` records a pushed image's.
pub fn record_digest(info: &ImageInfo, archive: &Path) -> Result<PathBuf> {
    let path = archive.with_extension("digest");
    std::fs::write(&path, format!("{}\n", info.manifest_digest))
        .context(|| format!("writing {}", path.display()))?;
    eprintln!("image {}@{}", info.name, info.manifest_digest);
    Ok(path)
}

/// Every image a cluster test or the demo runs, written into `dir`; returns the archives. The
/// product's own images' digests are recorded beside them ([`record_digest`]).
pub fn build_all(artifacts: &Artifacts, dir: &Path) -> Result<Vec<PathBuf>> {
    let cache = cache_dir()?;
    let archive = |name: &str| dir.join(format!("{name}.tar"));
    let built = autotrace(&autotrace_name(), &artifacts.payload, &archive("autotrace"))?;
    record_digest(&built, &archive("autotrace"))?;
    let built = operator(
        &operator_name(),
        &artifacts.operator,
        &artifacts.policy_module,
        &archive("operator"),
    )?;
    record_digest(&built, &archive("operator"))?;
    collector(
        &format!("{COLLECTOR_REPOSITORY}:{}", artifacts.collector_tag),
        &artifacts.collector,
        &archive("collector"),
    )?;
    node_app(&archive("shop-node"))?;
    python_app(&archive("shop-python"), &cache)?;
    java_app(&archive("shop-java"), &cache)?;
    static_app(&archive("shop-static"))?;
    Ok([
        "autotrace",
        "operator",
        "collector",
        "shop-node",
        "shop-python",
        "shop-java",
        "shop-static",
    ]
    .iter()
    .map(|name| archive(name))
    .collect())
}
