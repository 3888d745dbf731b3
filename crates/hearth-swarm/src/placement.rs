//! Block placement: which contiguous span of blocks a node serves.
//!
//! The swarm's capacity is limited by its weakest block: a token must pass every block, so the
//! swarm's throughput is the minimum over blocks of the summed throughput of the servers
//! holding that block (the *bottleneck*).
//!
//! - Joining ([`choose_blocks`]): Petals' rule ([`petals_choose_blocks`]) takes the window
//!   whose sorted per-block throughputs are lexicographically smallest. That rule is already
//!   optimal for the joining step: for any throughput the node adds, it maximises the sorted
//!   per-block throughputs *after* the join (leximin), hence the bottleneck first of all. (Two
//!   equal-size windows differ in blocks A and B; the lexicographic order of sorted multisets
//!   is decided by the smallest element of their symmetric difference, and if it lies in A, it
//!   also decides the outcomes in favour of covering A.) So [`choose_blocks`] uses the same
//!   order; no rule that looks only at the outcome of one join can beat it.
//! - Moving alone ([`should_rebalance`]): a node moves when re-choosing against everyone else
//!   raises the bottleneck by a factor `min_gain`.
//! - Moving together ([`plan_placement`], [`planned_move`]): single moves get stuck when
//!   several blocks share the bottleneck, and joins in arrival order leave gaps that no single
//!   move repairs. Every node computes the same plan for the whole swarm from its membership
//!   (who holds how many blocks at what throughput, not where) and moves to its slot when the
//!   plan beats the current bottleneck by `min_gain`. The plan ignores current positions, so
//!   each node moves at most once per membership change. This is where hearth beats Petals:
//!   see [`simulate_joins`] and `examples/placement_sim.rs`.
//!
//! All functions are pure; the simulation and the planner use explicit or fixed seeds.

use hearth_core::{BlockRange, BlockRangeError, SplitMix64};
use libp2p::PeerId;
use std::cmp::Ordering;

/// Relative tolerance under which two throughputs count as equal: sums of the same values in a
/// different grouping differ by rounding, which must not decide a placement.
const TIE_EPS: f64 = 1e-9;

/// Cap on Petals' simulated re-placement rounds (its loop has no bound of its own).
const PETALS_MAX_ROUNDS: usize = 100;

/// Local-search proposals per member when planning, and the overall cap. Measured on 32- and
/// 80-block swarms: gains flatten out beyond ~100 per member.
const PLAN_ITERS_PER_MEMBER: usize = 200;
const PLAN_MAX_ITERS: usize = 50_000;

/// Fixed seed of the planner: every node must compute the same plan.
const PLAN_SEED: u64 = 0x6865_6172_7468_0001;

/// One server's span as announced in the DHT.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanInfo {
    /// The server.
    pub peer: PeerId,
    /// The blocks it serves.
    pub span: BlockRange,
    /// Tokens/s the server offers each block of its span.
    pub throughput: f64,
}

/// A swarm member as the planner sees it: capacity, not position.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// The member; plans are ordered by peer id, so every node computes the same one.
    pub peer: PeerId,
    /// Blocks it can hold.
    pub blocks: usize,
    /// Tokens/s it offers each block it holds.
    pub throughput: f64,
}

/// Why no span can be chosen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// `n_blocks` is 0.
    #[error("the model has no blocks")]
    NoBlocks,
    /// The node can hold 0 blocks.
    #[error("a node must serve at least one block")]
    ZeroSpan,
    /// The node's throughput is 0, negative or not finite.
    #[error("a node must offer a positive, finite throughput")]
    NoThroughput,
    /// A span would end at this block count, beyond `u32` block indices.
    #[error("{0} blocks do not fit a block index")]
    TooManyBlocks(usize),
    /// The chosen bounds do not form a valid [`BlockRange`].
    #[error(transparent)]
    Range(#[from] BlockRangeError),
}

/// Summed throughput per block. Spans beyond `n_blocks` are clipped; non-finite or negative
/// throughputs (garbage from the network) count as zero. Sums run in `(peer, span)` order so the
/// result does not depend on the order of `spans`.
pub fn block_throughputs(n_blocks: usize, spans: &[SpanInfo]) -> Vec<f64> {
    let mut order: Vec<&SpanInfo> = spans.iter().collect();
    order.sort_by(|a, b| {
        (a.peer, a.span)
            .cmp(&(b.peer, b.span))
            .then(a.throughput.total_cmp(&b.throughput))
    });
    let mut t = vec![0.0; n_blocks];
    for s in order {
        let r = s.span.as_usize_range();
        add(&mut t, r.start, r.len(), sanitize(s.throughput));
    }
    t
}

/// The swarm's bottleneck: the smallest per-block throughput, 0 when any block is uncovered
/// (or the model has no blocks).
pub fn swarm_throughput(n_blocks: usize, spans: &[SpanInfo]) -> f64 {
    bottleneck(&block_throughputs(n_blocks, spans))
}

/// Our choice for a joining node that can hold `my_blocks` blocks: the window that
/// maximises the sorted per-block throughputs after the join (bottleneck first), lowest start
/// on ties; `my_blocks ≥ n_blocks` gives the whole model. This coincides with Petals' rule for
/// every positive `my_throughput` (see the module docs), so the choice does not depend on its
/// value; it is taken so that callers state what the node adds, and a node offering nothing
/// (zero, negative or non-finite) is refused.
pub fn choose_blocks(
    n_blocks: usize,
    others: &[SpanInfo],
    my_blocks: usize,
    my_throughput: f64,
) -> Result<BlockRange, PlacementError> {
    span_len(n_blocks, my_blocks)?;
    if sanitize(my_throughput) == 0.0 {
        return Err(PlacementError::NoThroughput);
    }
    // Petals' order is optimal for a single join (see the module docs).
    petals_choose_blocks(n_blocks, others, my_blocks)
}

