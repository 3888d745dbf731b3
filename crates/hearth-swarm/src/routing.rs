//! Route selection: which chain of servers a client sends a block range through.
//!
//! Pure functions over a snapshot of what the client knows about the swarm (spans from the DHT,
//! RTTs it measured, load and cache room the servers report). The client calls [`find_route`]
//! when it opens a session and again for the affected sub-range when a hop fails.
//!
//! The search is a shortest path over block boundaries: node `i` means "blocks before `i` are
//! done", and every server offers an edge `a → b` for each sub-range `[a, b)` of its span. All
//! edges point forward, so the graph is acyclic and relaxing the boundaries in increasing order
//! is Dijkstra without the heap: O(S·L²) edges for S servers and L blocks, each relaxed once.

use hearth_core::BlockRange;
use libp2p::PeerId;
use std::collections::HashSet;

/// Cost added to a hop whose server lacks KV-cache room for the request, so that such a server
/// is only used when nothing else covers its blocks (opening the session will likely fail or
/// evict, which costs far more than any realistic network or compute delay).
pub const CACHE_PENALTY_MS: f64 = 10_000.0;

/// Weight of RTT in throughput mode. Parallel streams hide latency behind each other, so RTT
/// matters only as a tie-breaker there; compute time scaled by load is what limits them.
pub const THROUGHPUT_RTT_WEIGHT: f64 = 0.05;

/// Relative tolerance under which two route costs count as equal (then fewer hops, then peer
/// order decide). Costs summed along different paths differ by rounding even when equal.
const TIE_EPS: f64 = 1e-9;

/// What the client knows about one server.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerView {
    /// The server.
    pub peer: PeerId,
    /// Blocks the server holds; a hop may use any contiguous sub-range of it.
    pub span: BlockRange,
    /// Compute time per block per token, in milliseconds (as the server advertises it).
    pub block_ms: f64,
    /// Round trip between the client and this server, in milliseconds.
    pub rtt_ms: f64,
    /// Tokens of KV cache the server can still reserve for a new session.
    pub cache_free_tokens: u64,
    /// Sessions the server reports active.
    pub load: u32,
}

/// What a route optimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteMode {
    /// One interactive stream: minimise expected per-token latency.
    Latency,
    /// Many parallel streams: minimise load-weighted compute, spreading over replicas.
    Throughput,
}

/// One step of a route: `peer` runs `range`.
#[derive(Clone, Debug, PartialEq)]
pub struct Hop {
    /// The server that runs the hop.
    pub peer: PeerId,
    /// The blocks it runs: a sub-range of its span.
    pub range: BlockRange,
}

/// A route request.
#[derive(Clone, Copy, Debug)]
pub struct RouteRequest<'a> {
    /// Blocks to cover: the whole model, or the sub-range of a failed hop.
    pub range: BlockRange,
    /// KV-cache tokens the session needs on every hop (its maximum length).
    pub need_tokens: u64,
    /// Peers never to use (e.g. those that failed in this session).
    pub banned: &'a HashSet<PeerId>,
    /// What the route's cost optimises.
    pub mode: RouteMode,
}

/// A chain of hops that tiles the requested range, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// The hops, in block order; their ranges tile the requested range without overlap.
    pub hops: Vec<Hop>,
    /// Σ over hops of `rtt_ms + block_ms × blocks`: the expected delay per token, whatever the
    /// mode. The cache penalty is left out (it is a preference, not a delay); see `cache_short`.
    pub expected_ms_per_token: f64,
    /// Hops whose server reported less free cache than `need_tokens`. Non-zero only when no
    /// server with room covers those blocks.
    pub cache_short: usize,
}

/// Why no route exists.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// `blocks` is the first gap: the first block no usable server covers, up to the next
    /// block one does (or the end of the requested range).
    #[error("no usable server covers blocks {blocks}")]
    Uncovered {
        /// The first gap.
        blocks: BlockRange,
    },
}

/// The best chain of servers for `req` (see the module docs for the cost model).
///
/// Ties (equal cost within rounding) go to fewer hops, then to the smaller `PeerId` on the last
/// hop, so the result does not depend on the order of `servers`. Servers with non-finite
/// measurements are skipped; negative ones count as zero.
pub fn find_route(servers: &[ServerView], req: &RouteRequest) -> Result<Route, RouteError> {
    route_with_extra_load(servers, req, &[]).map(|(route, _)| route)
}

