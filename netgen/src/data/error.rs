//! The data module's error type: every message is one line that says what was expected and what
//! to do next.
use std::path::PathBuf;

/// Why a data set could not be opened or a batch could not be built.
#[derive(thiserror::Error, Debug)]
pub enum DataError {
    /// The `--data` string is not one of the accepted forms.
    #[error(
        "unknown data source {0:?}: use fashion-mnist, fashion-mnist:DIR, mnist:DIR, cifar10:DIR, cifar100:DIR or imagefolder:DIR"
    )]
    Source(String),
    /// A directory or file the layout requires is absent.
    #[error("{what} not found: {path} ({hint})")]
    NotFound {
        what: String,
        path: PathBuf,
        hint: String,
    },
    /// The operating system refused a read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its contents do not have the expected format (magic number, dimensions,
    /// length, label range, image/label counts).
    #[error("{path}: {detail}; re-download the file or check that --data names the right format")]
    Format { path: PathBuf, detail: String },
    /// A class folder of an image-folder data set holds no `.jpg`/`.jpeg`/`.png` file.
    #[error(
        "class folder {0} holds no .jpg/.jpeg/.png image; remove the folder or add images (layout: DIR/train/CLASS/*.jpg)"
    )]
    EmptyClass(PathBuf),
    /// An image could not be decoded and no readable replacement was found near it.
    #[error("cannot decode image {path}: {detail}; check or remove the file")]
    Decode { path: PathBuf, detail: String },
    /// The options cannot be applied to this data set.
    #[error("invalid data option: {0}")]
    Options(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        DataError::Format {
            path: path.into(),
            detail: detail.into(),
        }
    }
}
