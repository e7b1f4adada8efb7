//! MNIST-style IDX files (as Fashion-MNIST ships them), optionally gzip-compressed.
//!
//! Images: magic 0x00000803, count, rows, cols (big-endian u32), then bytes.
//! Labels: magic 0x00000801, count, then one byte per label.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{DataError, ImageSet, Split, io_err};

/// The largest IDX file read (uncompressed): a gzip that expands past it is refused rather than
/// read into memory (Fashion-MNIST's training images are 47 MB).
const MAX_IDX_BYTES: u64 = 4 << 30;

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(io_err(path))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(MAX_IDX_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| DataError::Corrupt { path: path.into(), reason: format!("gzip: {e}") })?;
        if out.len() as u64 > MAX_IDX_BYTES {
            return Err(DataError::Corrupt { path: path.into(), reason: format!("more than {} GiB uncompressed", MAX_IDX_BYTES >> 30) });
        }
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn header(path: &Path, bytes: &[u8], magic: u32, dims: usize) -> Result<Vec<usize>, DataError> {
    let corrupt = |reason: String| DataError::Corrupt { path: path.into(), reason };
    if bytes.len() < 4 + 4 * dims {
        return Err(corrupt(format!("{} bytes is too short for an IDX header", bytes.len())));
    }
    let word = |i: usize| u32::from_be_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
    if word(0) != magic {
        return Err(corrupt(format!("magic number {:#010x}, expected {magic:#010x}", word(0))));
    }
    Ok((1..=dims).map(|i| word(i) as usize).collect())
}

/// Reads an IDX image file: (count, rows, cols) and the pixel bytes.
pub fn read_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>), DataError> {
    let bytes = read_maybe_gz(path)?;
    let d = header(path, &bytes, 0x0000_0803, 3)?;
    let need = d[0].checked_mul(d[1]).and_then(|n| n.checked_mul(d[2])).unwrap_or(usize::MAX);
    let body = &bytes[16..];
    if body.len() < need {
        return Err(DataError::Corrupt {
            path: path.into(),
            reason: format!("header promises {} images of {}x{} ({need} bytes) but {} bytes follow", d[0], d[1], d[2], body.len()),
        });
    }
    Ok((d[0], d[1], d[2], body[..need].to_vec()))
}

/// Reads an IDX label file.
pub fn read_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = read_maybe_gz(path)?;
    let d = header(path, &bytes, 0x0000_0801, 1)?;
    let body = &bytes[8..];
    if body.len() < d[0] {
        return Err(DataError::Corrupt {
            path: path.into(),
            reason: format!("header promises {} labels but {} bytes follow", d[0], body.len()),
        });
    }
    Ok(body[..d[0]].to_vec())
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf, DataError> {
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let p = dir.join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(DataError::NotFound {
        path: dir.join(format!("{stem}[.gz]")),
        hint: format!("for Fashion-MNIST: `apt-get install dataset-fashion-mnist`, which puts it in {}", super::FASHION_MNIST_DIR),
    })
}

/// Loads a pair of IDX files as an image set.
pub fn load(images: &Path, labels: &Path) -> Result<ImageSet, DataError> {
    let (n, rows, cols, pixels) = read_images(images)?;
    let labels_raw = read_labels(labels)?;
    if rows != cols {
        return Err(DataError::Invalid(format!("{}: images are {rows}x{cols}; only square images are supported", images.display())));
    }
    if labels_raw.len() != n {
        return Err(DataError::Invalid(format!(
            "{} has {n} images but {} has {} labels",
            images.display(),
            labels.display(),
            labels_raw.len()
        )));
    }
    let num_classes = labels_raw.iter().max().map_or(0, |&m| m as usize + 1);
    Ok(ImageSet {
        channels: 1,
        size: rows,
        pixels,
        labels: labels_raw.into_iter().map(i64::from).collect(),
        num_classes,
        class_names: Vec::new(),
    })
}

/// Loads the train or test split from a directory of MNIST-style files.
pub fn load_split(dir: &Path, split: Split) -> Result<ImageSet, DataError> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    load(&find(dir, &format!("{prefix}-images-idx3-ubyte"))?, &find(dir, &format!("{prefix}-labels-idx1-ubyte"))?)
}
