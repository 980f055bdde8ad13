//! Store behaviour: references, tags, `docker rmi` semantics, crash recovery, concurrency.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::sync::Arc;

use common::{Fixture, Tarball};
use hatch_image::{Error, Image, ImageStore, RemoveAction};

fn import(fixture: &Fixture, content: &str, reference: Option<&str>) -> Image {
    let tarball = Tarball::new().file("content", content.as_bytes(), 0o644).finish();
    fixture.store.import_tar(tarball.as_slice(), reference, &[]).unwrap()
}

#[test]
fn resolve_by_tag_id_and_prefix() {
    let fixture = Fixture::new();
    let image = import(&fixture, "one", Some("bb"));
    let hex = image.hex().to_owned();
    let store = &fixture.store;
    for reference in [
        "bb".to_owned(),
        "bb:latest".to_owned(),
        "docker.io/library/bb".to_owned(),
        "docker.io/library/bb:latest".to_owned(),
        image.id.clone(),
        hex.clone(),
        hex[..4].to_owned(),
        hex[..12].to_owned(),
        format!("sha256:{}", &hex[..12]),
    ] {
        assert_eq!(store.resolve(&reference).unwrap().id, image.id, "{reference}");
        assert_eq!(store.image_id(&reference).unwrap(), image.id, "{reference}");
    }
    for missing in ["bb:other", "cc", &hex[..3], "zzzz", "", "BB", "sha256:", "sha256:zz"] {
        let err = store.resolve(missing).unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{missing:?}: {err:?}");
        assert_eq!(err.to_string(), format!("no such image: {missing}"));
    }
}

#[test]
fn a_tag_wins_over_an_id_prefix() {
    let fixture = Fixture::new();
    let first = import(&fixture, "one", None);
    // A hex prefix is also a valid repository name; Docker looks names up first.
    let prefix = first.hex()[..6].to_owned();
    let second = import(&fixture, "two", None);
    fixture.store.tag(second.hex(), &prefix).unwrap();
    assert_eq!(fixture.store.resolve(&prefix).unwrap().id, second.id);
    assert_eq!(fixture.store.resolve(&first.hex()[..7]).unwrap().id, first.id);
}

#[test]
fn tag_moves_and_leaves_the_old_image_dangling() {
    let fixture = Fixture::new();
    let old = import(&fixture, "old", Some("app:1"));
    let new = import(&fixture, "new", None);
    let tagged = fixture.store.tag(new.hex(), "app:1").unwrap();
    assert_eq!(tagged.repo_tags, ["app:1"]);
    assert!(fixture.store.resolve(old.hex()).unwrap().repo_tags.is_empty());
    assert_eq!(fixture.store.list().len(), 2);
    let err = fixture.store.tag("app:1", "Bad:Tag").unwrap_err();
    assert!(matches!(err, Error::Reference(_)), "{err}");
    let err = fixture.store.tag("nothing", "x").unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
}

#[test]
fn remove_a_tag_only_untags_while_others_remain() {
    let fixture = Fixture::new();
    let image = import(&fixture, "x", Some("bb:1"));
    fixture.store.tag("bb:1", "bb:2").unwrap();
    let actions = fixture.store.remove("bb:1", false).unwrap();
    assert_eq!(actions, [RemoveAction::Untagged("bb:1".to_owned())]);
    assert!(image.rootfs.exists());
    let actions = fixture.store.remove("bb:2", false).unwrap();
    assert_eq!(actions, [RemoveAction::Untagged("bb:2".to_owned()), RemoveAction::Deleted(image.id.clone())]);
    assert!(!image.rootfs.exists());
    assert!(fixture.store.list().is_empty());
    // Its layer blob and config went with it; staging is clean.
    for sub in ["layers", "configs", "rootfs", "tmp"] {
        assert_eq!(fs::read_dir(fixture.store_root().join(sub)).unwrap().count(), 0, "{sub}");
    }
}

#[test]
fn remove_by_id_needs_force_across_repositories() {
    let fixture = Fixture::new();
    let image = import(&fixture, "x", Some("aa:latest"));
    fixture.store.tag("aa", "bb:latest").unwrap();
    let err = fixture.store.remove(image.short_id(), false).unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    assert!(err.to_string().contains("must be forced) - image is referenced in multiple repositories"), "{err}");
    assert!(image.rootfs.exists());
    let actions = fixture.store.remove(image.short_id(), true).unwrap();
    assert_eq!(
        actions,
        [
            RemoveAction::Untagged("aa:latest".to_owned()),
            RemoveAction::Untagged("bb:latest".to_owned()),
            RemoveAction::Deleted(image.id.clone()),
        ]
    );
    assert!(!image.rootfs.exists());
}

#[test]
fn remove_by_id_within_one_repository_needs_no_force() {
    let fixture = Fixture::new();
    let image = import(&fixture, "x", Some("aa:1"));
    fixture.store.tag("aa:1", "aa:2").unwrap();
    let actions = fixture.store.remove(&image.id, false).unwrap();
    assert_eq!(actions.len(), 3);
    assert_eq!(actions[2], RemoveAction::Deleted(image.id.clone()));
}

