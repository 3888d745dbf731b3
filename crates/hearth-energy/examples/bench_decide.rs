//! Times one policy decision for N synthetic devices (the same measurement as
//! `hearth agent --bench-decide N`): `cargo run --release -p hearth-energy --example bench_decide -- 10000 21`.

fn main() {
    let mut args = std::env::args().skip(1);
    let n = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let runs = args.next().and_then(|a| a.parse().ok()).unwrap_or(21);
    for size in [n / 100, n / 10, n].into_iter().filter(|&s| s > 0) {
        let b = hearth_energy::bench::bench_decide(size, runs);
        println!(
            "decide for {} devices, {} runs: median {:.1} µs, p95 {:.1} µs, min {:.1} µs ({} running)",
            b.devices, b.runs, b.median_us, b.p95_us, b.min_us, b.running
        );
    }
}
