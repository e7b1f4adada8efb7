//! `itarflow-rt check`: every graph on every provider against the reference outputs.

use std::path::PathBuf;

use anyhow::{Result, bail};
use itarflow_base::Npz;
use itarflow_rt::Provider;

use super::args::{Common, ProviderArg, providers_or_all};

#[derive(clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub common: Common,
    /// Reference inputs and outputs (default: the package's reference.npz, made by Burn at export).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Providers to check (default: all; those that cannot run here are listed as skipped).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub providers: Vec<ProviderArg>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: CheckArgs) -> Result<()> {
    let model = a.common.load()?;
    let reference = match &a.reference {
        Some(p) => Npz::read(p)?,
        None => itarflow_rt::check::package_reference(&model)?,
    };
    let providers: Vec<Provider> = providers_or_all(&a.providers).into_iter().filter(|&p| p != Provider::Auto).collect();
    let report = itarflow_rt::check::check(model, &reference, &providers, &a.common.options())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", itarflow_base::check::table(&report.rows));
        if let Some(k) = &report.cpu_kernels {
            eprintln!("tract's CPU kernels: {k}");
        }
        for (p, why) in &report.skipped {
            eprintln!("skipped {p}: {why}");
        }
        for u in &report.unsupported {
            eprintln!("could not run {} ({}) on {}: {}", u.graph, u.precision, u.engine, u.reason);
        }
    }
    let past = report.rows.iter().filter(|r| !r.pass).count();
    if past > 0 || !report.unsupported.is_empty() {
        bail!("{past} output(s) past tolerance, {} graph(s) that could not run", report.unsupported.len());
    }
    Ok(())
}
