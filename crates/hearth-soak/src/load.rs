//! The honest load: concurrent streamed, greedy completions through the gateway, each timed and
//! its text kept for comparison with the attack-free run.

use crate::report::Generation;
use futures::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Prompts the honest clients cycle through (greedy: one text per prompt when all is well).
pub(crate) const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Three things to pack for a week of hiking are",
    "A short poem about the sea:",
    "The main difference between a CPU and a GPU is",
    "Water boils at",
    "The best way to learn a new language is",
    "Once upon a time, in a small village,",
    "The three primary colors are",
];

/// Longest a request may take before its client gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `streams` clients against `url` until `stop` turns true; each request asks for
/// `max_tokens`. Returns every generation that ended, timed from `start`.
pub(crate) async fn run(
    url: String,
    streams: usize,
    max_tokens: usize,
    start: Instant,
    stop: watch::Receiver<bool>,
) -> Vec<Generation> {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap_or_default();
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for worker in 0..streams {
        let (http, url, done, stop) = (http.clone(), url.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !*stop.borrow() {
                let prompt = (worker + n) % PROMPTS.len();
                n += 1;
                let g = one(&http, &url, prompt, max_tokens, start).await;
                done.lock().unwrap_or_else(|p| p.into_inner()).push(g);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut gens = done.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut *gens)
}

/// One streamed completion of prompt `prompt`.
async fn one(
    http: &reqwest::Client,
    url: &str,
    prompt: usize,
    max_tokens: usize,
    start: Instant,
) -> Generation {
    let asked = Instant::now();
    let mut ttft = None;
    let mut tokens = 0;
    let mut trail = None;
    let outcome = async {
        let body = serde_json::json!({
            "model": "soak",
            "prompt": PROMPTS[prompt],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let resp = http
            .post(format!("{url}/v1/completions"))
            .json(&body)
            .send()
            .await
            .map_err(|e| cause_of(&e))?;
        if !resp.status().is_success() {
            return Err(format!("http {}", resp.status().as_u16()));
        }
        trail = resp
            .headers()
            .get("x-hearth-trail")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let mut text = String::new();
        let mut pending = String::new();
        let mut finished = false;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| cause_of(&e))?;
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                let Some(data) = event.trim().strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    finished = true;
                    continue;
                }
                let v: serde_json::Value =
                    serde_json::from_str(data).map_err(|_| "malformed event".to_string())?;
                if let Some(err) = v.get("error") {
                    let kind = err.get("type").and_then(|t| t.as_str()).unwrap_or("error");
                    return Err(format!("stream error: {kind}"));
                }
                if let Some(piece) = v["choices"][0]["text"].as_str() {
                    if !piece.is_empty() && ttft.is_none() {
                        ttft = Some(asked.elapsed());
                    }
                    text.push_str(piece);
                }
                if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                    tokens = n;
                }
            }
        }
        if finished {
            Ok(text)
        } else {
            Err("stream ended without [DONE]".to_string())
        }
    }
    .await;
    let failover_ms = match (&outcome, trail) {
        (Ok(_), Some(path)) => failovers(http, url, &path).await,
        _ => Vec::new(),
    };
    Generation {
        prompt,
        ended: start.elapsed(),
        ttft,
        tokens,
        failover_ms,
        outcome,
    }
}

/// What each failover recorded in the generation's trail added, milliseconds.
async fn failovers(http: &reqwest::Client, url: &str, path: &str) -> Vec<f64> {
    let trail: Option<serde_json::Value> = async {
        http.get(format!("{url}{path}"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }
    .await;
    trail
        .and_then(|t| {
            t["failovers"]
                .as_array()
                .map(|f| f.iter().filter_map(|f| f["recovery_ms"].as_f64()).collect())
        })
        .unwrap_or_default()
}

fn cause_of(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connection refused".into()
    } else {
        "connection error".into()
    }
}
