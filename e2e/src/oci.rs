//! Single-platform OCI image-layout archives assembled without a container engine, for
//! `ctr -n k8s.io images import FILE.tar`: the e2e cluster runs the same images a release builds
//! with docker buildx, made here from locally built artifacts.
//!
//! Layers are uncompressed tars (`application/vnd.oci.image.layer.v1.tar`): the archive only
//! travels to a containerd on the same machine, where gzip would cost most of the build time and
//! save nothing. The output is reproducible (mtime 0, no user or group names, entries and JSON keys
//! sorted), so unchanged inputs give an unchanged manifest digest and containerd sees nothing new
//! to unpack.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, Digest, HistoryBuilder, ImageConfiguration,
    ImageConfigurationBuilder, ImageIndex, ImageIndexBuilder, ImageManifest, ImageManifestBuilder,
    MediaType, OciLayoutBuilder, Os, PlatformBuilder, RootFsBuilder, ANNOTATION_REF_NAME,
};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, IoContext, Result};

/// What containerd names an imported image by; it takes precedence over the OCI ref name.
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

/// Builds one image: its runtime config and its layers, bottom first.
pub struct ImageBuilder {
    name: String,
    arch: String,
    user: Option<String>,
    env: Vec<(String, String)>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    labels: BTreeMap<String, String>,
    layers: Vec<LayerBuilder>,
}

/// What [`ImageBuilder::write`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The fully qualified name containerd stores the image under (`docker.io/library/x:latest`
    /// for `x`), which is also the name a pod spec must use.
    pub name: String,
    /// `sha256:…` of the manifest: what containerd reports as the image's digest.
    pub manifest_digest: String,
    /// Bytes of manifest, config and layers together: the SIZE `ctr images ls` shows.
    pub size: u64,
}

/// The entries of one layer. Paths are image paths (absolute or not, `.` and repeated `/` ignored);
/// a later entry replaces an earlier one at the same path, and missing parent directories are
/// added as `0755 0:0`. Nothing is read from disk until [`ImageBuilder::write`].
pub struct LayerBuilder {
    created_by: String,
    ops: Vec<Op>,
}

enum Op {
    File {
        host: PathBuf,
        path: String,
        meta: Meta,
    },
    Bytes {
        data: Vec<u8>,
        path: String,
        meta: Meta,
    },
    Dir {
        path: String,
        meta: Meta,
    },
    Symlink {
        target: String,
        path: String,
    },
    Tree {
        host: PathBuf,
        path: String,
        uid: u32,
        gid: u32,
    },
}

#[derive(Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
}

impl ImageBuilder {
    /// `name` as in a pod spec (`ghcr.io/lumigo-rs/autotrace:0.1.0`); `arch` a GOARCH, `amd64` or
    /// `arm64`. Both are checked by [`ImageBuilder::write`].
    pub fn new(name: &str, arch: &str) -> Self {
        Self {
            name: name.to_owned(),
            arch: arch.to_owned(),
            user: None,
            env: Vec::new(),
            entrypoint: None,
            cmd: None,
            working_dir: None,
            labels: BTreeMap::new(),
            layers: Vec::new(),
        }
    }

    /// `uid[:gid]` or a name the image's /etc/passwd knows.
    pub fn user(&mut self, user: &str) -> &mut Self {
        self.user = Some(user.to_owned());
        self
    }

