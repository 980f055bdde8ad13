//! `docker import` of plain rootfs tarballs and rootfs directories.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{Fixture, MTIME, Tarball, gzip};
use hatch_image::{Error, ImportOptions, Limits, default_path_env};

const BUSYBOX: &str = "/bin/busybox";

/// A small busybox-style rootfs; uses Debian's static busybox when installed.
fn busybox_rootfs() -> (Vec<u8>, Vec<u8>) {
    let busybox = fs::read(BUSYBOX).unwrap_or_else(|_| b"#!/bin/sh\necho not busybox\n".to_vec());
    let tarball = Tarball::new()
        .dir("./", 0o755)
        .dir("./bin/", 0o755)
        .file("./bin/busybox", &busybox, 0o755)
        .symlink("./bin/sh", "busybox")
        .symlink("./bin/ls", "/bin/busybox")
        .symlink("./bin/cat", "/bin/busybox")
        .dir("./etc/", 0o755)
        .file("./etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .file("./etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o640)
        .dir("./tmp/", 0o1777)
        .dir("./usr/bin/", 0o755)
        .symlink("./usr/bin/env", "../../bin/busybox")
        .file_owned("./home/user/notes", b"mine\n", 0o600, 1000, 1000)
        .file("./usr/bin/su", b"suid", 0o4755)
        .hardlink("./bin/busybox-again", "./bin/busybox")
        .finish();
    (tarball, busybox)
}

