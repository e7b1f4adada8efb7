//! Data loaders on small files the tests write, including corrupt and truncated ones.

use std::io::Write;
use std::path::Path;

use itarflow::data::{self, DatasetKind, Split, cifar, folder, idx};

fn idx_images(n: usize, side: usize) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 3];
    for d in [n, side, side] {
        v.extend((d as u32).to_be_bytes());
    }
    v.extend((0..n * side * side).map(|i| (i * 7 % 256) as u8));
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 1];
    v.extend((labels.len() as u32).to_be_bytes());
    v.extend_from_slice(labels);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn idx_files_load_plain_and_gzipped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train-images-idx3-ubyte.gz"), gz(&idx_images(5, 4))).unwrap();
    std::fs::write(dir.path().join("train-labels-idx1-ubyte"), idx_labels(&[3, 1, 4, 1, 5])).unwrap();
    let set = data::load(&DatasetKind::Idx, dir.path(), Split::Train, None).unwrap();
    assert_eq!((set.len(), set.channels, set.size, set.num_classes), (5, 1, 4, 6));
    assert_eq!(set.labels, vec![3, 1, 4, 1, 5]);
    assert_eq!(set.image(1)[0], 16 * 7);
}

#[test]
fn corrupt_idx_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (imgs, labs) = (dir.path().join("i"), dir.path().join("l"));
    let mut truncated = idx_images(5, 4);
    truncated.truncate(16 + 30);
    std::fs::write(&imgs, &truncated).unwrap();
    std::fs::write(&labs, idx_labels(&[0; 5])).unwrap();
    let e = idx::load(&imgs, &labs).unwrap_err().to_string();
    assert!(e.contains(&imgs.display().to_string()) && e.contains("promises 5 images"), "{e}");

    let mut bad_magic = idx_images(5, 4);
    bad_magic[3] = 9;
    std::fs::write(&imgs, &bad_magic).unwrap();
    let e = idx::load(&imgs, &labs).unwrap_err().to_string();
    assert!(e.contains("magic number"), "{e}");

    std::fs::write(&imgs, idx_images(5, 4)).unwrap();
    std::fs::write(&labs, idx_labels(&[0; 4])).unwrap();
    let e = idx::load(&imgs, &labs).unwrap_err().to_string();
    assert!(e.contains("5 images") && e.contains("4 labels"), "{e}");

    let mut broken_gz = gz(&idx_images(5, 4));
    broken_gz.truncate(broken_gz.len() / 2);
    std::fs::write(&imgs, &broken_gz).unwrap();
    let e = idx::load(&imgs, &labs).unwrap_err().to_string();
    assert!(e.contains(&imgs.display().to_string()) && e.contains("gzip"), "{e}");

    let e = data::load(&DatasetKind::Idx, &dir.path().join("nowhere"), Split::Test, None).unwrap_err().to_string();
    assert!(e.contains("t10k-images-idx3-ubyte") && e.contains("dataset-fashion-mnist"), "{e}");
}

fn cifar_record(label: u8, fill: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend(std::iter::repeat_n(fill, 3072));
    r
}

#[test]
fn cifar_batches_load_and_truncation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = cifar_record(2, 10);
    bytes.extend(cifar_record(7, 20));
    std::fs::write(dir.path().join("test_batch.bin"), &bytes).unwrap();
    let set = cifar::load_split(dir.path(), Split::Test).unwrap();
    assert_eq!((set.len(), set.channels, set.size), (2, 3, 32));
    assert_eq!(set.labels, vec![2, 7]);
    assert_eq!(set.image(1)[3071], 20);
    assert_eq!(set.class_names[7], "horse");

    std::fs::write(dir.path().join("test_batch.bin"), &bytes[..bytes.len() - 100]).unwrap();
    let e = cifar::load_split(dir.path(), Split::Test).unwrap_err().to_string();
    assert!(e.contains("test_batch.bin") && e.contains("records"), "{e}");
}

fn write_png(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    img.save(path).unwrap();
}

#[test]
fn image_folders_load_resized_and_cropped() {
    let dir = tempfile::tempdir().unwrap();
    for (class, color) in [("cat", [200, 10, 10]), ("dog", [10, 10, 200])] {
        std::fs::create_dir(dir.path().join(class)).unwrap();
        write_png(&dir.path().join(class).join("a.png"), 12, 8, color);
        write_png(&dir.path().join(class).join("b.png"), 8, 8, color);
    }
    let set = folder::load(dir.path(), 4, 3).unwrap();
    assert_eq!((set.len(), set.channels, set.size, set.num_classes), (4, 3, 4, 2));
    assert_eq!(set.class_names, vec!["cat", "dog"]);
    assert_eq!(set.labels, vec![0, 0, 1, 1]);
    // Channel-major: the red plane of a cat is bright, its blue plane dark.
    let cat = set.image(0);
    assert!(cat[0] > 190 && cat[2 * 16] < 20, "{cat:?}");

    std::fs::write(dir.path().join("dog").join("c.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let e = folder::load(dir.path(), 4, 3).unwrap_err().to_string();
    assert!(e.contains("c.png") && e.contains("corrupt"), "{e}");
}
