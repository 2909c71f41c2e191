//! Standalone `sluice-bench`: the same harness as `sluice bench`, with the relay binary named
//! explicitly (`--sluice PATH`; default: a `sluice` next to this executable).

use std::path::PathBuf;

use clap::Parser;
use sluice_bench::BenchArgs;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Benchmark the Sluice relay (scenarios S1-S5 of DESIGN.md)"
)]
struct Cli {
    /// The sluice binary to start.
    #[arg(long, value_name = "PATH")]
    sluice: Option<PathBuf>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let exe = match cli.sluice {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("sluice"),
    };
    sluice_bench::run(cli.bench, exe).await
}