/// Petals' rule (`petals.server.block_selection.choose_best_blocks`): the window whose sorted
/// per-block throughputs are lexicographically smallest, ties to the lowest start.
pub fn petals_choose_blocks(
    n_blocks: usize,
    others: &[SpanInfo],
    my_blocks: usize,
) -> Result<BlockRange, PlacementError> {
    let len = span_len(n_blocks, my_blocks)?;
    let t = block_throughputs(n_blocks, others);
    window(best_start(&t, len), len)
}

/// Whether a running node should move on its own, and where.
///
/// Compares staying on its current span (as announced in `all`) with the span [`choose_blocks`]
/// picks against everyone else, both with `my_throughput`. Returns the new span only when it
/// raises the bottleneck to at least `min_gain ×` the current one (values below 1 count as 1),
/// or, while some block is uncovered, when it leaves fewer blocks uncovered.
///
/// Every move thus strictly raises (uncovered count down, then bottleneck up by a factor
/// `min_gain`), which is what rules out ping-pong: nodes applying this in any order stop after
/// finitely many moves. Returns None when `me` has no span in `all`, when the best span is the
/// current one, or when the gain is marginal. Where `all` holds several records of one peer,
/// the last one counts (append your live state after what the DHT returned).
pub fn should_rebalance(
    n_blocks: usize,
    all: &[SpanInfo],
    me: PeerId,
    my_blocks: usize,
    my_throughput: f64,
    min_gain: f64,
) -> Option<BlockRange> {
    let len = span_len(n_blocks, my_blocks).ok()?;
    let latest = latest_per_peer(all);
    let current = latest.iter().find(|s| s.peer == me)?.span;
    let others: Vec<SpanInfo> = latest
        .into_iter()
        .filter(|s| s.peer != me)
        .cloned()
        .collect();
    let base = block_throughputs(n_blocks, &others);
    let cur = current.as_usize_range();
    let start = hearth_rebalance(
        &base,
        (cur.start, cur.len()),
        len,
        sanitize(my_throughput),
        min_gain,
    )?;
    window(start, len).ok()
}

/// A placement for the whole swarm, computed from capacities alone: members in decreasing
/// order of `blocks × throughput` each take [`choose_blocks`]' window, then a seeded local
/// search moves single members wherever the sorted per-block throughputs do not get worse
/// (plateau moves let it escape ties at the bottleneck). Deterministic and independent of
/// the order of `members`; one entry per peer (the last given), members with no blocks left
/// out. Returned in `PeerId` order.
pub fn plan_placement(
    n_blocks: usize,
    members: &[Member],
) -> Result<Vec<SpanInfo>, PlacementError> {
    if n_blocks == 0 {
        return Err(PlacementError::NoBlocks);
    }
    let mut seen = std::collections::HashSet::new();
    let mut members: Vec<&Member> = members
        .iter()
        .rev()
        .filter(|m| seen.insert(m.peer))
        .filter(|m| m.blocks > 0)
        .collect();
    members.sort_by_key(|m| m.peer);
    let nodes: Vec<(usize, f64)> = members
        .iter()
        .map(|m| (m.blocks.min(n_blocks), sanitize(m.throughput)))
        .collect();
    let starts = plan_starts(n_blocks, &nodes);
    members
        .iter()
        .zip(starts.iter().zip(&nodes))
        .map(|(m, (&start, &(len, throughput)))| {
            Ok(SpanInfo {
                peer: m.peer,
                span: window(start, len)?,
                throughput,
            })
        })
        .collect()
}

/// Whether a running node should move to its slot in the swarm's plan, and where.
///
/// Every member's capacity is taken from `all` (its current span length and throughput; mine
/// from `my_blocks`, `my_throughput`; the last record of a peer counts), the plan from
/// [`plan_placement`]. Returns my planned
/// span when it differs from my current one, the plan's bottleneck is at least `min_gain ×`
/// the current one (or, while blocks are uncovered, the plan leaves fewer uncovered), and my
/// moving now uncovers no block (others may need to move first; I will be asked again).
///
/// Since the plan does not depend on where members currently are, a node that reached its slot
/// stays there until the membership changes: at most one move per node per change. The moves
/// stop early once the current bottleneck is within `min_gain` of the plan's, which is then
/// still above where it started (a move held back by the uncover rule can break this; the
/// simulations never ended below their start). Nodes agree on the plan only if they see the
/// same records, so pass the throughput you announce; where views differ, every move is still
/// gated by `min_gain`. Cost: up to 50 000 local-search steps of O(n_blocks log n_blocks).
pub fn planned_move(
    n_blocks: usize,
    all: &[SpanInfo],
    me: PeerId,
    my_blocks: usize,
    my_throughput: f64,
    min_gain: f64,
) -> Option<BlockRange> {
    let my_len = span_len(n_blocks, my_blocks).ok()?;
    let my_tp = sanitize(my_throughput);
    let current = latest_per_peer(all);
    let me_at = current.iter().position(|s| s.peer == me)?;
    let mine = current[me_at].span.as_usize_range();

    let nodes: Vec<(usize, f64)> = current
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if i == me_at {
                (my_len, my_tp)
            } else {
                (s.span.len() as usize, sanitize(s.throughput))
            }
        })
        .map(|(len, tp)| (len.min(n_blocks), tp))
        .collect();
    let plan = plan_starts(n_blocks, &nodes);
    let slot = (*plan.get(me_at)?, my_len);

    let mut now = vec![0.0; n_blocks];
    for (i, s) in current.iter().enumerate() {
        let r = s.span.as_usize_range();
        let tp = if i == me_at { my_tp } else { nodes[i].1 };
        add(&mut now, r.start, r.len(), tp);
    }
    let planned = recompute(n_blocks, &plan, &nodes);
    let go = planned_step(
        &now,
        &planned,
        (mine.start, mine.len()),
        slot,
        my_tp,
        min_gain,
    );
    go.then(|| window(slot.0, slot.1).ok()).flatten()
}

/// The placement policy a simulated node follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// [`choose_blocks`] to join, [`should_rebalance`] to move.
    Hearth,
    /// [`choose_blocks`] to join, [`planned_move`] to move.
    HearthPlanned,
    /// [`petals_choose_blocks`] to join, Petals' `should_choose_other_blocks` to move.
    Petals,
}