/// Routes for `streams` parallel sessions: each route is chosen as if the sessions routed before
/// it were already running (one more session of load on every server they use), so in
/// throughput mode replicas fill up evenly instead of every stream picking the same chain.
pub fn find_routes(
    servers: &[ServerView],
    req: &RouteRequest,
    streams: usize,
) -> Result<Vec<Route>, RouteError> {
    let mut extra = vec![0u32; servers.len()];
    let mut routes = Vec::with_capacity(streams);
    for _ in 0..streams {
        let (route, used) = route_with_extra_load(servers, req, &extra)?;
        for i in used {
            if let Some(e) = extra.get_mut(i) {
                *e = e.saturating_add(1);
            }
        }
        routes.push(route);
    }
    Ok(routes)
}

/// Per-server edge costs, precomputed once: a hop over `k` blocks costs `fixed + per_block × k`.
struct Edge {
    server: usize,
    span: BlockRange,
    fixed: f64,
    per_block: f64,
    fixed_ms: f64,
    per_block_ms: f64,
    short: bool,
}

/// The best known way to reach one boundary.
#[derive(Clone, Copy)]
struct Label {
    cost: f64,
    ms: f64,
    hops: u32,
    short: u32,
    /// The last hop: server index and the range it runs (None at the start boundary).
    last: Option<(usize, BlockRange)>,
}

fn route_with_extra_load(
    servers: &[ServerView],
    req: &RouteRequest,
    extra_load: &[u32],
) -> Result<(Route, Vec<usize>), RouteError> {
    let lo = req.range.start();
    let hi = req.range.end();
    let edges: Vec<Edge> = servers
        .iter()
        .enumerate()
        .filter(|(_, s)| !req.banned.contains(&s.peer))
        .filter(|(_, s)| s.block_ms.is_finite() && s.rtt_ms.is_finite())
        .filter(|(_, s)| s.span.start() < hi && s.span.end() > lo)
        .map(|(i, s)| {
            let rtt = s.rtt_ms.max(0.0);
            let block = s.block_ms.max(0.0);
            let short = s.cache_free_tokens < req.need_tokens;
            let penalty = if short { CACHE_PENALTY_MS } else { 0.0 };
            let load = f64::from(
                s.load
                    .saturating_add(extra_load.get(i).copied().unwrap_or(0)),
            );
            let (fixed, per_block) = match req.mode {
                RouteMode::Latency => (rtt + penalty, block),
                RouteMode::Throughput => {
                    (THROUGHPUT_RTT_WEIGHT * rtt + penalty, block * (1.0 + load))
                }
            };
            Edge {
                server: i,
                span: s.span,
                fixed,
                per_block,
                fixed_ms: rtt,
                per_block_ms: block,
                short,
            }
        })
        .collect();

    // labels[i] is boundary lo + i.
    let n = (hi - lo) as usize;
    let mut labels: Vec<Option<Label>> = vec![None; n + 1];
    labels[0] = Some(Label {
        cost: 0.0,
        ms: 0.0,
        hops: 0,
        short: 0,
        last: None,
    });
    for a in 0..n {
        // Reachable boundaries form a prefix: an unreachable one means an uncovered block.
        let Some(here) = labels[a] else { break };
        let from = lo + a as u32;
        for e in edges.iter().filter(|e| e.span.contains(from)) {
            let last = e.span.end().min(hi);
            for to in from + 1..=last {
                let Ok(range) = BlockRange::new(from, to) else {
                    continue;
                };
                let k = f64::from(to - from);
                let cand = Label {
                    cost: here.cost + e.fixed + e.per_block * k,
                    ms: here.ms + e.fixed_ms + e.per_block_ms * k,
                    hops: here.hops + 1,
                    short: here.short + u32::from(e.short),
                    last: Some((e.server, range)),
                };
                let slot = &mut labels[(to - lo) as usize];
                if slot.is_none_or(|old| better(&cand, &old, servers)) {
                    *slot = Some(cand);
                }
            }
        }
    }

    let Some(end) = labels[n] else {
        let reached = labels.iter().take_while(|l| l.is_some()).count();
        // `reached - 1` is the last reachable boundary; the block right after it is uncovered.
        let gap = lo + reached.saturating_sub(1) as u32;
        // No usable span contains `gap` (it would have reached `gap + 1`), so the gap runs to
        // the next span start after it.
        let gap_end = edges
            .iter()
            .map(|e| e.span.start())
            .filter(|&s| s > gap)
            .fold(hi, u32::min);
        return Err(RouteError::Uncovered {
            blocks: BlockRange::new(gap, gap_end).unwrap_or(req.range),
        });
    };

    let mut hops = Vec::new();
    let mut used = Vec::new();
    let mut at = n;
    while let Some(Some(Label {
        last: Some((server, range)),
        ..
    })) = labels.get(at)
    {
        hops.push(Hop {
            peer: servers[*server].peer,
            range: *range,
        });
        used.push(*server);
        at = (range.start() - lo) as usize;
    }
    hops.reverse();
    used.reverse();
    Ok((
        Route {
            hops,
            expected_ms_per_token: end.ms,
            cache_short: end.short as usize,
        },
        used,
    ))
}

