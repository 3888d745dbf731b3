//! What a soak run measured, and the verdict on it. Pure: no IO.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// One honest generation, as its client saw it.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Index of the prompt (the same prompt gives the same text when all is well: greedy).
    pub prompt: usize,
    /// When it ended, from the start of its phase.
    pub ended: Duration,
    /// Time to the first text.
    pub ttft: Option<Duration>,
    /// Completion tokens (from the usage the gateway reports).
    pub tokens: u64,
    /// What each failover of the generation added, milliseconds (from its trail).
    pub failover_ms: Vec<f64>,
    /// The text, or why the request failed.
    pub outcome: Result<String, String>,
}

/// The honest load of one phase, summarized.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PhaseSummary {
    /// Seconds the phase ran (requests still running then were finished, and count below
    /// except in the throughput).
    pub seconds: f64,
    /// Generations that finished with text.
    pub completed: usize,
    /// Completion tokens of the generations that finished within the phase, per second of it.
    pub tokens_per_second: f64,
    /// CPU seconds the harness itself (honest clients, and attackers when they run) used per
    /// second of the phase: what the attackers took from the machine the nodes share.
    pub harness_cpu_per_second: f64,
    /// 95th percentile of the time to first text, milliseconds (`None`: nothing completed).
    pub p95_ttft_ms: Option<f64>,
    /// Failovers in the completed generations (from their trails).
    pub failovers: usize,
    /// 95th percentile of the time a failover added (detection to replacement ready, replay
    /// included), milliseconds.
    pub p95_failover_ms: Option<f64>,
    /// Failed requests by cause.
    pub failed: BTreeMap<String, usize>,
}

/// The `q` quantile (0..=1) of `values` by the nearest-rank rule; `None` when empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The summary of `gens`, of a phase that ran for `seconds`.
pub fn summarize(gens: &[Generation], seconds: f64) -> PhaseSummary {
    let mut failed = BTreeMap::new();
    let mut tokens = 0;
    let mut ttfts = Vec::new();
    let mut failovers = Vec::new();
    let mut completed = 0;
    for g in gens {
        match &g.outcome {
            Ok(_) => {
                completed += 1;
                if g.ended.as_secs_f64() <= seconds {
                    tokens += g.tokens;
                }
                if let Some(t) = g.ttft {
                    ttfts.push(t.as_secs_f64() * 1e3);
                }
                failovers.extend_from_slice(&g.failover_ms);
            }
            Err(cause) => *failed.entry(cause.clone()).or_insert(0) += 1,
        }
    }
    PhaseSummary {
        seconds,
        completed,
        tokens_per_second: if seconds > 0.0 {
            tokens as f64 / seconds
        } else {
            0.0
        },
        p95_ttft_ms: quantile(&ttfts, 0.95),
        failovers: failovers.len(),
        p95_failover_ms: quantile(&failovers, 0.95),
        failed,
        harness_cpu_per_second: 0.0,
    }
}

/// The generations of `attacked` whose text differs from the text the attack-free phase gave
/// for the same prompt (prompts the attack-free phase never completed are not compared).
pub fn differing_texts(reference: &[Generation], attacked: &[Generation]) -> (usize, usize) {
    let mut expected: BTreeMap<usize, &str> = BTreeMap::new();
    for g in reference {
        if let Ok(text) = &g.outcome {
            expected.entry(g.prompt).or_insert(text);
        }
    }
    let (mut compared, mut differing) = (0, 0);
    for g in attacked {
        if let (Ok(text), Some(want)) = (&g.outcome, expected.get(&g.prompt)) {
            compared += 1;
            if text != want {
                differing += 1;
            }
        }
    }
    (compared, differing)
}

/// What one attack did: how often the target turned it away (as it should) and how often it
/// got what it asked for.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct AttackTally {
    /// Attempts made.
    pub attempts: u64,
    /// Attempts the target refused, closed or bounded.
    pub refused: u64,
    /// Attempts that got what they asked for.
    pub accepted: u64,
    /// Whether every attempt must be refused (then one accepted is a failure of the target);
    /// otherwise the attack uses resources within limits, and what it got is reported only.
    pub must_refuse: bool,
}

/// One node process over the run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NodeMemory {
    /// The node's name in the run (`node0`, ...).
    pub node: String,
    /// Highest resident memory seen, MiB (all of the node's lives).
    pub peak_rss_mib: f64,
    /// The memory it was configured to stay within, MiB.
    pub budget_mib: f64,
}

