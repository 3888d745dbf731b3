//! SHA-256d throughput of the built-in miner's hasher on one core.
//!
//! `cargo run --release -p hearth-mining --example hashrate [-- <nonces per run>]`
//! Hashes the genesis header over a nonce range (midstate reuse, as the miner does), five
//! runs, and prints each run and the median in hashes per second.

use std::time::Instant;

use hearth_mining::sha256d::{from_display_hex, BlockHeader, HeaderHasher, Target};

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(4_000_000);
    let header = BlockHeader {
        version: 1,
        prev_blockhash: [0; 32],
        merkle_root: from_display_hex(
            "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b",
        )
        .expect("constant"),
        time: 1231006505,
        bits: 0x1d00ffff,
        nonce: 0,
    };
    let hasher = HeaderHasher::new(&header);
    let target = Target::from_difficulty(1.0).expect("constant");
    let mut rates = Vec::new();
    for run in 0..5 {
        let t0 = Instant::now();
        let mut found = 0u32;
        for nonce in 0..n {
            if target.is_met_by(&hasher.hash(nonce)) {
                found += 1;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let rate = f64::from(n) / secs;
        println!(
            "run {run}: {n} hashes in {secs:.3} s = {:.2} MH/s ({found} diff-1 shares)",
            rate / 1e6
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!("median: {:.2} MH/s on one core", rates[2] / 1e6);
}
