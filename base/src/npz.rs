//! Reading and writing numpy `.npz` archives (a zip of `.npy` files, stored or deflated).
//!
//! Only what the toolkit exchanges is supported: little-endian, C-order arrays of f32, f64, i64,
//! i32, u8 and bool. Anything else is refused with an error that names the file and the array.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;
use zip::write::SimpleFileOptions;

use crate::atomic::write_atomic;

/// The largest array an npz may hold (uncompressed), so that a corrupt or hostile archive cannot
/// make a reader allocate without bound (10,000 RGB 64x64 images in f32 are 0.5 GiB).
pub const MAX_ARRAY_BYTES: u64 = 4 << 30;

/// Errors from reading or writing `.npz` files; each names the file and, where it applies, the
/// array.
#[derive(Debug, Error)]
pub enum NpzError {
    #[error("cannot read npz file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid npz archive (expected a zip of .npy files, as numpy.savez writes): {source}")]
    NotZip { path: PathBuf, source: zip::result::ZipError },
    #[error("array '{name}' in {path} is malformed: {reason}")]
    BadArray { path: PathBuf, name: String, reason: String },
    #[error("{path} has no array '{name}' (it has: {available}); {hint}")]
    Missing { path: PathBuf, name: String, available: String, hint: String },
    #[error("array '{name}' in {path} has shape {shape:?}; expected {expected}")]
    Shape { path: PathBuf, name: String, shape: Vec<usize>, expected: String },
    #[error("array '{name}' in {path} has dtype {dtype}; expected {expected}")]
    DType { path: PathBuf, name: String, dtype: &'static str, expected: &'static str },
    #[error("cannot write npz file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// The element data of an array.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

impl ArrayData {
    /// The numpy name of the element type.
    pub fn dtype_name(&self) -> &'static str {
        match self {
            ArrayData::F32(_) => "float32",
            ArrayData::F64(_) => "float64",
            ArrayData::I64(_) => "int64",
            ArrayData::I32(_) => "int32",
            ArrayData::U8(_) => "uint8",
            ArrayData::Bool(_) => "bool",
        }
    }

    fn descr(&self) -> &'static str {
        match self {
            ArrayData::F32(_) => "<f4",
            ArrayData::F64(_) => "<f8",
            ArrayData::I64(_) => "<i8",
            ArrayData::I32(_) => "<i4",
            ArrayData::U8(_) => "|u1",
            ArrayData::Bool(_) => "|b1",
        }
    }

    fn len(&self) -> usize {
        match self {
            ArrayData::F32(v) => v.len(),
            ArrayData::F64(v) => v.len(),
            ArrayData::I64(v) => v.len(),
            ArrayData::I32(v) => v.len(),
            ArrayData::U8(v) => v.len(),
            ArrayData::Bool(v) => v.len(),
        }
    }

    fn write_le(&self, out: &mut impl Write) -> io::Result<()> {
        match self {
            ArrayData::F32(v) => v.iter().try_for_each(|x| out.write_all(&x.to_le_bytes())),
            ArrayData::F64(v) => v.iter().try_for_each(|x| out.write_all(&x.to_le_bytes())),
            ArrayData::I64(v) => v.iter().try_for_each(|x| out.write_all(&x.to_le_bytes())),
            ArrayData::I32(v) => v.iter().try_for_each(|x| out.write_all(&x.to_le_bytes())),
            ArrayData::U8(v) => out.write_all(v),
            ArrayData::Bool(v) => v.iter().try_for_each(|&x| out.write_all(&[x as u8])),
        }
    }
}

/// An n-dimensional array: row-major data and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: ArrayData,
}

