//! `itarflow train-classifier`: trains the quality classifier on a data set (Fashion-MNIST by
//! default) and writes its directory for `eval-quality` (weights, ONNX graph, test statistics,
//! FLD floors, card).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use itarflow::classifier::{ClassifierTraining, Event, train, write_directory};
use itarflow::data::{self, Split};
use itarflow_base::ClassifierConfig;

use super::data_args::DataArgs;
use super::progress;

#[derive(Args, Debug)]
pub struct TrainClassifierArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Image side to resize image folders to (IDX and CIFAR keep their own).
    #[arg(long)]
    pub img_size: Option<usize>,
    /// Output directory (replaced as a whole when done).
    #[arg(long, default_value = "models/classifier")]
    pub out: PathBuf,
    #[arg(long, default_value_t = ClassifierTraining::default().epochs)]
    pub epochs: usize,
    #[arg(long, default_value_t = ClassifierTraining::default().batch_size)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW; warm-up, then cosine decay to 0).
    #[arg(long, default_value_t = ClassifierTraining::default().lr)]
    pub lr: f64,
    /// Seed of the initialisation, shuffles and flips.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train without random horizontal flips.
    #[arg(long)]
    pub no_hflip: bool,
    /// Train on the first N training images only (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: TrainClassifierArgs) -> Result<()> {
    let mut train_set = a.data.load(Split::Train, a.img_size)?;
    if a.limit > 0 {
        train_set = train_set.take(a.limit);
    }
    let test_set = a.data.load(Split::Test, a.img_size)?;
    if train_set.num_classes < 2 {
        bail!("the classifier needs a labelled data set of at least 2 classes");
    }
    let config = ClassifierConfig::lenet(train_set.channels, train_set.size, train_set.num_classes);
    config.validate().map_err(anyhow::Error::msg)?;
    let opts = ClassifierTraining {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        seed: a.seed,
        hflip: !a.no_hflip,
        ..ClassifierTraining::default()
    };
    let steps = (train_set.len() / a.batch_size.max(1) * a.epochs) as u64;
    let bar = progress::bar(steps, "train");
    let mut epochs = Vec::new();
    let start = Instant::now();
    let model = train(&config, &train_set, &test_set, &opts, &mut |e| match e {
        Event::Step { step, loss, .. } => {
            bar.set_position(step);
            if step % 20 == 0 {
                bar.set_message(format!("loss {loss:.4}"));
            }
        }
        Event::Epoch { epoch, epochs: total, train_loss, test_accuracy, seconds } => {
            // Printed whether or not the bar is drawn (logs of runs in the background keep it).
            bar.suspend(|| {
                eprintln!("epoch {epoch}/{total}: train loss {train_loss:.4}, test accuracy {:.2}% ({seconds:.0} s)", 100.0 * test_accuracy)
            });
            epochs.push(serde_json::json!({"epoch": epoch, "train_loss": train_loss, "test_accuracy": test_accuracy, "seconds": seconds}));
        }
    })?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let command: Vec<String> = std::iter::once("itarflow".to_string()).chain(std::env::args().skip(1)).collect();
    let training = serde_json::json!({"command": command.join(" "), "settings": opts, "train_images": train_set.len(),
        "seconds": seconds, "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), "epochs": epochs,
        "version": env!("CARGO_PKG_VERSION")});
    let names = data::class_names(&train_set, &a.data.dataset, &a.data.data_dir);
    let dataset = a.data.data_dir.display().to_string();
    let report = write_directory(&a.out, &config, &model, &train_set, &test_set, &dataset, names, training)?;
    let card = &report.card;
    if a.json {
        println!("{}", serde_json::to_string(card)?);
    } else {
        println!(
            "{}: {} parameters, test accuracy {:.2}% (trained in {:.0} s)",
            a.out.display(),
            config.num_params(),
            100.0 * card.test_accuracy,
            seconds
        );
        for f in &card.floors {
            println!("FLD floor at {} images (training images against the test set): {:.4}", f.num, f.fld);
        }
    }
    Ok(())
}