/// A simulated swarm: `n_nodes` nodes with spans uniform in `[min_blocks, max_blocks]` and
/// throughputs uniform in `[min_throughput, max_throughput)` join one by one, then rebalance in
/// round-robin for up to `rebalance_rounds` rounds.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Blocks in the simulated model.
    pub n_blocks: usize,
    /// Nodes that join, one by one.
    pub n_nodes: usize,
    /// Fewest blocks a node can hold (at least 1 is used).
    pub min_blocks: usize,
    /// Most blocks a node can hold (capped at `n_blocks`).
    pub max_blocks: usize,
    /// Lowest per-block throughput a node offers, tokens/s.
    pub min_throughput: f64,
    /// Upper bound (exclusive) of a node's per-block throughput, tokens/s.
    pub max_throughput: f64,
    /// Most round-robin rebalancing rounds after the joins (0 = joins only).
    pub rebalance_rounds: usize,
    /// Hysteresis of [`should_rebalance`] and [`planned_move`] (ours).
    pub min_gain: f64,
    /// Petals' `balance_quality` (its default is 0.75, i.e. a gain of 1/0.75 ≈ 1.33).
    pub balance_quality: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            n_blocks: 32,
            n_nodes: 20,
            min_blocks: 4,
            max_blocks: 16,
            min_throughput: 1.0,
            max_throughput: 10.0,
            rebalance_rounds: 10,
            min_gain: 1.05,
            balance_quality: 0.75,
        }
    }
}

/// What a simulation ended with.
#[derive(Clone, Debug, PartialEq)]
pub struct SimOutcome {
    /// Bottleneck once every node has joined, before any rebalancing.
    pub joined: f64,
    /// Bottleneck after rebalancing.
    pub rebalanced: f64,
    /// Moves made while rebalancing.
    pub moves: usize,
    /// Whether rebalancing stopped on its own (a full round without moves).
    pub settled: bool,
}

/// Runs one seeded simulation. The nodes depend only on `seed` and `cfg`, so all policies see
/// the same arrivals; Petals' random shuffle draws from a separate stream of the same seed.
pub fn simulate_joins(cfg: &SimConfig, policy: Policy, seed: u64) -> SimOutcome {
    let n = cfg.n_blocks;
    let mut rng = SplitMix64::new(seed);
    let lo = cfg.min_blocks.max(1);
    let hi = cfg.max_blocks.max(lo);
    let nodes: Vec<(usize, f64)> = (0..cfg.n_nodes)
        .map(|_| {
            let len = lo + rng.below((hi - lo + 1) as u64) as usize;
            let tp = cfg.min_throughput + rng.unit() * (cfg.max_throughput - cfg.min_throughput);
            (len.min(n), sanitize(tp))
        })
        .collect();
    if n == 0 {
        return SimOutcome {
            joined: 0.0,
            rebalanced: 0.0,
            moves: 0,
            settled: true,
        };
    }

    let mut t = vec![0.0; n];
    let mut starts = Vec::with_capacity(nodes.len());
    for &(len, tp) in &nodes {
        // Our join rule coincides with Petals' (module docs); the policies differ in moving.
        let start = best_start(&t, len);
        add(&mut t, start, len, tp);
        starts.push(start);
    }
    let joined = bottleneck(&t);

    // Membership is fixed while rebalancing, so the plan every node would compute is this one.
    let plan = match policy {
        Policy::HearthPlanned => plan_starts(n, &nodes),
        _ => Vec::new(),
    };
    let planned = recompute(n, &plan, &nodes);
    let mut shuffle_rng = SplitMix64::new(seed ^ 0xA076_1D64_78BD_642F);
    let mut moves = 0;
    let mut settled = cfg.rebalance_rounds == 0;
    for _ in 0..cfg.rebalance_rounds {
        let mut moved = false;
        for i in 0..nodes.len() {
            let (len, tp) = nodes[i];
            let target = match policy {
                Policy::Hearth => {
                    add(&mut t, starts[i], len, -tp);
                    let target = hearth_rebalance(&t, (starts[i], len), len, tp, cfg.min_gain);
                    add(&mut t, starts[i], len, tp);
                    target
                }
                Policy::HearthPlanned => {
                    let slot = plan.get(i).copied().unwrap_or(starts[i]);
                    planned_step(
                        &t,
                        &planned,
                        (starts[i], len),
                        (slot, len),
                        tp,
                        cfg.min_gain,
                    )
                    .then_some(slot)
                }
                Policy::Petals => {
                    let spans: Vec<(usize, usize, f64)> = starts
                        .iter()
                        .zip(&nodes)
                        .map(|(&s, &(l, p))| (s, l, p))
                        .collect();
                    if petals_should_move(n, &spans, i, cfg.balance_quality, &mut shuffle_rng) {
                        add(&mut t, starts[i], len, -tp);
                        let target = best_start(&t, len);
                        add(&mut t, starts[i], len, tp);
                        Some(target)
                    } else {
                        None
                    }
                }
            };
            if let Some(start) = target.filter(|&s| s != starts[i]) {
                starts[i] = start;
                // From scratch, so that repeated +/- does not accumulate rounding.
                t = recompute(n, &starts, &nodes);
                moves += 1;
                moved = true;
            }
        }
        if !moved {
            settled = true;
            break;
        }
    }
    SimOutcome {
        joined,
        rebalanced: bottleneck(&t),
        moves,
        settled,
    }
}

/// One record per peer, the last given, in `PeerId` order (the canonical order every node
/// uses, so that plans agree).
fn latest_per_peer(all: &[SpanInfo]) -> Vec<&SpanInfo> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<&SpanInfo> = all.iter().rev().filter(|s| seen.insert(s.peer)).collect();
    out.sort_by_key(|s| s.peer);
    out
}