/// Everything a soak run reports.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// What the stressed phase did, in words.
    pub stress: String,
    /// The honest load alone.
    pub baseline: PhaseSummary,
    /// The same load under stress.
    pub stressed: PhaseSummary,
    /// `stressed.tokens_per_second / baseline.tokens_per_second`.
    pub throughput_ratio: f64,
    /// Stressed-phase generations compared with the reference text of their prompt.
    pub texts_compared: usize,
    /// Of those, how many differed.
    pub texts_differing: usize,
    /// Processes that exited without being killed on purpose.
    pub crashes: Vec<String>,
    /// Nodes killed with SIGKILL on purpose.
    pub kills: usize,
    /// Nodes that came (back) into the swarm during the stressed phase.
    pub joins: usize,
    /// Whether an honest request that failed under stress is a problem (churn: every block
    /// stays covered, so none should fail) or only reported (attacks).
    pub failures_are_problems: bool,
    /// Peak memory of each node against its budget.
    pub memory: Vec<NodeMemory>,
    /// Per attack.
    pub attacks: BTreeMap<String, AttackTally>,
}

/// Throughput share the attacked phase must keep.
pub const TARGET_THROUGHPUT_RATIO: f64 = 0.9;

impl Report {
    /// Whether honest throughput under attack kept [`TARGET_THROUGHPUT_RATIO`] of the
    /// attack-free run's. Apart from [`Self::problems`]: on a machine where the attackers share
    /// the nodes' cores it measures the machine as much as hearth.
    pub fn meets_throughput_target(&self) -> bool {
        self.throughput_ratio >= TARGET_THROUGHPUT_RATIO
    }

