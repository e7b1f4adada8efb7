//! PNG grids of sample images, the form in which people look at a model's output.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::atomic::write_atomic;

#[derive(Debug, Error)]
pub enum GridError {
    #[error("cannot write a grid of {channels}-channel images to {path}: only 1 (grey) and 3 (RGB) channels make a PNG")]
    Channels { path: PathBuf, channels: usize },
    #[error("cannot write PNG {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Writes images of shape (B, C, H, W), values in [-1, 1] (clipped), as one PNG grid with `cols`
/// columns (rows as needed) and a 2-pixel dark border between tiles.
pub fn save_grid(path: &Path, images: &[f32], shape: [usize; 4], cols: usize) -> Result<(), GridError> {
    let [b, c, h, w] = shape;
    assert_eq!(images.len(), b * c * h * w, "image data does not match shape {shape:?}");
    let color = match c {
        1 => png::ColorType::Grayscale,
        3 => png::ColorType::Rgb,
        _ => return Err(GridError::Channels { path: path.to_path_buf(), channels: c }),
    };
    let cols = cols.clamp(1, b.max(1));
    let rows = b.div_ceil(cols).max(1);
    let pad = 2;
    let width = cols * (w + pad) + pad;
    let height = rows * (h + pad) + pad;
    let mut pixels = vec![16u8; width * height * c];
    for (n, image) in images.chunks_exact(c * h * w).enumerate() {
        let (top, left) = (pad + (n / cols) * (h + pad), pad + (n % cols) * (w + pad));
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let v = image[(ch * h + y) * w + x];
                    let byte = ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
                    pixels[((top + y) * width + left + x) * c + ch] = byte;
                }
            }
        }
    }
    write_atomic(path, |file| {
        let mut encoder = png::Encoder::new(file, width as u32, height as u32);
        encoder.set_color(color);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(io::Error::other)?;
        writer.write_image_data(&pixels).map_err(io::Error::other)?;
        writer.finish().map_err(io::Error::other)
    })
    .map_err(|source| GridError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_has_expected_size_and_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.png");
        // Three 1x2x2 images: black, white, mid grey.
        let mut data = vec![-1.0; 4];
        data.extend([1.0; 4]);
        data.extend([0.0; 4]);
        save_grid(&path, &data, [3, 1, 2, 2], 2).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (2 * 4 + 2, 2 * 4 + 2));
        let px = |x: usize, y: usize| buf[y * info.width as usize + x];
        assert_eq!(px(2, 2), 0);
        assert_eq!(px(6, 2), 255);
        assert_eq!(px(2, 6), 128);
        assert_eq!(px(0, 0), 16);
    }

    #[test]
    fn four_channels_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = save_grid(&dir.path().join("g.png"), &[0.0; 4], [1, 4, 1, 1], 1).unwrap_err();
        assert!(e.to_string().contains("4-channel"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
