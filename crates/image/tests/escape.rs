//! Tarballs that try to write outside the image are refused with an error naming the entry,
//! and nothing outside the store changes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Fixture, Tarball, image_config, legacy_archive};
use hatch_image::{Error, UnpackError};
use tar::EntryType;

/// Import `tarball`, expect an `Unsafe` refusal naming `entry` whose reason mentions `reason`.
fn assert_refused(fixture: &Fixture, tarball: Vec<u8>, entry: &str, reason: &str) {
    let err = fixture.store.import_tar(tarball.as_slice(), Some("evil"), &[]).expect_err("the import must be refused");
    let message = err.to_string();
    match &err {
        Error::Unpack(UnpackError::Unsafe { entry: named, .. }) => {
            assert_eq!(named, entry, "{message}");
        }
        other => panic!("expected an unsafe-entry error, got {other:?}"),
    }
    assert!(message.contains(reason), "{message:?} should mention {reason:?}");
    assert!(message.contains(entry), "{message:?} should name {entry:?}");
    assert_eq!(message, message.to_lowercase().replace(&entry.to_lowercase(), entry));
    assert!(err.is_bad_input());
    fixture.assert_untouched();
}

#[test]
fn dotdot_entry_is_refused() {
    let fixture = Fixture::new();
    let tarball = Tarball::new()
        .file("ok", b"fine", 0o644)
        .raw(EntryType::Regular, "../../../../canary/passwd", "", b"owned\n")
        .finish();
    assert_refused(&fixture, tarball, "../../../../canary/passwd", "'..'");
}

#[test]
fn dotdot_in_the_middle_is_refused() {
    let fixture = Fixture::new();
    let tarball = Tarball::new().dir("a/", 0o755).raw(EntryType::Regular, "a/../../x", "", b"x").finish();
    assert_refused(&fixture, tarball, "a/../../x", "'..'");
}

#[test]
fn dotdot_directory_is_refused() {
    let fixture = Fixture::new();
    let tarball = Tarball::new().raw(EntryType::Directory, "../../../../canary/newdir/", "", b"").finish();
    assert_refused(&fixture, tarball, "../../../../canary/newdir/", "'..'");
}

#[test]
fn absolute_path_lands_inside_the_image() {
    let fixture = Fixture::new();
    let canary = fixture.canary_dir().join("passwd");
    let absolute = canary.to_str().unwrap().to_owned();
    let tarball = Tarball::new()
        .raw(EntryType::Regular, &absolute, "", b"inside\n")
        .raw(EntryType::Regular, "/etc/hostname", "", b"box\n")
        .finish();
    let image = fixture.store.import_tar(tarball.as_slice(), Some("abs"), &[]).unwrap();
    assert_eq!(std::fs::read(&canary).unwrap(), b"canary\n");
    let inside = image.rootfs.join(absolute.trim_start_matches('/'));
    assert_eq!(std::fs::read(inside).unwrap(), b"inside\n");
    assert_eq!(std::fs::read(image.rootfs.join("etc/hostname")).unwrap(), b"box\n");
}

#[test]
fn writing_through_an_absolute_symlink_is_refused() {
    let fixture = Fixture::new();
    // `a -> /etc` in the brief; aimed at the canary so a broken check cannot hurt the host.
    let target = fixture.canary_dir();
    let tarball = Tarball::new().symlink("a", target.to_str().unwrap()).file("a/passwd", b"owned\n", 0o644).finish();
    assert_refused(&fixture, tarball, "a/passwd", "symbolic link");
}

#[test]
fn writing_through_a_relative_symlink_is_refused() {
    let fixture = Fixture::new();
    // Points inside the image, but the write would still follow a link: refused.
    let tarball = Tarball::new().dir("real/", 0o755).symlink("alias", "real").file("alias/file", b"x", 0o644).finish();
    assert_refused(&fixture, tarball, "alias/file", "symbolic link");
}

#[test]
fn directory_entry_through_a_symlink_is_refused() {
    let fixture = Fixture::new();
    let target = fixture.canary_dir();
    let tarball = Tarball::new().symlink("a", target.to_str().unwrap()).dir("a/sub/", 0o755).finish();
    assert_refused(&fixture, tarball, "a/sub/", "symbolic link");
}

#[test]
fn symlink_climbing_above_the_root_is_refused() {
    let fixture = Fixture::new();
    let tarball = Tarball::new().symlink("x", "../../../../canary").finish();
    assert_refused(&fixture, tarball, "x", "climbs above the root");
}

#[test]
fn nested_symlink_climbing_above_the_root_is_refused() {
    let fixture = Fixture::new();
    let tarball = Tarball::new().dir("usr/bin/", 0o755).symlink("usr/bin/x", "../../../etc/passwd").finish();
    assert_refused(&fixture, tarball, "usr/bin/x", "climbs above the root");
}

#[test]
fn hard_link_with_dotdot_target_is_refused() {
    let fixture = Fixture::new();
    let tarball = Tarball::new().raw(EntryType::Link, "h", "../../../../canary/passwd", b"").finish();
    assert_refused(&fixture, tarball, "h", "'..'");
}