    /// Sets one variable as `ENV` does: an existing one keeps its place and takes the new value.
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.to_owned(),
            None => self.env.push((key.to_owned(), value.to_owned())),
        }
        self
    }

    pub fn entrypoint<S: Into<String>>(&mut self, args: impl IntoIterator<Item = S>) -> &mut Self {
        self.entrypoint = Some(args.into_iter().map(Into::into).collect());
        self
    }

    pub fn cmd<S: Into<String>>(&mut self, args: impl IntoIterator<Item = S>) -> &mut Self {
        self.cmd = Some(args.into_iter().map(Into::into).collect());
        self
    }

    pub fn working_dir(&mut self, dir: &str) -> &mut Self {
        self.working_dir = Some(dir.to_owned());
        self
    }

    pub fn label(&mut self, key: &str, value: &str) -> &mut Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Starts a new layer on top of the others.
    pub fn layer(&mut self) -> &mut LayerBuilder {
        self.layers.push(LayerBuilder {
            created_by: "lumigo-e2e".to_owned(),
            ops: Vec::new(),
        });
        self.layers.last_mut().expect("a layer was just pushed")
    }

    /// Writes the OCI image-layout tar to `out` (replacing it only once complete, so an interrupted
    /// write never leaves a truncated archive to import). Temporary files go beside `out`.
    pub fn write(&self, out: impl AsRef<Path>) -> Result<ImageInfo> {
        let out = out.as_ref();
        let (name, tag) = normalize_name(&self.name)?;
        let arch = match self.arch.as_str() {
            "amd64" => Arch::Amd64,
            "arm64" => Arch::ARM64,
            other => {
                return Err(Error::Image(format!(
                    "{name}: architecture {other:?} is not amd64 or arm64"
                )))
            }
        };
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };

        let mut blobs: BTreeMap<String, Blob> = BTreeMap::new();
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        let mut history = Vec::new();
        let mut size = 0;
        for (i, layer) in self.layers.iter().enumerate() {
            let (file, hex, layer_size) = layer
                .write(dir)
                .map_err(|e| Error::Image(format!("{name}: layer {i}: {e}")))?;
            layers.push(descriptor(MediaType::ImageLayer, &hex, layer_size)?);
            size += layer_size;
            // Uncompressed, the layer is its own diff: its diff_id is its digest.
            diff_ids.push(format!("sha256:{hex}"));
            history.push(
                HistoryBuilder::default()
                    .created_by(layer.created_by.clone())
                    .build()
                    .map_err(spec_error)?,
            );
            blobs.insert(hex, Blob::File(file, layer_size));
        }

        let config = ImageConfigurationBuilder::default()
            .architecture(arch.clone())
            .os(Os::Linux)
            .config(self.runtime_config()?)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(diff_ids)
                    .build()
                    .map_err(spec_error)?,
            )
            .history(history)
            .build()
            .map_err(spec_error)?;
        let config = canonical_json(serde_json::to_value(&config))?;
        let config_hex = sha256_hex(&config);

        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(
                MediaType::ImageConfig,
                &config_hex,
                config.len() as u64,
            )?)
            .layers(layers)
            .build()
            .map_err(spec_error)?;
        let manifest = canonical_json(serde_json::to_value(&manifest))?;
        let manifest_hex = sha256_hex(&manifest);

        size += manifest.len() as u64 + config.len() as u64;
        let mut index_entry = descriptor(
            MediaType::ImageManifest,
            &manifest_hex,
            manifest.len() as u64,
        )?;
        index_entry.set_platform(Some(
            PlatformBuilder::default()
                .architecture(arch)
                .os(Os::Linux)
                .build()
                .map_err(spec_error)?,
        ));
        index_entry.set_annotations(Some(HashMap::from([
            (ANNOTATION_IMAGE_NAME.to_owned(), name.clone()),
            // Only the tag, as docker buildx writes it: a bare ref name is relative to the layout.
            (ANNOTATION_REF_NAME.to_owned(), tag),
        ])));
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![index_entry])
            .build()
            .map_err(spec_error)?;
        let layout = OciLayoutBuilder::default()
            .image_layout_version("1.0.0")
            .build()
            .map_err(spec_error)?;

        blobs.insert(config_hex, Blob::Bytes(config));
        blobs.insert(manifest_hex.clone(), Blob::Bytes(manifest));
        let layout = canonical_json(serde_json::to_value(&layout))?;
        let index = canonical_json(serde_json::to_value(&index))?;
        write_archive(out, dir, &layout, &index, blobs)?;
        Ok(ImageInfo {
            name,
            manifest_digest: format!("sha256:{manifest_hex}"),
            size,
        })
    }

    fn runtime_config(&self) -> Result<oci_spec::image::Config> {
        let mut config = ConfigBuilder::default();
        if let Some(user) = &self.user {
            config = config.user(user.clone());
        }
        if !self.env.is_empty() {
            config = config.env(
                self.env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>(),
            );
        }
        if let Some(entrypoint) = &self.entrypoint {
            config = config.entrypoint(entrypoint.clone());
        }
        if let Some(cmd) = &self.cmd {
            config = config.cmd(cmd.clone());
        }
        if let Some(dir) = &self.working_dir {
            config = config.working_dir(dir.clone());
        }
        if !self.labels.is_empty() {
            config = config.labels(self.labels.clone().into_iter().collect::<HashMap<_, _>>());
        }
        config.build().map_err(spec_error)
    }
}

impl LayerBuilder {
    /// What the image's history says made this layer (`docker history` shows it).
    pub fn created_by(&mut self, text: &str) -> &mut Self {
        self.created_by = text.to_owned();
        self
    }

