//! A node paused by its energy agent takes no new sessions and withdraws from the DHT; open
//! sessions finish; resumed, it serves again.

use hearth_core::BlockRange;
use hearth_engine::synth::{shape, SynthModel, SynthOptions};
use hearth_engine::DType;
use hearth_swarm::node::{Node, NodeConfig};
use hearth_swarm::{ClientConfig, NetConfig, SwarmClient, SwarmErrorKind};
use hearth_wire::{HiddenDType, HiddenStates};
use std::time::{Duration, Instant};

fn loopback() -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        mdns: false,
        ..NetConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_takes_no_new_sessions_and_open_ones_finish() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    SynthModel::new(shape("tiny").unwrap(), 1)
        .unwrap()
        .write_hf(&model, DType::F32, &SynthOptions::default())
        .unwrap();
    let mut cfg = NodeConfig::new(model, dir.path().join("node"));
    cfg.blocks = Some(BlockRange::new(0, 6).unwrap());
    cfg.net = loopback();
    cfg.announce_ttl = Duration::from_secs(3);
    let node = Node::start(cfg).await.unwrap();
    let addr = loop {
        if let Some(a) = node.net.status().await.listen_addrs.first() {
            break format!("{a}/p2p/{}", node.peer_id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let client = SwarmClient::start(ClientConfig {
        net: NetConfig {
            bootstrap: vec![addr.parse().unwrap()],
            dht_server: false,
            ..loopback()
        },
        cover_timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    client
        .wait_for_coverage(&node.model_id, node.n_blocks)
        .await
        .unwrap();
    // The tiny shape is 256 wide.
    let x = |pos: u32| HiddenStates::from_f32(HiddenDType::F16, pos, 1, 256, &[0.5; 256]);

    let mut open = client.chain(node.model_id, node.n_blocks, 8);
    open.forward_hidden(x(0)).await.unwrap();
    assert_eq!(node.sessions_open(), 1);

    node.set_serving(false);
    assert!(!node.is_serving());
    // The session opened before the pause goes on.
    open.forward_hidden(x(1)).await.unwrap();
    // A new one fails: refused at open if the client still saw the node in the DHT, or not
    // routed at all once the node has withdrawn its provider records (it does so at once).
    let mut refused = client.chain(node.model_id, node.n_blocks, 8);
    let err = refused.forward_hidden(x(0)).await.unwrap_err();
    match err.kind() {
        // Refused at every open until failovers ran out (or nothing could replace it).
        SwarmErrorKind::HopsExhausted | SwarmErrorKind::Unreachable => {
            assert!(err.to_string().contains("paused"), "{err}")
        }
        SwarmErrorKind::NoCoverage => {
            assert!(err.to_string().contains("blocks 0..6"), "{err}")
        }
        other => panic!("unexpected {other}: {err}"),
    }
    // And the node leaves the DHT once its announcement expires.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client
        .servers(&node.model_id, node.n_blocks)
        .await
        .is_empty()
    {
        assert!(Instant::now() < deadline, "paused node still listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    node.set_serving(true);
    client
        .wait_for_coverage(&node.model_id, node.n_blocks)
        .await
        .unwrap();
    let mut again = client.chain(node.model_id, node.n_blocks, 8);
    again.forward_hidden(x(0)).await.unwrap();
}
