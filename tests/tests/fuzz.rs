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

/// The short run of the policy fuzzer (the long one:
/// `cargo run --release -p dataward-tests --bin policy-fuzz`).
#[test]
fn mutated_policies_and_payloads_panic_nothing() {
    let r = dataward_tests::policy_fuzz::fuzz_policy(0x5eed, 20_000);
    assert_eq!(r.executions, 20_000);
    assert!(
        r.evaluated > 1000,
        "too few mutants parse to exercise evaluation: {r:?}"
    );
    assert!(
        r.panics.is_empty(),
        "{:?}",
        &r.panics[..r.panics.len().min(3)]
    );
}
