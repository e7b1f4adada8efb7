//! The ablation plot (plotters, drawn to a PNG): FLD and class accuracy against the denoising
//! steps and against the guidance scale, the FLD floor as a grey line, other guidance styles as
//! separate points.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use itarflow_rt::quality::ablation::{Row, Study};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// Registers the font the plot's text is drawn with (once per process).
fn font(path: &Path) -> Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(path).map_err(|e| {
            format!("cannot read the plot font {} ({e}): pass --font FILE.ttf or install fonts-dejavu-core", path.display())
        })?;
        register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
            .map_err(|_| format!("{} is not a TrueType font: pass --font FILE.ttf", path.display()))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// A plotted series: its legend name, colour and (x, y) points.
type Series = (String, RGBColor, Vec<(f64, f64)>);

/// One panel: y against x positions `xs` (labelled `labels`), series of (name, colour, points).
#[allow(clippy::too_many_arguments)]
fn panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    labels: &[String],
    series: &[Series],
    floor: Option<f64>,
) -> Result<()> {
    let ys = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).chain(floor);
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
    let pad = ((hi - lo) * 0.1).max(1e-3);
    let n = labels.len().max(2) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.3..(n - 0.7), (lo - pad).max(0.0)..(hi + pad))
        .map_err(|e| anyhow!("plot: {e}"))?;
    let fmt = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 { labels.get(i as usize).cloned().unwrap_or_default() } else { String::new() }
    };
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(labels.len() * 2 + 1)
        .x_label_formatter(&fmt)
        .disable_x_mesh()
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    if let Some(f) = floor {
        chart
            .draw_series(LineSeries::new([(-0.3, f), (n - 0.7, f)], RGBColor(150, 150, 150).stroke_width(2)))
            .map_err(|e| anyhow!("plot: {e}"))?
            .label(format!("floor {f:.2}"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], RGBColor(150, 150, 150).stroke_width(2)));
    }
    for (name, color, points) in series {
        let color = *color;
        if points.len() > 1 {
            chart.draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2))).map_err(|e| anyhow!("plot: {e}"))?;
        }
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 5, color.filled())))
            .map_err(|e| anyhow!("plot: {e}"))?
            .label(name.clone())
            .legend(move |(x, y)| Circle::new((x + 9, y), 5, color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    Ok(())
}

const COLORS: [RGBColor; 4] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];

/// Writes the ablation plot of `rows` to `path` (atomically).
pub fn ablation(path: &Path, rows: &[Row], floor: Option<f64>, font_path: &Path) -> Result<()> {
    font(font_path)?;
    let tmp = itarflow_base::atomic::temp_path_for(path);
    let tmp = tmp.with_extension("png");
    {
        let root = BitMapBackend::new(&tmp, (1400, 900)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
        let areas = root.split_evenly((2, 2));
        let steps: Vec<&Row> = rows.iter().filter(|r| r.study == Study::DenoiseSteps).collect();
        let scales: Vec<&Row> = rows.iter().filter(|r| r.study == Study::CfgScale).collect();
        let styles: Vec<&Row> = rows.iter().filter(|r| r.study == Study::CfgStyle).collect();
        let step_labels: Vec<String> = steps.iter().map(|r| r.denoise_steps.to_string()).collect();
        let scale_labels: Vec<String> = scales.iter().map(|r| r.cfg.to_string()).collect();
        let centre = steps.first().map(|r| (r.cfg, r.cfg_style));
        let name = |what: &str| centre.map_or(what.to_string(), |(w, s)| format!("{what}, cfg {w} {s:?}").to_lowercase());
        let acc = |r: &Row| 100.0 * r.class_accuracy.unwrap_or(f64::NAN);
        let by_index = |rs: &[&Row], f: &dyn Fn(&Row) -> f64| {
            rs.iter().enumerate().map(|(i, r)| (i as f64, f(r))).filter(|p| p.1.is_finite()).collect::<Vec<_>>()
        };
        // Other guidance styles at the centre scale, placed at that scale's position.
        let style_points = |f: &dyn Fn(&Row) -> f64| -> Vec<Series> {
            styles
                .iter()
                .filter(|r| Some((r.cfg, r.cfg_style)) != centre)
                .enumerate()
                .filter_map(|(i, r)| {
                    let x = scales.iter().position(|s| s.cfg == r.cfg)? as f64;
                    Some((format!("{:?} style", r.cfg_style).to_lowercase(), COLORS[(i + 1) % COLORS.len()], vec![(x, f(r))]))
                })
                .collect()
        };
        let steps_name = name("steps");
        let kind = centre.map_or(String::new(), |(_, s)| format!("{s:?}").to_lowercase());
        panel(
            &areas[0],
            "FLD vs denoising steps",
            "denoising steps (1 = one Tweedie step)",
            "FLD",
            &step_labels,
            &[(steps_name.clone(), COLORS[0], by_index(&steps, &|r| r.fld))],
            floor,
        )?;
        panel(
            &areas[1],
            "Class accuracy vs denoising steps",
            "denoising steps",
            "class accuracy (%)",
            &step_labels,
            &[(steps_name, COLORS[0], by_index(&steps, &acc))],
            None,
        )?;
        let mut fld_series = vec![(format!("{kind} guidance"), COLORS[0], by_index(&scales, &|r| r.fld))];
        fld_series.extend(style_points(&|r| r.fld));
        panel(&areas[2], "FLD vs guidance scale", "guidance scale w", "FLD", &scale_labels, &fld_series, floor)?;
        let mut acc_series = vec![(format!("{kind} guidance"), COLORS[0], by_index(&scales, &acc))];
        acc_series.extend(style_points(&acc));
        panel(&areas[3], "Class accuracy vs guidance scale", "guidance scale w", "class accuracy (%)", &scale_labels, &acc_series, None)?;
        root.present().map_err(|e| anyhow!("plot: writing {}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}
