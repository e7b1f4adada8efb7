//! `itarflow-rt ablate`: the paper's ablations of the sampler on a package, as JSON, a Markdown
//! table and a PNG plot: FLD and class accuracy against denoising steps (0, 1 = a single Tweedie
//! step, ..., 20), guidance scale and guidance style.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use itarflow_base::sample_args::SettingsArgs;
use itarflow_base::sampling::CfgStyle;
use itarflow_rt::quality::ablation::{self, Plan, Row, Study};
use itarflow_rt::quality::{self};
use itarflow_rt::sampler;

use super::args::Run;
use super::plot;
use super::quality::{QualityArgs, bar};

#[derive(clap::Args)]
pub struct AblateArgs {
    #[command(flatten)]
    pub run: Run,
    /// The centre of every study (guidance and steps; default: the package's).
    #[command(flatten)]
    pub settings: SettingsArgs,
    #[command(flatten)]
    pub quality: QualityArgs,
    /// Images per configuration.
    #[arg(long, default_value_t = 2_000)]
    pub num: usize,
    /// Denoising step counts (0 = the noisy phase-1 images, 1 = one Tweedie step at t_max).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,5,10,20")]
    pub steps: Vec<usize>,
    /// Guidance scales.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,4")]
    pub scales: Vec<f64>,
    /// Guidance styles.
    #[arg(long, value_delimiter = ',', value_enum, default_value = "tarflow,starflow")]
    pub styles: Vec<CfgStyle>,
    /// Directory for ablation.json, ablation.md and ablation.png.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// TrueType font for the plot's text.
    #[arg(long, default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")]
    pub font: PathBuf,
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |a| format!("{:.1}%", 100.0 * a))
}

/// The rows as a Markdown table, one section per study.
pub fn table(rows: &[Row], floor: Option<f64>, num: usize) -> String {
    let mut s = format!("FLD (lower is better) and class accuracy of {num} images per row");
    if rows.iter().any(|r| r.redrawn > 0) {
        s += " ('redrawn': images that came out NaN/Inf, in phase 1 or while denoising, and were sampled again from new noise)";
    }
    if let Some(f) = floor {
        s += &format!("; FLD floor at {num} images (training images against the test set): {f:.3}");
    }
    s += ".\n";
    for (study, title) in [
        (Study::DenoiseSteps, "Denoising steps (0: the noisy phase-1 images at t_max; 1: a single Tweedie step at t_max)"),
        (Study::CfgScale, "Guidance scale"),
        (Study::CfgStyle, "Guidance style"),
    ] {
        let part: Vec<&Row> = rows.iter().filter(|r| r.study == study).collect();
        if part.is_empty() {
            continue;
        }
        s += &format!(
            "\n{title}:\n\n| cfg | style | denoising steps | FLD | class accuracy | redrawn | sampling s |\n|---|---|---|---|---|---|---|\n"
        );
        for r in part {
            s += &format!(
                "| {} | {:?} | {} | {:.3} | {} | {} | {:.1} |\n",
                r.cfg,
                r.cfg_style,
                r.denoise_steps,
                r.fld,
                pct(r.class_accuracy),
                r.redrawn,
                r.seconds
            )
            .to_lowercase();
        }
    }
    s
}

pub fn run(a: AblateArgs) -> Result<()> {
    if a.num < 2 || a.steps.is_empty() {
        bail!("--num must be at least 2 and --steps name at least one count");
    }
    let classifier = a.quality.classifier()?;
    let model = a.run.common.load()?;
    let c = model.manifest.model.clone();
    if a.scales.iter().any(|&w| w > 0.0) && c.num_classes == 0 {
        bail!("guidance scales need a class-conditional model; pass --scales 0");
    }
    let base = a.settings.apply(sampler::defaults(&model), c.num_classes)?;
    let sampler = a.run.open(a.run.builder(model.clone()).settings(base).seed(a.quality.seed).on_non_finite(a.quality.on_non_finite()))?;
    sampler.warm_up()?;
    let labels = quality::balanced_labels(a.num, c.num_classes);
    let plan = Plan { base, steps: a.steps.clone(), scales: a.scales.clone(), styles: a.styles.clone() };
    let configs =
        1 + a.scales.iter().filter(|&&w| w != base.guidance.scale).count() + a.styles.iter().filter(|&&s| s != base.guidance.style).count();
    let bar = bar(configs as u64, "ablate");
    let start = Instant::now();
    let rows = ablation::run(&sampler, &classifier, &plan, &labels, a.quality.seed, a.quality.chunk, &mut |what| {
        if what.starts_with("phase 1") {
            bar.inc(1);
        }
        bar.set_message(what);
    })?;
    bar.finish_and_clear();
    let floor = classifier.card.floor(a.num).map(|f| f.fld);
    let md = table(&rows, floor, a.num);
    let json = serde_json::json!({"rows": rows, "num": a.num, "seed": a.quality.seed, "floor_fld": floor,
        "classifier_test_accuracy": classifier.card.test_accuracy, "provider": sampler.provider().name(),
        "model": a.run.common.model, "seconds": start.elapsed().as_secs_f64()});
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            itarflow_base::write_atomic(&path, |w| std::io::Write::write_all(w, text.as_bytes()))
                .with_context(|| format!("writing {}", path.display()))
        };
        write("ablation.json", serde_json::to_string_pretty(&json)?)?;
        write("ablation.md", md.clone())?;
        plot::ablation(&dir.join("ablation.png"), &rows, floor, &a.font)?;
    }
    if a.quality.json {
        println!("{json}");
    } else {
        print!("{md}");
    }
    Ok(())
}