    /// A regular file with the contents of `host` (a symlink there is followed).
    pub fn file(
        &mut self,
        host: impl AsRef<Path>,
        path: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> &mut Self {
        self.ops.push(Op::File {
            host: host.as_ref().to_owned(),
            path: path.to_owned(),
            meta: Meta { mode, uid, gid },
        });
        self
    }

    pub fn bytes(
        &mut self,
        data: impl Into<Vec<u8>>,
        path: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> &mut Self {
        self.ops.push(Op::Bytes {
            data: data.into(),
            path: path.to_owned(),
            meta: Meta { mode, uid, gid },
        });
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32, uid: u32, gid: u32) -> &mut Self {
        self.ops.push(Op::Dir {
            path: path.to_owned(),
            meta: Meta { mode, uid, gid },
        });
        self
    }

    /// A symlink owned by 0:0; `target` is stored as given, relative or absolute.
    pub fn symlink(&mut self, target: &str, path: &str) -> &mut Self {
        self.ops.push(Op::Symlink {
            target: target.to_owned(),
            path: path.to_owned(),
        });
        self
    }

    /// `host_dir` and everything below it as `image_dir`, as `COPY dir/ image_dir` does: modes and
    /// symlinks as on disk, every entry owned by `uid:gid`. Only files, directories and symlinks
    /// may be there.
    pub fn tree(
        &mut self,
        host_dir: impl AsRef<Path>,
        image_dir: &str,
        uid: u32,
        gid: u32,
    ) -> &mut Self {
        self.ops.push(Op::Tree {
            host: host_dir.as_ref().to_owned(),
            path: image_dir.to_owned(),
            uid,
            gid,
        });
        self
    }

    /// The layer's entries by their path in the archive (no leading `/`), parents included.
    fn nodes(&self) -> Result<BTreeMap<String, Node<'_>>> {
        let mut nodes = BTreeMap::new();
        for op in &self.ops {
            match op {
                Op::File { host, path, meta } => {
                    nodes.insert(
                        non_root(path)?,
                        Node::new(Kind::File(Content::Host(host.clone())), *meta),
                    );
                }
                Op::Bytes { data, path, meta } => {
                    nodes.insert(
                        non_root(path)?,
                        Node::new(Kind::File(Content::Bytes(data)), *meta),
                    );
                }
                Op::Dir { path, meta } => {
                    let path = archive_path(path)?;
                    // The root's ownership and mode belong to the runtime, not to a layer.
                    if !path.is_empty() {
                        nodes.insert(path, Node::new(Kind::Dir, *meta));
                    }
                }
                Op::Symlink { target, path } => {
                    let meta = Meta {
                        mode: 0o777,
                        uid: 0,
                        gid: 0,
                    };
                    nodes.insert(
                        non_root(path)?,
                        Node::new(Kind::Symlink(target.clone()), meta),
                    );
                }
                Op::Tree {
                    host,
                    path,
                    uid,
                    gid,
                } => {
                    let meta =
                        fs::metadata(host).context(|| format!("reading {}", host.display()))?;
                    if !meta.is_dir() {
                        return Err(Error::Image(format!(
                            "{} is not a directory",
                            host.display()
                        )));
                    }
                    walk(host, &archive_path(path)?, meta, *uid, *gid, &mut nodes)?;
                }
            }
        }

        let mut parents = Vec::new();
        for path in nodes.keys() {
            for parent in ancestors(path) {
                match nodes.get(parent) {
                    Some(Node {
                        kind: Kind::Dir, ..
                    }) => {}
                    Some(other) => {
                        return Err(Error::Image(format!(
                            "/{parent} is a {} but /{path} is inside it",
                            other.kind.noun()
                        )))
                    }
                    None => parents.push(parent.to_owned()),
                }
            }
        }
        for parent in parents {
            let meta = Meta {
                mode: 0o755,
                uid: 0,
                gid: 0,
            };
            nodes.insert(parent, Node::new(Kind::Dir, meta));
        }
        Ok(nodes)
    }

    /// The layer tar in an anonymous temporary file, with its sha256 (hex) and size.
    fn write(&self, dir: &Path) -> Result<(File, String, u64)> {
        let nodes = self.nodes()?;
        let file = tempfile::tempfile_in(dir)
            .context(|| format!("creating a temporary file in {}", dir.display()))?;
        let mut tar = tar::Builder::new(Hashing::new(BufWriter::new(file)));
        for (path, node) in &nodes {
            append_node(&mut tar, path, node)?;
        }
        let hashing = tar
            .into_inner()
            .context(|| "finishing a layer".to_owned())?;
        let (hex, size) = (format!("{:x}", hashing.sha.finalize()), hashing.len);
        let mut file = hashing
            .inner
            .into_inner()
            .map_err(io::IntoInnerError::into_error)
            .context(|| "writing a layer".to_owned())?;
        file.seek(SeekFrom::Start(0))
            .context(|| "rewinding a layer".to_owned())?;
        Ok((file, hex, size))
    }
}

struct Node<'a> {
    kind: Kind<'a>,
    meta: Meta,
}

impl<'a> Node<'a> {
    fn new(kind: Kind<'a>, meta: Meta) -> Self {
        Self { kind, meta }
    }
}

enum Kind<'a> {
    File(Content<'a>),
    Dir,
    Symlink(String),
}

impl Kind<'_> {
    fn noun(&self) -> &'static str {
        match self {
            Kind::File(_) => "file",
            Kind::Dir => "directory",
            Kind::Symlink(_) => "symlink",
        }
    }
}

enum Content<'a> {
    Host(PathBuf),
    Bytes(&'a [u8]),
}

fn walk(
    host: &Path,
    path: &str,
    meta: fs::Metadata,
    uid: u32,
    gid: u32,
    nodes: &mut BTreeMap<String, Node<'_>>,
) -> Result<()> {
    if !path.is_empty() {
        let meta = Meta {
            mode: meta.permissions().mode() & 0o7777,
            uid,
            gid,
        };
        nodes.insert(path.to_owned(), Node::new(Kind::Dir, meta));
    }
    let entries = fs::read_dir(host).context(|| format!("listing {}", host.display()))?;
    for entry in entries {
        let entry = entry.context(|| format!("listing {}", host.display()))?;
        let host = entry.path();
        let name = entry.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| Error::Image(format!("{}: the name is not UTF-8", host.display())))?;
        let path = if path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}/{name}")
        };
        let meta = fs::symlink_metadata(&host).context(|| format!("reading {}", host.display()))?;
        let mode = meta.permissions().mode() & 0o7777;
        let file_type = meta.file_type();
        if file_type.is_dir() {
            walk(&host, &path, meta, uid, gid, nodes)?;
        } else if file_type.is_symlink() {
            let target =
                fs::read_link(&host).context(|| format!("reading the link {}", host.display()))?;
            let target = target.to_str().ok_or_else(|| {
                Error::Image(format!("{}: the link target is not UTF-8", host.display()))
            })?;
            let meta = Meta {
                mode: 0o777,
                uid,
                gid,
            };
            nodes.insert(path, Node::new(Kind::Symlink(target.to_owned()), meta));
        } else if file_type.is_file() {
            let meta = Meta { mode, uid, gid };
            nodes.insert(path, Node::new(Kind::File(Content::Host(host)), meta));
        } else {
            return Err(Error::Image(format!(
                "{} is neither a file, a directory nor a symlink",
                host.display()
            )));
        }
    }
    Ok(())
}