#[test]
fn busybox_rootfs_round_trip() {
    let fixture = Fixture::new();
    let (tarball, busybox) = busybox_rootfs();
    let image = fixture.store.import_tar(tarball.as_slice(), Some("bb"), &[]).unwrap();
    assert_eq!(image.repo_tags, ["bb:latest"]);
    assert!(image.id.starts_with("sha256:") && image.id.len() == 71);
    assert_eq!(image.run_config().env(), [default_path_env()]);
    assert!(image.run_config().cmd().is_empty());
    assert_eq!(image.config.os, "linux");
    assert_eq!(image.diff_ids().len(), 1);
    assert_eq!(image.diff_ids()[0], format!("sha256:{}", common::sha256_hex(&tarball)));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now - image.created).abs() < 60);
    assert!(image.size >= busybox.len() as u64);

    let root = &image.rootfs;
    assert!(root.starts_with(fixture.store_root().join("rootfs")));
    assert_eq!(fs::read(root.join("bin/busybox")).unwrap(), busybox);
    let meta = fs::metadata(root.join("bin/busybox")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    assert_eq!(meta.mtime(), MTIME as i64);
    assert_eq!(meta.nlink(), 2, "hard link preserved");
    assert_eq!(fs::read_link(root.join("bin/sh")).unwrap(), Path::new("busybox"));
    assert_eq!(fs::read_link(root.join("bin/ls")).unwrap(), Path::new("/bin/busybox"));
    assert_eq!(fs::read_link(root.join("usr/bin/env")).unwrap(), Path::new("../../bin/busybox"));
    let tmp = fs::metadata(root.join("tmp")).unwrap();
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    assert_eq!(tmp.mtime(), MTIME as i64, "directory mtime survives its children");
    let shadow = fs::metadata(root.join("etc/shadow")).unwrap();
    assert_eq!(shadow.permissions().mode() & 0o7777, 0o640);
    let su = fs::metadata(root.join("usr/bin/su")).unwrap();
    if rustix::process::geteuid().is_root() {
        assert_eq!(su.permissions().mode() & 0o7777, 0o4755, "setuid kept");
        let notes = fs::metadata(root.join("home/user/notes")).unwrap();
        assert_eq!((notes.uid(), notes.gid()), (1000, 1000));
    }

    // The image resolves, lists and survives a reopen.
    assert_eq!(fixture.store.resolve("bb").unwrap(), image);
    assert_eq!(fixture.store.list(), std::slice::from_ref(&image));
    let root_dir = fixture.store_root();
    drop(fixture.store);
    let reopened = hatch_image::ImageStore::open(&root_dir).unwrap();
    assert_eq!(reopened.resolve("bb:latest").unwrap(), image);

    // The busybox really runs from the flattened rootfs.
    let can_chroot = rustix::process::geteuid().is_root() && Path::new(BUSYBOX).exists();
    if can_chroot {
        let output = Command::new("chroot")
            .arg(&image.rootfs)
            .args(["/bin/sh", "-c", "cat /etc/passwd; echo ok"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("root:x:0:0") && stdout.ends_with("ok\n"), "{stdout}");
    } else {
        eprintln!("skipping the chroot check: needs root and {BUSYBOX}");
    }
}

#[test]
fn gzip_tarball_is_detected() {
    let fixture = Fixture::new();
    let (tarball, _) = busybox_rootfs();
    let plain = fixture.store.import_tar(tarball.as_slice(), Some("plain"), &[]).unwrap();
    let zipped = fixture.store.import_tar(gzip(&tarball).as_slice(), Some("zipped"), &[]).unwrap();
    // Same uncompressed layer: the same diff id.
    assert_eq!(plain.diff_ids(), zipped.diff_ids());
    assert_eq!(fs::read(zipped.rootfs.join("etc/passwd")).unwrap(), b"root:x:0:0:root:/root:/bin/sh\n");
}

#[test]
fn import_applies_changes_and_message() {
    let fixture = Fixture::new();
    let tarball = Tarball::new().file("hello", b"hi", 0o644).finish();
    let changes = [
        r#"CMD ["/bin/sh", "-c", "echo hi"]"#.to_owned(),
        "ENV FOO=bar".to_owned(),
        "WORKDIR /srv".to_owned(),
        "USER nobody".to_owned(),
        "ENTRYPOINT [\"/bin/tini\"]".to_owned(),
        "LABEL version=1".to_owned(),
        "EXPOSE 8080".to_owned(),
    ];
    let image = fixture
        .store
        .import_tar_with(
            tarball.as_slice(),
            &ImportOptions {
                reference: Some("example.com:5000/team/app:v1"),
                changes: &changes,
                message: Some("built by hand"),
            },
        )
        .unwrap();
    let run = image.run_config();
    assert_eq!(run.cmd(), ["/bin/sh", "-c", "echo hi"]);
    assert_eq!(run.entrypoint(), ["/bin/tini"]);
    assert_eq!(run.env(), [default_path_env(), "FOO=bar".to_owned()]);
    assert_eq!(run.working_dir(), "/srv");
    assert_eq!(run.user(), "nobody");
    assert_eq!(run.exposed_ports(), ["8080/tcp"]);
    assert_eq!(image.config.comment.as_deref(), Some("built by hand"));
    assert_eq!(image.repo_tags, ["example.com:5000/team/app:v1"]);

    let raw = fixture.store.config_json("example.com:5000/team/app:v1").unwrap();
    assert_eq!(format!("sha256:{}", common::sha256_hex(&raw)), image.id);
    let json: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(json["config"]["Cmd"][2], "echo hi");
    assert_eq!(json["rootfs"]["type"], "layers");
    assert_eq!(json["config"]["Labels"]["version"], "1");
}

#[test]
fn bad_input_gets_clear_errors_and_stores_nothing() {
    let fixture = Fixture::new();
    let tarball = Tarball::new().file("f", b"x", 0o644).finish();
    let bad_change = ["RUN rm -rf /".to_owned()];
    let err = fixture.store.import_tar(tarball.as_slice(), None, &bad_change).unwrap_err();
    assert!(matches!(err, Error::Change(_)), "{err}");
    let err = fixture.store.import_tar(tarball.as_slice(), Some("Bad Name"), &[]).unwrap_err();
    assert!(matches!(err, Error::Reference(_)), "{err}");
    let err = fixture.store.import_tar(&b""[..], None, &[]).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let err = fixture.store.import_tar(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0, 0][..], None, &[]).unwrap_err();
    assert!(err.to_string().contains("xz-compressed"), "{err}");
    let err = fixture
        .store
        .import_tar(&b"this is not a tar archive at all, just text that goes on"[..], None, &[])
        .unwrap_err();
    assert!(err.is_bad_input(), "{err:?}");
    // A truncated tarball.
    let truncated = &tarball[..600];
    let err = fixture.store.import_tar(truncated, None, &[]).unwrap_err();
    assert!(err.is_bad_input(), "{err:?}");
    fixture.assert_untouched();
}

#[test]
fn limits_are_enforced() {
    let many = (0..20).fold(Tarball::new(), |t, n| t.file(&format!("f{n}"), b"x", 0o644));
    let fixture = Fixture::with_limits(Limits { max_entries: 10, ..Limits::default() });
    let err = fixture.store.import_tar(many.finish().as_slice(), None, &[]).unwrap_err();
    assert!(matches!(err, Error::Unpack(hatch_image::UnpackError::Limit(_))), "{err}");
    assert!(err.to_string().contains("more than 10 entries"), "{err}");
    fixture.assert_untouched();

    let fixture = Fixture::with_limits(Limits { max_unpacked_bytes: 1000, ..Limits::default() });
    let big = Tarball::new().file("big", &[7u8; 5000], 0o644).finish();
    let err = fixture.store.import_tar(big.as_slice(), None, &[]).unwrap_err();
    assert!(err.to_string().contains("more than 1000 bytes"), "{err}");
    fixture.assert_untouched();
}

