//! Block placement: ours vs Petals' rule in seeded swarm simulations.
//!
//! `cargo run --release -p hearth-swarm --example placement_sim [SEEDS]`
//!
//! Nodes join one by one (each picks its blocks by its policy's join rule), then every node
//! checks in round-robin whether to move. Prints the mean bottleneck (the throughput of the
//! weakest block, in the same units as the nodes' throughputs) after the joins and after
//! rebalancing, the mean number of moves, seeds whose rebalancing had not settled after 10
//! rounds, and per-seed wins/ties/losses against Petals (w/t/l). The join rules of all three
//! policies coincide (see `hearth_swarm::placement`), so they differ only in how nodes move.

use hearth_swarm::placement::{plan_placement, simulate_joins, Member, Policy, SimConfig};
use libp2p::identity::Keypair;
use std::time::Instant;

fn main() {
    let seeds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let scenarios = [
        ("32 blocks, 20 nodes of 4-16 blocks", 32, 20, 4, 16),
        ("32 blocks, 8 nodes of 4-16 blocks", 32, 8, 4, 16),
        ("32 blocks, 20 nodes of 2-8 blocks", 32, 20, 2, 8),
        ("32 blocks, 12 nodes of 8-20 blocks", 32, 12, 8, 20),
        ("80 blocks, 40 nodes of 4-30 blocks", 80, 40, 4, 30),
    ];
    println!("throughputs uniform in [1, 10); {seeds} seeds; min_gain per row; Petals balance_quality 0.75");
    println!(
        "{:<36} {:>8} {:<14} {:>9} {:>11} {:>7} {:>10} {:>13} {:>13}",
        "scenario",
        "min_gain",
        "policy",
        "joined",
        "rebalanced",
        "moves",
        "unsettled",
        "joined w/t/l",
        "final w/t/l"
    );
    for (name, n_blocks, n_nodes, min_blocks, max_blocks) in scenarios {
        for min_gain in [1.05, 1.2] {
            let cfg = SimConfig {
                n_blocks,
                n_nodes,
                min_blocks,
                max_blocks,
                min_gain,
                ..SimConfig::default()
            };
            let petals: Vec<_> = (0..seeds)
                .map(|s| simulate_joins(&cfg, Policy::Petals, s))
                .collect();
            for policy in [Policy::Petals, Policy::Hearth, Policy::HearthPlanned] {
                let runs: Vec<_> = (0..seeds)
                    .map(|s| simulate_joins(&cfg, policy, s))
                    .collect();
                let k = seeds.max(1) as f64;
                let mean = |f: &dyn Fn(&hearth_swarm::placement::SimOutcome) -> f64| {
                    runs.iter().map(f).sum::<f64>() / k
                };
                let wtl = |f: &dyn Fn(&hearth_swarm::placement::SimOutcome) -> f64| {
                    let mut c = [0; 3];
                    for (o, p) in runs.iter().zip(&petals) {
                        let (a, b) = (f(o), f(p));
                        let i = if a > b * (1.0 + 1e-9) {
                            0
                        } else if a < b * (1.0 - 1e-9) {
                            2
                        } else {
                            1
                        };
                        c[i] += 1;
                    }
                    format!("{}/{}/{}", c[0], c[1], c[2])
                };
                println!(
                    "{:<36} {:>8} {:<14} {:>9.3} {:>11.3} {:>7.2} {:>10} {:>13} {:>13}",
                    name,
                    min_gain,
                    format!("{policy:?}"),
                    mean(&|o| o.joined),
                    mean(&|o| o.rebalanced),
                    mean(&|o| o.moves as f64),
                    runs.iter().filter(|o| !o.settled).count(),
                    wtl(&|o| o.joined),
                    wtl(&|o| o.rebalanced),
                );
            }
        }
    }

    // What one plan costs a node (it runs at every rebalancing check).
    for (n_blocks, members) in [(32usize, 20u32), (80, 250)] {
        let members: Vec<Member> = (0..members)
            .filter_map(|i| {
                let mut secret = [0u8; 32];
                secret[..4].copy_from_slice(&i.to_le_bytes());
                let key = Keypair::ed25519_from_bytes(secret).ok()?;
                Some(Member {
                    peer: key.public().to_peer_id(),
                    blocks: 4 + (i as usize * 7) % 27,
                    throughput: 1.0 + f64::from(i % 10),
                })
            })
            .collect();
        let t0 = Instant::now();
        match plan_placement(n_blocks, &members) {
            Ok(_) => println!(
                "plan for {n_blocks} blocks x {} members: {:.1} ms",
                members.len(),
                t0.elapsed().as_secs_f64() * 1e3
            ),
            Err(e) => println!("plan for {n_blocks} blocks failed: {e}"),
        }
    }
}
