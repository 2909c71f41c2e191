//! The `sluice` command: wiring and argument handling only; the relay lives in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sluice::config::Config;
use sluice::relay::Relay;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "An asynchronous event relay: the producer never stalls, and nothing it was promised vanishes silently."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, env = "SLUICE_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay described by a config file.
    Run {
        /// The TOML config file.
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
    /// Check a config file (syntax, types, topology) without starting anything.
    Validate {
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
    /// Look at disk queues.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Measure a scenario of DESIGN.md section 7 (starts this binary as the relay under test).
    Bench(Box<sluice_bench::BenchArgs>),
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Segments, bytes, first/last/acknowledged sequence and corrupt records of a disk queue
    /// directory (`data_dir/queues/<sink>`); safe while the relay runs.
    Inspect {
        /// The queue directory.
        dir: PathBuf,
        /// Print JSON (for scripts) instead of the table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => match Config::load(&config) {
            Ok(loaded) => {
                println!(
                    "{}: ok ({} sources, {} sinks)",
                    config.display(),
                    loaded.sources.len(),
                    loaded.sinks.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Queue {
            command: QueueCommand::Inspect { dir, json },
        } => match sluice_diskq::inspect(&dir) {
            Ok(report) if json => {
                println!("{:#}", inspect_json(&report));
                ExitCode::SUCCESS
            }
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
        Command::Bench(args) => {
            let exe = match std::env::current_exe() {
                Ok(exe) => exe,
                Err(e) => {
                    eprintln!("cannot find this binary to start as the relay: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => match runtime.block_on(sluice_bench::run(*args, exe)) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("sluice bench: {e:#}");
                        ExitCode::FAILURE
                    }
                },
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => {
            let loaded = match Config::load(&config) {
                Ok(loaded) => loaded,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(2);
                }
            };
            init_logging(cli.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(loaded))
        }
    }
}

async fn run(config: Config) -> ExitCode {
    let (mut terminate, mut interrupt) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            error!("Cannot install signal handlers.");
            return ExitCode::FAILURE;
        }
    };
    let relay = match Relay::start(&config).await {
        Ok(relay) => relay,
        Err(e) => {
            error!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    info!(timeout = ?config.shutdown_timeout.0, "Shutting down: no longer accepting; delivering what is queued.");
    let probe = relay.probe();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        let (undelivered, kept_on_disk) = probe.pending();
        warn!(
            undelivered,
            kept_on_disk,
            "Second signal: exiting now; events still in memory queues are lost, disk queues keep theirs."
        );
        std::process::exit(130);
    });
    let report = relay.shutdown().await;
    if report.undelivered == 0 {
        info!(
            undelivered = 0,
            kept_on_disk = report.kept_on_disk,
            "Stopped; every accepted event was delivered, counted as dropped, or kept on disk."
        );
        ExitCode::SUCCESS
    } else {
        warn!(
            undelivered = report.undelivered,
            kept_on_disk = report.kept_on_disk,
            "Stopped with events not delivered (lost from memory queues)."
        );
        ExitCode::from(3)
    }
}

/// `sluice queue inspect --json`: the same figures as the table, for scripts.
fn inspect_json(report: &sluice_diskq::InspectReport) -> serde_json::Value {
    use sluice_diskq::CheckpointStatus;
    let checkpoint = match &report.checkpoint {
        CheckpointStatus::Missing => serde_json::json!({ "status": "missing" }),
        CheckpointStatus::Loaded(low) => {
            serde_json::json!({ "status": "loaded", "low_water": low })
        }
        CheckpointStatus::Corrupt(why) => serde_json::json!({ "status": "corrupt", "reason": why }),
    };
    let segments: Vec<serde_json::Value> = report
        .segments
        .iter()
        .map(|s| {
            serde_json::json!({
                "path": s.path.display().to_string(),
                "named_first": s.named_first,
                "bytes": s.bytes,
                "records": s.records,
                "entries": s.entries,
                "first_seq": s.first_seq,
                "last_seq": s.last_seq,
                "corrupt_records": s.corrupt_records,
                "corrupt_bytes": s.corrupt_bytes,
                "tail_bytes": s.tail_bytes,
                "unused_bytes": s.unused_bytes,
            })
        })
        .collect();
    serde_json::json!({
        "dir": report.dir.display().to_string(),
        "checkpoint": checkpoint,
        "first_seq": report.first_seq(),
        "last_seq": report.last_seq(),
        "bytes": report.bytes(),
        "records": report.records(),
        "entries": report.entries(),
        "unacknowledged": report.unacked_records(),
        "corrupt_records": report.corrupt_records(),
        "corrupt_bytes": report.corrupt_bytes(),
        "segments": segments,
    })
}