/// `a`, `a/b` for `a/b/c`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// An image path as the archive names it: relative, no `.`, `..` or empty components; "" is `/`.
fn archive_path(path: &str) -> Result<String> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(Error::Image(format!(
                    "{path:?}: `..` has no meaning in a layer"
                )))
            }
            part => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

fn non_root(path: &str) -> Result<String> {
    let archived = archive_path(path)?;
    if archived.is_empty() {
        return Err(Error::Image(format!("{path:?}: only a directory can be /")));
    }
    Ok(archived)
}

fn header(kind: tar::EntryType, meta: Meta, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(meta.mode);
    header.set_uid(meta.uid.into());
    header.set_gid(meta.gid.into());
    header.set_size(size);
    header.set_mtime(0);
    header
}

fn append_node<W: Write>(tar: &mut tar::Builder<W>, path: &str, node: &Node) -> Result<()> {
    let what = || format!("adding /{path} to a layer");
    match &node.kind {
        Kind::Dir => {
            let mut header = header(tar::EntryType::Directory, node.meta, 0);
            tar.append_data(&mut header, format!("{path}/"), io::empty())
                .context(what)
        }
        Kind::Symlink(target) => {
            let mut header = header(tar::EntryType::Symlink, node.meta, 0);
            tar.append_link(&mut header, path, target).context(what)
        }
        Kind::File(Content::Bytes(data)) => {
            let mut header = header(tar::EntryType::Regular, node.meta, data.len() as u64);
            tar.append_data(&mut header, path, *data).context(what)
        }
        Kind::File(Content::Host(host)) => {
            let file = File::open(host).context(|| format!("opening {}", host.display()))?;
            let meta = file
                .metadata()
                .context(|| format!("reading {}", host.display()))?;
            if !meta.is_file() {
                return Err(Error::Image(format!("{} is not a file", host.display())));
            }
            let mut header = header(tar::EntryType::Regular, node.meta, meta.len());
            let mut data = BufReader::new(file).take(meta.len());
            tar.append_data(&mut header, path, &mut data)
                .context(what)?;
            // The header promised meta.len() bytes; fewer would corrupt the rest of the archive.
            if data.limit() != 0 {
                return Err(Error::Image(format!(
                    "{} shrank while it was being read",
                    host.display()
                )));
            }
            Ok(())
        }
    }
}

enum Blob {
    Bytes(Vec<u8>),
    File(File, u64),
}

impl Blob {
    fn size(&self) -> u64 {
        match self {
            Blob::Bytes(data) => data.len() as u64,
            Blob::File(_, size) => *size,
        }
    }
}

fn write_archive(
    out: &Path,
    dir: &Path,
    layout: &[u8],
    index: &[u8],
    blobs: BTreeMap<String, Blob>,
) -> Result<()> {
    let what = || format!("writing {}", out.display());
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut tar = tar::Builder::new(BufWriter::new(tmp));
    let file_meta = Meta {
        mode: 0o644,
        uid: 0,
        gid: 0,
    };
    let dir_meta = Meta {
        mode: 0o755,
        ..file_meta
    };
    for (name, data) in [("oci-layout", layout), ("index.json", index)] {
        let mut header = header(tar::EntryType::Regular, file_meta, data.len() as u64);
        tar.append_data(&mut header, name, data).context(what)?;
    }
    for name in ["blobs/", "blobs/sha256/"] {
        let mut header = header(tar::EntryType::Directory, dir_meta, 0);
        tar.append_data(&mut header, name, io::empty())
            .context(what)?;
    }
    for (hex, blob) in blobs {
        let mut header = header(tar::EntryType::Regular, file_meta, blob.size());
        let name = format!("blobs/sha256/{hex}");
        let appended = match blob {
            Blob::Bytes(data) => tar.append_data(&mut header, name, data.as_slice()),
            Blob::File(file, _) => tar.append_data(&mut header, name, BufReader::new(file)),
        };
        appended.context(what)?;
    }
    let tmp = tar
        .into_inner()
        .context(what)?
        .into_inner()
        .map_err(io::IntoInnerError::into_error)
        .context(what)?;
    // Temporary files are 0600; the archive is an ordinary output anyone may import.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .context(what)?;
    tmp.persist(out).map_err(|e| e.error).context(what)?;
    Ok(())
}

/// Passes writes through while hashing and counting them.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
    len: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            sha: Sha256::new(),
            len: 0,
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

fn descriptor(media_type: MediaType, hex: &str, size: u64) -> Result<Descriptor> {
    let digest = Digest::from_str(&format!("sha256:{hex}")).map_err(spec_error)?;
    DescriptorBuilder::default()
        .media_type(media_type)
        .digest(digest)
        .size(size)
        .build()
        .map_err(spec_error)
}

