//! Data-set flags shared by `train` and `eval-nll`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use itarflow::data::{self, DatasetKind, ImageSet, Split};

#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data format.
    #[arg(long, value_enum, default_value_t = DatasetKind::Idx)]
    pub dataset: DatasetKind,
    /// Directory of the data (default: Fashion-MNIST as Debian's dataset-fashion-mnist installs it).
    #[arg(long, default_value = data::FASHION_MNIST_DIR)]
    pub data_dir: PathBuf,
}

impl DataArgs {
    pub fn load(&self, split: Split, folder_size: Option<usize>) -> Result<ImageSet> {
        Ok(data::load(&self.dataset, &self.data_dir, split, folder_size)?)
    }
}

/// The padding that brings images of side `data` to the model's side `model`.
pub fn padding_for(data: usize, model: usize) -> Result<usize> {
    if model < data || !(model - data).is_multiple_of(2) {
        bail!("the data's {data} px images cannot be padded evenly to the model's {model} px");
    }
    Ok((model - data) / 2)
}
