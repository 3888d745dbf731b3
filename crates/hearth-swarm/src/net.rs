//! The libp2p host: transports, behaviours, and the one task that owns the `Swarm`. Everything
//! else talks to it through a cloneable [`Net`] handle (bounded command channel, oneshot replies)
//! or opens streams directly through [`libp2p_stream::Control`].

use crate::error::{Result, SwarmError};
use crate::identity::NodeIdentity;
use futures::StreamExt;
use libp2p::kad::{
    self, store::MemoryStore, store::RecordStore, GetProvidersOk, GetRecordOk, QueryId, QueryResult,
};
use libp2p::swarm::{behaviour::toggle::Toggle, NetworkBehaviour, SwarmEvent};
use libp2p::{
    autonat, connection_limits, dcutr, identify, mdns, memory_connection_limits, noise, ping,
    relay, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Kademlia protocol name: hearth nodes form their own DHT, apart from IPFS's.
const KAD_PROTOCOL: &str = "/hearth/kad/1";
const IDENTIFY_PROTOCOL: &str = "/hearth/id/1";
/// Commands queued for the swarm task; senders wait when it is full (backpressure, no growth).
const COMMAND_QUEUE: usize = 256;
/// Most providers one lookup collects (a key's providers come from many peers, each of which
/// may list up to kad's per-key cap).
const MAX_PROVIDERS_PER_QUERY: usize = 256;
/// Most peers remembered from mDNS (a LAN can announce any number).
const MAX_MDNS_PEERS: usize = 256;

/// How a host takes part in the network.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Addresses to listen on (e.g. `/ip4/127.0.0.1/tcp/0`, `/ip4/0.0.0.0/udp/0/quic-v1`).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start (multiaddrs ending in `/p2p/<peer id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the local network by mDNS.
    pub mdns: bool,
    /// Serve DHT records (nodes) or only query them (clients).
    pub dht_server: bool,
    /// Lifetime of DHT records this host stores for others (default 60 s, the `hearth` CLI's
    /// `--record-ttl`).
    pub record_ttl: Duration,
    /// Interval of the ping protocol, which also measures RTTs.
    pub ping_interval: Duration,
    /// Most connections other peers may have established to this host at once: connections
    /// are cheap to open and identities are free, so without a cap a flood of them exhausts
    /// file descriptors and memory.
    pub max_incoming: u32,
    /// Most connections being set up (handshakes) from other peers at once.
    pub max_pending_incoming: u32,
    /// Most connections established with one peer (TCP, QUIC and relayed together).
    pub max_per_peer: u32,
    /// New connections, in and out, are refused while the process's resident memory is above
    /// this many bytes; `None`: [`DEFAULT_MEMORY_SHARE`] of the machine's physical memory. The
    /// per-connection caps bound counts; this bounds what they cost together.
    pub max_memory_bytes: Option<u64>,
}

/// Share of physical memory above which a host refuses new connections, unless
/// [`NetConfig::max_memory_bytes`] says otherwise.
pub const DEFAULT_MEMORY_SHARE: f64 = 0.9;

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".parse().expect("static multiaddr"),
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("static multiaddr"),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            dht_server: true,
            record_ttl: Duration::from_secs(60),
            ping_interval: Duration::from_secs(5),
            max_incoming: 512,
            max_pending_incoming: 64,
            max_per_peer: 4,
            max_memory_bytes: None,
        }
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    relay: relay::client::Behaviour,
    dcutr: dcutr::Behaviour,
    autonat: autonat::Behaviour,
    stream: libp2p_stream::Behaviour,
    limits: connection_limits::Behaviour,
    memory: memory_connection_limits::Behaviour,
}

enum Command {
    Provide(kad::RecordKey),
    StopProviding(kad::RecordKey),
    PutRecord(kad::Record),
    GetProviders(kad::RecordKey, oneshot::Sender<HashSet<PeerId>>),
    GetRecords(kad::RecordKey, oneshot::Sender<Vec<Vec<u8>>>),
    Dial(PeerId, Vec<Multiaddr>, oneshot::Sender<()>),
    Status(oneshot::Sender<NetStatus>),
}

/// A snapshot of what the host knows.
#[derive(Clone, Debug, Default)]
pub struct NetStatus {
    /// Addresses the host listens on now.
    pub listen_addrs: Vec<Multiaddr>,
    /// Peers with at least one open connection.
    pub connected: Vec<PeerId>,
    /// Latest ping RTT per connected peer.
    pub rtts: HashMap<PeerId, Duration>,
    /// Peers found by mDNS since start.
    pub mdns_peers: Vec<PeerId>,
}

/// Cloneable handle to the swarm task.
#[derive(Clone)]
pub struct Net {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
}

