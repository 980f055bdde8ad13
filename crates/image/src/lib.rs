//! hatch's image store: imported tarballs, rootfs directories and `docker save` archives,
//! each flattened into one root filesystem directory that the node uses as the read-only
//! lower layer of a container's overlayfs.
//!
//! # On-disk layout
//!
//! ```text
//! <root>/                      mode 0700: images hold setuid binaries
//!   index.json                 tags and per-image records, replaced atomically
//!   configs/<hex>.json         raw image config; <hex> = sha256 of these bytes = image id
//!   layers/<diff-hex>.tar      uncompressed layer tarballs, shared; kept so `save` can
//!                              reproduce the exact diff ids (the image id depends on them)
//!   rootfs/<hex>/              flattened root filesystem of image <hex>
//!   tmp/                       staging for imports and deletions; emptied at open
//!   lock                       flock'ed while a process has the store open
//! ```
//!
//! An import extracts into `tmp/` without holding the store's lock, `syncfs`es, then renames
//! into place and rewrites `index.json` under the lock; a crash leaves either the old or the
//! new state plus garbage (staging dirs, files no record points to) that
//! [`ImageStore::open`] removes. Records whose files are missing are dropped at open.
//! The rootfs directories are the store's: callers must treat them as read-only.
//!
//! # Archive safety rules
//!
//! Extraction never follows a symbolic link: every parent directory is opened with
//! `O_NOFOLLOW | O_DIRECTORY` relative to its parent, starting at the rootfs directory, and
//! every object is created with `*at` calls relative to those descriptors. An entry is refused
//! (with an error naming it) when:
//!
//! * its path has a `..` component (anywhere; `./` and empty components are skipped, a leading
//!   `/` is stripped, so `/etc/passwd` lands in the image's own `etc/passwd`);
//! * a parent directory on its path is a symbolic link, even one from a lower layer;
//! * it is a relative symbolic link whose target climbs above the root (`../../etc`);
//!   absolute targets (`/bin/busybox`) are fine: they resolve inside the container;
//! * it is a hard link whose target (same path rules) is missing, a directory or a symlink;
//! * it is a character or block device (FIFOs are allowed: they cannot reach the host);
//! * it exceeds the [`Limits`] (total bytes, entries, path length, layers).
//!
//! The same path rules apply to the outer `docker save` archive, whose files are only read,
//! never created by name; its symlinks (legacy saves link duplicate layers) must stay inside it.
//! [`ImageStore::import_dir`] archives a directory without following links inside it and skips
//! device nodes and sockets (runc provides `/dev`).
//!
//! Whiteouts (`.wh.<name>`, `.wh..wh..opq`) are applied while flattening layers, as overlayfs
//! would present them. Extended attributes from PAX `SCHILY.xattr.*` records are restored,
//! except `trusted.overlay.*` / `user.overlay.*`, which could steer the container's overlayfs.
#![forbid(unsafe_code)]

mod archive;
mod changes;
mod compress;
mod config;
mod error;
mod fsutil;
mod pack;
mod reference;
mod store;
mod timefmt;
mod unpack;

pub use changes::ChangeError;
pub use config::{History, ImageConfig, RootFs, RunConfig, default_path_env};
pub use error::Error;
pub use reference::{Reference, ReferenceError};
pub use store::{Image, ImageStore, ImportOptions, LoadedImage, RemoveAction};
pub use timefmt::{format_rfc3339, parse_rfc3339};
pub use unpack::UnpackError;

/// Caps that keep a hostile or broken archive from filling the disk or memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sum of all entry sizes extracted by one import (every layer counted).
    pub max_unpacked_bytes: u64,
    /// Entries extracted by one import (every layer counted).
    pub max_entries: u64,
    /// Length of one entry path or link target, in bytes.
    pub max_path_bytes: usize,
    /// Size of a JSON document read from an archive (manifest, index, image config).
    pub max_metadata_bytes: u64,
    /// Layers in one image.
    pub max_layers: usize,
    /// Bytes of a `docker save` archive (it is spooled to disk before it is read).
    pub max_archive_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_unpacked_bytes: 64 << 30,
            max_entries: 4_000_000,
            max_path_bytes: 4096,
            max_metadata_bytes: 16 << 20,
            max_layers: 256,
            max_archive_bytes: 64 << 30,
        }
    }
}

/// `sha256:<hex>` as Docker spells digests and image ids.
pub(crate) fn sha256_digest(hex_digest: &str) -> String {
    format!("sha256:{hex_digest}")
}

/// True for 64 lower-case hex characters (a full sha256).
pub(crate) fn is_full_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
