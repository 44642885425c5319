//! [`DataSource`]: where the data come from, parsed from the `--data` flag and stored in run
//! configurations as that same string.
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::error::DataError;

/// Where the Debian package `dataset-fashion-mnist` installs the four IDX `.gz` files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// A data set and its directory.
///
/// String forms: `fashion-mnist` (the default, at [`FASHION_MNIST_DIR`]), `fashion-mnist:DIR`,
/// `mnist:DIR` (IDX files, `.gz` or plain), `cifar10:DIR`, `cifar100:DIR` (the binary versions)
/// and `imagefolder:DIR` (`DIR/train/CLASS/*.jpg|png`, `DIR/val/CLASS/...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    FashionMnist(PathBuf),
    Mnist(PathBuf),
    Cifar10(PathBuf),
    Cifar100(PathBuf),
    ImageFolder(PathBuf),
}

impl Default for DataSource {
    fn default() -> Self {
        DataSource::FashionMnist(PathBuf::from(FASHION_MNIST_DIR))
    }
}

impl DataSource {
    /// Parses the `--data` string (see the type's documentation for the forms).
    pub fn parse(s: &str) -> Result<Self, DataError> {
        let s = s.trim();
        let (kind, dir) = match s.split_once(':') {
            Some((k, d)) => (k.to_ascii_lowercase(), Some(d)),
            None => (s.to_ascii_lowercase(), None),
        };
        let dir = match dir {
            Some("") => return Err(DataError::Source(s.into())),
            Some(d) => Some(PathBuf::from(d)),
            None => None,
        };
        Ok(match (kind.as_str(), dir) {
            ("fashion-mnist" | "fashion_mnist" | "fashionmnist", d) => {
                DataSource::FashionMnist(d.unwrap_or_else(|| PathBuf::from(FASHION_MNIST_DIR)))
            }
            ("mnist", Some(d)) => DataSource::Mnist(d),
            ("cifar10" | "cifar-10", Some(d)) => DataSource::Cifar10(d),
            ("cifar100" | "cifar-100", Some(d)) => DataSource::Cifar100(d),
            ("imagefolder" | "image-folder", Some(d)) => DataSource::ImageFolder(d),
            _ => return Err(DataError::Source(s.into())),
        })
    }

    /// The directory the data are read from.
    pub fn dir(&self) -> &Path {
        match self {
            DataSource::FashionMnist(d)
            | DataSource::Mnist(d)
            | DataSource::Cifar10(d)
            | DataSource::Cifar100(d)
            | DataSource::ImageFolder(d) => d,
        }
    }

    /// Short data-set name: `fashion-mnist`, `mnist`, `cifar10`, `cifar100`, `imagefolder`.
    pub fn name(&self) -> &'static str {
        match self {
            DataSource::FashionMnist(_) => "fashion-mnist",
            DataSource::Mnist(_) => "mnist",
            DataSource::Cifar10(_) => "cifar10",
            DataSource::Cifar100(_) => "cifar100",
            DataSource::ImageFolder(_) => "imagefolder",
        }
    }

    /// Human-readable description, e.g. `Fashion-MNIST (IDX) at /usr/share/datasets/fashion-mnist`.
    pub fn describe(&self) -> String {
        let what = match self {
            DataSource::FashionMnist(_) => "Fashion-MNIST (IDX)",
            DataSource::Mnist(_) => "MNIST (IDX)",
            DataSource::Cifar10(_) => "CIFAR-10 (binary)",
            DataSource::Cifar100(_) => "CIFAR-100 (binary)",
            DataSource::ImageFolder(_) => "image folder",
        };
        format!("{what} at {}", self.dir().display())
    }
}

/// The string form that [`DataSource::parse`] reads back (`fashion-mnist` alone for the default).
impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == DataSource::default() {
            return f.write_str("fashion-mnist");
        }
        write!(f, "{}:{}", self.name(), self.dir().display())
    }
}

impl FromStr for DataSource {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataSource::parse(s)
    }
}

impl serde::Serialize for DataSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for DataSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DataSource::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips() {
        for s in [
            "fashion-mnist",
            "fashion-mnist:/x/y",
            "mnist:d",
            "cifar10:/c",
            "cifar100:c100",
            "imagefolder:/imnet",
        ] {
            let d = DataSource::parse(s).unwrap();
            assert_eq!(d.to_string(), s);
            let j = serde_json::to_string(&d).unwrap();
            assert_eq!(serde_json::from_str::<DataSource>(&j).unwrap(), d);
        }
        assert_eq!(DataSource::parse("fashion-mnist").unwrap(), DataSource::default());
        assert_eq!(
            "cifar10:/a".parse::<DataSource>().unwrap(),
            DataSource::Cifar10("/a".into())
        );
    }

    #[test]
    fn parse_rejects_bad_forms() {
        for s in ["", "mnist", "cifar10:", "svhn:/d", "imagefolder"] {
            let e = DataSource::parse(s).unwrap_err();
            assert!(matches!(e, DataError::Source(_)), "{s}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
    }
}
