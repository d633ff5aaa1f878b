//! A short packet fuzz of the device port (the long one is
//! `scripts/fuzz-device-port.sh`): mutated CONNECT, PUBLISH and SUBSCRIBE
//! packets over fresh connections, then a real device still delivers.

use anyhow::Result;
use dataward_tests::fuzz;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_packets_crash_nothing() -> Result<()> {
    let seed = std::env::var("DATAWARD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_da7a);
    let stats = fuzz::run_against_gateway(2_000, seed).await?;
    eprintln!(
        "fuzz: {} packets over {} connections, seed {seed:#x}",
        stats.packets, stats.connections
    );
    assert!(stats.packets >= 2_000);
    Ok(())
}