impl Net {
    /// Builds the host, starts listening and dialling, and spawns its task on the current runtime.
    /// Fails with [`SwarmError::Io`] when a transport cannot be set up or an address cannot be
    /// listened on.
    pub async fn start(identity: &NodeIdentity, cfg: NetConfig) -> Result<Self> {
        let keypair = identity.keypair();
        let peer_id = keypair.public().to_peer_id();
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| SwarmError::transport("setting up TCP", e))?
            .with_quic()
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| SwarmError::transport("setting up the relay client", e))?
            .with_behaviour(|key, relay| {
                let mut kad_cfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
                kad_cfg
                    .set_record_ttl(Some(cfg.record_ttl))
                    .set_provider_record_ttl(Some(cfg.record_ttl))
                    .set_query_timeout(Duration::from_secs(10))
                    // One silent peer holds a whole query for this long per request (a put waits
                    // out its lookup of the closest peers first): short enough that
                    // announcements still arrive well within their lifetime.
                    .set_substreams_timeout(Duration::from_secs(4))
                    // Refresh the routing table often: home nodes come and go within minutes,
                    // and a host whose table holds only departed peers finds no one.
                    .set_periodic_bootstrap_interval(Some(Duration::from_secs(30)))
                    // The node republishes on its own schedule (announce loop); no blind
                    // re-replication of stale copies.
                    .set_publication_interval(None)
                    .set_provider_publication_interval(None)
                    // Records and provider entries are stored only after checks (handle_event).
                    .set_record_filtering(kad::StoreInserts::FilterBoth);
                let mut kad =
                    kad::Behaviour::with_config(peer_id, MemoryStore::new(peer_id), kad_cfg);
                kad.set_mode(Some(if cfg.dht_server {
                    kad::Mode::Server
                } else {
                    kad::Mode::Client
                }));
                let mdns = if cfg.mdns {
                    Some(mdns::tokio::Behaviour::new(
                        mdns::Config {
                            query_interval: Duration::from_secs(2),
                            ..Default::default()
                        },
                        peer_id,
                    )?)
                } else {
                    None
                };
                Ok(Behaviour {
                    kad,
                    identify: identify::Behaviour::new(identify::Config::new(
                        IDENTIFY_PROTOCOL.to_string(),
                        key.public(),
                    )),
                    ping: ping::Behaviour::new(
                        ping::Config::new().with_interval(cfg.ping_interval),
                    ),
                    mdns: mdns.into(),
                    relay,
                    dcutr: dcutr::Behaviour::new(peer_id),
                    autonat: autonat::Behaviour::new(peer_id, Default::default()),
                    stream: libp2p_stream::Behaviour::new(),
                    limits: connection_limits::Behaviour::new(
                        connection_limits::ConnectionLimits::default()
                            .with_max_established_incoming(Some(cfg.max_incoming))
                            .with_max_pending_incoming(Some(cfg.max_pending_incoming))
                            .with_max_established_per_peer(Some(cfg.max_per_peer)),
                    ),
                    memory: match cfg.max_memory_bytes {
                        Some(bytes) => memory_connection_limits::Behaviour::with_max_bytes(
                            usize::try_from(bytes).unwrap_or(usize::MAX),
                        ),
                        None => memory_connection_limits::Behaviour::with_max_percentage(
                            DEFAULT_MEMORY_SHARE,
                        ),
                    },
                })
            })
            .map_err(|e| SwarmError::transport("setting up the network behaviours", e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
            .build();
        for addr in &cfg.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| SwarmError::transport(format!("listening on {addr}"), e))?;
        }
        for addr in &cfg.bootstrap {
            if let Some(peer) = peer_of(addr) {
                swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            }
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, "cannot dial bootstrap peer: {e}");
            }
        }
        let control = swarm.behaviour().stream.new_control();
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        tokio::spawn(run(swarm, rx));
        Ok(Self {
            peer_id,
            commands: tx,
            control,
        })
    }

    /// This host's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// A stream-opening handle (clone one per concurrent opener).
    pub fn control(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    async fn send(&self, cmd: Command) {
        // The task only ends with the runtime; a failed send means we are shutting down.
        let _ = self.commands.send(cmd).await;
    }

    /// Announces this host as a provider of `key` in the DHT (fire and forget; failures are
    /// logged). The record expires after `record_ttl` unless provided again.
    pub async fn provide(&self, key: kad::RecordKey) {
        self.send(Command::Provide(key)).await;
    }

    /// Stops providing `key` from this host's own store; copies held by other peers expire.
    pub async fn stop_providing(&self, key: kad::RecordKey) {
        self.send(Command::StopProviding(key)).await;
    }

    /// Stores `record` in the DHT (fire and forget; failures are logged).
    pub async fn put_record(&self, record: kad::Record) {
        self.send(Command::PutRecord(record)).await;
    }

    /// Every provider of `key` the DHT query found; empty when none or when shutting down.
    pub async fn get_providers(&self, key: kad::RecordKey) -> HashSet<PeerId> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::GetProviders(key, tx)).await;
        rx.await.unwrap_or_default()
    }

    /// Every value found for `key` (possibly several versions from several holders).
    pub async fn get_records(&self, key: kad::RecordKey) -> Vec<Vec<u8>> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::GetRecords(key, tx)).await;
        rx.await.unwrap_or_default()
    }

    /// Records `addrs` for `peer` and dials it unless connected. Returns once the addresses are
    /// known to the host, so a stream opened next can use them.
    pub async fn dial(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Dial(peer, addrs, tx)).await;
        let _ = rx.await;
    }

    /// A snapshot of the host's listeners, connections and measured RTTs.
    pub async fn status(&self) -> NetStatus {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Status(tx)).await;
        rx.await.unwrap_or_default()
    }
}

