//! A folder of images with one sub-folder per class (sorted names give the class indices):
//! PNG or JPEG, resized so the shorter side is `size` (Lanczos) and centre-cropped to a square.

use std::path::Path;

use image::imageops::FilterType;

use super::{DataError, ImageSet, io_err};

fn is_image(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref(), Some("png" | "jpg" | "jpeg"))
}

/// Decodes, resizes and crops one image to `channels` (1 grey or 3 RGB) x size x size bytes.
pub fn load_image(path: &Path, size: usize, channels: usize) -> Result<Vec<u8>, DataError> {
    let img = image::open(path).map_err(|e| DataError::Corrupt { path: path.into(), reason: e.to_string() })?;
    let (w, h) = (img.width() as f64, img.height() as f64);
    let scale = size as f64 / w.min(h);
    let (nw, nh) = (((w * scale).round() as u32).max(size as u32), ((h * scale).round() as u32).max(size as u32));
    let resized = img.resize_exact(nw, nh, FilterType::Lanczos3);
    let (x0, y0) = ((nw - size as u32) / 2, (nh - size as u32) / 2);
    let cropped = resized.crop_imm(x0, y0, size as u32, size as u32);
    let hw = size * size;
    Ok(match channels {
        1 => cropped.to_luma8().into_raw(),
        _ => {
            // Interleaved RGB to channel-major.
            let rgb = cropped.to_rgb8().into_raw();
            let mut out = vec![0u8; 3 * hw];
            for (i, px) in rgb.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    out[c * hw + i] = px[c];
                }
            }
            out
        }
    })
}

/// Loads every class sub-folder of `dir`.
pub fn load(dir: &Path, size: usize, channels: usize) -> Result<ImageSet, DataError> {
    let mut classes: Vec<_> =
        std::fs::read_dir(dir).map_err(io_err(dir))?.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    classes.sort();
    if classes.is_empty() {
        return Err(DataError::Invalid(format!("{} has no class sub-folders (expected DIR/<class>/<image>.png)", dir.display())));
    }
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for (k, class_dir) in classes.iter().enumerate() {
        let mut files: Vec<_> = std::fs::read_dir(class_dir)
            .map_err(io_err(class_dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| is_image(p))
            .collect();
        files.sort();
        for f in files {
            pixels.extend(load_image(&f, size, channels)?);
            labels.push(k as i64);
        }
    }
    if labels.is_empty() {
        return Err(DataError::Invalid(format!("{} holds no PNG or JPEG images", dir.display())));
    }
    Ok(ImageSet {
        channels,
        size,
        pixels,
        labels,
        num_classes: classes.len(),
        class_names: classes.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect(),
    })
}
