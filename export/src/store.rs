//! Weights shared by the graphs of a package: every initializer of at least `min_bytes` is
//! written once, to a data file beside the graphs (`layer{l}.weights` for a layer's tensors,
//! `model.weights` for the rest), and every graph that uses it points at the same bytes through
//! ONNX external data (location, offset, length). Identical tensors are stored once: a layer's
//! forward, cond, step and VJP graphs and the whole-model score graph share one copy. A store
//! can also put everything in one named file (a graph's own data file). Files are written under
//! a temporary name and renamed into place by [`WeightStore::finish`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Offsets of tensors of at least this size are page-aligned (so runtimes can map them).
const PAGE_ALIGN_FROM: usize = 1 << 20;

pub struct WeightStore {
    dir: PathBuf,
    min_bytes: usize,
    /// One file for every tensor, instead of a file per layer.
    single: Option<String>,
    files: BTreeMap<String, (File, u64)>,
    index: HashMap<[u8; 32], (String, u64)>,
    /// Files the graph being encoded refers to.
    used: BTreeSet<String>,
}

impl WeightStore {
    /// A store writing its files into `dir`; tensors under `min_bytes` stay inside the graphs.
    pub fn new(dir: &Path, min_bytes: usize) -> Self {
        Self { dir: dir.to_path_buf(), min_bytes, single: None, files: BTreeMap::new(), index: HashMap::new(), used: BTreeSet::new() }
    }

    /// A store writing every tensor of at least `min_bytes` to `dir/file`.
    pub fn single(dir: &Path, file: &str, min_bytes: usize) -> Self {
        Self { single: Some(file.to_string()), ..Self::new(dir, min_bytes) }
    }

    fn file_for(&self, name: &str) -> String {
        if let Some(file) = &self.single {
            return file.clone();
        }
        match name.split('.').next() {
            Some(l) if l.starts_with("layer") && l[5..].parse::<usize>().is_ok() => format!("{l}.weights"),
            _ => "model.weights".into(),
        }
    }

    /// Where the initializer `name` with `bytes` lives: None (inline, too small) or its data file
    /// and offset, writing the bytes unless an identical tensor is stored already.
    pub fn place(&mut self, name: &str, bytes: &[u8]) -> std::io::Result<Option<(String, u64)>> {
        if bytes.len() < self.min_bytes {
            return Ok(None);
        }
        let key: [u8; 32] = Sha256::digest(bytes).into();
        if let Some((file, offset)) = self.index.get(&key) {
            self.used.insert(file.clone());
            return Ok(Some((file.clone(), *offset)));
        }
        let file = self.file_for(name);
        if !self.files.contains_key(&file) {
            self.files.insert(file.clone(), (File::create(self.partial(&file))?, 0));
        }
        let (handle, len) = self.files.get_mut(&file).expect("inserted");
        let align = if bytes.len() >= PAGE_ALIGN_FROM { 4096 } else { 64 };
        let offset = len.div_ceil(align) * align;
        handle.write_all(&vec![0u8; (offset - *len) as usize])?;
        handle.write_all(bytes)?;
        *len = offset + bytes.len() as u64;
        self.index.insert(key, (file.clone(), offset));
        self.used.insert(file.clone());
        Ok(Some((file, offset)))
    }

    /// The data files the graphs encoded since the last call refer to (and forgets them).
    pub fn take_used(&mut self) -> Vec<String> {
        std::mem::take(&mut self.used).into_iter().collect()
    }

    fn partial(&self, file: &str) -> PathBuf {
        self.dir.join(format!("{file}.partial"))
    }

    /// Flushes every data file to disk and renames it into place.
    pub fn finish(self) -> std::io::Result<()> {
        for (name, (f, _)) in &self.files {
            f.sync_all()?;
            std::fs::rename(self.partial(name), self.dir.join(name))?;
        }
        Ok(())
    }
}
