//! The test pool's share check, driven by a hand-written client: a pool that accepted
//! anything would make the miner tests meaningless.

use std::time::Duration;

use hearth_mining::sha256d::{HeaderHasher, Target};
use hearth_mining::stratum::Job;
use hearth_mining::testing::{PoolOptions, TestPool};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Client {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn send(&mut self, v: Value) {
        let mut line = v.to_string();
        line.push('\n');
        self.wr.write_all(line.as_bytes()).await.unwrap();
    }

    async fn recv(&mut self) -> Value {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.rd.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        serde_json::from_str(&line).unwrap()
    }

    /// The answer to request `id`, skipping notifications.
    async fn answer(&mut self, id: u64) -> Value {
        loop {
            let v = self.recv().await;
            if v["id"] == json!(id) {
                return v;
            }
        }
    }
}

#[tokio::test]
async fn the_pool_accepts_only_valid_shares() {
    let pool = TestPool::start(PoolOptions::default()).await.unwrap();
    let (rd, wr) = TcpStream::connect(pool.addr()).await.unwrap().into_split();
    let mut c = Client {
        rd: BufReader::new(rd),
        wr,
    };
    c.send(json!({"id":1,"method":"mining.subscribe","params":["manual/1"]}))
        .await;
    let sub = c.answer(1).await;
    let en1 = hex::decode(sub["result"][1].as_str().unwrap()).unwrap();
    assert_eq!(sub["result"][2], json!(4));
    c.send(json!({"id":2,"method":"mining.authorize","params":["w","x"]}))
        .await;
    assert_eq!(c.answer(2).await["result"], json!(true));
    let diff = c.recv().await;
    assert_eq!(diff["method"], "mining.set_difficulty");
    let d = diff["params"][0].as_f64().unwrap();
    let notify = c.recv().await;
    assert_eq!(notify["method"], "mining.notify");
    let job = Job::from_notify(notify["params"].as_array().unwrap(), 1 << 16).unwrap();

    // Find a valid and an invalid nonce ourselves.
    let en2 = [0u8, 0, 0, 7];
    let hasher = HeaderHasher::new(&job.header(&en1, &en2, job.version));
    let target = Target::from_difficulty(d).unwrap();
    let good = (0..u32::MAX)
        .find(|n| target.is_met_by(&hasher.hash(*n)))
        .unwrap();
    let bad = (0..u32::MAX)
        .find(|n| !target.is_met_by(&hasher.hash(*n)))
        .unwrap();
    let submit = |id: u64, job_id: &str, nonce: u32| json!({"id": id, "method": "mining.submit", "params": ["w", job_id, hex::encode(en2), format!("{:08x}", job.ntime), format!("{nonce:08x}")]});

    c.send(submit(10, &job.job_id, good)).await;
    assert_eq!(c.answer(10).await["result"], json!(true));
    c.send(submit(11, &job.job_id, good)).await;
    assert_eq!(c.answer(11).await["error"][0], json!(22), "duplicate");
    c.send(submit(12, &job.job_id, bad)).await;
    assert_eq!(c.answer(12).await["error"][0], json!(23), "low difficulty");
    c.send(submit(13, "nope", good)).await;
    assert_eq!(c.answer(13).await["error"][0], json!(21), "unknown job");
    // Version bits without negotiating version rolling.
    let mut v = submit(14, &job.job_id, good);
    v["params"].as_array_mut().unwrap().push(json!("00002000"));
    c.send(v).await;
    assert_eq!(c.answer(14).await["error"][0], json!(20));

    let stats = pool.stats();
    assert_eq!(stats.accepted.len(), 1);
    assert_eq!(stats.accepted[0].nonce, good);
    assert_eq!(stats.rejected.len(), 4);
}