/// The peer id at the end of a multiaddr (`.../p2p/<id>`), if any.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

enum Pending {
    Providers(HashSet<PeerId>, oneshot::Sender<HashSet<PeerId>>),
    Records(Vec<Vec<u8>>, oneshot::Sender<Vec<Vec<u8>>>),
}

async fn run(mut swarm: Swarm<Behaviour>, mut commands: mpsc::Receiver<Command>) {
    let mut pending: HashMap<QueryId, Pending> = HashMap::new();
    let mut rtts: HashMap<PeerId, Duration> = HashMap::new();
    let mut mdns_peers: HashSet<PeerId> = HashSet::new();
    loop {
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return };
                handle_command(&mut swarm, cmd, &mut pending, &rtts, &mdns_peers);
            }
            event = swarm.select_next_some() => {
                handle_event(&mut swarm, event, &mut pending, &mut rtts, &mut mdns_peers);
            }
        }
    }
}

fn handle_command(
    swarm: &mut Swarm<Behaviour>,
    cmd: Command,
    pending: &mut HashMap<QueryId, Pending>,
    rtts: &HashMap<PeerId, Duration>,
    mdns_peers: &HashSet<PeerId>,
) {
    let kad = &mut swarm.behaviour_mut().kad;
    match cmd {
        Command::Provide(key) => {
            if let Err(e) = kad.start_providing(key) {
                tracing::warn!("cannot store provider record: {e}");
            }
        }
        Command::StopProviding(key) => kad.stop_providing(&key),
        Command::PutRecord(record) => {
            if let Err(e) = kad.put_record(record, kad::Quorum::One) {
                tracing::warn!("cannot store record: {e}");
            }
        }
        Command::GetProviders(key, reply) => {
            let id = kad.get_providers(key);
            pending.insert(id, Pending::Providers(HashSet::new(), reply));
        }
        Command::GetRecords(key, reply) => {
            // Our own store first: kad's query skips it once the record is found remotely.
            let local = kad
                .store_mut()
                .get(&key)
                .map(|r| vec![r.value.clone()])
                .unwrap_or_default();
            let id = kad.get_record(key);
            pending.insert(id, Pending::Records(local, reply));
        }
        Command::Dial(peer, addrs, done) => {
            for a in &addrs {
                swarm.behaviour_mut().kad.add_address(&peer, a.clone());
            }
            if !swarm.is_connected(&peer) {
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .build();
                if let Err(e) = swarm.dial(opts) {
                    tracing::debug!(%peer, "dial failed: {e}");
                }
            }
            let _ = done.send(());
        }
        Command::Status(reply) => {
            let _ = reply.send(NetStatus {
                listen_addrs: swarm.listeners().cloned().collect(),
                connected: swarm.connected_peers().copied().collect(),
                rtts: rtts.clone(),
                mdns_peers: mdns_peers.iter().copied().collect(),
            });
        }
    }
}

