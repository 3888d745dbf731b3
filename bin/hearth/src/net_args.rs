//! How a networked command joins the swarm: the flags shared by `node`, `peers`, `generate
//! --swarm` and `gateway`, turned into the library's [`NetConfig`] and [`ClientConfig`]. Their
//! defaults are the library's. Depends only on `common`.

use clap::Args;
use hearth_swarm::routing::RouteMode;
use hearth_swarm::{ClientConfig, NetConfig};
use hearth_verify::SpotCheckPolicy;
use hearth_wire::HiddenDType;
use libp2p::Multiaddr;
use std::time::Duration;

/// How a process joins the network.
#[derive(Args, Clone, Debug)]
pub(crate) struct NetArgs {
    /// Peer to join through (multiaddr ending in /p2p/<peer id>); repeatable.
    #[arg(long)]
    pub bootstrap: Vec<Multiaddr>,
    /// Address to listen on; repeatable (default, any port: a node TCP and QUIC on all interfaces,
    /// a client TCP on loopback).
    #[arg(long)]
    pub listen: Vec<Multiaddr>,
    /// Do not discover peers on the local network by mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Lifetime of DHT records, seconds (nodes refresh theirs at a third of it).
    #[arg(long, default_value_t = NetConfig::default().record_ttl.as_secs())]
    pub record_ttl: u64,
    /// Most connections other peers may have established to this host at once.
    #[arg(long, default_value_t = NetConfig::default().max_incoming)]
    pub max_incoming: u32,
    /// Most connections from other peers in their handshake at once.
    #[arg(long, default_value_t = NetConfig::default().max_pending_incoming)]
    pub max_pending_incoming: u32,
    /// Most connections established with one peer.
    #[arg(long, default_value_t = NetConfig::default().max_per_peer)]
    pub max_connections_per_peer: u32,
    /// Refuse new connections while this process uses more than this much memory, MiB
    /// (default: 90 % of the machine's physical memory).
    #[arg(long)]
    pub max_memory_mib: Option<u64>,
    /// Route for throughput (spread parallel streams over replicas) instead of latency.
    #[arg(long)]
    pub throughput: bool,
    /// Seconds to wait for one hop's answer before failing over.
    #[arg(long, default_value_t = ClientConfig::default().step_timeout.as_secs())]
    pub step_timeout: u64,
    /// Element type of the hidden states sent between hops: f16 or bf16 (half the bytes), or
    /// f32 (no rounding at span boundaries: the swarm then gives bitwise what one process gives,
    /// and a failover is exact whatever spans the replacement covers).
    #[arg(long, default_value_t = ClientConfig::default().dtype)]
    pub wire_dtype: HiddenDType,
    /// Probability that a window (32 positions) of an established node is re-executed on another
    /// server of its blocks (nodes in probation: at least 0.5); 0 turns spot checks off.
    #[arg(long, default_value_t = SpotCheckPolicy::default().probability)]
    pub check_probability: f64,
    /// Always re-execute the prefill before using it (a cheater is then replaced before its
    /// output reaches a token).
    #[arg(long)]
    pub check_prefill: bool,
    /// Never route through a node that no other server can check (none of its build class
    /// covers its blocks); by default such nodes are used only when nothing else covers them.
    #[arg(long)]
    pub require_verifiable: bool,
    /// Where node reputations (checked windows, measured latency, exclusions) persist between
    /// runs (default: $HEARTH_HOME/reputation.json).
    #[arg(long)]
    pub reputation_file: Option<std::path::PathBuf>,
}

impl NetArgs {
    /// The network settings of a node (a DHT server).
    pub(crate) fn node_net(&self) -> NetConfig {
        self.apply(NetConfig {
            dht_server: true,
            ..NetConfig::default()
        })
    }

    /// The settings of a client (a DHT client, on loopback unless `--listen` says otherwise).
    pub(crate) fn client_config(&self) -> ClientConfig {
        let base = ClientConfig::default();
        ClientConfig {
            net: self.apply(base.net),
            mode: if self.throughput {
                RouteMode::Throughput
            } else {
                RouteMode::Latency
            },
            step_timeout: Duration::from_secs(self.step_timeout.max(1)),
            dtype: self.wire_dtype,
            spot_checks: (self.check_probability > 0.0).then(|| {
                let p = self.check_probability.clamp(0.0, 1.0);
                let default = SpotCheckPolicy::default();
                SpotCheckPolicy {
                    probability: p,
                    probation_probability: default.probation_probability.max(p),
                    always_check_prefill: self.check_prefill,
                    ..default
                }
            }),
            require_verifiable: self.require_verifiable,
            reputation_file: Some(
                self.reputation_file
                    .clone()
                    .unwrap_or_else(|| crate::common::hearth_home().join("reputation.json")),
            ),
            ..base
        }
    }

    /// `base` with the flags applied; `base`'s listen addresses stay unless `--listen` is given.
    fn apply(&self, base: NetConfig) -> NetConfig {
        NetConfig {
            listen: if self.listen.is_empty() {
                base.listen
            } else {
                self.listen.clone()
            },
            bootstrap: self.bootstrap.clone(),
            mdns: !self.no_mdns,
            record_ttl: Duration::from_secs(self.record_ttl.max(1)),
            max_incoming: self.max_incoming,
            max_pending_incoming: self.max_pending_incoming,
            max_per_peer: self.max_connections_per_peer.max(1),
            max_memory_bytes: self
                .max_memory_mib
                .map(|mib| mib.saturating_mul(1 << 20))
                .or(base.max_memory_bytes),
            ..base
        }
    }
}