/// JSON with every object's keys sorted: oci-spec keeps labels and annotations in HashMaps, whose
/// order changes from run to run and would change the digests with it.
fn canonical_json(value: serde_json::Result<serde_json::Value>) -> Result<Vec<u8>> {
    let error = |e| Error::Image(format!("serializing an OCI document: {e}"));
    let mut value = value.map_err(error)?;
    value.sort_all_objects();
    serde_json::to_vec(&value).map_err(error)
}

fn spec_error(e: oci_spec::OciSpecError) -> Error {
    Error::Image(format!("building an OCI document: {e}"))
}

/// The name and tag containerd must be given: its CRI looks images up by the fully qualified name
/// (`docker.io/library/busybox:latest`), and its transfer service drops an
/// `io.containerd.image.name` that is not already in that form.
fn normalize_name(name: &str) -> Result<(String, String)> {
    let invalid = |why: &str| Error::Image(format!("image name {name:?}: {why}"));
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return Err(invalid("empty or with whitespace"));
    }
    if name.contains('@') {
        return Err(invalid("a digest cannot name an image that is being built"));
    }
    let (domain, remainder) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first, rest.to_owned())
        }
        _ => ("docker.io", name.to_owned()),
    };
    let remainder = if domain == "docker.io" && !remainder.contains('/') {
        format!("library/{remainder}")
    } else {
        remainder
    };
    let last = remainder.rfind('/').map_or(0, |i| i + 1);
    let (repository, tag) = match remainder[last..].find(':') {
        Some(colon) => (&remainder[..last + colon], &remainder[last + colon + 1..]),
        None => (remainder.as_str(), "latest"),
    };
    if repository.split('/').any(str::is_empty) || tag.is_empty() {
        return Err(invalid("empty path component or tag"));
    }
    if repository.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(invalid("repository names are lowercase"));
    }
    Ok((format!("{domain}/{repository}:{tag}"), tag.to_owned()))
}

/// An image-layout archive read back, with every digest checked: what a test asserts on.
#[derive(Clone, Debug)]
pub struct OciArchive {
    /// The `io.containerd.image.name` annotation.
    pub name: Option<String>,
    /// The `org.opencontainers.image.ref.name` annotation.
    pub ref_name: Option<String>,
    pub manifest_digest: String,
    pub architecture: String,
    pub os: String,
    pub user: Option<String>,
    /// `KEY=VALUE`, in order.
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Each layer's `created_by`, bottom first.
    pub history: Vec<String>,
    /// Every entry of every layer, bottom layer first, each layer's in archive order.
    pub entries: Vec<Entry>,
}

/// One path in one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Index of the layer, 0 at the bottom.
    pub layer: usize,
    /// Absolute, without a trailing `/`.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits (with setuid, setgid and sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// `sha256` is the hex digest of the contents.
    File {
        size: u64,
        sha256: String,
    },
    Dir,
    Symlink {
        target: String,
    },
}

/// The `io.containerd.image.name` of an archive [`ImageBuilder::write`] wrote and the digest of
/// its manifest, read from its `index.json` alone (the archive's second member), not the blobs.
pub fn archive_image(path: &Path) -> Result<(String, String)> {
    let what = || format!("reading {}", path.display());
    let bad = |why: &str| Error::Image(format!("{}: {why}", path.display()));
    let mut archive = tar::Archive::new(File::open(path).context(what)?);
    for entry in archive.entries().context(what)? {
        let mut entry = entry.context(what)?;
        if entry
            .path()
            .context(what)?
            .to_string_lossy()
            .trim_start_matches("./")
            != "index.json"
        {
            continue;
        }
        let mut index = Vec::new();
        entry.read_to_end(&mut index).context(what)?;
        let index: serde_json::Value =
            serde_json::from_slice(&index).map_err(|e| bad(&format!("index.json: {e}")))?;
        let field = |pointer: &str| {
            index
                .pointer(pointer)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| bad(&format!("index.json has no {pointer}")))
        };
        return Ok((
            field("/manifests/0/annotations/io.containerd.image.name")?,
            field("/manifests/0/digest")?,
        ));
    }
    Err(bad("no index.json"))
}

impl OciArchive {
    /// Reads an archive as [`ImageBuilder::write`] writes it: one manifest, uncompressed layers.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bad = |why: String| Error::Image(format!("{}: {why}", path.display()));
        let what = || format!("reading {}", path.display());
        let file = File::open(path).context(what)?;

        // Where each member's data starts, so blobs are read in place rather than into memory.
        let mut members = HashMap::new();
        let mut archive = tar::Archive::new(&file);
        for entry in archive.entries().context(what)? {
            let entry = entry.context(what)?;
            if entry.header().entry_type().is_file() {
                let name = entry.path().context(what)?;
                let name = name.to_string_lossy();
                let name = name.trim_start_matches("./").to_owned();
                members.insert(name, (entry.raw_file_position(), entry.size()));
            }
        }
        let member = |name: &str| -> Result<io::Take<&File>> {
            let &(offset, size) = members
                .get(name)
                .ok_or_else(|| bad(format!("{name} is missing")))?;
            let mut file = &file;
            file.seek(SeekFrom::Start(offset)).context(what)?;
            Ok(file.take(size))
        };
        let blob = |digest: &Digest| -> Result<Vec<u8>> {
            let mut data = Vec::new();
            member(&format!("blobs/sha256/{}", digest.digest()))?
                .read_to_end(&mut data)
                .context(what)?;
            if sha256_hex(&data) != digest.digest() {
                return Err(bad(format!("blob {digest} does not match its digest")));
            }
            Ok(data)
        };
        let json_error = |what: &str, e: serde_json::Error| bad(format!("{what}: {e}"));