fn handle_event(
    swarm: &mut Swarm<Behaviour>,
    event: SwarmEvent<BehaviourEvent>,
    pending: &mut HashMap<QueryId, Pending>,
    rtts: &mut HashMap<PeerId, Duration>,
    mdns_peers: &mut HashSet<PeerId>,
) {
    match event {
        SwarmEvent::NewListenAddr { address, .. } => tracing::info!(%address, "listening"),
        SwarmEvent::ConnectionClosed {
            peer_id,
            num_established: 0,
            ..
        } => {
            rtts.remove(&peer_id);
        }
        SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
            for (peer, addr) in found {
                if mdns_peers.len() >= MAX_MDNS_PEERS && !mdns_peers.contains(&peer) {
                    continue;
                }
                mdns_peers.insert(peer);
                swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                if !swarm.is_connected(&peer) {
                    let _ = swarm.dial(addr);
                }
            }
        }
        // Only peers that speak our DHT protocol go into the routing table.
        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
            peer_id,
            info,
            ..
        })) if info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL) => {
            for addr in info.listen_addrs {
                swarm.behaviour_mut().kad.add_address(&peer_id, addr);
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
            peer,
            result: Ok(rtt),
            ..
        })) => {
            rtts.insert(peer, rtt);
        }
        SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Expired(gone))) => {
            for (peer, _) in gone {
                mdns_peers.remove(&peer);
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest { request })) => {
            store_checked(&mut swarm.behaviour_mut().kad, request);
        }
        SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
            id,
            result,
            step,
            ..
        })) => {
            match (result, pending.get_mut(&id)) {
                (
                    QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders {
                        providers, ..
                    })),
                    Some(Pending::Providers(acc, _)),
                ) => acc.extend(
                    providers
                        .into_iter()
                        .take(MAX_PROVIDERS_PER_QUERY.saturating_sub(acc.len())),
                ),
                // Bounded: a query returns at most one record per peer asked.
                (
                    QueryResult::GetRecord(Ok(GetRecordOk::FoundRecord(rec))),
                    Some(Pending::Records(acc, _)),
                ) if acc.len() < 64 => acc.push(rec.record.value),
                _ => {}
            }
            if step.last {
                match pending.remove(&id) {
                    Some(Pending::Providers(acc, reply)) => {
                        let _ = reply.send(acc);
                    }
                    Some(Pending::Records(acc, reply)) => {
                        let _ = reply.send(acc);
                    }
                    None => {}
                }
            }
        }
        _ => {}
    }
}

/// Stores what a peer offered, if it passes the checks: a record only if it is a valid
/// announcement ([`crate::dht::check_record`]) not older than the one already held under its key;
/// a provider entry as kad received it (kad already binds it to the sending peer and gives it our
/// own lifetime).
fn store_checked(kad: &mut kad::Behaviour<MemoryStore>, request: kad::InboundRequest) {
    use crate::dht::{check_record, now_unix_ms};
    let limits = hearth_wire::Limits::default();
    match request {
        kad::InboundRequest::PutRecord {
            source,
            record: Some(record),
            ..
        } => {
            let now = now_unix_ms();
            let offered = match check_record(&record.key, &record.value, now, &limits) {
                Ok(a) => a,
                Err(why) => {
                    tracing::debug!(%source, "refused a DHT record: {why}");
                    return;
                }
            };
            let store = kad.store_mut();
            let held = store
                .get(&record.key)
                .and_then(|r| check_record(&r.key, &r.value, now, &limits).ok());
            if held.is_some_and(|h| {
                h.announcement.issued_unix_ms > offered.announcement.issued_unix_ms
            }) {
                tracing::debug!(%source, "refused an announcement older than the one held");
                return;
            }
            if let Err(e) = store.put(record) {
                tracing::debug!(%source, "record not stored: {e:?}");
            }
        }
        kad::InboundRequest::AddProvider {
            record: Some(record),
        } => {
            if let Err(e) = kad.store_mut().add_provider(record) {
                tracing::debug!("provider record not stored: {e:?}");
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> NetConfig {
        NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            mdns: false,
            ..NetConfig::default()
        }
    }

    async fn try_connect(from: &Net, to: &Net) -> bool {
        let mut addrs = to.status().await.listen_addrs;
        while addrs.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            addrs = to.status().await.listen_addrs;
        }
        from.dial(to.peer_id(), addrs).await;
        for _ in 0..40 {
            if from.status().await.connected.contains(&to.peer_id()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_host_over_its_memory_cap_refuses_new_connections() {
        let dialer = Net::start(&NodeIdentity::generate(), loopback())
            .await
            .unwrap();
        let roomy = Net::start(&NodeIdentity::generate(), loopback())
            .await
            .unwrap();
        assert!(try_connect(&dialer, &roomy).await, "the default cap admits");
        // Any process is above one kilobyte.
        let full = Net::start(
            &NodeIdentity::generate(),
            NetConfig {
                max_memory_bytes: Some(1024),
                ..loopback()
            },
        )
        .await
        .unwrap();
        assert!(
            !try_connect(&dialer, &full).await,
            "a host over its cap refuses"
        );
    }

    #[tokio::test]
    async fn an_address_no_transport_serves_is_an_io_error() {
        let cfg = NetConfig {
            // Plain UDP: hearth listens on TCP and QUIC only.
            listen: vec!["/ip4/127.0.0.1/udp/0".parse().unwrap()],
            mdns: false,
            ..NetConfig::default()
        };
        let err = Net::start(&NodeIdentity::generate(), cfg)
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), crate::SwarmErrorKind::Io, "{err}");
        assert!(
            err.to_string()
                .contains("listening on /ip4/127.0.0.1/udp/0"),
            "{err}"
        );
    }
}
