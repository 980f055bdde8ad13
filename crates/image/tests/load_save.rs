//! `docker load` / `docker save`: legacy and OCI layouts, whiteouts, round trips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;

use common::{Fixture, Tarball, entry_names, gzip, image_config, legacy_archive, read_entry, sha256_hex};
use hatch_image::{Error, ImageStore};

fn lower_layer() -> Vec<u8> {
    Tarball::new()
        .dir("etc/", 0o755)
        .file("etc/a", b"a", 0o644)
        .file("etc/b", b"b", 0o644)
        .dir("data/", 0o755)
        .file("data/x", b"x", 0o644)
        .dir("data/sub/", 0o755)
        .file("data/sub/y", b"y", 0o644)
        .dir("gone/", 0o755)
        .file("gone/z", b"z", 0o644)
        .file("keep", b"keep", 0o644)
        .finish()
}

fn upper_layer() -> Vec<u8> {
    Tarball::new()
        .file("etc/.wh.a", b"", 0o644)
        .file(".wh.gone", b"", 0o644)
        .dir("data/", 0o755)
        .file("data/.wh..wh..opq", b"", 0o644)
        .file("data/new", b"new", 0o644)
        .file("etc/c", b"c", 0o644)
        .finish()
}

fn assert_flattened(root: &std::path::Path) {
    assert!(!root.join("etc/a").exists(), "whiteout removes etc/a");
    assert_eq!(fs::read(root.join("etc/b")).unwrap(), b"b");
    assert_eq!(fs::read(root.join("etc/c")).unwrap(), b"c");
    assert!(!root.join("gone").exists(), "whiteout removes a whole directory");
    assert!(!root.join("data/x").exists(), "opaque dir hides lower files");
    assert!(!root.join("data/sub").exists(), "opaque dir hides lower dirs");
    assert_eq!(fs::read(root.join("data/new")).unwrap(), b"new");
    assert_eq!(fs::read(root.join("keep")).unwrap(), b"keep");
    assert!(!root.join("etc/.wh.a").exists(), "whiteout markers are not extracted");
    assert!(!root.join("data/.wh..wh..opq").exists());
}

#[test]
fn legacy_archive_with_whiteouts_across_two_layers() {
    let fixture = Fixture::new();
    let (lower, upper) = (lower_layer(), upper_layer());
    let config = image_config(&[&lower, &upper], &["/bin/sh"]);
    let archive = legacy_archive(&config, &[lower, upper], &["bb:latest", "bb:1.0"]);
    let loaded = fixture.store.load(archive.as_slice()).unwrap();
    assert_eq!(loaded.len(), 1);
    let image = &loaded[0].image;
    assert_eq!(image.id, format!("sha256:{}", sha256_hex(&config)));
    assert_eq!(loaded[0].tags, ["bb:latest", "bb:1.0"]);
    assert_eq!(loaded[0].messages(), ["Loaded image: bb:latest", "Loaded image: bb:1.0"]);
    assert_eq!(image.repo_tags, ["bb:1.0", "bb:latest"]);
    assert_eq!(image.run_config().cmd(), ["/bin/sh"]);
    assert_eq!(image.run_config().working_dir(), "/srv");
    assert_eq!(image.run_config().user(), "1000");
    assert_eq!(image.created, 1_704_164_645);
    assert_eq!(image.created_rfc3339(), "2024-01-02T03:04:05.123456789Z");
    assert_flattened(&image.rootfs);
    assert_eq!(fixture.store.config_json("bb").unwrap(), config);
}

#[test]
fn untagged_archive_loads_by_id() {
    let fixture = Fixture::new();
    let layer = lower_layer();
    let config = image_config(&[&layer], &["sh"]);
    let archive = legacy_archive(&config, &[layer], &[]);
    let loaded = fixture.store.load(archive.as_slice()).unwrap();
    assert!(loaded[0].tags.is_empty());
    assert!(loaded[0].image.repo_tags.is_empty());
    let id = format!("sha256:{}", sha256_hex(&config));
    assert_eq!(loaded[0].messages(), [format!("Loaded image ID: {id}")]);
}

#[test]
fn legacy_archive_with_symlinked_duplicate_layer() {
    // Older `docker save` writes a repeated layer as a symlink to the first copy.
    let fixture = Fixture::new();
    let base = Tarball::new().file("f", b"same", 0o644).finish();
    let config = image_config(&[&base, &base], &["sh"]);
    let config_hex = sha256_hex(&config);
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": ["dup:latest"],
        "Layers": ["one/layer.tar", "two/layer.tar"],
    }]);
    let archive = Tarball::new()
        .file("one/layer.tar", &base, 0o644)
        .symlink("two/layer.tar", "../one/layer.tar")
        .file(&format!("{config_hex}.json"), &config, 0o644)
        .file("manifest.json", &serde_json::to_vec(&manifest).unwrap(), 0o644)
        .finish();
    let loaded = fixture.store.load(archive.as_slice()).unwrap();
    assert_eq!(fs::read(loaded[0].image.rootfs.join("f")).unwrap(), b"same");
}

