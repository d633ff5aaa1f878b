//! `cargo run --release -p dataward-tests --bin policy-fuzz -- [ITERATIONS] [SEED]`:
//! the policy parser and evaluator under mutated input (see
//! `dataward_tests::policy_fuzz`). Exits non-zero on any panic.

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let iterations = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let seed = args.next().and_then(|a| a.parse().ok()).unwrap_or(0x5eed);
    // A caught panic is reported below; the default hook would print each.
    std::panic::set_hook(Box::new(|_| {}));
    let start = std::time::Instant::now();
    let r = dataward_tests::policy_fuzz::fuzz_policy(seed, iterations);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} executions in {secs:.1} s ({:.0}/s), seed {seed}: {} policies parsed and evaluated, {} panics",
        r.executions,
        r.executions as f64 / secs.max(1e-9),
        r.evaluated,
        r.panics.len()
    );
    for p in r.panics.iter().take(5) {
        println!("PANIC on {p}");
    }
    if r.panics.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
