//! Prometheus metrics of the gateway (`GET /metrics`, text exposition format).
//!
//! Label sets are bounded: endpoints, status codes and failure kinds ([`SwarmErrorKind::ALL`])
//! are fixed small sets, and per-node series stop growing at [`MAX_NODE_SERIES`] distinct nodes
//! (later ones share `other`), so a swarm full of short-lived peers cannot grow the gateway's
//! memory without bound.

use hearth_swarm::SwarmErrorKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// Distinct node labels kept before new nodes are counted under `other`.
pub const MAX_NODE_SERIES: usize = 256;

/// Labels of [`Metrics::requests`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Which endpoint answered: `chat`, `completions`, `models`, `auth` for a refused key, or
    /// `guard` for a request the browser guard refused.
    pub endpoint: &'static str,
    /// The HTTP status it answered with.
    pub status: u16,
}

/// A failed generation's [`SwarmErrorKind::as_str`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The kind's snake_case name, e.g. `no_coverage`.
    pub kind: &'static str,
}

/// Labels of [`Metrics::node_step_seconds`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// The node's peer id, or `other` once [`MAX_NODE_SERIES`] nodes have their own series.
    pub node: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the gateway exports, registered under the `hearth_gateway` prefix. The fields
/// are handles into the registry: updating one updates what [`Metrics::encode`] writes.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests answered, by endpoint and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Prompt tokens processed.
    pub prompt_tokens: Counter,
    /// Completion tokens generated.
    pub completion_tokens: Counter,
    /// Seconds from a request's arrival to its first generated text.
    pub time_to_first_token: Histogram,
    /// Each generation's decode speed after its first token, tokens per second.
    pub decode_tokens_per_second: Histogram,
    /// Generations admitted and waiting for a running slot.
    pub queue_depth: Gauge,
    /// Generations running now.
    pub running: Gauge,
    /// Requests refused with 429 because the queue was full.
    pub rejected_busy: Counter,
    /// Generations stopped because the client went away.
    pub cancelled: Counter,
    /// Nodes replaced mid-generation.
    pub failovers: Counter,
    /// HTTP connections open now.
    pub connections_open: Gauge,
    /// Connections closed at accept because `max_connections` were open.
    pub connections_refused: Counter,
    /// Connections closed because a response write stayed blocked for `write_timeout` (the
    /// client stopped reading); a generation they carried is cancelled.
    pub slow_clients: Counter,
    /// Failed generations, by [`SwarmErrorKind`]; every kind exists from the start at 0.
    pub generation_errors: Family<ErrorLabels, Counter>,
    /// Per node, the mean seconds it took to answer one step, one sample per generation.
    pub node_step_seconds: HistogramFamily<NodeLabels>,
    /// Output-head products computed so far (one per batch of generations' rows); a gauge set
    /// from the backend's running total at each scrape.
    pub head_products: Gauge,
    /// Rows (one per generation per token) those head products covered; set like
    /// `head_products`.
    pub head_rows: Gauge,
    known_nodes: Mutex<HashSet<String>>,
}

fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("hearth_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests answered, by endpoint and status",
            requests.clone(),
        );
        let prompt_tokens = Counter::default();
        registry.register(
            "prompt_tokens",
            "Prompt tokens processed",
            prompt_tokens.clone(),
        );
        let completion_tokens = Counter::default();
        registry.register(
            "completion_tokens",
            "Completion tokens generated",
            completion_tokens.clone(),
        );
        let time_to_first_token = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "time_to_first_token_seconds",
            "Time from request arrival to the first generated text",
            time_to_first_token.clone(),
        );
        let decode_tokens_per_second = Histogram::new(exponential_buckets(0.5, 2.0, 12));
        registry.register(
            "decode_tokens_per_second",
            "Decode speed of each generation after its first token",
            decode_tokens_per_second.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Generations admitted and waiting for a slot",
            queue_depth.clone(),
        );
        let running = Gauge::default();
        registry.register("running", "Generations running now", running.clone());
        let rejected_busy = Counter::default();
        registry.register(
            "rejected_busy",
            "Requests refused with 429 because the queue was full",
            rejected_busy.clone(),
        );
        let cancelled = Counter::default();
        registry.register(
            "cancelled",
            "Generations stopped because the client went away",
            cancelled.clone(),
        );
        let failovers = Counter::default();
        registry.register(
            "failovers",
            "Nodes replaced mid-generation",
            failovers.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "HTTP connections open now",
            connections_open.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept because max_connections were open",
            connections_refused.clone(),
        );
        let slow_clients = Counter::default();
        registry.register(
            "slow_clients",
            "Connections closed because the client did not read a response for write_timeout",
            slow_clients.clone(),
        );
        let generation_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "generation_errors",
            "Generations that failed, by kind of failure",
            generation_errors.clone(),
        );
        // Every kind from the start at 0, so a dashboard sees the series before the first failure.
        for kind in SwarmErrorKind::ALL {
            let _ = generation_errors.get_or_create(&ErrorLabels {
                kind: kind.as_str(),
            });
        }
        let node_step_seconds: HistogramFamily<NodeLabels> =
            Family::new_with_constructor(latency_buckets);
        registry.register(
            "node_step_seconds",
            "Mean time a node took to answer one step, per generation",
            node_step_seconds.clone(),
        );
        let head_products = Gauge::default();
        registry.register(
            "head_products",
            "Output-head products computed (one per batch of generations' rows)",
            head_products.clone(),
        );
        let head_rows = Gauge::default();
        registry.register(
            "head_rows",
            "Rows (one per generation per token) those head products covered",
            head_rows.clone(),
        );
        Self {
            registry,
            head_products,
            head_rows,
            requests,
            prompt_tokens,
            completion_tokens,
            time_to_first_token,
            decode_tokens_per_second,
            queue_depth,
            running,
            rejected_busy,
            cancelled,
            failovers,
            connections_open,
            connections_refused,
            slow_clients,
            generation_errors,
            node_step_seconds,
            known_nodes: Mutex::new(HashSet::new()),
        }
    }
}

impl Metrics {
    /// Counts one answered request of `endpoint` with HTTP `status`.
    pub fn request(&self, endpoint: &'static str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { endpoint, status })
            .inc();
    }

    /// Counts one failed generation.
    pub fn generation_error(&self, kind: SwarmErrorKind) {
        self.generation_errors
            .get_or_create(&ErrorLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Records one generation's mean step time on `node`: `total` over `steps` answered steps
    /// (nothing when `steps` is 0).
    pub fn node_steps(&self, node: &str, steps: u64, total: Duration) {
        if steps == 0 {
            return;
        }
        let label = {
            let mut known = self.known_nodes.lock().unwrap_or_else(|p| p.into_inner());
            if known.contains(node) || known.len() < MAX_NODE_SERIES {
                known.insert(node.to_string());
                node.to_string()
            } else {
                "other".to_string()
            }
        };
        self.node_step_seconds
            .get_or_create(&NodeLabels { node: label })
            .observe(total.as_secs_f64() / steps as f64);
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_errors_are_exposed_by_kind_from_zero() {
        let m = Metrics::default();
        let text = m.encode();
        for kind in SwarmErrorKind::ALL {
            let series = format!(
                "hearth_gateway_generation_errors_total{{kind=\"{}\"}} 0",
                kind.as_str()
            );
            assert!(text.contains(&series), "{series} missing from\n{text}");
        }
        m.generation_error(SwarmErrorKind::NoCoverage);
        m.generation_error(SwarmErrorKind::NoCoverage);
        m.generation_error(SwarmErrorKind::PeerMisbehaved);
        let text = m.encode();
        assert!(text.contains("hearth_gateway_generation_errors_total{kind=\"no_coverage\"} 2"));
        assert!(text.contains("hearth_gateway_generation_errors_total{kind=\"peer_misbehaved\"} 1"));
        assert!(text.contains("hearth_gateway_generation_errors_total{kind=\"timeout\"} 0"));
    }
}
