//! The gateway over real HTTP on loopback: OpenAI shapes (JSON and SSE), every error path,
//! auth, admission (429), cancellation on disconnect, trails and metrics. Generation runs on
//! in-process blocks of a synthesized model, or on a scripted backend where timing matters.

mod common;

use common::{local_backend, model_dir, wait_until, MODEL};

use hearth_core::ContentHash;
use hearth_engine::{generate, Generation, LoadOptions, ModelSource, Pipeline};
use hearth_gateway::backend::Job;
use hearth_gateway::{Backend, Gateway, GatewayConfig, LocalBackend, Trail};
use hearth_sampling::SamplingParams;
use hearth_tokenizer::{ChatMessage, Tokenizer};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Serves `backend` on an ephemeral loopback port; returns the base URL.
async fn serve(backend: Arc<dyn Backend>, cfg: GatewayConfig) -> (String, Arc<Gateway>) {
    let gw = Gateway::new(
        backend,
        GatewayConfig {
            model_name: MODEL.into(),
            ..cfg
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(hearth_gateway::serve(
        listener,
        gw.clone(),
        std::future::pending(),
    ));
    (url, gw)
}

async fn post(url: &str, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}")),
    )
}

/// The text a greedy local run produces, computed without the gateway.
fn expected_text(prompt: &[u32], max_tokens: usize) -> Generation {
    let src = ModelSource::open(&model_dir().join("m")).unwrap();
    let tokenizer = src.tokenizer().unwrap();
    let mut p = Pipeline::load_local(
        &src,
        &[hearth_core::BlockRange::full(src.config().num_blocks()).unwrap()],
        &LoadOptions::default(),
        prompt.len() + max_tokens,
    )
    .unwrap();
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens,
        ..SamplingParams::default()
    };
    generate(&mut p, &tokenizer, prompt, &params, &mut |_| {}).unwrap()
}

fn chat_prompt(tokenizer: &Tokenizer, content: &str) -> Vec<u32> {
    let text = tokenizer
        .chat_template()
        .unwrap()
        .render(&[ChatMessage::new("user", content)], true)
        .unwrap();
    tokenizer.encode(&text, false).unwrap()
}