impl Array {
    /// An f32 array; panics if `data` does not fill `shape` (a programming error).
    pub fn f32(shape: &[usize], data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "array data does not fill shape {shape:?}");
        Self { shape: shape.to_vec(), data: ArrayData::F32(data) }
    }

    /// An i64 array; panics if `data` does not fill `shape`.
    pub fn i64(shape: &[usize], data: Vec<i64>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "array data does not fill shape {shape:?}");
        Self { shape: shape.to_vec(), data: ArrayData::I64(data) }
    }

    /// The `.npy` encoding (format version 1.0) of this array.
    pub fn to_npy(&self) -> Vec<u8> {
        let shape = match self.shape.len() {
            0 => "()".to_string(),
            1 => format!("({},)", self.shape[0]),
            _ => format!("({})", self.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
        };
        let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", self.data.descr(), shape);
        // magic (6) + version (2) + header length (2) + header + '\n' is padded to 64 bytes.
        let unpadded = 10 + header.len() + 1;
        header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
        header.push('\n');
        let mut out = Vec::with_capacity(10 + header.len() + self.data.len() * 8);
        out.extend_from_slice(b"\x93NUMPY\x01\x00");
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        self.data.write_le(&mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Parses one `.npy` file; `reason` strings are completed with file and array by the caller.
    pub fn from_npy(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            return Err("missing the \\x93NUMPY magic".into());
        }
        let (header_len, start) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 => {
                if bytes.len() < 12 {
                    return Err("truncated header".into());
                }
                (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
            }
            v => return Err(format!("unsupported .npy format version {v}")),
        };
        let header = bytes.get(start..start + header_len).ok_or("truncated header")?;
        let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
        let descr = dict_value(header, "descr").ok_or("header has no 'descr'")?;
        let descr = descr.trim_matches(|c| c == '\'' || c == '"');
        let fortran = dict_value(header, "fortran_order").ok_or("header has no 'fortran_order'")?;
        if fortran != "False" {
            return Err("Fortran-order arrays are not supported; save np.ascontiguousarray(a)".into());
        }
        let shape_text = dict_value(header, "shape").ok_or("header has no 'shape'")?;
        let shape = parse_shape(shape_text)?;
        // The header's claim is checked against the bytes that follow before anything is
        // allocated: a shape of 10^12 elements is an error, not an allocation.
        let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| format!("shape {shape:?} overflows"))?;
        let body = &bytes[start + header_len..];
        fn take<const N: usize, T>(body: &[u8], count: usize, f: fn([u8; N]) -> T) -> Result<Vec<T>, String> {
            let need = count.checked_mul(N).filter(|&n| n <= body.len());
            let Some(need) = need else {
                return Err(format!("truncated data: {} bytes for {count} elements of {N} bytes", body.len()));
            };
            Ok(body[..need].chunks_exact(N).map(|c| f(c.try_into().expect("chunks of N bytes"))).collect())
        }
        let data = match descr {
            "<f4" => ArrayData::F32(take(body, count, f32::from_le_bytes)?),
            "<f8" => ArrayData::F64(take(body, count, f64::from_le_bytes)?),
            "<i8" => ArrayData::I64(take(body, count, i64::from_le_bytes)?),
            "<i4" => ArrayData::I32(take(body, count, i32::from_le_bytes)?),
            "|u1" | "<u1" => ArrayData::U8(take(body, count, |b: [u8; 1]| b[0])?),
            "|b1" => ArrayData::Bool(take(body, count, |b: [u8; 1]| b[0] != 0)?),
            other => {
                return Err(format!("unsupported dtype '{other}' (supported: little-endian float32, float64, int64, int32, uint8, bool)"));
            }
        };
        Ok(Self { shape, data })
    }
}

/// The text of `key`'s value in a numpy header dict such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (4, 1), }`.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("'{key}':");
    let rest = header[header.find(&pat)? + pat.len()..].trim_start();
    let end = if rest.starts_with('(') { rest.find(')')? + 1 } else { rest.find([',', '}'])? };
    Some(rest[..end].trim())
}

fn parse_shape(text: &str) -> Result<Vec<usize>, String> {
    let inner = text.strip_prefix('(').and_then(|t| t.strip_suffix(')')).ok_or("shape is not a tuple")?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>().map_err(|_| format!("bad shape entry '{s}'")))
        .collect()
}

/// A loaded `.npz` archive: named arrays plus the path, for error messages.
#[derive(Debug, Clone)]
pub struct Npz {
    path: PathBuf,
    arrays: BTreeMap<String, Array>,
}

