use std::io;
use std::path::PathBuf;

use crate::changes::ChangeError;
use crate::reference::ReferenceError;
use crate::unpack::UnpackError;

/// Everything the image store can fail with. Messages are lower-case and name the input at
/// fault, so the node can pass them to Docker clients as they are.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No image matches the reference (`docker` says `No such image: ...`).
    #[error("no such image: {0}")]
    NotFound(String),
    /// An id prefix matches more than one image.
    #[error("ambiguous image reference {0:?}: it matches more than one image")]
    Ambiguous(String),
    /// A short id prefix (below 4 characters) or otherwise unusable id.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The operation would break Docker's rules (e.g. deleting an image referenced by
    /// several repositories without force, or one a container uses). Maps to HTTP 409.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A tarball entry was refused or could not be extracted.
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    /// A `docker save` / OCI archive is malformed or inconsistent.
    #[error("invalid image archive: {0}")]
    InvalidArchive(String),
    /// An image config JSON could not be parsed or is inconsistent.
    #[error("invalid image config: {0}")]
    InvalidConfig(String),
    /// A `docker import --change` instruction is invalid.
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// An archive or input exceeded a [`crate::Limits`] cap.
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// A filesystem operation on the store failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The store's own files are damaged.
    #[error("image store at {} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    /// True when the input (archive, reference, change) is at fault rather than the store:
    /// the node answers 400 for these and 500 for the rest.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Reference(_)
            | Self::InvalidArchive(_)
            | Self::InvalidConfig(_)
            | Self::Change(_)
            | Self::Limit(_) => true,
            Self::Unpack(err) => err.is_bad_input(),
            _ => false,
        }
    }
}

/// Attach a context string to `io::Result`s.
pub(crate) trait IoContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::io(context(), source))
    }
}

impl<T> IoContext<T> for rustix::io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|errno| Error::io(context(), errno.into()))
    }
}