/// SSE `data:` payloads of a response body, in order.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        })
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_completions_match_local_generation_in_json_and_sse() {
    let backend = Arc::new(local_backend());
    let prompt = chat_prompt(backend.tokenizer(), "Hello there");
    let want = expected_text(&prompt, 12);
    let (url, _) = serve(backend.clone(), GatewayConfig::default()).await;

    let req = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": 12, "temperature": 0});
    let (status, body) = post(&url, "/v1/chat/completions", req.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], want.text);
    let finish = if want.tokens.len() == 12 && want.finish == hearth_engine::FinishReason::Length {
        "length"
    } else {
        "stop"
    };
    assert_eq!(body["choices"][0]["finish_reason"], finish);
    assert_eq!(body["usage"]["prompt_tokens"], prompt.len());
    assert_eq!(body["usage"]["completion_tokens"], want.tokens.len());
    assert_eq!(
        body["usage"]["total_tokens"],
        prompt.len() + want.tokens.len()
    );
    assert_eq!(body["hearth"]["route"][0]["node"], "local");

    // The same request streamed: the deltas add up to the same text.
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&sreq)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_data(&r.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, want.text);
    let last_choice = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(last_choice["finish_reason"], finish);
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], want.tokens.len());
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));

    // Completions: the raw prompt with BOS, JSON and streamed.
    let tokenizer = backend.tokenizer();
    let cprompt = tokenizer.encode("Once upon", true).unwrap();
    let want = expected_text(&cprompt, 9);
    let creq = json!({"model": MODEL, "prompt": "Once upon", "max_tokens": 9, "temperature": 0.0});
    let (status, body) = post(&url, "/v1/completions", creq.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], want.text);
    assert_eq!(body["usage"]["prompt_tokens"], cprompt.len());
    let mut sreq = creq.clone();
    sreq["stream"] = json!(true);
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/completions"))
        .json(&sreq)
        .send()
        .await
        .unwrap();
    let events = sse_data(&r.text().await.unwrap());
    let text: String = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, want.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_sampling_repeats_and_models_are_listed() {
    let (url, _) = serve(Arc::new(local_backend()), GatewayConfig::default()).await;
    let req = json!({"model": MODEL, "prompt": "abc", "max_tokens": 10, "temperature": 1.2,
        "top_p": 0.9, "seed": 42});
    let (_, a) = post(&url, "/v1/completions", req.to_string()).await;
    let (_, b) = post(&url, "/v1/completions", req.to_string()).await;
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    let mut other = req.clone();
    other["seed"] = json!(43);
    let mut differs = false;
    for seed in 43..48 {
        other["seed"] = json!(seed);
        let (_, c) = post(&url, "/v1/completions", other.to_string()).await;
        differs |= c["choices"][0]["text"] != a["choices"][0]["text"];
    }
    assert!(differs, "the seed changes the sample");

    let models: Value = reqwest::get(format!("{url}/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    let one = reqwest::get(format!("{url}/v1/models/{MODEL}"))
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let none = reqwest::get(format!("{url}/v1/models/gpt-4"))
        .await
        .unwrap();
    assert_eq!(none.status(), 404);
}

fn assert_error(status: u16, body: &Value, want_status: u16, needle: &str) {
    assert_eq!(status, want_status, "{body}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"));
    assert!(body["error"]["type"].is_string(), "{body}");
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_style_4xx_errors() {
    let (url, _) = serve(
        Arc::new(local_backend()),
        GatewayConfig {
            max_body_bytes: 4096,
            max_tokens: 100,
            max_context: Some(64),
            ..GatewayConfig::default()
        },
    )
    .await;
    let chat = "/v1/chat/completions";
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (chat, b"{not json".to_vec(), 400, "not valid JSON"),
        (chat, b"".to_vec(), 400, "empty"),
        (chat, b"[1,2]".to_vec(), 400, "not valid JSON"),
        (chat, br#"{"model": "tiny-test", "messages": "hi"}"#.to_vec(), 400, "invalid type"),
        (chat, br#"{"model": 7, "messages": []}"#.to_vec(), 400, "invalid type"),
        (chat, br#"{"messages": [{"role":"user","content":"x"}]}"#.to_vec(), 400, "missing field `model`"),
        (chat, br#"{"model": "tiny-test", "messages": []}"#.to_vec(), 400, "at least one message"),
        (chat, br#"{"model": "gpt-4", "messages": [{"role":"user","content":"x"}]}"#.to_vec(), 404, "does not exist"),
        (chat, br#"{"model": "tiny-test", "messages": [{"role":"wizard","content":"x"}]}"#.to_vec(), 400, "role"),
        (chat, br#"{"model": "tiny-test", "messages": [{"role":"user","content":[{"type":"image_url"}]}]}"#.to_vec(), 400, "image_url"),
        (chat, br#"{"model": "tiny-test", "messages": [{"role":"user","content":"x"}], "n": 2}"#.to_vec(), 400, "n: 1"),
        (chat, br#"{"model": "tiny-test", "messages": [{"role":"user","content":"x"}], "max_tokens": 1000}"#.to_vec(), 400, "at most 100"),
        (chat, br#"{"model": "tiny-test", "messages": [{"role":"user","content":"x"}], "max_tokens": 60}"#.to_vec(), 400, "maximum context length is 64"),
        (chat, br#"{"model": "tiny-test", "messages": [{"role":"user","content":"x"}], "max_tokens": 0}"#.to_vec(), 400, "at least 1"),
        (chat, br#"{"model": "tiny-test", "messages": [{"role":"user","content":"x"}], "temperature": 5}"#.to_vec(), 400, "temperature"),
        (chat, br#"{"model": "tiny-test", "messages": [{"role":"user","content":"x"}], "top_p": 0}"#.to_vec(), 400, "top_p"),
        (chat, br#"{"model": "tiny-test", "messages": [{"role":"user","content":"x"}], "stop": ["a","b","c","d","e"]}"#.to_vec(), 400, "stop"),
        (chat, br#"{"model": "tiny-test", "messages": [{"role":"user","content":"x"}], "logprobs": true}"#.to_vec(), 400, "logprobs"),
        (chat, br#"{"model": "tiny-test", "messages": [{"role":"user","content":"x"}], "max_tokens": -3}"#.to_vec(), 400, "invalid value"),
        // Invalid UTF-8 inside a JSON string.
        (chat, b"{\"model\": \"tiny-test\", \"messages\": [{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}".to_vec(), 400, "not valid JSON"),
        ("/v1/completions", br#"{"model": "tiny-test", "prompt": ["a", "b"]}"#.to_vec(), 400, "one prompt"),
        ("/v1/completions", br#"{"model": "tiny-test", "prompt": [1, 99999999]}"#.to_vec(), 400, "outside the vocabulary"),
        ("/v1/completions", br#"{"model": "tiny-test", "prompt": "x", "echo": true}"#.to_vec(), 400, "echo"),
    ];
    for (path, body, status, needle) in cases {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let (got, reply) = post(&url, path, body).await;
        assert_eq!(got, status, "{path} {shown}: {reply}");
        assert_error(got, &reply, status, needle);
    }
    // A long prompt overflows the context.
    let long = json!({"model": MODEL, "prompt": "word ".repeat(200)});
    let (s, b) = post(&url, "/v1/completions", long.to_string()).await;
    assert_error(s, &b, 400, "maximum context length is 64");
    // Over the body limit.
    let big = json!({"model": MODEL, "prompt": "x".repeat(10_000)});
    let (s, b) = post(&url, "/v1/completions", big.to_string()).await;
    assert_error(s, &b, 413, "larger than");
    // Unknown path and wrong method are JSON errors too.
    let r = reqwest::get(format!("{url}/v1/nothing")).await.unwrap();
    assert_eq!(r.status(), 404);
    let b: Value = r.json().await.unwrap();
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v1/nothing"));
    let r = reqwest::get(format!("{url}/v1/chat/completions"))
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let b: Value = r.json().await.unwrap();
    assert!(b["error"]["message"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_required_when_configured() {
    let (url, _) = serve(
        Arc::new(local_backend()),
        GatewayConfig {
            api_keys: vec!["sk-right".into()],
            ..GatewayConfig::default()
        },
    )
    .await;
    let client = reqwest::Client::new();
    let models = format!("{url}/v1/models");
    let r = client.get(&models).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "invalid_api_key");
    let r = client
        .get(&models)
        .bearer_auth("sk-wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(&models)
        .bearer_auth("sk-right")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("{url}/v1/completions"))
        .bearer_auth("sk-right")
        .json(&json!({"model": MODEL, "prompt": "a", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A backend whose generations emit one piece of text every 5 ms until `max_tokens` or until
/// cancelled, and that records what happened.
struct Scripted {
    inner: LocalBackend,
    running: AtomicUsize,
    cancelled: AtomicUsize,
    finished: AtomicUsize,
    stop_all: AtomicBool,
}

impl Backend for Scripted {
    fn tokenizer(&self) -> &Tokenizer {
        self.inner.tokenizer()
    }
    fn context_len(&self) -> usize {
        self.inner.context_len()
    }
    fn model_id(&self) -> ContentHash {
        self.inner.model_id()
    }
    fn generate(&self, job: Job<'_>) -> (Result<Generation, hearth_engine::EngineError>, Trail) {
        self.running.fetch_add(1, Ordering::SeqCst);
        let mut g = Generation {
            tokens: Vec::new(),
            text: String::new(),
            prompt_tokens: job.prompt.len(),
            prefill: Duration::ZERO,
            decode: Duration::ZERO,
            finish: hearth_engine::FinishReason::Length,
            sampled: Vec::new(),
            rewinds: Vec::new(),
        };
        for i in 0..job.params.max_tokens {
            if (job.cancelled)() || self.stop_all.load(Ordering::SeqCst) {
                g.finish = hearth_engine::FinishReason::Cancelled;
                self.cancelled.fetch_add(1, Ordering::SeqCst);
                break;
            }
            g.tokens.push(i as u32);
            (job.on_text)("x");
            g.text.push('x');
            std::thread::sleep(Duration::from_millis(5));
        }
        if g.finish != hearth_engine::FinishReason::Cancelled {
            self.finished.fetch_add(1, Ordering::SeqCst);
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        (Ok(g), Trail::default())
    }
}

fn scripted() -> Arc<Scripted> {
    Arc::new(Scripted {
        inner: local_backend(),
        running: AtomicUsize::new(0),
        cancelled: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        stop_all: AtomicBool::new(false),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let backend = scripted();
    let (url, gw) = serve(
        backend.clone(),
        GatewayConfig {
            max_running: 1,
            max_queue: 1,
            ..GatewayConfig::default()
        },
    )
    .await;
    let long = json!({"model": MODEL, "prompt": "a", "max_tokens": 4000, "stream": true});
    let client = reqwest::Client::new();
    // One running, one queued: both accepted (streams start at once).
    let first = client
        .post(format!("{url}/v1/completions"))
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let second = client
        .post(format!("{url}/v1/completions"))
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 200);
    wait_until("the first to run", Duration::from_secs(10), || {
        backend.running.load(Ordering::SeqCst) == 1
    })
    .await;
    let third = client
        .post(format!("{url}/v1/completions"))
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 429);
    let retry: u64 = third.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let b: Value = third.json().await.unwrap();
    assert_eq!(b["error"]["code"], "rate_limit_exceeded");
    assert!(gw
        .metrics()
        .encode()
        .contains("hearth_gateway_queue_depth 1"));
    // Freeing the running one lets the queued one run; then there is room again.
    drop(first);
    wait_until("the queued one to run", Duration::from_secs(10), || {
        backend.cancelled.load(Ordering::SeqCst) == 1 && backend.running.load(Ordering::SeqCst) == 1
    })
    .await;
    let fourth = client
        .post(format!("{url}/v1/completions"))
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(fourth.status(), 200);
    backend.stop_all.store(true, Ordering::SeqCst);
    drop((second, fourth));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnects_cancel_generations() {
    let backend = scripted();
    let (url, gw) = serve(backend.clone(), GatewayConfig::default()).await;
    let body =
        |stream: bool| json!({"model": MODEL, "prompt": "a", "max_tokens": 4000, "stream": stream});
    // Streaming: read a few chunks, then hang up.
    let mut r = reqwest::Client::new()
        .post(format!("{url}/v1/completions"))
        .json(&body(true))
        .send()
        .await
        .unwrap();
    for _ in 0..3 {
        r.chunk().await.unwrap().unwrap();
    }
    drop(r);
    wait_until(
        "the streamed generation to stop",
        Duration::from_secs(10),
        || backend.cancelled.load(Ordering::SeqCst) == 1,
    )
    .await;
    // Non-streaming: the client gives up before the answer.
    let timed_out = reqwest::Client::new()
        .post(format!("{url}/v1/completions"))
        .timeout(Duration::from_millis(300))
        .json(&body(false))
        .send()
        .await;
    assert!(timed_out.is_err());
    wait_until(
        "the JSON generation to stop",
        Duration::from_secs(10),
        || backend.cancelled.load(Ordering::SeqCst) == 2,
    )
    .await;
    assert_eq!(backend.finished.load(Ordering::SeqCst), 0);
    wait_until("the slots to be free", Duration::from_secs(10), || {
        let m = gw.metrics().encode();
        m.contains("hearth_gateway_running 0") && m.contains("hearth_gateway_cancelled_total 2")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trails_and_metrics_are_served() {
    let (url, _) = serve(Arc::new(local_backend()), GatewayConfig::default()).await;
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/completions"))
        .json(&json!({"model": MODEL, "prompt": "a", "max_tokens": 3}))
        .send()
        .await
        .unwrap();
    let link = r.headers()["x-hearth-trail"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    let trail: Value = reqwest::get(format!("{url}{link}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(trail, body["hearth"]);
    let missing = reqwest::get(format!("{url}/v1/hearth/trails/nope"))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("hearth_gateway_requests_total{endpoint=\"completions\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("hearth_gateway_completion_tokens_total 3"),
        "{text}"
    );
    assert!(
        text.contains("hearth_gateway_time_to_first_token_seconds_count 1"),
        "{text}"
    );
    // Every sample line is `name{labels} value` with a numeric value.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    assert!(text.trim_end().ends_with("# EOF"));
}

/// Mutated request bodies (bit flips, truncations, spliced JSON values) never produce a 5xx or
/// a panic: every answer is a success or an OpenAI-style 4xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_never_get_a_server_error() {
    let (url, _) = serve(
        Arc::new(local_backend()),
        GatewayConfig {
            max_tokens: 4,
            default_max_tokens: 4,
            max_context: Some(48),
            max_body_bytes: 2048,
            ..GatewayConfig::default()
        },
    )
    .await;
    let seeds = [
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
        json!({"model": MODEL, "messages": [{"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "t"}]}], "stop": ["a"], "seed": 1}),
        json!({"model": MODEL, "prompt": "abc", "max_tokens": 2, "temperature": 0.5, "top_p": 0.5}),
        json!({"model": MODEL, "prompt": [1, 2, 3], "stream": true, "max_tokens": 2}),
    ];
    let splices = [
        "null",
        "-1",
        "1e400",
        "\"\"",
        "[]",
        "{}",
        "true",
        "\"\\ud800\"",
        "18446744073709551616",
        "[[[[[[[[[[]]]]]]]]]]",
        "\"\u{0}\"",
    ];
    let mut rng = hearth_core::SplitMix64::new(0x9E37_79B9_7F4A_7C15);
    let mut next = move || rng.next_u64();
    let client = reqwest::Client::new();
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..600 {
        let seed = seeds[i % seeds.len()].to_string().into_bytes();
        let mut body = seed.clone();
        match next() % 4 {
            0 => {
                let at = (next() as usize) % body.len();
                body[at] ^= 1 << (next() % 8);
            }
            1 => body.truncate((next() as usize) % body.len()),
            2 => {
                // Replace the value after a random ':' with an odd JSON value.
                let colons: Vec<usize> = (0..body.len()).filter(|&j| body[j] == b':').collect();
                let at = colons[(next() as usize) % colons.len()] + 1;
                let end = body[at..]
                    .iter()
                    .position(|&c| c == b',' || c == b'}')
                    .map_or(body.len(), |p| at + p);
                let splice = splices[(next() as usize) % splices.len()].as_bytes();
                body.splice(at..end, splice.iter().copied());
            }
            _ => {
                let at = (next() as usize) % body.len();
                body.insert(at, (next() % 256) as u8);
            }
        }
        let path = if String::from_utf8_lossy(&seed).contains("\"prompt\"") {
            "/v1/completions"
        } else {
            "/v1/chat/completions"
        };
        let r = client
            .post(format!("{url}{path}"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert!(
            status < 500,
            "{status} for {:?}: {text}",
            String::from_utf8_lossy(&body)
        );
        if status >= 400 {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert!(v["error"]["message"].is_string(), "{text}");
        }
        *statuses.entry(status).or_insert(0) += 1;
    }
    // The mutations exercised both accepted and refused requests.
    assert!(
        statuses.get(&200).copied().unwrap_or(0) > 20,
        "{statuses:?}"
    );
    assert!(
        statuses.get(&400).copied().unwrap_or(0) > 100,
        "{statuses:?}"
    );
}