impl Npz {
    /// Reads every array of the archive at `path`.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, NpzError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| NpzError::Io { path: path.clone(), source })?;
        Self::from_reader(file, path)
    }

    fn from_reader(reader: impl Read + Seek, path: PathBuf) -> Result<Self, NpzError> {
        let not_zip = |source| NpzError::NotZip { path: path.clone(), source };
        let mut zip = zip::ZipArchive::new(reader).map_err(not_zip)?;
        let mut arrays = BTreeMap::new();
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).map_err(not_zip)?;
            let entry_name = entry.name().map_err(not_zip)?.to_string();
            let name = entry_name.strip_suffix(".npy").unwrap_or(&entry_name).to_string();
            // The entry's declared size is a claim: preallocate little, read at most the limit.
            let mut bytes = Vec::with_capacity((entry.size() as usize).min(1 << 26));
            (&mut entry).take(MAX_ARRAY_BYTES + 1).read_to_end(&mut bytes).map_err(|e| NpzError::BadArray {
                path: path.clone(),
                name: name.clone(),
                reason: format!("cannot decompress: {e}"),
            })?;
            if bytes.len() as u64 > MAX_ARRAY_BYTES {
                return Err(NpzError::BadArray {
                    path: path.clone(),
                    name,
                    reason: format!("larger than {} GiB uncompressed; arrays this large are refused", MAX_ARRAY_BYTES >> 30),
                });
            }
            let array = Array::from_npy(&bytes).map_err(|reason| NpzError::BadArray { path: path.clone(), name: name.clone(), reason })?;
            arrays.insert(name, array);
        }
        Ok(Self { path, arrays })
    }

    /// An empty archive that will be written to `path`.
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self { path: path.as_ref().to_path_buf(), arrays: BTreeMap::new() }
    }

    /// The file this archive was read from or will be written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds or replaces an array.
    pub fn insert(&mut self, name: &str, array: Array) {
        self.arrays.insert(name.to_string(), array);
    }

    /// The array names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.arrays.keys().map(String::as_str).collect()
    }

    /// The array `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Array> {
        self.arrays.get(name)
    }

    /// The array `name`, or an error naming the file, the array and what the caller needs it for.
    pub fn require(&self, name: &str, hint: &str) -> Result<&Array, NpzError> {
        self.arrays.get(name).ok_or_else(|| NpzError::Missing {
            path: self.path.clone(),
            name: name.to_string(),
            available: if self.arrays.is_empty() { "none".into() } else { self.names().join(", ") },
            hint: hint.to_string(),
        })
    }

    fn check_rank(&self, name: &str, array: &Array, rank: usize, expected: &str) -> Result<(), NpzError> {
        if array.shape.len() != rank {
            return Err(NpzError::Shape {
                path: self.path.clone(),
                name: name.into(),
                shape: array.shape.clone(),
                expected: expected.into(),
            });
        }
        Ok(())
    }

    /// A float array of the given rank as f32 (float64 is converted); `expected` describes the
    /// shape for the error message, e.g. "(B, C, H, W)".
    pub fn f32(&self, name: &str, rank: usize, expected: &str, hint: &str) -> Result<(Vec<usize>, Vec<f32>), NpzError> {
        let array = self.require(name, hint)?;
        self.check_rank(name, array, rank, expected)?;
        let data = match &array.data {
            ArrayData::F32(v) => v.clone(),
            ArrayData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            other => {
                return Err(NpzError::DType { path: self.path.clone(), name: name.into(), dtype: other.dtype_name(), expected: "float32" });
            }
        };
        Ok((array.shape.clone(), data))
    }

    /// An integer array of the given rank as i64 (int32 is widened).
    pub fn i64(&self, name: &str, rank: usize, expected: &str, hint: &str) -> Result<(Vec<usize>, Vec<i64>), NpzError> {
        let array = self.require(name, hint)?;
        self.check_rank(name, array, rank, expected)?;
        let data = match &array.data {
            ArrayData::I64(v) => v.clone(),
            ArrayData::I32(v) => v.iter().map(|&x| x as i64).collect(),
            other => {
                return Err(NpzError::DType { path: self.path.clone(), name: name.into(), dtype: other.dtype_name(), expected: "int64" });
            }
        };
        Ok((array.shape.clone(), data))
    }

    /// Writes the archive to its path atomically (uncompressed, as `numpy.savez`).
    pub fn write(&self) -> Result<(), NpzError> {
        let err = |source| NpzError::Write { path: self.path.clone(), source };
        write_atomic(&self.path, |file| {
            let mut zip = zip::ZipWriter::new_stream(file);
            let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).large_file(false);
            for (name, array) in &self.arrays {
                zip.start_file(format!("{name}.npy"), options).map_err(io::Error::other)?;
                zip.write_all(&array.to_npy())?;
            }
            zip.finish().map_err(io::Error::other)?;
            Ok(())
        })
        .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npz");
        let mut npz = Npz::new(&path);
        npz.insert("x", Array::f32(&[2, 3], vec![1.0, -2.5, 3.0, 0.0, 1e-7, -1e30]));
        npz.insert("y", Array::i64(&[2], vec![3, -1]));
        npz.insert("s", Array::f32(&[], vec![0.25]));
        npz.write().unwrap();
        let back = Npz::read(&path).unwrap();
        assert_eq!(back.names(), vec!["s", "x", "y"]);
        assert_eq!(back.get("x").unwrap(), npz.get("x").unwrap());
        assert_eq!(back.i64("y", 1, "(B,)", "").unwrap().1, vec![3, -1]);
        assert_eq!(back.f32("s", 0, "()", "").unwrap(), (vec![], vec![0.25]));
    }

    #[test]
    fn npy_header_is_what_numpy_writes() {
        // numpy.save(np.zeros((4, 1), '<f4')) starts with exactly these bytes.
        let npy = Array::f32(&[4, 1], vec![0.0; 4]).to_npy();
        let header = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (4, 1), }";
        assert_eq!(&npy[..header.len()], header);
        assert_eq!(npy.len(), 128 + 16);
        assert_eq!(npy[127], b'\n');
    }

    #[test]
    fn errors_name_the_array_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npz");
        let mut npz = Npz::new(&path);
        npz.insert("x", Array::f32(&[2, 3], vec![0.0; 6]));
        npz.insert("y", Array::f32(&[2], vec![0.0; 2]));
        npz.write().unwrap();
        let back = Npz::read(&path).unwrap();
        let e = back.f32("x", 4, "(B, C, H, W)", "").unwrap_err().to_string();
        assert!(e.contains("'x'") && e.contains("[2, 3]") && e.contains("(B, C, H, W)"), "{e}");
        let e = back.i64("y", 1, "(B,)", "").unwrap_err().to_string();
        assert!(e.contains("'y'") && e.contains("float32") && e.contains("int64"), "{e}");
        let e = back.f32("t", 1, "(B,)", "the noise level per image").unwrap_err().to_string();
        assert!(e.contains("no array 't'") && e.contains("x, y") && e.contains("noise level"), "{e}");
    }

    #[test]
    fn truncated_and_garbage_files_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npz");
        let mut npz = Npz::new(&path);
        npz.insert("x", Array::f32(&[64], vec![1.0; 64]));
        npz.write().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.npz");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = Npz::read(&cut).unwrap_err().to_string();
        assert!(e.contains("cut.npz"), "{e}");
        let junk = dir.path().join("junk.npz");
        std::fs::write(&junk, b"hello, not a zip").unwrap();
        let e = Npz::read(&junk).unwrap_err().to_string();
        assert!(e.contains("junk.npz") && e.contains("not a valid npz"), "{e}");
        let e = Npz::read(dir.path().join("absent.npz")).unwrap_err().to_string();
        assert!(e.contains("absent.npz"), "{e}");
    }

    #[test]
    fn truncated_npy_data_is_refused() {
        let npy = Array::f32(&[8], vec![1.0; 8]).to_npy();
        let e = Array::from_npy(&npy[..npy.len() - 4]).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
    }
}