        let mut index = Vec::new();
        member("index.json")?
            .read_to_end(&mut index)
            .context(what)?;
        let index: ImageIndex =
            serde_json::from_slice(&index).map_err(|e| json_error("index.json", e))?;
        let [entry] = index.manifests().as_slice() else {
            return Err(bad(format!(
                "{} manifests in index.json, not one",
                index.manifests().len()
            )));
        };
        let annotation = |key: &str| entry.annotations().as_ref()?.get(key).cloned();
        let manifest: ImageManifest = serde_json::from_slice(&blob(entry.digest())?)
            .map_err(|e| json_error("the manifest", e))?;
        let config: ImageConfiguration = serde_json::from_slice(&blob(manifest.config().digest())?)
            .map_err(|e| json_error("the config", e))?;

        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(bad(format!(
                "{} layers but {} diff_ids",
                manifest.layers().len(),
                diff_ids.len()
            )));
        }
        let mut entries = Vec::new();
        for (layer, (descriptor, diff_id)) in manifest.layers().iter().zip(diff_ids).enumerate() {
            if *descriptor.media_type() != MediaType::ImageLayer {
                return Err(bad(format!(
                    "layer {layer} is {}, not an uncompressed tar",
                    descriptor.media_type()
                )));
            }
            let digest = descriptor.digest().to_string();
            if *diff_id != digest {
                return Err(bad(format!(
                    "layer {layer}: diff_id {diff_id} is not its digest {digest}"
                )));
            }
            let mut reader = HashingReader {
                inner: BufReader::new(member(&format!(
                    "blobs/sha256/{}",
                    descriptor.digest().digest()
                ))?),
                sha: Sha256::new(),
            };
            read_layer(layer, &mut reader, &mut entries)
                .map_err(|e| bad(format!("layer {layer}: {e}")))?;
            // The end-of-archive blocks count towards the digest too.
            io::copy(&mut reader, &mut io::sink()).context(what)?;
            if format!("sha256:{:x}", reader.sha.finalize()) != digest {
                return Err(bad(format!(
                    "layer {layer} does not match its digest {digest}"
                )));
            }
        }

        let runtime = config.config().clone().unwrap_or_default();
        Ok(Self {
            name: annotation(ANNOTATION_IMAGE_NAME),
            ref_name: annotation(ANNOTATION_REF_NAME),
            manifest_digest: entry.digest().to_string(),
            architecture: config.architecture().to_string(),
            os: config.os().to_string(),
            user: runtime.user().clone(),
            env: runtime.env().clone().unwrap_or_default(),
            entrypoint: runtime.entrypoint().clone(),
            cmd: runtime.cmd().clone(),
            working_dir: runtime.working_dir().clone(),
            labels: runtime
                .labels()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            history: config
                .history()
                .iter()
                .flatten()
                .map(|h| h.created_by().clone().unwrap_or_default())
                .collect(),
            entries,
        })
    }

    /// What a container would see at `path` (absolute): the entry of the topmost layer that has it.
    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.path == path)
    }
}

fn read_layer(layer: usize, reader: impl Read, entries: &mut Vec<Entry>) -> Result<(), String> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = format!(
            "/{}",
            entry
                .path()
                .map_err(|e| e.to_string())?
                .to_string_lossy()
                .trim_matches('/')
        );
        let header = entry.header();
        let id = |id: io::Result<u64>| -> Result<u32, String> {
            let id = id.map_err(|e| format!("{path}: {e}"))?;
            u32::try_from(id).map_err(|_| format!("{path}: id {id} does not fit 32 bits"))
        };
        let (mode, uid, gid) = (
            header.mode().map_err(|e| format!("{path}: {e}"))? & 0o7777,
            id(header.uid())?,
            id(header.gid())?,
        );
        let kind = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut sha = Sha256::new();
                let size = io::copy(&mut entry, &mut sha).map_err(|e| format!("{path}: {e}"))?;
                EntryKind::File {
                    size,
                    sha256: format!("{:x}", sha.finalize()),
                }
            }
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| format!("{path}: {e}"))?
                    .ok_or_else(|| format!("{path}: a symlink without a target"))?;
                EntryKind::Symlink {
                    target: target.to_string_lossy().into_owned(),
                }
            }
            other => return Err(format!("{path}: unexpected entry type {other:?}")),
        };
        entries.push(Entry {
            layer,
            path,
            kind,
            mode,
            uid,
            gid,
        });
    }
    Ok(())
}

struct HashingReader<R> {
    inner: R,
    sha: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::time::{Duration, SystemTime};