/// Number of blocks a node will serve: its capacity, at most the whole model.
fn span_len(n_blocks: usize, my_blocks: usize) -> Result<usize, PlacementError> {
    if n_blocks == 0 {
        return Err(PlacementError::NoBlocks);
    }
    if my_blocks == 0 {
        return Err(PlacementError::ZeroSpan);
    }
    Ok(my_blocks.min(n_blocks))
}

fn window(start: usize, len: usize) -> Result<BlockRange, PlacementError> {
    let end = start.saturating_add(len);
    let too_big = |_| PlacementError::TooManyBlocks(end);
    let a = u32::try_from(start).map_err(too_big)?;
    let b = u32::try_from(end).map_err(too_big)?;
    Ok(BlockRange::new(a, b)?)
}

/// Advertised throughputs come from the network: anything but a positive finite number adds
/// nothing (an infinite claim must not mask a real bottleneck).
fn sanitize(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 {
        x
    } else {
        0.0
    }
}

fn bottleneck(t: &[f64]) -> f64 {
    t.iter().copied().reduce(f64::min).unwrap_or(0.0)
}

fn uncovered(t: &[f64]) -> usize {
    t.iter().filter(|&&x| x <= 0.0).count()
}

fn add(t: &mut [f64], start: usize, len: usize, tp: f64) {
    let end = start.saturating_add(len).min(t.len());
    for x in t.iter_mut().take(end).skip(start) {
        *x += tp;
    }
}

fn recompute(n: usize, starts: &[usize], nodes: &[(usize, f64)]) -> Vec<f64> {
    let mut t = vec![0.0; n];
    for (&s, &(len, tp)) in starts.iter().zip(nodes) {
        add(&mut t, s, len, tp);
    }
    t
}