#[test]
fn later_entries_replace_earlier_ones() {
    let fixture = Fixture::new();
    let tarball = Tarball::new()
        .file("a", b"first", 0o644)
        .file("a", b"second", 0o600)
        .dir("d/", 0o755)
        .file("d/x", b"x", 0o644)
        .file("d", b"now a file", 0o644)
        .symlink("l", "/nowhere")
        .file("l", b"was a link", 0o644)
        .finish();
    let image = fixture.store.import_tar(tarball.as_slice(), None, &[]).unwrap();
    assert!(image.repo_tags.is_empty());
    assert_eq!(fs::read(image.rootfs.join("a")).unwrap(), b"second");
    assert_eq!(fs::read(image.rootfs.join("d")).unwrap(), b"now a file");
    assert_eq!(fs::read(image.rootfs.join("l")).unwrap(), b"was a link");
}

#[test]
fn long_names_and_pax_xattrs() {
    let fixture = Fixture::new();
    let long = format!("{}/{}", "d".repeat(150), "f".repeat(200));
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(4);
    builder.append_data(&mut header, &long, &b"long"[..]).unwrap();
    // A PAX header with an xattr for the next entry.
    let record = b"30 SCHILY.xattr.user.test=yes\n";
    let mut pax = tar::Header::new_ustar();
    pax.set_entry_type(tar::EntryType::XHeader);
    pax.set_size(record.len() as u64);
    pax.set_path("PaxHeader").unwrap();
    pax.set_cksum();
    builder.append(&pax, &record[..]).unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(1);
    builder.append_data(&mut header, "attr", &b"a"[..]).unwrap();
    let tarball = builder.into_inner().unwrap();

    let image = fixture.store.import_tar(tarball.as_slice(), None, &[]).unwrap();
    assert_eq!(fs::read(image.rootfs.join(&long)).unwrap(), b"long");
    let mut value = [0u8; 16];
    match rustix::fs::getxattr(image.rootfs.join("attr"), "user.test", &mut value[..]) {
        Ok(n) => assert_eq!(&value[..n], b"yes"),
        // Some filesystems (tmpfs without user xattrs) refuse; the import still succeeds.
        Err(e) => eprintln!("user xattrs unsupported here: {e}"),
    }
}

#[test]
fn import_dir_copies_without_following_links() {
    use std::os::unix::fs::symlink;
    let fixture = Fixture::new();
    let source = fixture.dir.path().join("source");
    fs::create_dir_all(source.join("bin")).unwrap();
    fs::create_dir_all(source.join("etc")).unwrap();
    fs::write(source.join("bin/tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(source.join("bin/tool"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::hard_link(source.join("bin/tool"), source.join("bin/tool2")).unwrap();
    symlink("/etc", source.join("hostetc")).unwrap();
    symlink(fixture.canary_dir(), source.join("canary")).unwrap();
    symlink("tool", source.join("bin/alias")).unwrap();
    fs::write(source.join("etc/hostname"), b"box\n").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        source.join("pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();

    let image = fixture.store.import_dir(&source, Some("fromdir:1")).unwrap();
    let root = &image.rootfs;
    assert_eq!(image.repo_tags, ["fromdir:1"]);
    assert_eq!(fs::read(root.join("bin/tool")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(fs::metadata(root.join("bin/tool")).unwrap().permissions().mode() & 0o7777, 0o750);
    assert_eq!(fs::metadata(root.join("bin/tool")).unwrap().ino(), fs::metadata(root.join("bin/tool2")).unwrap().ino());
    assert_eq!(fs::read_link(root.join("hostetc")).unwrap(), Path::new("/etc"));
    assert_eq!(fs::read_link(root.join("canary")).unwrap(), fixture.canary_dir());
    assert_eq!(fs::read_link(root.join("bin/alias")).unwrap(), Path::new("tool"));
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fs::symlink_metadata(root.join("pipe")).unwrap().file_type()));
    // The source is untouched and the host's /etc was not copied in.
    assert!(fs::read_dir(root).unwrap().count() >= 5);
    assert!(!root.join("etc/passwd").exists());
    assert_eq!(fs::read(fixture.canary_dir().join("passwd")).unwrap(), b"canary\n");
}

#[test]
fn import_dir_refuses_a_missing_directory() {
    let fixture = Fixture::new();
    let err = fixture.store.import_dir(&fixture.dir.path().join("nope"), None).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    fixture.assert_untouched();
}
