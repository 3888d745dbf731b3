//! Load test of a running gateway: N concurrent streaming chat requests, bounded in count.
//!
//! `cargo run --release -p hearth-gateway --example loadtest -- URL MODEL [--streams 1,8,32]
//!  [--requests-per-stream 2] [--max-tokens 32] [--pid GATEWAY_PID]`
//!
//! Prints, per concurrency level: answered / 429 / other errors, time to first token (p50, p95),
//! aggregate completion tokens/s, median per-stream decode tokens/s, and (with `--pid`) the
//! gateway's resident memory after the level. Exits non-zero on any error other than 429.

use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

struct Outcome {
    status: u16,
    ttft: Option<Duration>,
    tokens: u64,
    total: Duration,
}

async fn one(
    client: &reqwest::Client,
    url: &str,
    model: &str,
    max_tokens: u64,
    i: usize,
) -> Outcome {
    let started = Instant::now();
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": format!("Request {i}: tell me a story.")}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "seed": i,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let response = match client
        .post(format!("{url}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(_) => {
            return Outcome {
                status: 0,
                ttft: None,
                tokens: 0,
                total: started.elapsed(),
            }
        }
    };
    let status = response.status().as_u16();
    let mut ttft = None;
    let mut tokens = 0;
    let mut failed = false;
    let mut buf = String::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            failed = true;
            break;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                failed = true;
                continue;
            };
            if v.get("error").is_some() {
                failed = true;
            }
            if ttft.is_none()
                && v["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty())
            {
                ttft = Some(started.elapsed());
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = n;
            }
        }
    }
    Outcome {
        status: if failed && status == 200 { 599 } else { status },
        ttft,
        tokens,
        total: started.elapsed(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, model) = match (args.get(1), args.get(2)) {
        (Some(u), Some(m)) => (u.clone(), m.clone()),
        _ => {
            eprintln!("usage: loadtest URL MODEL [--streams 1,8,32] [--requests-per-stream 2] [--max-tokens 32] [--pid PID]");
            std::process::exit(2);
        }
    };
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let streams: Vec<usize> = flag("--streams")
        .unwrap_or_else(|| "1,8,32".into())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let per_stream: usize = flag("--requests-per-stream")
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let max_tokens: u64 = flag("--max-tokens")
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let pid: Option<u32> = flag("--pid").and_then(|s| s.parse().ok());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("HTTP client");
    println!("| streams | answered | 429 | errors | TTFT p50 ms | TTFT p95 ms | aggregate tok/s | per-stream tok/s (median) | gateway RSS MiB |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut bad = 0;
    for &n in &streams {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..n {
            let (client, url, model) = (client.clone(), url.clone(), model.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for r in 0..per_stream {
                    out.push(one(&client, &url, &model, max_tokens, w * 1000 + r).await);
                }
                out
            }));
        }
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.extend(t.await.unwrap_or_default());
        }
        let wall = started.elapsed().as_secs_f64();
        let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 200).collect();
        let busy = outcomes.iter().filter(|o| o.status == 429).count();
        let errors = outcomes.len() - ok.len() - busy;
        bad += errors;
        let mut ttft: Vec<f64> = ok
            .iter()
            .filter_map(|o| o.ttft.map(|d| d.as_secs_f64() * 1000.0))
            .collect();
        ttft.sort_by(f64::total_cmp);
        let tokens: u64 = ok.iter().map(|o| o.tokens).sum();
        let mut per: Vec<f64> = ok
            .iter()
            .filter_map(|o| {
                let decode = o.total.checked_sub(o.ttft?)?.as_secs_f64();
                (o.tokens > 1 && decode > 0.0).then(|| (o.tokens - 1) as f64 / decode)
            })
            .collect();
        per.sort_by(f64::total_cmp);
        let rss = pid
            .and_then(rss_kib)
            .map_or("-".to_string(), |k| format!("{:.0}", k as f64 / 1024.0));
        println!(
            "| {n} | {} | {busy} | {errors} | {:.0} | {:.0} | {:.1} | {:.1} | {rss} |",
            ok.len(),
            percentile(&ttft, 0.5),
            percentile(&ttft, 0.95),
            tokens as f64 / wall,
            percentile(&per, 0.5),
        );
    }
    if bad > 0 {
        eprintln!("{bad} requests failed with errors other than 429");
        std::process::exit(1);
    }
}