    fn set_mode(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A file, an executable, a private directory and a relative symlink, under a 0750 root.
    fn sample_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("lib/private")).unwrap();
        fs::write(root.join("lib/data.txt"), b"data").unwrap();
        fs::write(root.join("run.sh"), b"#!/bin/sh\n").unwrap();
        symlink("lib/data.txt", root.join("link")).unwrap();
        set_mode(&root.join("lib/data.txt"), 0o644);
        set_mode(&root.join("run.sh"), 0o755);
        set_mode(&root.join("lib"), 0o755);
        set_mode(&root.join("lib/private"), 0o700);
        set_mode(root, 0o750);
        dir
    }

    fn sample_image(tree: &Path, extra: &Path) -> ImageBuilder {
        let mut image = ImageBuilder::new("ghcr.io/lumigo-rs/autotrace:0.1.0", "arm64");
        image
            .user("65532:65532")
            .env("A", "1")
            .env("B", "2")
            .env("A", "3")
            .entrypoint(["/app/run.sh"])
            .cmd(["serve", "--port=8080"])
            .working_dir("/app")
            .label("z", "last")
            .label("a", "first")
            .label("org.opencontainers.image.licenses", "Apache-2.0");
        image
            .layer()
            .created_by("tree")
            .tree(tree, "/app", 1000, 1001);
        image
            .layer()
            .created_by("extras")
            .bytes(b"hello".to_vec(), "/etc/greeting", 0o600, 0, 0)
            .dir("/var/empty/", 0o1777, 0, 0)
            .symlink("/app/run.sh", "usr/bin/run")
            .file(extra, "/usr/local/bin/extra", 0o755, 2, 3);
        image
    }

    /// One member of the outer archive, as raw bytes.
    fn member(archive: &Path, name: &str) -> Vec<u8> {
        let mut tar = tar::Archive::new(File::open(archive).unwrap());
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap() == Path::new(name) {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                return data;
            }
        }
        panic!("{name} is not in {}", archive.display());
    }

    fn dir(path: &str, layer: usize, mode: u32, uid: u32, gid: u32) -> Entry {
        Entry {
            layer,
            path: path.to_owned(),
            kind: EntryKind::Dir,
            mode,
            uid,
            gid,
        }
    }

    #[test]
    fn an_image_reads_back_as_written() {
        let tree = sample_tree();
        let work = tempfile::tempdir().unwrap();
        let extra = work.path().join("extra");
        fs::write(&extra, b"extra!").unwrap();
        let out = work.path().join("image.tar");

        let info = sample_image(tree.path(), &extra).write(&out).unwrap();
        assert_eq!(info.name, "ghcr.io/lumigo-rs/autotrace:0.1.0");
        let mode = fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let archive = OciArchive::open(&out).unwrap();
        assert_eq!(archive.manifest_digest, info.manifest_digest);
        assert_eq!(
            archive.name.as_deref(),
            Some("ghcr.io/lumigo-rs/autotrace:0.1.0")
        );
        assert_eq!(archive.ref_name.as_deref(), Some("0.1.0"));
        assert_eq!(
            (archive.architecture.as_str(), archive.os.as_str()),
            ("arm64", "linux")
        );
        assert_eq!(archive.user.as_deref(), Some("65532:65532"));
        assert_eq!(archive.env, ["A=3", "B=2"]);
        assert_eq!(archive.entrypoint, Some(vec!["/app/run.sh".to_owned()]));
        assert_eq!(
            archive.cmd,
            Some(vec!["serve".to_owned(), "--port=8080".to_owned()])
        );
        assert_eq!(archive.working_dir.as_deref(), Some("/app"));
        assert_eq!(
            archive.labels,
            BTreeMap::from([
                ("a".to_owned(), "first".to_owned()),
                (
                    "org.opencontainers.image.licenses".to_owned(),
                    "Apache-2.0".to_owned()
                ),
                ("z".to_owned(), "last".to_owned()),
            ])
        );
        assert_eq!(archive.history, ["tree", "extras"]);

        let blobs: u64 = tar::Archive::new(File::open(&out).unwrap())
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .filter(|e| e.header().entry_type().is_file())
            .filter(|e| e.path().unwrap().starts_with("blobs/sha256"))
            .map(|e| e.size())
            .sum();
        assert_eq!(info.size, blobs);

        let index: serde_json::Value = serde_json::from_slice(&member(&out, "index.json")).unwrap();
        assert_eq!(
            index["manifests"][0]["platform"],
            serde_json::json!({"architecture": "arm64", "os": "linux"})
        );
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&member(&out, "oci-layout")).unwrap(),
            serde_json::json!({"imageLayoutVersion": "1.0.0"})
        );

        let file = |path: &str, layer, contents: &[u8], mode, uid, gid| Entry {
            layer,
            path: path.to_owned(),
            kind: EntryKind::File {
                size: contents.len() as u64,
                sha256: sha256_hex(contents),
            },
            mode,
            uid,
            gid,
        };
        let link = |path: &str, layer, target: &str, uid, gid| Entry {
            layer,
            path: path.to_owned(),
            kind: EntryKind::Symlink {
                target: target.to_owned(),
            },
            mode: 0o777,
            uid,
            gid,
        };
        // Each layer in path order, so a directory always comes before what is in it.
        assert_eq!(
            archive.entries,
            [
                dir("/app", 0, 0o750, 1000, 1001),
                dir("/app/lib", 0, 0o755, 1000, 1001),
                file("/app/lib/data.txt", 0, b"data", 0o644, 1000, 1001),
                dir("/app/lib/private", 0, 0o700, 1000, 1001),
                link("/app/link", 0, "lib/data.txt", 1000, 1001),
                file("/app/run.sh", 0, b"#!/bin/sh\n", 0o755, 1000, 1001),
                dir("/etc", 1, 0o755, 0, 0),
                file("/etc/greeting", 1, b"hello", 0o600, 0, 0),
                dir("/usr", 1, 0o755, 0, 0),
                dir("/usr/bin", 1, 0o755, 0, 0),
                link("/usr/bin/run", 1, "/app/run.sh", 0, 0),
                dir("/usr/local", 1, 0o755, 0, 0),
                dir("/usr/local/bin", 1, 0o755, 0, 0),
                file("/usr/local/bin/extra", 1, b"extra!", 0o755, 2, 3),
                dir("/var", 1, 0o755, 0, 0),
                dir("/var/empty", 1, 0o1777, 0, 0),
            ]
        );
        assert_eq!(
            archive.entry("/var/empty"),
            Some(&dir("/var/empty", 1, 0o1777, 0, 0))
        );
        assert_eq!(archive.entry("/nowhere"), None);
    }

    #[test]
    fn the_same_inputs_give_the_same_digest() {
        let tree = sample_tree();
        let work = tempfile::tempdir().unwrap();
        let extra = work.path().join("extra");
        fs::write(&extra, b"extra!").unwrap();
        let (a, b, c) = (
            work.path().join("a.tar"),
            work.path().join("b.tar"),
            work.path().join("c.tar"),
        );

        let first = sample_image(tree.path(), &extra).write(&a).unwrap();
        // Only contents, modes and owners count, not when the files were last touched.
        let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for path in [tree.path().join("run.sh"), extra.clone()] {
            File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        let second = sample_image(tree.path(), &extra).write(&b).unwrap();
        assert_eq!(first, second);
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());

        set_mode(&tree.path().join("run.sh"), 0o700);
        let third = sample_image(tree.path(), &extra).write(&c).unwrap();
        assert_ne!(third.manifest_digest, first.manifest_digest);
    }

    #[test]
    fn long_paths_and_link_targets_survive() {
        let work = tempfile::tempdir().unwrap();
        let path = format!("/opt/{}/file", "d".repeat(120));
        let target = format!("../{}", "t".repeat(150));
        let mut image = ImageBuilder::new("long", "amd64");
        image
            .layer()
            .bytes(b"x".to_vec(), &path, 0o644, 0, 0)
            .symlink(&target, "/opt/link");
        let out = work.path().join("long.tar");
        let info = image.write(&out).unwrap();
        assert_eq!(info.name, "docker.io/library/long:latest");

        let archive = OciArchive::open(&out).unwrap();
        assert!(matches!(
            archive.entry(&path).map(|e| &e.kind),
            Some(EntryKind::File { size: 1, .. })
        ));
        assert_eq!(
            archive.entry("/opt/link").map(|e| &e.kind),
            Some(&EntryKind::Symlink { target })
        );
    }

    #[test]
    fn names_are_fully_qualified() {
        for (name, full, tag) in [
            ("busybox", "docker.io/library/busybox:latest", "latest"),
            ("busybox:1.37", "docker.io/library/busybox:1.37", "1.37"),
            ("lumigo/x", "docker.io/lumigo/x:latest", "latest"),
            ("localhost:5000/x", "localhost:5000/x:latest", "latest"),
            ("ghcr.io/x:1", "ghcr.io/x:1", "1"),
            (
                "ghcr.io/lumigo-rs/autotrace:0.1.0",
                "ghcr.io/lumigo-rs/autotrace:0.1.0",
                "0.1.0",
            ),
        ] {
            assert_eq!(
                normalize_name(name).unwrap(),
                (full.to_owned(), tag.to_owned()),
                "{name}"
            );
        }
        for bad in ["", "a b", "Upper/x", "x@sha256:abc", "ghcr.io//x", "x:"] {
            assert!(normalize_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn what_a_layer_cannot_hold_is_an_error() {
        let work = tempfile::tempdir().unwrap();
        let out = work.path().join("bad.tar");
        let error = |build: &dyn Fn(&mut ImageBuilder)| {
            let mut image = ImageBuilder::new("bad", "amd64");
            build(&mut image);
            image.write(&out).unwrap_err().to_string()
        };

        let message = error(&|image| {
            image.layer().bytes(b"a".to_vec(), "/a", 0o644, 0, 0).bytes(
                b"b".to_vec(),
                "/a/b",
                0o644,
                0,
                0,
            );
        });
        assert!(
            message.contains("/a is a file but /a/b is inside it"),
            "{message}"
        );
        let message = error(&|image| {
            image.layer().dir("/etc/../root", 0o700, 0, 0);
        });
        assert!(message.contains("`..`"), "{message}");
        let message = error(&|image| {
            image.layer().symlink("x", "/");
        });
        assert!(message.contains("only a directory can be /"), "{message}");
        let missing = work.path().join("missing");
        let message = error(&|image| {
            image.layer().file(&missing, "/x", 0o644, 0, 0);
        });
        assert!(
            message.contains(&missing.display().to_string()),
            "{message}"
        );
        let file = work.path().join("file");
        fs::write(&file, b"").unwrap();
        let message = error(&|image| {
            image.layer().tree(&file, "/x", 0, 0);
        });
        assert!(message.contains("is not a directory"), "{message}");
        let message = ImageBuilder::new("x", "x86_64")
            .write(&out)
            .unwrap_err()
            .to_string();
        assert!(message.contains("not amd64 or arm64"), "{message}");
        let message = ImageBuilder::new("Bad Name", "amd64")
            .write(&out)
            .unwrap_err()
            .to_string();
        assert!(message.contains("image name"), "{message}");
        assert!(!out.exists(), "a failed write left {}", out.display());
    }
}