/// A Docker 25+ archive: blobs, index.json, manifest.json, oci-layout; layers gzip here.
fn oci_archive(with_manifest_json: bool) -> (Vec<u8>, Vec<u8>) {
    oci_archive_with(with_manifest_json, false)
}

/// With `foreign_too`, index.json also lists an image for another platform (blobs present).
fn oci_archive_with(with_manifest_json: bool, foreign_too: bool) -> (Vec<u8>, Vec<u8>) {
    let (lower, upper) = (lower_layer(), upper_layer());
    let config = image_config(&[&lower, &upper], &["/bin/sh"]);
    let blobs: Vec<Vec<u8>> = vec![gzip(&lower), upper.clone()];
    let layer_descriptors: Vec<_> = blobs
        .iter()
        .enumerate()
        .map(|(n, blob)| {
            serde_json::json!({
                "mediaType": if n == 0 { "application/vnd.oci.image.layer.v1.tar+gzip" } else { "application/vnd.oci.image.layer.v1.tar" },
                "digest": format!("sha256:{}", sha256_hex(blob)),
                "size": blob.len(),
            })
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{}", sha256_hex(&config)), "size": config.len()},
        "layers": layer_descriptors,
    }))
    .unwrap();
    let foreign_layer = Tarball::new().file("foreign", b"pdp11", 0o644).finish();
    let foreign_config = image_config(&[&foreign_layer], &["sh"]);
    let foreign_manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{}", sha256_hex(&foreign_config)), "size": foreign_config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{}", sha256_hex(&foreign_layer)), "size": foreign_layer.len()}],
    }))
    .unwrap();
    let mut descriptors = vec![serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", sha256_hex(&manifest)),
        "size": manifest.len(),
        "annotations": {"io.containerd.image.name": "docker.io/library/ocibb:2",
                        "org.opencontainers.image.ref.name": "2"},
        "platform": {"os": "linux", "architecture": host_architecture()},
    })];
    if foreign_too {
        descriptors.insert(
            0,
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{}", sha256_hex(&foreign_manifest)),
                "size": foreign_manifest.len(),
                "annotations": {"io.containerd.image.name": "docker.io/library/ocibb:2"},
                "platform": {"os": "linux", "architecture": "pdp11"},
            }),
        );
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": descriptors,
    }))
    .unwrap();
    let mut archive = Tarball::new().dir("blobs/", 0o755).dir("blobs/sha256/", 0o755);
    let foreign_blobs = [foreign_layer.clone(), foreign_config.clone(), foreign_manifest.clone()];
    let extra: &[Vec<u8>] = if foreign_too { &foreign_blobs } else { &[] };
    for blob in blobs.iter().chain([&config, &manifest]).chain(extra) {
        archive = archive.file(&format!("blobs/sha256/{}", sha256_hex(blob)), blob, 0o644);
    }
    archive = archive.file("index.json", &index, 0o644).file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644);
    if with_manifest_json {
        let legacy = serde_json::json!([{
            "Config": format!("blobs/sha256/{}", sha256_hex(&config)),
            "RepoTags": ["ocibb:2"],
            "Layers": blobs.iter().map(|b| format!("blobs/sha256/{}", sha256_hex(b))).collect::<Vec<_>>(),
        }]);
        archive = archive.file("manifest.json", &serde_json::to_vec(&legacy).unwrap(), 0o644);
    }
    (archive.finish(), config)
}

#[test]
fn docker25_archive_with_gzip_layer() {
    let fixture = Fixture::new();
    let (archive, config) = oci_archive(true);
    let loaded = fixture.store.load(archive.as_slice()).unwrap();
    assert_eq!(loaded[0].image.id, format!("sha256:{}", sha256_hex(&config)));
    assert_eq!(loaded[0].tags, ["ocibb:2"]);
    assert_flattened(&loaded[0].image.rootfs);
}

#[test]
fn plain_oci_layout_without_manifest_json() {
    let fixture = Fixture::new();
    let (archive, config) = oci_archive(false);
    // The whole archive may be gzip-compressed too.
    let loaded = fixture.store.load(gzip(&archive).as_slice()).unwrap();
    assert_eq!(loaded[0].image.id, format!("sha256:{}", sha256_hex(&config)));
    assert_eq!(loaded[0].tags, ["ocibb:2"]);
    assert_flattened(&loaded[0].image.rootfs);
    // Stored layers are the uncompressed diffs, so save can reproduce the diff ids.
    let layers = fs::read_dir(fixture.store_root().join("layers")).unwrap().count();
    assert_eq!(layers, 2);
}

