//! The long packet fuzz of the device port:
//! `cargo run -p dataward-tests --bin fuzz -- --packets 20000 [--seed N]`.
//! Exits non-zero (naming the seed) if the gateway crashed, panicked, or a
//! real device could not deliver afterwards.

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Packets to send in all
    #[arg(long, default_value_t = 20_000)]
    packets: usize,
    /// Seed of the mutations (a failure names it, to replay)
    #[arg(long, default_value_t = 0x5eed_da7a)]
    seed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = std::time::Instant::now();
    let stats = dataward_tests::fuzz::run_against_gateway(args.packets, args.seed).await?;
    println!(
        "fuzz: {} packets over {} connections in {:.1} s, seed {:#x}: no crash, no panic, a real device delivered afterwards",
        stats.packets,
        stats.connections,
        started.elapsed().as_secs_f64(),
        args.seed
    );
    Ok(())
}
