//! The gateway against hostile HTTP clients, over real sockets on loopback: browser attacks
//! (cross-origin posts, DNS rebinding, bodies not declared as JSON), connection floods, slow
//! heads and bodies, streaming clients that stop reading, and busy refusals that must cost no
//! tokenizer work. Generation runs on a scripted backend that counts what it was asked to do.

mod common;

use common::{model_dir, wait_until, MODEL};

use hearth_core::ContentHash;
use hearth_engine::identity::identity_cached;
use hearth_engine::{FinishReason, Generation, ModelSource};
use hearth_gateway::backend::Job;
use hearth_gateway::{Gateway, GatewayConfig, LocalBackend, Trail};
use hearth_tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A backend whose generations emit `chunk` every `pause` until `max_tokens` or until
/// cancelled, and that counts generations and tokenizer uses.
struct Flood {
    inner: LocalBackend,
    chunk: String,
    pause: Duration,
    tokenizer_calls: AtomicUsize,
    started: AtomicUsize,
    running: AtomicUsize,
    cancelled: AtomicUsize,
}

impl Flood {
    fn new(chunk_bytes: usize, pause: Duration) -> Arc<Self> {
        let src = ModelSource::open(&model_dir().join("m")).unwrap();
        let id = identity_cached(&src, &model_dir().join("ids")).unwrap();
        Arc::new(Self {
            inner: LocalBackend::new(src, id.model_id).unwrap(),
            chunk: "x".repeat(chunk_bytes),
            pause,
            tokenizer_calls: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
        })
    }
}