#[test]
fn oci_layout_with_several_platforms_loads_the_hosts() {
    let fixture = Fixture::new();
    let (archive, config) = oci_archive_with(false, true);
    let loaded = fixture.store.load(archive.as_slice()).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].image.id, format!("sha256:{}", sha256_hex(&config)));
    assert!(!loaded[0].image.rootfs.join("foreign").exists());
}

/// GOARCH of this machine, as image platforms spell it.
fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[test]
fn diff_id_mismatch_is_refused() {
    let fixture = Fixture::new();
    let layer = lower_layer();
    let other = upper_layer();
    let config = image_config(&[&other], &["sh"]);
    let archive = legacy_archive(&config, &[layer], &["bb:latest"]);
    let err = fixture.store.load(archive.as_slice()).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("diff id"), "{message}");
    assert!(matches!(err, Error::InvalidArchive(_)));
    fixture.assert_untouched();
}

#[test]
fn layer_count_mismatch_is_refused() {
    let fixture = Fixture::new();
    let layer = lower_layer();
    let config = image_config(&[&layer, &layer], &["sh"]);
    let archive = legacy_archive(&config, &[layer], &["bb:latest"]);
    let err = fixture.store.load(archive.as_slice()).unwrap_err();
    assert!(err.to_string().contains("lists 2 layers"), "{err}");
    fixture.assert_untouched();
}

#[test]
fn corrupt_blob_is_refused() {
    let fixture = Fixture::new();
    let (archive, _) = oci_archive(true);
    // Rebuild the archive with one blob's content changed but its name kept.
    let mut reader = tar::Archive::new(archive.as_slice());
    let mut rebuilt = Tarball::new();
    let mut first_blob = true;
    for entry in reader.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if entry.header().entry_type().is_dir() {
            rebuilt = rebuilt.dir(&path, 0o755);
            continue;
        }
        if path.starts_with("blobs/sha256/") && first_blob {
            first_blob = false;
            data.push(b'!');
        }
        rebuilt = rebuilt.file(&path, &data, 0o644);
    }
    let err = fixture.store.load(rebuilt.finish().as_slice()).unwrap_err();
    assert!(err.to_string().contains("is corrupt"), "{err}");
    fixture.assert_untouched();
}

#[test]
fn plain_rootfs_tarball_is_not_a_save_archive() {
    let fixture = Fixture::new();
    let err = fixture.store.load(lower_layer().as_slice()).unwrap_err();
    assert!(err.to_string().contains("no manifest.json or index.json"), "{err}");
    fixture.assert_untouched();
}

#[test]
fn save_load_round_trip() {
    let fixture = Fixture::new();
    let (lower, upper) = (lower_layer(), upper_layer());
    let config = image_config(&[&lower, &upper], &["/bin/sh"]);
    let archive = legacy_archive(&config, &[lower, upper], &["bb:latest"]);
    let original = fixture.store.load(archive.as_slice()).unwrap().remove(0).image;
    let imported = fixture
        .store
        .import_tar(Tarball::new().file("hello", b"hi", 0o644).finish().as_slice(), Some("hello:v1"), &[])
        .unwrap();

    let saved = fixture.store.save(&["bb:latest", "hello:v1"], Vec::new()).unwrap();
    let names = entry_names(&saved);
    for required in ["manifest.json", "index.json", "oci-layout"] {
        assert!(names.iter().any(|n| n == required), "{required} missing: {names:?}");
    }
    let manifest: serde_json::Value = serde_json::from_slice(&read_entry(&saved, "manifest.json").unwrap()).unwrap();
    assert_eq!(manifest[0]["RepoTags"][0], "bb:latest");
    assert_eq!(manifest[0]["Config"], format!("blobs/sha256/{}", original.hex()));
    assert_eq!(manifest[0]["Layers"].as_array().unwrap().len(), 2);
    let index: serde_json::Value = serde_json::from_slice(&read_entry(&saved, "index.json").unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["annotations"]["io.containerd.image.name"], "docker.io/library/bb:latest");

    // Into a fresh store: same ids, tags and files.
    let other_dir = tempfile::tempdir().unwrap();
    let other = ImageStore::open(other_dir.path()).unwrap();
    let loaded = other.load(saved.as_slice()).unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[0].image.id, original.id);
    assert_eq!(loaded[0].tags, ["bb:latest"]);
    assert_eq!(loaded[1].image.id, imported.id);
    assert_eq!(loaded[1].tags, ["hello:v1"]);
    assert_flattened(&loaded[0].image.rootfs);
    assert_eq!(fs::read(loaded[1].image.rootfs.join("hello")).unwrap(), b"hi");
    assert_eq!(loaded[1].image.run_config(), imported.run_config());

    // And back into the same store: nothing new, the tags stay.
    let again = fixture.store.load(saved.as_slice()).unwrap();
    assert_eq!(again[0].image.id, original.id);
    assert_eq!(fixture.store.list().len(), 2);

    // Saving twice gives the same bytes.
    let saved_again = fixture.store.save(&["bb:latest", "hello:v1"], Vec::new()).unwrap();
    assert_eq!(saved, saved_again);
}