fn sorted(xs: &[f64]) -> Vec<f64> {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// Lexicographic order of two equally long sorted vectors, treating values within `TIE_EPS`
/// (relative) as equal.
fn cmp_lex(a: &[f64], b: &[f64]) -> Ordering {
    for (&x, &y) in a.iter().zip(b) {
        let tol = TIE_EPS * x.abs().max(y.abs()).max(1.0);
        if x < y - tol {
            return Ordering::Less;
        }
        if x > y + tol {
            return Ordering::Greater;
        }
    }
    Ordering::Equal
}

/// Petals' `_choose_best_start`: `min((sorted(t[i:i+len]), i))`, with exact comparisons as in
/// Python. Also leximin-optimal for the outcome of adding any positive throughput on the window
/// (module docs), which is why both join rules use it.
fn best_start(t: &[f64], len: usize) -> usize {
    let mut best: Option<(Vec<f64>, usize)> = None;
    for i in 0..=t.len().saturating_sub(len) {
        let key = sorted(&t[i..i + len]);
        let better = match &best {
            None => true,
            Some((b, _)) => key
                .iter()
                .zip(b)
                .find(|(x, y)| x != y)
                .is_some_and(|(x, y)| x < y),
        };
        if better {
            best = Some((key, i));
        }
    }
    best.map_or(0, |(_, i)| i)
}

/// Our rebalancing rule on throughputs `base` that exclude the node (see [`should_rebalance`]).
fn hearth_rebalance(
    base: &[f64],
    current: (usize, usize),
    len: usize,
    tp: f64,
    min_gain: f64,
) -> Option<usize> {
    let start = best_start(base, len);
    if (start, len) == current {
        return None;
    }
    let mut stay = base.to_vec();
    add(&mut stay, current.0, current.1, tp);
    let mut go = base.to_vec();
    add(&mut go, start, len, tp);
    let (now, then) = (bottleneck(&stay), bottleneck(&go));
    let improves = if now > 0.0 {
        // `max` also maps a NaN gain to 1.
        then > now && then >= min_gain.max(1.0) * now
    } else {
        uncovered(&go) < uncovered(&stay)
    };
    improves.then_some(start)
}

/// Petals' `should_choose_other_blocks` on `(start, len, throughput)` spans, ported line by
/// line (including the `(1 + eps)` nudges and the simulated re-placement of every other server
/// in random order). `me` indexes `spans`; spans are summed in index order, which plays the role
/// of Petals' sort by peer id.
fn petals_should_move(
    n: usize,
    spans: &[(usize, usize, f64)],
    me: usize,
    balance_quality: f64,
    rng: &mut SplitMix64,
) -> bool {
    const EPS: f64 = 1e-3;
    if balance_quality > 1.0 {
        return true;
    }
    let mut spans = spans.to_vec();
    let mut t = vec![0.0; n];
    for &(s, l, p) in &spans {
        add(&mut t, s, l, p);
    }
    let initial = bottleneck(&t);
    let Some(&(start, len, tp)) = spans.get(me) else {
        return false;
    };
    add(&mut t, start, len, -tp * (1.0 + EPS));
    if initial > EPS && bottleneck(&t) <= 0.0 {
        return false; // moving would disconnect the swarm
    }
    let new_start = best_start(&t, len);
    if new_start == start {
        return false;
    }
    add(&mut t, start, len, tp * EPS);
    spans[me].0 = new_start;
    add(&mut t, new_start, len, tp);

    let mut order: Vec<usize> = (0..spans.len()).collect();
    for _ in 0..PETALS_MAX_ROUNDS {
        rng.shuffle(&mut order);
        let mut moved = false;
        for &k in &order {
            let (s, l, p) = spans[k];
            add(&mut t, s, l, -p * (1.0 + EPS));
            let ns = best_start(&t, l);
            add(&mut t, s, l, p * EPS);
            if ns != s {
                spans[k].0 = ns;
                moved = true;
            }
            add(&mut t, spans[k].0, l, p);
        }
        if !moved {
            break;
        }
    }
    let new = bottleneck(&t);
    if new < initial || new < EPS {
        return false;
    }
    initial / new < balance_quality - EPS
}

/// Starting positions of the plan for `nodes` (`(len, throughput)`, in the caller's canonical
/// order). See [`plan_placement`].
fn plan_starts(n: usize, nodes: &[(usize, f64)]) -> Vec<usize> {
    let m = nodes.len();
    let mut starts = vec![0; m];
    if n == 0 || m == 0 {
        return starts;
    }
    let mut order: Vec<usize> = (0..m).collect();
    let capacity = |i: usize| nodes[i].0 as f64 * nodes[i].1;
    // Big members first: they are the hardest to fit without waste.
    order.sort_by(|&a, &b| capacity(b).total_cmp(&capacity(a)).then(a.cmp(&b)));
    let mut t = vec![0.0; n];
    for &i in &order {
        let (len, tp) = nodes[i];
        starts[i] = best_start(&t, len);
        add(&mut t, starts[i], len, tp);
    }

    let mut rng = SplitMix64::new(PLAN_SEED);
    let mut cur = sorted(&t);
    for _ in 0..(PLAN_ITERS_PER_MEMBER * m).min(PLAN_MAX_ITERS) {
        let i = rng.below(m as u64) as usize;
        let (len, tp) = nodes[i];
        let to = rng.below((n - len + 1) as u64) as usize;
        let from = starts[i];
        if to == from {
            continue;
        }
        add(&mut t, from, len, -tp);
        add(&mut t, to, len, tp);
        let next = sorted(&t);
        if cmp_lex(&next, &cur) == Ordering::Less {
            add(&mut t, to, len, -tp);
            add(&mut t, from, len, tp);
        } else {
            starts[i] = to;
            cur = next;
        }
    }
    starts
}

/// The gate of [`planned_move`]: move from `mine` to `slot` (both `(start, len)`) when the plan
/// (`planned`) beats the current throughputs (`now`) by `min_gain` and the move uncovers
/// nothing.
fn planned_step(
    now: &[f64],
    planned: &[f64],
    mine: (usize, usize),
    slot: (usize, usize),
    tp: f64,
    min_gain: f64,
) -> bool {
    if mine == slot {
        return false;
    }
    let (cur, plan) = (bottleneck(now), bottleneck(planned));
    let worth_it = if cur > 0.0 {
        plan > cur && plan >= min_gain.max(1.0) * cur
    } else {
        uncovered(planned) < uncovered(now)
    };
    if !worth_it {
        return false;
    }
    let mut after = now.to_vec();
    add(&mut after, mine.0, mine.1, -tp);
    add(&mut after, slot.0, slot.1, tp);
    // A block I alone hold must not go dark while the swarm reshuffles; `-tp` may leave
    // rounding residue, hence the tolerance.
    let dark = |t: &[f64]| t.iter().filter(|&&x| x <= TIE_EPS * tp.max(1.0)).count();
    dark(&after) <= dark(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    fn peer(i: u8) -> PeerId {
        let key = Keypair::ed25519_from_bytes([i; 32]).expect("any 32 bytes are an ed25519 key");
        key.public().to_peer_id()
    }

    fn r(a: u32, b: u32) -> BlockRange {
        BlockRange::new(a, b).expect("test range")
    }

    fn span(i: u8, a: u32, b: u32, throughput: f64) -> SpanInfo {
        SpanInfo {
            peer: peer(i),
            span: r(a, b),
            throughput,
        }
    }

    /// Bottleneck after adding a node with `throughput` on `w` to `others`.
    fn after(n: usize, others: &[SpanInfo], w: BlockRange, throughput: f64) -> f64 {
        let mut all = others.to_vec();
        all.push(SpanInfo {
            peer: peer(250),
            span: w,
            throughput,
        });
        swarm_throughput(n, &all)
    }

    /// Applies `rule` in round-robin until a full round moves nobody; returns the number of
    /// moves per node. Fails if that takes more than `max_rounds`, or if anyone moves after
    /// the swarm has been quiet.
    fn settle(
        n: usize,
        all: &mut [SpanInfo],
        caps: &[(usize, f64)],
        max_rounds: usize,
        rule: impl Fn(&[SpanInfo], PeerId, usize, f64) -> Option<BlockRange>,
    ) -> Vec<usize> {
        let mut moves = vec![0; all.len()];
        let mut quiet = 0;
        for _ in 0..max_rounds {
            let mut moved = false;
            for i in 0..all.len() {
                let (len, tp) = caps[i];
                if let Some(to) = rule(all, all[i].peer, len, tp) {
                    assert_ne!(to, all[i].span, "a move must change the span");
                    assert_eq!(to.len() as usize, len.min(n));
                    all[i].span = to;
                    moves[i] += 1;
                    moved = true;
                }
            }
            if moved {
                assert_eq!(quiet, 0, "moved again after a quiet round");
            } else {
                quiet += 1;
                if quiet == 2 {
                    return moves;
                }
            }
        }
        panic!("no convergence within {max_rounds} rounds");
    }

    /// `count` nodes with pseudo-random sizes in `min..=max` and throughputs in [1, 10), all
    /// crowded at block 0 (the worst start), plus their capacities.
    fn crowd(seed: u64, count: u8, min: usize, max: usize) -> (Vec<SpanInfo>, Vec<(usize, f64)>) {
        let mut rng = SplitMix64::new(seed);
        let caps: Vec<(usize, f64)> = (0..count)
            .map(|_| {
                let len = min + rng.below((max - min + 1) as u64) as usize;
                (len, 1.0 + 9.0 * rng.unit())
            })
            .collect();
        let spans = caps
            .iter()
            .enumerate()
            .map(|(i, &(len, tp))| span(i as u8, 0, len as u32, tp))
            .collect();
        (spans, caps)
    }

    #[test]
    fn throughputs_sum_per_block_and_bottleneck_is_the_minimum() {
        let spans = [span(1, 0, 4, 2.0), span(2, 2, 6, 3.0), span(3, 5, 8, 1.0)];
        assert_eq!(
            block_throughputs(8, &spans),
            [2.0, 2.0, 5.0, 5.0, 3.0, 4.0, 1.0, 1.0]
        );
        assert_eq!(swarm_throughput(8, &spans), 1.0);
        // Block 8 is uncovered in a 9-block model.
        assert_eq!(swarm_throughput(9, &spans), 0.0);
        // Spans past the end are clipped; garbage throughput adds nothing.
        let odd = [
            span(1, 0, 10, 1.0),
            span(2, 0, 4, f64::INFINITY),
            span(3, 0, 4, -5.0),
            span(4, 0, 4, f64::NAN),
        ];
        assert_eq!(block_throughputs(4, &odd), [1.0; 4]);
        assert_eq!(swarm_throughput(0, &odd), 0.0);
        // Input order does not change the sums, not even in the last bit.
        let many: Vec<SpanInfo> = (0..30u8)
            .map(|i| span(i, 0, 4, 0.1 * f64::from(i) + 0.07))
            .collect();
        let mut rev = many.clone();
        rev.reverse();
        assert_eq!(block_throughputs(4, &many), block_throughputs(4, &rev));
    }

    #[test]
    fn empty_swarm_starts_at_block_zero() {
        assert_eq!(choose_blocks(32, &[], 8, 5.0), Ok(r(0, 8)));
        assert_eq!(petals_choose_blocks(32, &[], 8), Ok(r(0, 8)));
    }

    #[test]
    fn second_node_covers_the_rest() {
        let first = [span(1, 0, 12, 5.0)];
        assert_eq!(choose_blocks(32, &first, 20, 5.0), Ok(r(12, 32)));
        assert_eq!(petals_choose_blocks(32, &first, 20), Ok(r(12, 32)));
        // Too small to cover the rest: it still lands on uncovered blocks only.
        let got = choose_blocks(32, &first, 8, 5.0).unwrap();
        assert_eq!(got, r(12, 20));
    }

    #[test]
    fn uncovered_blocks_are_covered_first() {
        // A strong server on 0..10 and a weak one on 20..32: the gap 10..20 is taken even
        // though the weak span is the bottleneck once the gap is filled.
        let others = [span(1, 0, 10, 100.0), span(2, 20, 32, 0.5)];
        assert_eq!(choose_blocks(32, &others, 10, 50.0), Ok(r(10, 20)));
        assert!(after(32, &others, r(10, 20), 50.0) > 0.0);
        // A span too short for the gap covers part of it rather than doubling the weak span.
        let got = choose_blocks(32, &others, 4, 50.0).unwrap();
        assert!(got.start() >= 10 && got.end() <= 20, "{got}");
        // A span longer than the gap covers all of it, spilling onto the weaker neighbour.
        assert_eq!(choose_blocks(32, &others, 14, 50.0), Ok(r(10, 24)));
    }

    #[test]
    fn whole_model_when_the_node_fits_it() {
        let others = [span(1, 3, 9, 1.0)];
        assert_eq!(choose_blocks(16, &others, 16, 1.0), Ok(r(0, 16)));
        assert_eq!(choose_blocks(16, &others, 100, 1.0), Ok(r(0, 16)));
        assert_eq!(petals_choose_blocks(16, &others, 100), Ok(r(0, 16)));
        assert_eq!(
            choose_blocks(0, &others, 4, 1.0),
            Err(PlacementError::NoBlocks)
        );
        assert_eq!(
            choose_blocks(16, &others, 0, 1.0),
            Err(PlacementError::ZeroSpan)
        );
        assert_eq!(
            choose_blocks(16, &others, 4, 0.0),
            Err(PlacementError::NoThroughput)
        );
        assert_eq!(
            choose_blocks(16, &others, 4, f64::NAN),
            Err(PlacementError::NoThroughput)
        );
    }

    #[test]
    fn heterogeneous_throughputs_send_nodes_to_the_weak_blocks() {
        // A fast node on 0..8, a slow one on 8..16, a slow one on 0..4.
        let others = [span(1, 0, 8, 10.0), span(2, 8, 16, 1.0), span(3, 0, 4, 1.0)];
        assert_eq!(choose_blocks(16, &others, 4, 3.0), Ok(r(8, 12)));
        let mut more = others.to_vec();
        more.push(span(4, 8, 12, 3.0));
        assert_eq!(choose_blocks(16, &more, 4, 3.0), Ok(r(12, 16)));
        more.push(span(5, 12, 16, 3.0));
        assert_eq!(swarm_throughput(16, &more), 4.0);
        // The next one goes to the now-weakest blocks, 8..16 again (4 < 10 < 11).
        let got = choose_blocks(16, &more, 4, 3.0).unwrap();
        assert!(got.start() >= 8, "{got}");
    }

    #[test]
    fn join_rule_maximises_the_outcome_leximin() {
        // The module docs claim Petals' order is leximin-optimal for the outcome whatever the
        // node adds. Check it against brute force on random profiles with many ties.
        let mut rng = SplitMix64::new(11);
        let levels = [0.0, 0.5, 1.0, 2.0, 3.0, 7.0];
        for _ in 0..3000 {
            let n = 2 + rng.below(9) as usize;
            let t: Vec<f64> = (0..n).map(|_| levels[rng.below(6) as usize]).collect();
            let len = 1 + rng.below(n as u64) as usize;
            let tp = [0.25, 1.0, 1.5, 4.0, 100.0][rng.below(5) as usize];
            let outcome = |s: usize| {
                let mut x = t.clone();
                add(&mut x, s, len, tp);
                sorted(&x)
            };
            let chosen = outcome(best_start(&t, len));
            for s in 0..=n - len {
                assert_ne!(
                    cmp_lex(&outcome(s), &chosen),
                    Ordering::Greater,
                    "t={t:?} len={len} tp={tp}: start {s} beats {}",
                    best_start(&t, len)
                );
            }
        }
    }

    #[test]
    fn petals_rule_matches_hand_computed_cases() {
        // `min((sorted(t[i:i+k]), i))` by hand.
        assert_eq!(best_start(&[3.0, 1.0, 2.0, 1.0, 5.0], 2), 1); // [1,2] at 1 and 2: lowest
        assert_eq!(best_start(&[1.0, 1.0, 1.0], 2), 0);
        assert_eq!(best_start(&[2.0, 0.0, 9.0, 0.0, 0.0], 3), 1); // [0,0,9] at 1 and 2: lowest
        assert_eq!(best_start(&[5.0, 4.0], 2), 0);
        assert_eq!(best_start(&[1.0, 9.0, 9.0, 1.2, 1.2], 3), 0); // [1,9,9] < [1.2,1.2,9]
    }

    #[test]
    fn rebalance_moves_to_an_uncovered_hole() {
        let all = [span(1, 0, 8, 1.0), span(2, 0, 8, 1.0)];
        assert_eq!(
            should_rebalance(16, &all, peer(2), 8, 1.0, 1.2),
            Some(r(8, 16))
        );
        let all = [span(1, 0, 8, 1.0), span(2, 8, 16, 1.0)];
        assert_eq!(should_rebalance(16, &all, peer(1), 8, 1.0, 1.2), None);
        assert_eq!(should_rebalance(16, &all, peer(2), 8, 1.0, 1.2), None);
        // Unknown node: nothing to compare with.
        assert_eq!(should_rebalance(16, &all, peer(3), 8, 1.0, 1.2), None);
    }

    #[test]
    fn rebalance_takes_the_last_record_of_a_peer() {
        // A stale DHT record puts me on 0..8 next to node 1; my live state (appended last)
        // is 8..16, which is where I belong: no move. Reading the stale one would move me.
        let all = [span(1, 0, 8, 1.0), span(2, 0, 8, 1.0), span(2, 8, 16, 1.0)];
        assert_eq!(should_rebalance(16, &all, peer(2), 8, 1.0, 1.2), None);
        assert_eq!(planned_move(16, &all, peer(2), 8, 1.0, 1.2), None);
        let stale_last = [span(1, 0, 8, 1.0), span(2, 8, 16, 1.0), span(2, 0, 8, 1.0)];
        assert_eq!(
            should_rebalance(16, &stale_last, peer(2), 8, 1.0, 1.2),
            Some(r(8, 16))
        );
    }

    #[test]
    fn rebalance_needs_a_clear_gain() {
        // Node 3 adds to blocks that are not the bottleneck; moving it to 8..12 leaves 12..16
        // at 2.0, so the bottleneck does not change and it stays.
        let all = [span(1, 0, 8, 2.0), span(2, 8, 16, 2.0), span(3, 0, 4, 1.0)];
        assert_eq!(should_rebalance(16, &all, peer(3), 4, 1.0, 1.2), None);

        // Node 3 duplicates node 1's blocks while 8..16 is thin: moving lifts the bottleneck
        // from 1.0 to 1.2 (node 1 alone on 0..8 gives 2.0), a gain of exactly 1.2×.
        let all = [span(1, 0, 8, 2.0), span(2, 8, 16, 1.0), span(3, 0, 8, 0.2)];
        assert_eq!(
            should_rebalance(16, &all, peer(3), 8, 0.2, 1.2),
            Some(r(8, 16))
        );
        assert_eq!(should_rebalance(16, &all, peer(3), 8, 0.2, 1.5), None);
        // Gains below 1 (or NaN) mean "any strict gain", not "accept losses".
        assert_eq!(
            should_rebalance(16, &all, peer(3), 8, 0.2, 0.5),
            Some(r(8, 16))
        );
        assert_eq!(
            should_rebalance(16, &all, peer(3), 8, 0.2, f64::NAN),
            Some(r(8, 16))
        );
    }

    #[test]
    fn no_flapping_between_equal_choices() {
        // Two halves served twice each and an extra node on the first half: moving it to the
        // second half is as good, never better, so nobody moves even with no hysteresis.
        let all = [
            span(1, 0, 8, 1.0),
            span(2, 8, 16, 1.0),
            span(3, 0, 8, 1.0),
            span(4, 8, 16, 1.0),
            span(5, 0, 8, 1.0),
        ];
        for me in 1..=5 {
            assert_eq!(should_rebalance(16, &all, peer(me), 8, 1.0, 1.0), None);
            assert_eq!(planned_move(16, &all, peer(me), 8, 1.0, 1.0), None);
        }
    }

    #[test]
    fn solo_rebalancing_converges_and_stays_put() {
        for seed in 0..20 {
            let n = 24;
            let (mut all, caps) = crowd(seed, 10, 3, 12);
            let start = swarm_throughput(n, &all);
            let moves = settle(n, &mut all, &caps, 100, |all, me, len, tp| {
                let before = swarm_throughput(n, all);
                let to = should_rebalance(n, all, me, len, tp, 1.2)?;
                let mut next = all.to_vec();
                next.iter_mut()
                    .filter(|s| s.peer == me)
                    .for_each(|s| s.span = to);
                let gained = swarm_throughput(n, &next);
                assert!(
                    gained >= 1.2 * before || (before == 0.0 && gained >= 0.0),
                    "seed {seed}: a move from {before} to {gained}"
                );
                Some(to)
            });
            assert!(moves.iter().sum::<usize>() <= 60, "seed {seed}: {moves:?}");
            assert!(swarm_throughput(n, &all) >= start);
            // With at least twice the model's blocks in total, a hole must not survive.
            if caps.iter().map(|c| c.0).sum::<usize>() >= 2 * n {
                assert!(swarm_throughput(n, &all) > 0.0, "seed {seed}: left a hole");
            }
        }
    }

    #[test]
    fn plan_is_deterministic_and_ignores_input_order_and_positions() {
        let members: Vec<Member> = (0..12u8)
            .map(|i| Member {
                peer: peer(i),
                blocks: 3 + usize::from(i % 5),
                throughput: 1.0 + f64::from(i) * 0.7,
            })
            .collect();
        let plan = plan_placement(32, &members).unwrap();
        let mut rev = members.clone();
        rev.reverse();
        assert_eq!(plan_placement(32, &rev).unwrap(), plan);
        // Returned in peer order, one per member, with its own size and throughput.
        assert!(plan.windows(2).all(|w| w[0].peer < w[1].peer));
        assert_eq!(plan.len(), members.len());
        for m in &members {
            let p = plan.iter().find(|p| p.peer == m.peer).expect("planned");
            assert_eq!(p.span.len() as usize, m.blocks);
            assert_eq!(p.throughput, m.throughput);
            assert!(p.span.end() <= 32);
        }
        // 12 nodes with 3..7 blocks hold 59 blocks: enough to cover 32.
        assert!(swarm_throughput(32, &plan) > 0.0);
        // Duplicates and empty members are dropped; an empty model is an error.
        let mut dup = members.clone();
        dup.insert(
            0,
            Member {
                peer: peer(0),
                blocks: 30,
                throughput: 50.0,
            },
        );
        dup.push(Member {
            peer: peer(99),
            blocks: 0,
            throughput: 50.0,
        });
        assert_eq!(plan_placement(32, &dup).unwrap(), plan);
        assert_eq!(plan_placement(0, &members), Err(PlacementError::NoBlocks));
    }

    #[test]
    fn plan_gets_past_where_single_moves_are_stuck() {
        // Let solo rebalancing settle, then run planned moves from there: they must never make
        // things worse, and must find more throughput in most swarms (single moves cannot
        // raise a bottleneck shared by several blocks).
        let mut better = 0;
        for seed in 0..15 {
            let n = 24;
            let (mut all, caps) = crowd(seed, 10, 3, 12);
            settle(n, &mut all, &caps, 100, |all, me, len, tp| {
                should_rebalance(n, all, me, len, tp, 1.05)
            });
            let stuck = swarm_throughput(n, &all);
            settle(n, &mut all, &caps, 50, |all, me, len, tp| {
                planned_move(n, all, me, len, tp, 1.05)
            });
            let planned = swarm_throughput(n, &all);
            assert!(planned >= stuck, "seed {seed}: {stuck} -> {planned}");
            if planned >= 1.05 * stuck {
                better += 1;
            }
        }
        assert!(better >= 8, "the plan helped in only {better} of 15 swarms");
    }

    #[test]
    fn planned_moves_happen_once_each_and_settle_higher() {
        let mut improved = 0;
        for seed in 0..15 {
            let n = 24;
            let (mut all, caps) = crowd(seed, 10, 3, 12);
            let start = swarm_throughput(n, &all);
            let moves = settle(n, &mut all, &caps, 50, |all, me, len, tp| {
                planned_move(n, all, me, len, tp, 1.05)
            });
            assert!(moves.iter().all(|&m| m <= 1), "seed {seed}: {moves:?}");
            let end = swarm_throughput(n, &all);
            assert!(end >= start, "seed {seed}: {start} -> {end}");
            if end > start {
                improved += 1;
            }
        }
        assert!(
            improved >= 10,
            "planning helped in only {improved} of 15 swarms"
        );
    }

    #[test]
    fn planned_move_needs_a_gain_and_keeps_blocks_lit() {
        // A covered swarm built by joins: a gain no plan can give moves nobody.
        let (crowded, caps) = crowd(3, 10, 3, 12);
        let mut all: Vec<SpanInfo> = Vec::new();
        for (s, &(len, tp)) in crowded.iter().zip(&caps) {
            let w = choose_blocks(24, &all, len, tp).unwrap();
            all.push(SpanInfo {
                span: w,
                ..s.clone()
            });
        }
        assert!(swarm_throughput(24, &all) > 0.0);
        for (s, &(len, tp)) in all.iter().zip(&caps) {
            assert_eq!(planned_move(24, &all, s.peer, len, tp, 1e6), None);
        }
        // The gate itself: I alone hold blocks 0..2; moving would darken them.
        let now = [1.0, 1.0, 3.0, 3.0];
        let planned = [5.0, 5.0, 5.0, 5.0];
        assert!(!planned_step(&now, &planned, (0, 2), (2, 2), 1.0, 1.05));
        // If someone else also holds them, the move is fine.
        let now = [2.0, 2.0, 3.0, 3.0];
        assert!(planned_step(&now, &planned, (0, 2), (2, 2), 1.0, 1.05));
        // Already in place, or the plan is no better: stay.
        assert!(!planned_step(&now, &planned, (2, 2), (2, 2), 1.0, 1.05));
        assert!(!planned_step(&now, &[2.05; 4], (0, 2), (2, 2), 1.0, 1.05));
    }

    #[test]
    fn simulation_ours_is_never_worse_than_petals() {
        let cfg = SimConfig::default();
        let (mut ours_sum, mut petals_sum) = (0.0, 0.0);
        for seed in 0..50 {
            let solo = simulate_joins(&cfg, Policy::Hearth, seed);
            let ours = simulate_joins(&cfg, Policy::HearthPlanned, seed);
            let petals = simulate_joins(&cfg, Policy::Petals, seed);
            // The join rules coincide, so joins alone tie exactly.
            assert_eq!(ours.joined, petals.joined, "seed {seed}");
            assert_eq!(solo.joined, petals.joined, "seed {seed}");
            assert!(
                ours.rebalanced >= petals.rebalanced,
                "seed {seed}: ours {} < petals {}",
                ours.rebalanced,
                petals.rebalanced
            );
            assert!(ours.settled && solo.settled, "seed {seed}: did not settle");
            assert!(
                ours.moves <= cfg.n_nodes,
                "seed {seed}: {} moves",
                ours.moves
            );
            ours_sum += ours.rebalanced;
            petals_sum += petals.rebalanced;
        }
        assert!(
            ours_sum > 1.05 * petals_sum,
            "ours {ours_sum} vs petals {petals_sum}"
        );
    }

    #[test]
    fn simulation_is_deterministic() {
        let cfg = SimConfig::default();
        for policy in [Policy::Hearth, Policy::HearthPlanned, Policy::Petals] {
            assert_eq!(
                simulate_joins(&cfg, policy, 3),
                simulate_joins(&cfg, policy, 3)
            );
        }
        assert_ne!(
            simulate_joins(&cfg, Policy::Hearth, 3),
            simulate_joins(&cfg, Policy::Hearth, 4)
        );
    }
}