impl hearth_gateway::Backend for Flood {
    fn tokenizer(&self) -> &Tokenizer {
        self.tokenizer_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.tokenizer()
    }
    fn context_len(&self) -> usize {
        1 << 24
    }
    fn model_id(&self) -> ContentHash {
        self.inner.model_id()
    }
    fn generate(&self, job: Job<'_>) -> (Result<Generation, hearth_engine::EngineError>, Trail) {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.running.fetch_add(1, Ordering::SeqCst);
        let mut g = Generation {
            tokens: Vec::new(),
            text: String::new(),
            prompt_tokens: job.prompt.len(),
            prefill: Duration::ZERO,
            decode: Duration::ZERO,
            finish: FinishReason::Length,
            sampled: Vec::new(),
            rewinds: Vec::new(),
        };
        for i in 0..job.params.max_tokens {
            if (job.cancelled)() {
                g.finish = FinishReason::Cancelled;
                self.cancelled.fetch_add(1, Ordering::SeqCst);
                break;
            }
            g.tokens.push(i as u32);
            (job.on_text)(&self.chunk);
            if !self.pause.is_zero() {
                std::thread::sleep(self.pause);
            }
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        (Ok(g), Trail::default())
    }
}

/// Serves `backend` on an ephemeral loopback port until `shutdown` resolves.
async fn serve_until(
    backend: Arc<Flood>,
    cfg: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (
    SocketAddr,
    Arc<Gateway>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let gw = Gateway::new(
        backend,
        GatewayConfig {
            model_name: MODEL.into(),
            ..cfg
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(hearth_gateway::serve(listener, gw.clone(), shutdown));
    (addr, gw, server)
}

async fn serve(backend: Arc<Flood>, cfg: GatewayConfig) -> (SocketAddr, Arc<Gateway>) {
    let (addr, gw, _) = serve_until(backend, cfg, std::future::pending()).await;
    (addr, gw)
}

/// Sends `request` as is on a fresh connection; the status and body of the answer.
async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut reply))
        .await
        .expect("an answer in time")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {reply:?}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// A request with the given host and extra header lines (each ending in `\r\n`).
fn request(method: &str, path: &str, host: &str, headers: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Whether the server closed `s` within `limit` (end of stream or a reset), reading and
/// discarding whatever it sent first.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.is_ok()
}

fn error_message(body: &str) -> String {
    let v: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    assert!(v["error"]["type"].is_string(), "{body}");
    v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_string()
}

fn completion(max_tokens: u64, stream: bool) -> Value {
    json!({"model": MODEL, "prompt": "a", "max_tokens": max_tokens, "stream": stream})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_posts_are_refused_before_any_work() {
    let backend = Flood::new(1, Duration::ZERO);
    let (addr, gw) = serve(
        backend.clone(),
        GatewayConfig {
            api_keys: vec!["sk-right".into()],
            ..GatewayConfig::default()
        },
    )
    .await;
    let url = format!("http://{addr}");
    let client = reqwest::Client::new();
    let body = completion(3, false).to_string();
    for (content_type, with_key) in [
        // A "simple" request: the browser sends it cross-origin without asking first.
        ("text/plain", true),
        ("application/json", true),
        // Refused before the key is even looked at.
        ("application/json", false),
    ] {
        let mut post = client
            .post(format!("{url}/v1/completions"))
            .header("origin", "https://evil.example")
            .header("content-type", content_type)
            .body(body.clone());
        if with_key {
            post = post.bearer_auth("sk-right");
        }
        let r = post.send().await.unwrap();
        assert_eq!(r.status(), 403, "{content_type}");
        let message = error_message(&r.text().await.unwrap());
        assert!(message.contains("https://evil.example"), "{message}");
    }
    // Every route, not only the generating ones.
    for path in ["/v1/models", "/metrics", "/health"] {
        let r = client
            .get(format!("{url}{path}"))
            .header("origin", "https://evil.example")
            .bearer_auth("sk-right")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    assert_eq!(backend.started.load(Ordering::SeqCst), 0);
    assert_eq!(backend.tokenizer_calls.load(Ordering::SeqCst), 0);
    assert!(gw
        .metrics()
        .encode()
        .contains("hearth_gateway_requests_total{endpoint=\"guard\",status=\"403\"} 6"));

    // The gateway's own origin passes.
    let r = client
        .post(format!("{url}/v1/completions"))
        .header("origin", url.as_str())
        .bearer_auth("sk-right")
        .json(&completion(3, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(backend.started.load(Ordering::SeqCst), 1);

    // So does an origin the operator allowed.
    let (addr, _) = serve(
        Flood::new(1, Duration::ZERO),
        GatewayConfig {
            allowed_origins: vec!["https://dash.example/".into()],
            ..GatewayConfig::default()
        },
    )
    .await;
    let r = client
        .post(format!("http://{addr}/v1/completions"))
        .header("origin", "https://dash.example")
        .json(&completion(3, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_without_a_json_content_type_are_refused_with_415() {
    let backend = Flood::new(1, Duration::ZERO);
    let (addr, _) = serve(backend.clone(), GatewayConfig::default()).await;
    let host = addr.to_string();
    let body = completion(3, false).to_string();
    for headers in [
        "",
        "Content-Type: text/plain\r\n",
        "Content-Type: application/x-www-form-urlencoded\r\n",
    ] {
        let (status, reply) = raw(
            addr,
            &request("POST", "/v1/completions", &host, headers, &body),
        )
        .await;
        assert_eq!(status, 415, "{headers:?}: {reply}");
        assert!(
            error_message(&reply).contains("Content-Type: application/json"),
            "{reply}"
        );
    }
    assert_eq!(backend.started.load(Ordering::SeqCst), 0);
    // Declared as JSON (any parameters), the same body runs.
    let (status, reply) = raw(
        addr,
        &request(
            "POST",
            "/v1/completions",
            &host,
            "Content-Type: application/json; charset=utf-8\r\n",
            &body,
        ),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(backend.started.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_rebinding_host_names_are_refused() {
    let backend = Flood::new(1, Duration::ZERO);
    let (addr, _) = serve(backend.clone(), GatewayConfig::default()).await;
    let port = addr.port();
    let rebound = format!("rebind.evil.example:{port}");
    let json = "Content-Type: application/json\r\n";
    let body = completion(3, false).to_string();
    // To the browser, the page at http://rebind.evil.example:PORT is same-origin.
    let same_origin = format!("Origin: http://{rebound}\r\n{json}");
    for req in [
        request("GET", "/v1/models", &rebound, "", ""),
        request("GET", "/metrics", &rebound, "", ""),
        request("POST", "/v1/completions", &rebound, &same_origin, &body),
    ] {
        let (status, reply) = raw(addr, &req).await;
        assert_eq!(status, 403, "{req}: {reply}");
        assert!(error_message(&reply).contains("--allow-host"), "{reply}");
    }
    assert_eq!(backend.started.load(Ordering::SeqCst), 0);
    // Addresses and localhost pass.
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let (status, reply) = raw(addr, &request("GET", "/v1/models", &host, "", "")).await;
        assert_eq!(status, 200, "{host}: {reply}");
    }
    // A name the operator allowed passes.
    let (addr, _) = serve(
        Flood::new(1, Duration::ZERO),
        GatewayConfig {
            allowed_hosts: vec!["gateway.example".into()],
            ..GatewayConfig::default()
        },
    )
    .await;
    let host = format!("gateway.example:{}", addr.port());
    let (status, reply) = raw(
        addr,
        &request("POST", "/v1/completions", &host, json, &body),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_until_room_frees() {
    let cap = 4;
    let (addr, gw) = serve(
        Flood::new(1, Duration::ZERO),
        GatewayConfig {
            max_connections: cap,
            // Long enough that the idle holders stay for the whole test.
            header_timeout: Duration::from_secs(120),
            ..GatewayConfig::default()
        },
    )
    .await;
    let metric = |text: &str| gw.metrics().encode().contains(text);
    let mut holders = Vec::new();
    for _ in 0..cap {
        holders.push(TcpStream::connect(addr).await.unwrap());
    }
    wait_until(
        "the idle connections to be served",
        Duration::from_secs(20),
        || metric(&format!("hearth_gateway_connections_open {cap}")),
    )
    .await;
    // The extra connections are closed at once instead of waiting for a slot.
    for i in 0..3 {
        let mut extra = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut extra, Duration::from_secs(10)).await,
            "extra connection {i} left open"
        );
    }
    // The holders themselves are still open.
    for h in &mut holders {
        assert!(!closed_within(h, Duration::from_millis(200)).await);
    }
    let url = format!("http://{addr}");
    let client = reqwest::Client::new();
    assert!(client.get(format!("{url}/health")).send().await.is_err());
    // Once the idle connections go, honest clients get in.
    drop(holders);
    wait_until(
        "the held connections to close",
        Duration::from_secs(20),
        || metric("hearth_gateway_connections_open 0"),
    )
    .await;
    let r = client
        .post(format!("{url}/v1/completions"))
        .json(&completion(2, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = gw.metrics().encode();
    let refused: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("hearth_gateway_connections_refused_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(refused >= 4, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stall_in_the_head_are_disconnected() {
    let (addr, _) = serve(
        Flood::new(1, Duration::ZERO),
        GatewayConfig {
            header_timeout: Duration::from_millis(300),
            ..GatewayConfig::default()
        },
    )
    .await;
    // Slowloris: half a head, then nothing.
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        .await
        .unwrap();
    // A connection that never says anything.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut half, Duration::from_secs(10)).await);
    assert!(closed_within(&mut silent, Duration::from_secs(10)).await);
    assert!(started.elapsed() < Duration::from_secs(10));
    // A prompt client is unaffected.
    let (status, _) = raw(addr, &request("GET", "/health", &addr.to_string(), "", "")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let backend = Flood::new(1, Duration::ZERO);
    let (addr, _) = serve(
        backend.clone(),
        GatewayConfig {
            body_timeout: Duration::from_millis(300),
            ..GatewayConfig::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The head promises 100 bytes; 10 come.
    s.write_all(
        format!(
            "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\":"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply))
        .await
        .expect("answered and closed in time")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("did not arrive"), "{reply}");
    assert_eq!(backend.started.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_client_that_stops_reading_is_cut_off_and_its_generation_cancelled() {
    // 4 KiB per event, as fast as the channel takes them: kernel buffers fill within seconds.
    let backend = Flood::new(4096, Duration::ZERO);
    let (addr, gw) = serve(
        backend.clone(),
        GatewayConfig {
            write_timeout: Duration::from_millis(500),
            max_tokens: 1_000_000,
            ..GatewayConfig::default()
        },
    )
    .await;
    // A small receive window, and the client never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    let body = completion(1_000_000, true).to_string();
    stalled
        .write_all(
            request(
                "POST",
                "/v1/completions",
                &addr.to_string(),
                "Content-Type: application/json\r\n",
                &body,
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    wait_until("the generation to start", Duration::from_secs(20), || {
        backend.started.load(Ordering::SeqCst) == 1
    })
    .await;
    wait_until(
        "the stalled generation to be cancelled",
        Duration::from_secs(60),
        || backend.cancelled.load(Ordering::SeqCst) == 1,
    )
    .await;
    wait_until("its slot to be free", Duration::from_secs(20), || {
        let m = gw.metrics().encode();
        m.contains("hearth_gateway_running 0")
            && m.contains("hearth_gateway_slow_clients_total 1")
            && m.contains("hearth_gateway_cancelled_total 1")
    })
    .await;
    assert!(closed_within(&mut stalled, Duration::from_secs(30)).await);

    // A client that reads is not cut off, however much it is sent.
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/v1/completions"))
        .json(&completion(500, true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"));
    assert_eq!(backend.cancelled.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_gateway_refuses_without_tokenizing() {
    let backend = Flood::new(1, Duration::from_millis(5));
    let (addr, _) = serve(
        backend.clone(),
        GatewayConfig {
            max_running: 1,
            max_queue: 0,
            ..GatewayConfig::default()
        },
    )
    .await;
    let url = format!("http://{addr}");
    let client = reqwest::Client::new();
    let running = client
        .post(format!("{url}/v1/completions"))
        .json(&completion(4000, true))
        .send()
        .await
        .unwrap();
    assert_eq!(running.status(), 200);
    wait_until("the first to run", Duration::from_secs(20), || {
        backend.running.load(Ordering::SeqCst) == 1
    })
    .await;
    let tokenized = backend.tokenizer_calls.load(Ordering::SeqCst);
    let long_chat = json!({"model": MODEL,
        "messages": [{"role": "user", "content": "many words ".repeat(5000)}]});
    let ids = json!({"model": MODEL, "prompt": [1, 2, 3]});
    for (path, body) in [
        ("/v1/chat/completions", &long_chat),
        ("/v1/completions", &completion(3, false)),
        ("/v1/completions", &ids),
    ] {
        let r = client
            .post(format!("{url}{path}"))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429, "{path}");
    }
    assert_eq!(
        backend.tokenizer_calls.load(Ordering::SeqCst),
        tokenized,
        "a request refused as busy was tokenized"
    );
    // Bad cheap fields are still a 400, busy or not.
    let r = client
        .post(format!("{url}/v1/completions"))
        .json(&json!({"model": MODEL, "prompt": "a", "temperature": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    drop(running);
    wait_until("the slot to be free", Duration::from_secs(20), || {
        backend.running.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_open_responses_finish_then_stops() {
    let backend = Flood::new(1, Duration::from_millis(5));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, _, server) = serve_until(backend.clone(), GatewayConfig::default(), async {
        let _ = stopped.await;
    })
    .await;
    let mut r = reqwest::Client::new()
        .post(format!("http://{addr}/v1/completions"))
        .json(&completion(200, true))
        .send()
        .await
        .unwrap();
    let mut text = String::from_utf8_lossy(&r.chunk().await.unwrap().unwrap()).into_owned();
    stop.send(()).unwrap();
    while let Some(chunk) = r.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("the server stops once its responses are done")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
    assert_eq!(backend.cancelled.load(Ordering::SeqCst), 0);
}