#[test]
fn save_by_id_is_untagged_and_by_name_takes_all_tags() {
    let fixture = Fixture::new();
    let tarball = Tarball::new().file("f", b"1", 0o644).finish();
    let image = fixture.store.import_tar(tarball.as_slice(), Some("multi:one"), &[]).unwrap();
    fixture.store.tag("multi:one", "multi:two").unwrap();
    fixture.store.tag("multi:one", "other:x").unwrap();

    let by_id = fixture.store.save(&[image.short_id()], Vec::new()).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&read_entry(&by_id, "manifest.json").unwrap()).unwrap();
    assert!(manifest[0]["RepoTags"].is_null());

    let by_name = fixture.store.save(&["multi"], Vec::new()).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&read_entry(&by_name, "manifest.json").unwrap()).unwrap();
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["multi:one", "multi:two"]));

    let err = fixture.store.save(&["missing"], Vec::new()).unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
}

#[test]
fn duplicate_entries_in_the_archive_last_one_wins() {
    let fixture = Fixture::new();
    let layer = lower_layer();
    let config = image_config(&[&layer], &["sh"]);
    let config_hex = sha256_hex(&config);
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": ["dup:latest"],
        "Layers": ["l/layer.tar"],
    }]);
    let archive = Tarball::new()
        .file("l/layer.tar", b"garbage that is replaced below", 0o644)
        .file("l/layer.tar", &layer, 0o644)
        .file("manifest.json", b"[]", 0o644)
        .file(&format!("{config_hex}.json"), &config, 0o644)
        .file("manifest.json", &serde_json::to_vec(&manifest).unwrap(), 0o644)
        .finish();
    let loaded = fixture.store.load(archive.as_slice()).unwrap();
    assert_eq!(loaded[0].tags, ["dup:latest"]);
    assert_eq!(fs::read(loaded[0].image.rootfs.join("keep")).unwrap(), b"keep");
}

#[test]
fn nested_index_picks_the_host_platform() {
    // Docker 25+ with the containerd store: index.json → image index → per-platform manifests,
    // with only this platform's blobs (and an attestation) in the archive.
    let fixture = Fixture::new();
    let layer = lower_layer();
    let config = image_config(&[&layer], &["sh"]);
    let descriptor = |media: &str, blob: &[u8]| serde_json::json!({"mediaType": media, "digest": format!("sha256:{}", sha256_hex(blob)), "size": blob.len()});
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
    }))
    .unwrap();
    let mut host = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    host["platform"] = serde_json::json!({"os": "linux", "architecture": host_architecture()});
    let mut attestation = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    attestation["platform"] = serde_json::json!({"os": "unknown", "architecture": "unknown"});
    attestation["annotations"] = serde_json::json!({"vnd.docker.reference.type": "attestation-manifest"});
    let mut absent = descriptor("application/vnd.oci.image.manifest.v1+json", b"not in the archive");
    absent["platform"] = serde_json::json!({"os": "linux", "architecture": host_architecture()});
    let inner = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [absent, attestation, host],
    }))
    .unwrap();
    let mut top = descriptor("application/vnd.oci.image.index.v1+json", &inner);
    top["annotations"] = serde_json::json!({"io.containerd.image.name": "docker.io/team/nested:3"});
    let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [top]})).unwrap();
    let mut archive = Tarball::new();
    for blob in [&layer, &config, &manifest, &inner] {
        archive = archive.file(&format!("blobs/sha256/{}", sha256_hex(blob)), blob, 0o644);
    }
    let archive = archive.file("index.json", &index, 0o644).finish();
    let loaded = fixture.store.load(archive.as_slice()).unwrap();
    assert_eq!(loaded[0].tags, ["team/nested:3"]);
    assert_eq!(loaded[0].image.id, format!("sha256:{}", sha256_hex(&config)));
    assert_eq!(fs::read(loaded[0].image.rootfs.join("keep")).unwrap(), b"keep");
}
