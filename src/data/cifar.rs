//! The CIFAR-10 binary format: records of one label byte and 3072 pixel bytes (3 x 32 x 32,
//! channel-major), in data_batch_1..5.bin (train) and test_batch.bin (test).

use std::path::Path;

use super::{DataError, ImageSet, Split, io_err};

const RECORD: usize = 1 + 3 * 32 * 32;

/// Reads one batch file, appending to `pixels` and `labels`.
pub fn read_batch(path: &Path, pixels: &mut Vec<u8>, labels: &mut Vec<i64>) -> Result<(), DataError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        return Err(DataError::Corrupt {
            path: path.into(),
            reason: format!("{} bytes is not a whole number of {RECORD}-byte records", bytes.len()),
        });
    }
    for record in bytes.chunks_exact(RECORD) {
        if record[0] > 9 {
            return Err(DataError::Corrupt { path: path.into(), reason: format!("label {} is not a CIFAR-10 class", record[0]) });
        }
        labels.push(record[0] as i64);
        pixels.extend_from_slice(&record[1..]);
    }
    Ok(())
}

/// Loads the train or test split from the `cifar-10-batches-bin` directory.
pub fn load_split(dir: &Path, split: Split) -> Result<ImageSet, DataError> {
    let files: Vec<String> = match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".into()],
    };
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for f in files {
        read_batch(&dir.join(f), &mut pixels, &mut labels)?;
    }
    let names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
    Ok(ImageSet { channels: 3, size: 32, pixels, labels, num_classes: 10, class_names: names.iter().map(|s| s.to_string()).collect() })
}
