//! `.npz` archives (`numpy.savez`, compressed or not): named `.npy` members in a zip file.
//!
//! Member sizes are checked before anything is decoded: a member may declare at most
//! [`NPZ_MEMBER_LIMIT`] bytes, and no more than that is ever read from it.
use std::io::Read;
use std::path::Path;

use super::npy::{header_info_from, npy_to_tensor, parse_npy};
use super::{IoError, IoResult, NamedTensor, TensorInfo, corrupt, name_list, read_bytes};
use crate::pth::zip::max_member_size;

/// Upper bound on the bytes read from one `.npz` member (and on its declared size): 64 GiB.
pub const NPZ_MEMBER_LIMIT: u64 = 64 << 30;

type Zip = zip::ZipArchive<std::io::Cursor<Vec<u8>>>;

/// The archive and the file's length in bytes.
fn open_npz(path: &Path) -> IoResult<(Zip, u64)> {
    let bytes = read_bytes(path)?;
    let len = bytes.len() as u64;
    let zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| corrupt(path, format!("not a readable .npz (zip) archive: {e}")))?;
    Ok((zip, len))
}

/// The most bytes a member can inflate to: its compressed bytes (at most the whole file) times
/// deflate's largest ratio (1 for stored members), the bound checkpoints use too.
fn justified_size(member: &zip::read::ZipFile<'_, std::io::Cursor<Vec<u8>>>, file_len: u64) -> u64 {
    max_member_size(member.compressed_size(), member.compression(), file_len)
}

/// The array names of an `.npz` archive (member names without their `.npy` suffix), in archive
/// order.
fn npz_names(zip: &Zip) -> Vec<String> {
    (0..zip.len())
        .filter_map(|i| zip.name_for_index(i))
        .map(|n| n.strip_suffix(".npy").unwrap_or(n).to_string())
        .collect()
}

/// The inflated bytes of member `index`. Its declared size must be at most [`NPZ_MEMBER_LIMIT`]
/// and what its compressed bytes can hold, and the member must inflate to exactly that size;
/// nothing beyond the declared size is read.
fn npz_member_bytes(
    zip: &mut Zip,
    file_len: u64,
    index: usize,
    path: &Path,
    name: &str,
) -> IoResult<Vec<u8>> {
    let mut f = zip
        .by_index(index)
        .map_err(|e| corrupt(path, format!("member '{name}': {e}")))?;
    let declared = f.size();
    let justified = justified_size(&f, file_len);
    if declared > NPZ_MEMBER_LIMIT || declared > justified {
        return Err(corrupt(
            path,
            format!(
                "member '{name}' declares {declared} bytes, more than its compressed data can hold ({justified}) or the {NPZ_MEMBER_LIMIT}-byte limit"
            ),
        ));
    }
    let mut out = Vec::with_capacity(declared as usize);
    (&mut f)
        .take(declared + 1)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(path, format!("member '{name}': {e}")))?;
    if out.len() as u64 != declared {
        return Err(corrupt(
            path,
            format!(
                "member '{name}' declares {declared} bytes but holds {}{}",
                if out.len() as u64 > declared {
                    "more than "
                } else {
                    ""
                },
                out.len().min(declared as usize)
            ),
        ));
    }
    Ok(out)
}

/// The tensors of an `.npz` archive in archive order, from each member's `.npy` header (a
/// compressed member is decompressed only up to the end of its header).
pub fn list(path: &Path) -> IoResult<Vec<TensorInfo>> {
    let (mut zip, file_len) = open_npz(path)?;
    let names = npz_names(&zip);
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        let mut member = zip
            .by_index(i)
            .map_err(|e| corrupt(path, format!("member '{name}': {e}")))?;
        let declared = member.size().min(justified_size(&member, file_len));
        let mut limited = (&mut member).take(NPZ_MEMBER_LIMIT);
        out.push(header_info_from(
            &mut limited,
            declared,
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
    let (mut zip, file_len) = open_npz(path)?;
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
    let bytes = npz_member_bytes(&mut zip, file_len, index, path, &member)?;
    let parts = parse_npy(&bytes, path, &format!("member '{member}'"))?;
    npy_to_tensor(parts, path, &member)
}
