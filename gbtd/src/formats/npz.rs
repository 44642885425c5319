//! `.npz` archives (`numpy.savez`, compressed or not): named `.npy` members in a zip file.
//!
//! Member sizes are checked before anything is decoded: a member may declare at most
//! [`NPZ_MEMBER_LIMIT`] bytes, and no more than that is ever read from it.
use std::io::Read;
use std::path::Path;

use super::npy::{header_info_from, npy_to_tensor, parse_npy};
use super::{IoError, IoResult, NamedTensor, TensorInfo, corrupt, name_list, read_bytes};

/// Upper bound on the bytes read from one `.npz` member (and on its declared size): 64 GiB.
pub const NPZ_MEMBER_LIMIT: u64 = 64 << 30;

type Zip = zip::ZipArchive<std::io::Cursor<Vec<u8>>>;

fn open_npz(path: &Path) -> IoResult<Zip> {
    let bytes = read_bytes(path)?;
    zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| corrupt(path, format!("not a readable .npz (zip) archive: {e}")))
}

/// The array names of an `.npz` archive (member names without their `.npy` suffix), in archive
/// order.
fn npz_names(zip: &Zip) -> Vec<String> {
    (0..zip.len())
        .filter_map(|i| zip.name_for_index(i))
        .map(|n| n.strip_suffix(".npy").unwrap_or(n).to_string())
        .collect()
}

fn npz_member_bytes(zip: &mut Zip, index: usize, path: &Path, name: &str) -> IoResult<Vec<u8>> {
    let mut f = zip
        .by_index(index)
        .map_err(|e| corrupt(path, format!("member '{name}': {e}")))?;
    let declared = f.size();
    if declared > NPZ_MEMBER_LIMIT {
        return Err(corrupt(
            path,
            format!("member '{name}' declares {declared} bytes"),
        ));
    }
    let mut out = Vec::with_capacity(declared.min(64 << 20) as usize);
    (&mut f)
        .take(NPZ_MEMBER_LIMIT)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(path, format!("member '{name}': {e}")))?;
    Ok(out)
}

/// The tensors of an `.npz` archive in archive order, from each member's `.npy` header (a
/// compressed member is decompressed only up to the end of its header).
pub fn list(path: &Path) -> IoResult<Vec<TensorInfo>> {
    let mut zip = open_npz(path)?;
    let names = npz_names(&zip);
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        let mut member = zip
            .by_index(i)
            .map_err(|e| corrupt(path, format!("member '{name}': {e}")))?;
        let mut limited = (&mut member).take(NPZ_MEMBER_LIMIT);
        out.push(header_info_from(
            &mut limited,
            path,
            &format!("member '{name}'"),
            &name,
        )?);
    }
    Ok(out)
}

/// Reads the member `name` of an `.npz` archive, or its only member when `name` is `None` (not
/// yet checked finite: see [`super::read_tensor`]).
pub fn read(path: &Path, name: Option<&str>) -> IoResult<NamedTensor> {
    let mut zip = open_npz(path)?;
    let names = npz_names(&zip);
    let index = match name {
        Some(n) => names
            .iter()
            .position(|m| m == n)
            .ok_or_else(|| IoError::TensorNotFound {
                path: path.to_path_buf(),
                name: n.to_string(),
                available: name_list(&names),
            })?,
        None if names.len() == 1 => 0,
        None => {
            return Err(IoError::NameRequired {
                path: path.to_path_buf(),
                count: names.len(),
                available: name_list(&names),
            });
        }
    };
    let member = names[index].clone();
    let bytes = npz_member_bytes(&mut zip, index, path, &member)?;
    let parts = parse_npy(&bytes, path, &format!("member '{member}'"))?;
    npy_to_tensor(parts, path, &member)
}