#[test]
fn remove_in_use_is_a_conflict_and_force_only_untags() {
    let fixture = Fixture::new();
    let image = import(&fixture, "x", Some("busy"));
    let in_use = |i: &Image| Some(format!("container abc is using its referenced image {}", i.short_id()));
    let err = fixture.store.remove_guarded("busy", false, in_use).unwrap_err();
    assert!(matches!(err, Error::Conflict(_)));
    assert!(
        err.to_string()
            .starts_with("conflict: unable to remove repository reference \"busy\" (must force) - container abc"),
        "{err}"
    );
    let err = fixture.store.remove_guarded(image.hex(), false, in_use).unwrap_err();
    assert!(err.to_string().contains("(must be forced) - container abc"), "{err}");
    let actions = fixture.store.remove_guarded("busy", true, in_use).unwrap();
    assert_eq!(actions, [RemoveAction::Untagged("busy:latest".to_owned())]);
    assert!(image.rootfs.exists(), "a container still uses the rootfs");
    assert!(fixture.store.resolve(image.hex()).unwrap().repo_tags.is_empty());
    // Untagging when other tags remain never asks.
    fixture.store.tag(image.hex(), "t:1").unwrap();
    fixture.store.tag(image.hex(), "t:2").unwrap();
    let actions = fixture.store.remove_guarded("t:1", false, |_| panic!("not asked when only untagging")).unwrap();
    assert_eq!(actions, [RemoveAction::Untagged("t:1".to_owned())]);
}

#[test]
fn shared_layers_survive_removal_of_one_image() {
    let fixture = Fixture::new();
    let tarball = Tarball::new().file("f", b"same", 0o644).finish();
    let first = fixture.store.import_tar(tarball.as_slice(), Some("one"), &[]).unwrap();
    let second = fixture.store.import_tar(tarball.as_slice(), Some("two"), &["CMD x".to_owned()]).unwrap();
    assert_ne!(first.id, second.id);
    assert_eq!(first.diff_ids(), second.diff_ids());
    fixture.store.remove("one", false).unwrap();
    let saved = fixture.store.save(&["two"], Vec::new()).unwrap();
    let other = tempfile::tempdir().unwrap();
    let loaded = ImageStore::open(other.path()).unwrap().load(saved.as_slice()).unwrap();
    assert_eq!(loaded[0].image.id, second.id);
}

#[test]
fn store_persists_and_cleans_crash_leftovers() {
    let fixture = Fixture::new();
    let image = import(&fixture, "x", Some("keep:me"));
    let root = fixture.store_root();
    drop(fixture.store);

    // What a crash can leave: a half-extracted import, a rootfs and config renamed into
    // place before the index was written, a half-written index temp file.
    let leftover = root.join("tmp/import-deadbeef/rootfs/bin");
    fs::create_dir_all(&leftover).unwrap();
    fs::write(leftover.join("sh"), b"partial").unwrap();
    let orphan = "f".repeat(64);
    fs::create_dir_all(root.join("rootfs").join(&orphan).join("etc")).unwrap();
    fs::write(root.join("configs").join(format!("{orphan}.json")), b"{}").unwrap();
    fs::write(root.join("layers").join(format!("{orphan}.tar")), b"").unwrap();
    fs::write(root.join(".index.json.tmp-1234"), b"{\"trunc").unwrap();

    let store = ImageStore::open(&root).unwrap();
    assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    assert!(!root.join("rootfs").join(&orphan).exists());
    assert!(!root.join("configs").join(format!("{orphan}.json")).exists());
    assert!(!root.join("layers").join(format!("{orphan}.tar")).exists());
    assert!(!root.join(".index.json.tmp-1234").exists());
    let reopened = store.resolve("keep:me").unwrap();
    assert_eq!(reopened, image);
    assert_eq!(fs::read(reopened.rootfs.join("content")).unwrap(), b"x");
    drop(store);
    drop(fixture.dir);
}

#[test]
fn incomplete_images_are_dropped_at_open() {
    let fixture = Fixture::new();
    let gone = import(&fixture, "gone", Some("gone"));
    let kept = import(&fixture, "kept", Some("kept"));
    let root = fixture.store_root();
    drop(fixture.store);
    fs::remove_dir_all(&gone.rootfs).unwrap();
    let store = ImageStore::open(&root).unwrap();
    assert!(matches!(store.resolve("gone"), Err(Error::NotFound(_))));
    assert_eq!(store.resolve("kept").unwrap().id, kept.id);
    let index = fs::read_to_string(root.join("index.json")).unwrap();
    assert!(!index.contains(gone.hex()), "the index was rewritten");
}

#[test]
fn corrupt_index_is_reported_not_discarded() {
    let fixture = Fixture::new();
    import(&fixture, "x", Some("x"));
    let root = fixture.store_root();
    drop(fixture.store);
    fs::write(root.join("index.json"), b"{not json").unwrap();
    let err = ImageStore::open(&root).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("index.json"), "{err}");
}

#[test]
fn one_process_per_store() {
    let fixture = Fixture::new();
    let err = ImageStore::open(&fixture.store_root()).unwrap_err();
    assert!(err.to_string().contains("in use by another process"), "{err}");
}

#[test]
fn concurrent_imports_and_reads() {
    let fixture = Fixture::new();
    let store = Arc::new(fixture.store);
    let threads: Vec<_> = (0..6)
        .map(|n| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let tarball = Tarball::new().file("n", n.to_string().as_bytes(), 0o644).finish();
                let image = store.import_tar(tarball.as_slice(), Some(&format!("img{n}")), &[]).unwrap();
                assert!(!store.list().is_empty());
                image
            })
        })
        .collect();
    let images: Vec<Image> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(store.list().len(), 6);
    for (n, image) in images.iter().enumerate() {
        let resolved = store.resolve(&format!("img{n}")).unwrap();
        assert_eq!(resolved.id, image.id);
        assert_eq!(fs::read(resolved.rootfs.join("n")).unwrap(), n.to_string().as_bytes());
    }
}
