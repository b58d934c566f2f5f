//! `pbsync-palette-sim`: the Palette API simulator as a standalone server, for trying the
//! Palette target locally (see the README, "The Palette target and the Palette API simulator").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pbsync_devkit::palette_sim::{Config, Seed, Simulator};

/// A Palette API simulator for the cluster-profile endpoints pbsync uses
#[derive(Debug, Parser)]
#[command(name = "pbsync-palette-sim", version, about, long_about = None)]
struct Args {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8099")]
    listen: SocketAddr,
    /// JSON file of profiles to start with: {"profiles": [...]}
    #[arg(long)]
    seed: Option<PathBuf>,
    /// The only ApiKey accepted (default: any non-empty key)
    #[arg(long, env = "PALETTE_SIM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Largest page of the summary list (Palette: 50)
    #[arg(long, default_value_t = 50)]
    page_size: usize,
    /// Turn off the per-IP rate limits
    #[arg(long)]
    no_rate_limits: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", pbsync_core::error_chain(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let seed = match &args.seed {
        Some(path) => Seed::read(path)?,
        None => Seed::default(),
    };
    let mut config = Config {
        api_key: args.api_key,
        page_cap: args.page_size,
        seed,
        ..Config::default()
    };
    if args.no_rate_limits {
        config.rate_limits.clear();
    }
    let sim = Simulator::start(args.listen, config).await?;
    eprintln!(
        "pbsync-palette-sim listening on {} (admin endpoints under {}/__sim/); Ctrl-C stops it",
        sim.url(),
        sim.url()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