    /// The invariants the run broke (crashes, changed text, memory over budget, attacks that
    /// must always be refused but were not, no progress); empty when none.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.texts_differing > 0 {
            out.push(format!(
                "{} of {} generations under attack differ from the attack-free text",
                self.texts_differing, self.texts_compared
            ));
        }
        if !self.crashes.is_empty() {
            out.push(format!("crashed: {}", self.crashes.join(", ")));
        }
        for m in &self.memory {
            if m.peak_rss_mib > m.budget_mib {
                out.push(format!(
                    "{} peaked at {:.0} MiB, above its {:.0} MiB budget",
                    m.node, m.peak_rss_mib, m.budget_mib
                ));
            }
        }
        for (name, t) in &self.attacks {
            if t.accepted > 0 && t.must_refuse {
                out.push(format!(
                    "{name}: {} of {} attempts accepted",
                    t.accepted, t.attempts
                ));
            }
        }
        let failed: usize = self.stressed.failed.values().sum();
        if self.failures_are_problems && failed > 0 {
            out.push(format!("{failed} honest requests failed under stress"));
        }
        if self.stressed.completed == 0 {
            out.push("no honest generation completed under stress".into());
        }
        out
    }

    /// A Markdown table of the figures, for docs/reliability.md.
    pub fn markdown(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".into(), |t| format!("{t:.0} ms"));
        let failed = |p: &PhaseSummary| {
            if p.failed.is_empty() {
                "none".to_string()
            } else {
                p.failed
                    .iter()
                    .map(|(k, v)| format!("{v} × {k}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        };
        let (b, t) = (&self.baseline, &self.stressed);
        let mut s = format!("Stress: {}.\n\n", self.stress);
        s.push_str("| | reference | under stress |\n|---|---|---|\n");
        s.push_str(&format!(
            "| seconds | {:.0} | {:.0} |\n| generations completed | {} | {} |\n",
            b.seconds, t.seconds, b.completed, t.completed
        ));
        s.push_str(&format!(
            "| honest tok/s | {:.1} | {:.1} ({:.2}×) |\n| harness CPU (clients + attackers) | {:.2} cores | {:.2} cores |\n| p95 TTFT | {} | {} |\n| failovers (p95 added) | {} ({}) | {} ({}) |\n| failed requests | {} | {} |\n",
            b.tokens_per_second,
            t.tokens_per_second,
            self.throughput_ratio,
            b.harness_cpu_per_second,
            t.harness_cpu_per_second,
            ms(b.p95_ttft_ms),
            ms(t.p95_ttft_ms),
            b.failovers,
            ms(b.p95_failover_ms),
            t.failovers,
            ms(t.p95_failover_ms),
            failed(b),
            failed(t)
        ));
        s.push_str(&format!(
            "\nTexts differing from the reference: {} of {}. Crashes: {}. Nodes killed with \
             SIGKILL: {}; nodes (re)joining: {}.\n\n",
            self.texts_differing,
            self.texts_compared,
            if self.crashes.is_empty() {
                "0".to_string()
            } else {
                self.crashes.join(", ")
            },
            self.kills,
            self.joins
        ));
        s.push_str("| node | peak RSS | budget |\n|---|---|---|\n");
        for m in &self.memory {
            s.push_str(&format!(
                "| {} | {:.0} MiB | {:.0} MiB |\n",
                m.node, m.peak_rss_mib, m.budget_mib
            ));
        }
        if !self.attacks.is_empty() {
            s.push_str(
                "\n| attack | attempts | refused or closed | accepted | must all be refused |\n|---|---|---|---|---|\n",
            );
            for (name, t) in &self.attacks {
                s.push_str(&format!(
                    "| {name} | {} | {} | {} | {} |\n",
                    t.attempts,
                    t.refused,
                    t.accepted,
                    if t.must_refuse { "yes" } else { "no" }
                ));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen(prompt: usize, outcome: Result<&str, &str>, tokens: u64, ttft_ms: u64) -> Generation {
        Generation {
            prompt,
            ended: Duration::from_secs(1),
            ttft: Some(Duration::from_millis(ttft_ms)),
            tokens,
            failover_ms: Vec::new(),
            outcome: outcome.map(String::from).map_err(String::from),
        }
    }

    #[test]
    fn the_nearest_rank_quantile_matches_the_textbook_examples() {
        // Nearest-rank examples from the definition: 5 values, 30th/40th/50th/100th percentiles.
        let v = [15.0, 20.0, 35.0, 40.0, 50.0];
        assert_eq!(quantile(&v, 0.30), Some(20.0));
        assert_eq!(quantile(&v, 0.40), Some(20.0));
        assert_eq!(quantile(&v, 0.50), Some(35.0));
        assert_eq!(quantile(&v, 1.0), Some(50.0));
        assert_eq!(quantile(&v, 0.0), Some(15.0));
        assert_eq!(quantile(&[], 0.95), None);
    }

    #[test]
    fn summaries_count_tokens_of_completed_generations_and_failures_by_cause() {
        let late = Generation {
            ended: Duration::from_secs(11),
            ..gen(4, Ok("c"), 40, 200)
        };
        let gens = [
            gen(0, Ok("a"), 10, 100),
            gen(1, Ok("b"), 20, 300),
            gen(2, Err("http 503"), 0, 0),
            gen(3, Err("http 503"), 0, 0),
            late,
        ];
        let s = summarize(&gens, 10.0);
        // The late one counts as completed, not in the throughput.
        assert_eq!(s.completed, 3);
        assert_eq!(s.tokens_per_second, 3.0);
        assert_eq!(s.p95_ttft_ms, Some(300.0));
        assert_eq!(s.failed.get("http 503"), Some(&2));
    }

    #[test]
    fn texts_are_compared_per_prompt_with_the_reference() {
        let reference = [gen(0, Ok("x"), 1, 1), gen(1, Err("timeout"), 0, 0)];
        let attacked = [
            gen(0, Ok("x"), 1, 1),
            gen(0, Ok("y"), 1, 1),
            gen(1, Ok("z"), 1, 1),
            gen(0, Err("http 503"), 0, 0),
        ];
        assert_eq!(differing_texts(&reference, &attacked), (2, 1));
    }

    #[test]
    fn a_report_names_each_missed_target() {
        let mut attacks = BTreeMap::new();
        attacks.insert(
            "slow-frames".to_string(),
            AttackTally {
                attempts: 3,
                refused: 2,
                accepted: 1,
                must_refuse: true,
            },
        );
        attacks.insert(
            "kv-squatting".to_string(),
            AttackTally {
                attempts: 3,
                refused: 0,
                accepted: 3,
                must_refuse: false,
            },
        );
        let summary = summarize(&[gen(0, Ok("a"), 10, 100)], 1.0);
        let report = Report {
            stress: "every attack".into(),
            baseline: summary.clone(),
            stressed: summary,
            throughput_ratio: 0.5,
            texts_compared: 4,
            texts_differing: 1,
            crashes: vec!["node2".into()],
            kills: 1,
            joins: 1,
            failures_are_problems: false,
            memory: vec![NodeMemory {
                node: "node0".into(),
                peak_rss_mib: 900.0,
                budget_mib: 800.0,
            }],
            attacks,
        };
        let problems = report.problems();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(!report.meets_throughput_target());
        assert!(problems.iter().any(|p| p.contains("slow-frames")));
        assert!(!problems.iter().any(|p| p.contains("kv-squatting")));
        assert!(report
            .markdown()
            .contains("| honest tok/s | 10.0 | 10.0 (0.50×) |"));
    }
}
