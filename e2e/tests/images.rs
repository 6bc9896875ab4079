//! The product images assembled here are the ones `images/*.Dockerfile` declare: a Docker user
//! who builds them with buildx gets the same user, entrypoint, command, environment, labels and
//! layout. Each assertion compares the archive with the Dockerfile itself, not with a copy of it.

use std::path::{Path, PathBuf};

use lumigo_e2e::dockerfile::{self, FinalStage};
use lumigo_e2e::images;
use lumigo_e2e::oci::{EntryKind, OciArchive};

fn dockerfile_of(name: &str) -> FinalStage {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../images")
        .join(name);
    dockerfile::final_stage(path).unwrap()
}

/// The archive's config is the final stage's, and each COPY's destination is in the image with
/// the COPY's owner.
fn assert_matches(archive: &OciArchive, stage: &FinalStage) {
    assert_eq!(archive.user, stage.user, "USER");
    assert_eq!(archive.entrypoint, stage.entrypoint, "ENTRYPOINT");
    assert_eq!(archive.cmd, stage.cmd, "CMD");
    for (key, value) in &stage.env {
        assert!(
            archive.env.contains(&format!("{key}={value}")),
            "ENV {key}={value} in {:?}",
            archive.env
        );
    }
    for (key, value) in &stage.labels {
        assert_eq!(archive.labels.get(key), Some(value), "LABEL {key}");
    }
    assert_eq!(archive.architecture, images::arch());
    for copy in &stage.copies {
        let destination = copy.destination.trim_end_matches('/');
        let entry = archive
            .entry(destination)
            .unwrap_or_else(|| panic!("{} is in the image ({})", destination, copy.instruction));
        let (uid, gid) = copy.chown.unwrap_or((0, 0));
        assert_eq!((entry.uid, entry.gid), (uid, gid), "owner of {destination}");
    }
}

fn file(dir: &Path, path: &str, contents: &[u8], mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let file = dir.join(path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, contents).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    file
}

#[test]
fn the_autotrace_image_is_the_one_its_dockerfile_declares() {
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("opt/lumigo");
    file(&payload, "injector/lumigo_injector.so", b"\x7fELF", 0o755);
    file(&payload, "nodejs/register.js", b"require('x')", 0o644);
    file(&payload, "python/bootstrap/sitecustomize.py", b"", 0o644);
    let out = dir.path().join("autotrace.tar");
    let built = images::autotrace(&images::autotrace_name(), &payload, &out).unwrap();
    let archive = OciArchive::open(&out).unwrap();
    assert_eq!(archive.name.as_deref(), Some(built.name.as_str()));
    assert_eq!(built.name, images::autotrace_name());
    assert_matches(&archive, &dockerfile_of("autotrace.Dockerfile"));
    // The recorded digest is the archive's manifest, checked blob by blob when read back.
    let recorded = images::record_digest(&built, &out).unwrap();
    assert_eq!(recorded, dir.path().join("autotrace.digest"));
    let digest = std::fs::read_to_string(&recorded).unwrap();
    assert_eq!(digest, format!("{}\n", archive.manifest_digest));
    assert!(
        digest
            .strip_prefix("sha256:")
            .is_some_and(|hex| hex.trim_end().len() == 64),
        "{digest:?}"
    );

    let so = archive
        .entry("/opt/lumigo/injector/lumigo_injector.so")
        .expect("the payload tree");
    assert_eq!((so.mode & 0o777, so.uid, so.gid), (0o755, 0, 0));
    assert!(archive
        .entry("/opt/lumigo/python/bootstrap/sitecustomize.py")
        .is_some());
    let busybox = archive.entry("/bin/busybox").expect("the copy step");
    assert!(
        matches!(busybox.kind, EntryKind::File { size, .. } if size > 100_000),
        "a real busybox"
    );
    // Nothing beyond the two COPYs: the base is scratch.
    let tops: std::collections::BTreeSet<&str> = archive
        .entries
        .iter()
        .map(|e| e.path.split('/').nth(1).unwrap())
        .collect();
    assert_eq!(tops, ["bin", "opt"].into_iter().collect());
}

#[test]
fn the_operator_image_is_the_one_its_dockerfile_declares() {
    let dir = tempfile::tempdir().unwrap();
    let binary = file(dir.path(), "lumigo-operator", b"\x7fELF static", 0o755);
    let module = file(dir.path(), "lumigo-policy.wasm", b"\0asm", 0o644);
    let out = dir.path().join("operator.tar");
    images::operator(&images::operator_name(), &binary, &module, &out).unwrap();
    let archive = OciArchive::open(&out).unwrap();
    assert_matches(&archive, &dockerfile_of("operator.Dockerfile"));
    assert_eq!(archive.user.as_deref(), Some("65532:65532"));
    let installed = archive.entry("/usr/local/bin/lumigo-operator").unwrap();
    assert_eq!(installed.mode & 0o777, 0o755);
    // The distroless base's part the operator relies on: who uid 65532 is, and CA certificates.
    assert!(
        archive.entry("/etc/passwd").is_some()
            && archive
                .entry("/etc/ssl/certs/ca-certificates.crt")
                .is_some()
    );
}

#[test]
fn a_dockerfile_copy_without_a_local_artifact_is_a_clear_error() {
    let stage = FinalStage::parse("FROM scratch\nCOPY --from=elsewhere /x /x\n").unwrap();
    let mut image = lumigo_e2e::oci::ImageBuilder::new("example.com/x:1", images::arch());
    let error = dockerfile::apply_final_stage(&stage, &mut image, |copy| {
        Err(lumigo_e2e::Error::Image(format!(
            "no artifact for {}",
            copy.instruction
        )))
    })
    .unwrap_err();
    assert!(
        error.to_string().contains("COPY --from=elsewhere /x /x"),
        "{error}"
    );
}