#[test]
fn hard_link_to_an_absolute_host_path_is_refused() {
    let fixture = Fixture::new();
    let target = fixture.canary_dir().join("passwd");
    let tarball = Tarball::new().hardlink("h", target.to_str().unwrap()).finish();
    // `/…/canary/passwd` means that path inside the image, where it does not exist.
    let err = fixture.store.import_tar(tarball.as_slice(), None, &[]).expect_err("must be refused");
    let message = err.to_string();
    assert!(message.contains("\"h\""), "{message}");
    assert!(message.contains("does not exist"), "{message}");
    fixture.assert_untouched();
}

#[test]
fn hard_link_to_a_symlink_is_refused() {
    let fixture = Fixture::new();
    let target = fixture.canary_dir().join("passwd");
    let tarball = Tarball::new().symlink("s", target.to_str().unwrap()).hardlink("h", "s").finish();
    assert_refused(&fixture, tarball, "h", "is a symbolic link");
}

#[test]
fn hard_link_through_a_symlinked_directory_is_refused() {
    let fixture = Fixture::new();
    let tarball =
        Tarball::new().symlink("d", fixture.canary_dir().to_str().unwrap()).hardlink("h", "d/passwd").finish();
    assert_refused(&fixture, tarball, "h", "symbolic link");
}

#[test]
fn hard_link_to_a_directory_is_refused() {
    let fixture = Fixture::new();
    let tarball = Tarball::new().dir("d/", 0o755).hardlink("h", "d").finish();
    assert_refused(&fixture, tarball, "h", "is a directory");
}

#[test]
fn character_device_is_refused() {
    let fixture = Fixture::new();
    let tarball = Tarball::new().dir("dev/", 0o755).device("dev/mem", EntryType::Char).finish();
    assert_refused(&fixture, tarball, "dev/mem", "device nodes");
}

#[test]
fn block_device_is_refused() {
    let fixture = Fixture::new();
    let tarball = Tarball::new().device("sda", EntryType::Block).finish();
    assert_refused(&fixture, tarball, "sda", "device nodes");
}

#[test]
fn fifo_is_allowed() {
    use std::os::unix::fs::FileTypeExt;
    let fixture = Fixture::new();
    let tarball = Tarball::new().dir("run/", 0o755).fifo("run/pipe").finish();
    let image = fixture.store.import_tar(tarball.as_slice(), Some("fifo"), &[]).unwrap();
    let meta = std::fs::symlink_metadata(image.rootfs.join("run/pipe")).unwrap();
    assert!(meta.file_type().is_fifo());
}

#[test]
fn whiteout_through_a_symlink_is_refused() {
    let fixture = Fixture::new();
    let tarball =
        Tarball::new().symlink("a", fixture.canary_dir().to_str().unwrap()).file("a/.wh.passwd", b"", 0o644).finish();
    assert_refused(&fixture, tarball, "a/.wh.passwd", "symbolic link");
}

#[test]
fn later_layer_cannot_write_through_a_lower_layer_symlink() {
    let fixture = Fixture::new();
    let lower = Tarball::new().symlink("lib", fixture.canary_dir().to_str().unwrap()).finish();
    let upper = Tarball::new().file("lib/passwd", b"owned\n", 0o644).finish();
    let config = image_config(&[&lower, &upper], &["sh"]);
    let archive = legacy_archive(&config, &[lower, upper], &["evil:latest"]);
    let err = fixture.store.load(archive.as_slice()).expect_err("must be refused");
    assert!(matches!(&err, Error::Unpack(UnpackError::Unsafe { entry, .. }) if entry == "lib/passwd"), "{err:?}");
    fixture.assert_untouched();
}

#[test]
fn load_archive_with_escaping_outer_entry_is_refused() {
    let fixture = Fixture::new();
    let archive = Tarball::new().raw(EntryType::Regular, "../../../canary/passwd", "", b"owned\n").finish();
    let err = fixture.store.load(archive.as_slice()).expect_err("must be refused");
    assert!(err.to_string().contains("'..'"), "{err}");
    fixture.assert_untouched();
}

#[test]
fn load_archive_with_escaping_layer_symlink_is_refused() {
    let fixture = Fixture::new();
    let layer = Tarball::new().file("etc/passwd", b"x", 0o644).finish();
    let config = image_config(&[&layer], &["sh"]);
    let config_hex = common::sha256_hex(&config);
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": ["evil:latest"],
        "Layers": ["l/layer.tar"],
    }]);
    let archive = Tarball::new()
        .symlink("l/layer.tar", "../../../canary/passwd")
        .file(&format!("{config_hex}.json"), &config, 0o644)
        .file("manifest.json", &serde_json::to_vec(&manifest).unwrap(), 0o644)
        .finish();
    let err = fixture.store.load(archive.as_slice()).expect_err("must be refused");
    assert!(err.to_string().contains("climbs out"), "{err}");
    fixture.assert_untouched();
}
