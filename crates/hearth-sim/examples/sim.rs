//! Development driver: `cargo run --release -p hearth-sim --example sim -- [policy] [scheduler] [days] [devices]`.
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let mut o = hearth_sim::run::Options {
        prices: std::env::var("PRICES")
            .unwrap_or_else(|_| "data/prices/Price_2019.csv".into())
            .into(),
        out: std::env::var("OUT").ok().map(Into::into),
        ..Default::default()
    };
    if let Some(p) = a.get(1) {
        o.policy = p.clone();
    }
    if let Some(s) = a.get(2) {
        o.scheduler = s.clone();
    }
    if let Some(d) = a.get(3).and_then(|d| d.parse().ok()) {
        o.days = Some(d);
    }
    if let Some(n) = a.get(4).and_then(|d| d.parse().ok()) {
        o.devices = Some(n);
    }
    if let Ok(l) = std::env::var("LOAD") {
        o.load = l.parse().unwrap_or(0.8);
    }
    if let Ok(v) = std::env::var("DWELL") {
        o.policy_config.min_dwell_s = v.parse().unwrap_or(3600.0);
    }
    if let Ok(v) = std::env::var("HYST") {
        o.policy_config.hysteresis_frac = v.parse().unwrap_or(0.0);
    }
    o.fleet = std::env::var("FLEET").ok().map(Into::into);
    if std::env::args().any(|a| a == "--dump-fleet") {
        println!(
            "{}",
            serde_json::to_string_pretty(&hearth_sim::fleet::Fleet::default_fleet())
                .unwrap_or_default()
        );
        return;
    }
    o.generate_jobs = std::env::var("JOBS").ok().and_then(|v| v.parse().ok());
    o.no_dr = std::env::var("NODR").is_ok();
    o.day_ahead = std::env::var("DA").is_ok();
    match hearth_sim::run::run(&o) {
        Ok(out) => {
            println!("{}", out.markdown);
            for r in &out.runs {
                println!(
                    "{} {}: {:.2} s",
                    r.metrics.policy, r.metrics.scheduler, r.metrics.wall_s
                );
            }
        }
        Err(e) => eprintln!("error: {e}"),
    }
}