/// True when `cand` should replace `old`: lower cost, or equal cost (within rounding) and fewer
/// hops, then a smaller peer id on the last hop, then a longer last hop.
fn better(cand: &Label, old: &Label, servers: &[ServerView]) -> bool {
    let tol = TIE_EPS * cand.cost.abs().max(old.cost.abs()).max(1.0);
    if cand.cost < old.cost - tol {
        return true;
    }
    if cand.cost > old.cost + tol {
        return false;
    }
    let key = |l: &Label| {
        l.last
            .map(|(s, r)| (l.hops, Some(servers[s].peer), r.start()))
            .unwrap_or((l.hops, None, 0))
    };
    key(cand) < key(old)
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    fn peer(i: u8) -> PeerId {
        let key = Keypair::ed25519_from_bytes([i; 32]).expect("any 32 bytes are an ed25519 key");
        key.public().to_peer_id()
    }

    fn range(a: u32, b: u32) -> BlockRange {
        BlockRange::new(a, b).expect("test range")
    }

    fn server(i: u8, a: u32, b: u32, block_ms: f64, rtt_ms: f64) -> ServerView {
        ServerView {
            peer: peer(i),
            span: range(a, b),
            block_ms,
            rtt_ms,
            cache_free_tokens: 1 << 20,
            load: 0,
        }
    }

    fn request(range: BlockRange, banned: &HashSet<PeerId>, mode: RouteMode) -> RouteRequest<'_> {
        RouteRequest {
            range,
            need_tokens: 2048,
            banned,
            mode,
        }
    }

    /// The route as (server number, start, end) triples, for readable assertions.
    fn shape(route: &Route) -> Vec<(u8, u32, u32)> {
        route
            .hops
            .iter()
            .map(|h| {
                let i = (0..=255u8)
                    .find(|&i| peer(i) == h.peer)
                    .expect("known peer");
                (i, h.range.start(), h.range.end())
            })
            .collect()
    }

    fn assert_tiles(route: &Route, r: BlockRange) {
        let ranges: Vec<BlockRange> = route.hops.iter().map(|h| h.range).collect();
        assert_eq!(ranges.first().map(|x| x.start()), Some(r.start()));
        assert_eq!(ranges.last().map(|x| x.end()), Some(r.end()));
        for w in ranges.windows(2) {
            assert_eq!(w[0].end(), w[1].start(), "hops must be contiguous");
        }
    }

    #[test]
    fn uneven_spans_are_chained() {
        let none = HashSet::new();
        let servers = [
            server(1, 0, 3, 1.0, 5.0),
            server(2, 3, 10, 1.0, 5.0),
            server(3, 10, 12, 1.0, 5.0),
        ];
        let r = find_route(&servers, &request(range(0, 12), &none, RouteMode::Latency)).unwrap();
        assert_eq!(shape(&r), [(1, 0, 3), (2, 3, 10), (3, 10, 12)]);
        assert!((r.expected_ms_per_token - (15.0 + 12.0)).abs() < 1e-9);
        assert_eq!(r.cache_short, 0);
    }

    #[test]
    fn overlapping_spans_use_the_faster_server_for_the_overlap() {
        // A is slow but the only one with 0..4; B is fast and covers 2..8. The best chain runs
        // A for 0..2 only and B for 2..8, using a sub-range of A's span.
        let none = HashSet::new();
        let servers = [server(1, 0, 4, 10.0, 1.0), server(2, 2, 8, 1.0, 1.0)];
        let r = find_route(&servers, &request(range(0, 8), &none, RouteMode::Latency)).unwrap();
        assert_eq!(shape(&r), [(1, 0, 2), (2, 2, 8)]);
        assert!((r.expected_ms_per_token - (1.0 + 20.0 + 1.0 + 6.0)).abs() < 1e-9);
    }

    #[test]
    fn banned_server_is_routed_around() {
        let servers = [
            server(1, 0, 8, 1.0, 1.0),
            server(2, 0, 4, 2.0, 3.0),
            server(3, 4, 8, 2.0, 3.0),
        ];
        let none = HashSet::new();
        let r = find_route(&servers, &request(range(0, 8), &none, RouteMode::Latency)).unwrap();
        assert_eq!(shape(&r), [(1, 0, 8)]);
        let banned: HashSet<PeerId> = [peer(1)].into();
        let r = find_route(&servers, &request(range(0, 8), &banned, RouteMode::Latency)).unwrap();
        assert_eq!(shape(&r), [(2, 0, 4), (3, 4, 8)]);
        assert!(r.hops.iter().all(|h| !banned.contains(&h.peer)));
    }

    #[test]
    fn server_without_cache_room_is_a_last_resort() {
        let none = HashSet::new();
        let mut full = server(1, 0, 8, 1.0, 1.0);
        full.cache_free_tokens = 100;
        let slow = server(2, 0, 8, 50.0, 80.0);
        let r = find_route(
            &[full.clone(), slow],
            &request(range(0, 8), &none, RouteMode::Latency),
        )
        .unwrap();
        assert_eq!(
            shape(&r),
            [(2, 0, 8)],
            "a slow server with room beats a full one"
        );
        assert_eq!(r.cache_short, 0);

        // Alone, the full server is still used, and the route says so.
        let r = find_route(&[full], &request(range(0, 8), &none, RouteMode::Latency)).unwrap();
        assert_eq!(shape(&r), [(1, 0, 8)]);
        assert_eq!(r.cache_short, 1);
        assert!(
            (r.expected_ms_per_token - 9.0).abs() < 1e-9,
            "penalty is not a delay"
        );
    }

    #[test]
    fn cache_penalty_only_where_needed() {
        // The full server is the only one with 0..2, so the route must take it (once: the
        // penalty is per hop, so it then runs everything it is fastest at).
        let none = HashSet::new();
        let mut full = server(1, 0, 8, 1.0, 1.0);
        full.cache_free_tokens = 0;
        let other = server(2, 2, 8, 5.0, 5.0);
        let req = request(range(0, 8), &none, RouteMode::Latency);
        let r = find_route(&[full.clone(), other.clone()], &req).unwrap();
        assert_eq!(shape(&r), [(1, 0, 8)]);
        assert_eq!(r.cache_short, 1);
        // Once a slow server with room covers 0..2, the full one is dropped entirely.
        let slow = server(3, 0, 2, 20.0, 20.0);
        let r = find_route(&[full, other, slow], &req).unwrap();
        assert_eq!(shape(&r), [(3, 0, 2), (2, 2, 8)]);
        assert_eq!(r.cache_short, 0);
    }

    #[test]
    fn fewer_hops_when_rtt_dominates() {
        // Per-block compute favours the split chain by 8 ms, but each extra hop costs 40 ms.
        let none = HashSet::new();
        let servers = [
            server(1, 0, 8, 3.0, 40.0),
            server(2, 0, 4, 2.0, 40.0),
            server(3, 4, 8, 2.0, 40.0),
        ];
        let r = find_route(&servers, &request(range(0, 8), &none, RouteMode::Latency)).unwrap();
        assert_eq!(shape(&r), [(1, 0, 8)]);
        // With cheap hops the split chain wins.
        let near: Vec<ServerView> = servers
            .iter()
            .cloned()
            .map(|mut s| {
                s.rtt_ms = 1.0;
                s
            })
            .collect();
        let r = find_route(&near, &request(range(0, 8), &none, RouteMode::Latency)).unwrap();
        assert_eq!(shape(&r), [(2, 0, 4), (3, 4, 8)]);
    }

    #[test]
    fn equal_costs_prefer_fewer_hops_then_smaller_peer() {
        let none = HashSet::new();
        // Zero RTT: one hop over 0..4 costs the same as two hops over 0..2 and 2..4.
        let servers = [
            server(2, 0, 2, 1.0, 0.0),
            server(3, 2, 4, 1.0, 0.0),
            server(1, 0, 4, 1.0, 0.0),
        ];
        let r = find_route(&servers, &request(range(0, 4), &none, RouteMode::Latency)).unwrap();
        assert_eq!(shape(&r), [(1, 0, 4)]);

        // Two identical replicas: the smaller PeerId wins, whatever the input order.
        let a = server(4, 0, 4, 1.0, 1.0);
        let b = server(5, 0, 4, 1.0, 1.0);
        let expect = peer(4).min(peer(5));
        for list in [[a.clone(), b.clone()], [b, a]] {
            let r = find_route(&list, &request(range(0, 4), &none, RouteMode::Latency)).unwrap();
            assert_eq!(r.hops.len(), 1);
            assert_eq!(r.hops[0].peer, expect);
        }
    }

    #[test]
    fn throughput_mode_prefers_idle_replicas() {
        let none = HashSet::new();
        let mut busy = server(1, 0, 8, 1.0, 1.0);
        busy.load = 6;
        let idle = server(2, 0, 8, 1.0, 30.0);
        let servers = [busy, idle];
        // Latency mode takes the nearby busy server; throughput mode the idle far one.
        let r = find_route(&servers, &request(range(0, 8), &none, RouteMode::Latency)).unwrap();
        assert_eq!(shape(&r), [(1, 0, 8)]);
        let r = find_route(
            &servers,
            &request(range(0, 8), &none, RouteMode::Throughput),
        )
        .unwrap();
        assert_eq!(shape(&r), [(2, 0, 8)]);
        assert!((r.expected_ms_per_token - 38.0).abs() < 1e-9);
    }

    #[test]
    fn parallel_streams_spread_over_replicas_by_load() {
        // Two replicas per half, one already carrying two sessions. Eight new streams should
        // land so that final loads are as even as the per-block costs allow: 5/5 per half.
        let none = HashSet::new();
        let mut s = vec![
            server(1, 0, 4, 1.0, 2.0),
            server(2, 0, 4, 1.0, 3.0),
            server(3, 4, 8, 1.0, 2.0),
            server(4, 4, 8, 1.0, 3.0),
        ];
        s[0].load = 2;
        s[2].load = 2;
        let routes =
            find_routes(&s, &request(range(0, 8), &none, RouteMode::Throughput), 8).unwrap();
        assert_eq!(routes.len(), 8);
        let mut count = [0usize; 5];
        for r in &routes {
            assert_tiles(r, range(0, 8));
            for (i, _, _) in shape(r) {
                count[i as usize] += 1;
            }
        }
        assert_eq!(count[1] + 2, 5);
        assert_eq!(count[2], 5);
        assert_eq!(count[3] + 2, 5);
        assert_eq!(count[4], 5);
        // The first stream avoids the loaded replicas entirely.
        assert_eq!(shape(&routes[0]), [(2, 0, 4), (4, 4, 8)]);
    }

    #[test]
    fn uncovered_block_is_named() {
        let none = HashSet::new();
        let servers = [server(1, 0, 3, 1.0, 1.0), server(2, 5, 8, 1.0, 1.0)];
        let err = find_route(&servers, &request(range(0, 8), &none, RouteMode::Latency));
        assert_eq!(err, Err(uncovered(3, 5)));
        // Banning the only server of block 0 makes 0..5 the first gap.
        let banned: HashSet<PeerId> = [peer(1)].into();
        let err = find_route(&servers, &request(range(0, 8), &banned, RouteMode::Latency));
        assert_eq!(err, Err(uncovered(0, 5)));
        // No servers at all: the whole request is the gap.
        let err = find_route(&[], &request(range(4, 8), &none, RouteMode::Throughput));
        assert_eq!(err, Err(uncovered(4, 8)));
        // A server whose measurements are garbage is not usable.
        let bad = [server(1, 0, 8, f64::NAN, 1.0)];
        let err = find_route(&bad, &request(range(0, 8), &none, RouteMode::Latency));
        assert_eq!(err, Err(uncovered(0, 8)));
        // Overlapping spans before the gap, a span starting inside the gap ends it.
        let servers = [
            server(1, 0, 3, 1.0, 1.0),
            server(2, 2, 4, 1.0, 1.0),
            server(3, 6, 8, 1.0, 1.0),
            server(4, 7, 8, 1.0, 1.0),
        ];
        let err = find_route(&servers, &request(range(0, 8), &none, RouteMode::Latency));
        assert_eq!(err, Err(uncovered(4, 6)));
    }

    fn uncovered(a: u32, b: u32) -> RouteError {
        RouteError::Uncovered {
            blocks: range(a, b),
        }
    }

    #[test]
    fn failover_sub_range_uses_parts_of_spans() {
        // The hop for 3..9 failed; re-route just those blocks without the failed peer.
        let servers = [
            server(1, 0, 12, 1.0, 1.0),
            server(2, 0, 6, 1.0, 2.0),
            server(3, 5, 12, 1.0, 2.0),
        ];
        let banned: HashSet<PeerId> = [peer(1)].into();
        let r = find_route(&servers, &request(range(3, 9), &banned, RouteMode::Latency)).unwrap();
        assert_tiles(&r, range(3, 9));
        assert_eq!(r.hops.len(), 2);
        assert_eq!(r.hops[0].peer, peer(2));
        assert_eq!(r.hops[1].peer, peer(3));
        assert!(r.hops[0].range.start() == 3 && r.hops[1].range.end() == 9);
        assert!((r.expected_ms_per_token - (4.0 + 6.0)).abs() < 1e-9);
        // Uncovered inside a sub-range names the block in model numbering.
        let err = find_route(
            &servers[..2],
            &request(range(3, 9), &banned, RouteMode::Latency),
        );
        assert_eq!(err, Err(uncovered(6, 9)));
    }

    #[test]
    fn negative_measurements_count_as_zero() {
        // A server claiming negative time must not make a route "cheaper than free".
        let none = HashSet::new();
        let liar = server(1, 0, 4, -100.0, -100.0);
        let r = find_route(&[liar], &request(range(0, 4), &none, RouteMode::Latency)).unwrap();
        assert_eq!(r.expected_ms_per_token, 0.0);
    }

    #[test]
    fn thousand_servers_eighty_blocks() {
        // Deterministic pseudo-random swarm; checks the search completes and is optimal against
        // a simple bound (no timing assertion).
        let none = HashSet::new();
        let mut rng = hearth_core::SplitMix64::new(0x9E37_79B9_7F4A_7C15);
        let mut next = |m: u64| rng.below(m);
        let servers: Vec<ServerView> = (0..1000u32)
            .map(|i| {
                let len = 1 + next(40) as u32;
                let start = next(u64::from(80 - len + 1)) as u32;
                let key = Keypair::ed25519_from_bytes({
                    let mut b = [0u8; 32];
                    b[..4].copy_from_slice(&i.to_le_bytes());
                    b
                })
                .expect("ed25519 key");
                ServerView {
                    peer: key.public().to_peer_id(),
                    span: range(start, start + len),
                    block_ms: 1.0 + next(100) as f64 / 10.0,
                    rtt_ms: next(200) as f64,
                    cache_free_tokens: next(4096),
                    load: next(8) as u32,
                }
            })
            .collect();
        for mode in [RouteMode::Latency, RouteMode::Throughput] {
            let r = find_route(&servers, &request(range(0, 80), &none, mode)).unwrap();
            assert_tiles(&r, range(0, 80));
            // Each hop must lie inside its server's span.
            for h in &r.hops {
                assert!(servers.iter().any(|s| s.peer == h.peer
                    && s.span.start() <= h.range.start()
                    && h.range.end() <= s.span.end()));
            }
            // Every block costs at least the fastest block time anywhere.
            let fastest = servers.iter().map(|s| s.block_ms).fold(f64::MAX, f64::min);
            assert!(r.expected_ms_per_token >= 80.0 * fastest);
        }
    }
}
