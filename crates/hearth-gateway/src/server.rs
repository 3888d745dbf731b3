//! The HTTP server: routes, request validation, admission (a bounded queue of generations),
//! streaming, cancellation and the verification trail of each response.
//!
//! Invariants:
//! - every request passes the browser guard before the key check and before its body is read;
//! - a request is rendered and tokenized only once admitted;
//! - every failure is an OpenAI-style error body; bad input is a 4xx, never a 500 or a panic;
//!   a failed generation gets the status of its kind of failure ([`crate::failure`]);
//! - at most `max_running + max_queue` generations are admitted; more get 429 + `Retry-After`;
//! - a generation whose client went away stops at its next token, and its swarm sessions are
//!   closed (the chain is dropped), so nodes free their caches at once.

use crate::backend::{Backend, Job};
use crate::connection::{ConnectionMetrics, Limits};
use crate::failure::Failure;
use crate::metrics::Metrics;
use crate::openai::{
    unix_now, ApiError, ChatMessageIn, ChatRequest, CommonParams, CompletionRequest, ContentIn,
    ModelCard, PromptIn, Usage,
};
use crate::trail::Trail;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, State};
use axum::http::{HeaderValue, Request, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use hearth_core::{ApiKeys, RequestGuard, RequestHead};
use hearth_engine::{FinishReason, Generation};
use hearth_sampling::{SamplingError, SamplingParams};
use hearth_tokenizer::ChatMessage;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

/// Operator settings of a gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The name clients put in `model` (the model's content id is accepted too).
    pub model_name: String,
    /// Accepted bearer tokens; empty = no auth (the binary then refuses non-loopback addresses).
    pub api_keys: Vec<String>,
    /// Largest request body, bytes (413 above).
    pub max_body_bytes: usize,
    /// Largest `max_tokens` a request may ask for (400 above).
    pub max_tokens: usize,
    /// Completion tokens when a request does not say (capped by the context left).
    pub default_max_tokens: usize,
    /// Longest prompt + completion, tokens; `None` = the model's own context length.
    pub max_context: Option<usize>,
    /// Generations running at once.
    pub max_running: usize,
    /// Generations admitted and waiting beyond those running (429 above).
    pub max_queue: usize,
    /// Verification trails kept for `GET /v1/hearth/trails/{id}`.
    pub trails_kept: usize,
    /// Host names (no port) accepted in `Host` besides IP addresses and `localhost`: the names
    /// clients reach the gateway by, e.g. behind a reverse proxy. Other names are refused (403)
    /// because a DNS-rebinding page's requests carry the attacker's name.
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`scheme://host[:port]`) whose requests are accepted besides the
    /// gateway's own; other cross-origin requests are refused (403).
    pub allowed_origins: Vec<String>,
    /// HTTP connections open at once; connections beyond it are closed as soon as they are
    /// accepted, so idle connections cannot exhaust file descriptors or memory.
    pub max_connections: usize,
    /// Time a connection has to send a complete request head, counted from when the
    /// connection opens or its previous response ends (idle keep-alive connections included);
    /// the connection is closed after it.
    pub header_timeout: Duration,
    /// Time a request has to send its whole body once its head arrived (408 after it).
    pub body_timeout: Duration,
    /// Longest time a response write may stay blocked because the client does not read; the
    /// connection is then closed and its generation cancelled.
    pub write_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            model_name: "hearth".into(),
            api_keys: Vec::new(),
            max_body_bytes: 1 << 20,
            max_tokens: 4096,
            default_max_tokens: 256,
            max_context: None,
            max_running: 8,
            max_queue: 32,
            trails_kept: 256,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything the handlers share.
pub struct Gateway {
    backend: Arc<dyn Backend>,
    cfg: GatewayConfig,
    keys: ApiKeys,
    guard: RequestGuard,
    metrics: Metrics,
    admission: Admission,
    trails: Trails,
    created: u64,
    next_id: AtomicU64,
}

impl Gateway {
    /// A gateway serving `backend` with the settings `cfg`; share it with [`router`] or [`serve`].
    pub fn new(backend: Arc<dyn Backend>, cfg: GatewayConfig) -> Arc<Self> {
        Arc::new(Self {
            keys: ApiKeys::new(&cfg.api_keys),
            guard: RequestGuard::new(&cfg.allowed_hosts, &cfg.allowed_origins),
            admission: Admission::new(cfg.max_running.max(1), cfg.max_queue),
            trails: Trails::new(cfg.trails_kept),
            backend,
            metrics: Metrics::default(),
            created: unix_now(),
            next_id: AtomicU64::new(0),
            cfg,
        })
    }

    /// The gateway's metrics, as served on `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn context_len(&self) -> usize {
        let model = self.backend.context_len();
        self.cfg.max_context.map_or(model, |c| c.min(model))
    }

    fn fresh_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let h = blake3::hash(&[&n.to_le_bytes()[..], &nanos.to_le_bytes()[..]].concat());
        h.to_hex()[..24].to_string()
    }

    fn knows_model(&self, model: &str) -> bool {
        model == self.cfg.model_name || model == self.backend.model_id().to_hex()
    }
}

/// The router: OpenAI endpoints (behind the API keys), `/metrics`, `/health`.
pub fn router(gw: Arc<Gateway>) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{model}", get(get_model))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/hearth/trails/{id}", get(get_trail))
        .route_layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            require_key,
        ));
    Router::new()
        .merge(v1)
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok" }))
        .fallback(|uri: axum::http::Uri| async move { ApiError::not_found(uri.path()) })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(gw.cfg.max_body_bytes))
        // Around every route, the key check included: browser attacks cost no work at all.
        .layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            browser_guard,
        ))
        // One span per request (method, path, status, latency) for `RUST_LOG=tower_http=debug`.
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(gw)
}

/// Refuses what a web page could make the operator's browser send (`hearth_core::RequestGuard`):
/// cross-origin requests, DNS-rebound host names and bodies not declared as JSON. Reads only
/// the head, so nothing of the body is read for a refused request.
async fn browser_guard(State(gw): State<Arc<Gateway>>, req: Request<Body>, next: Next) -> Response {
    let headers = req.headers();
    let header = |name| headers.get(name).map(HeaderValue::as_bytes);
    let head = RequestHead {
        method: req.method().as_str(),
        host: header(axum::http::header::HOST)
            .or_else(|| req.uri().authority().map(|a| a.as_str().as_bytes())),
        origin: header(axum::http::header::ORIGIN),
        content_type: header(axum::http::header::CONTENT_TYPE),
    };
    match gw.guard.check(&head) {
        Ok(()) => next.run(req).await,
        Err(refusal) => {
            tracing::debug!(method = %req.method(), uri = %req.uri(), "refused: {refusal}");
            gw.metrics.request("guard", refusal.status());
            ApiError::refused(&refusal).into_response()
        }
    }
}

async fn require_key(
    State(gw): State<Arc<Gateway>>,
    req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if gw.keys.accepts(header) {
        next.run(req).await
    } else {
        gw.metrics.request("auth", 401);
        ApiError::unauthorized().into_response()
    }
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    if let Some(stats) = gw.backend.head_stats() {
        gw.metrics.head_products.set(stats.products as i64);
        gw.metrics.head_rows.set(stats.rows as i64);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gw.metrics.encode(),
    )
        .into_response()
}

fn model_card(gw: &Gateway) -> ModelCard {
    ModelCard {
        id: gw.cfg.model_name.clone(),
        object: "model",
        created: gw.created,
        owned_by: "hearth",
    }
}

async fn list_models(State(gw): State<Arc<Gateway>>) -> Response {
    gw.metrics.request("models", 200);
    Json(json!({ "object": "list", "data": [model_card(&gw)] })).into_response()
}

async fn get_model(State(gw): State<Arc<Gateway>>, Path(model): Path<String>) -> Response {
    if !gw.knows_model(&model) {
        gw.metrics.request("models", 404);
        return ApiError::model_not_found(&model).into_response();
    }
    gw.metrics.request("models", 200);
    Json(model_card(&gw)).into_response()
}

async fn get_trail(State(gw): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    match gw.trails.get(&id) {
        Some(trail) => Json(&*trail).into_response(),
        None => ApiError {
            status: StatusCode::NOT_FOUND,
            ..ApiError::invalid(format!(
                "No trail {id}: unknown, or older than the last {} responses.",
                gw.cfg.trails_kept
            ))
        }
        .into_response(),
    }
}

/// Which endpoint a generation answers: decides the JSON shapes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    fn endpoint(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Completion => "completions",
        }
    }

    /// The id prefix and the `object` of this endpoint's stream chunks.
    fn chunk_ids(self) -> (&'static str, &'static str) {
        match self {
            Kind::Chat => ("chatcmpl", "chat.completion.chunk"),
            Kind::Completion => ("cmpl", "text_completion"),
        }
    }
}

fn stopped_unexpectedly() -> ApiError {
    ApiError::internal("The generation stopped unexpectedly.")
}

/// A request whose cheap JSON fields passed validation. Its prompt is rendered and tokenized
/// only once the request is admitted ([`tokenize`]), so a request refused as busy costs no
/// template or tokenizer work.
struct Checked {
    prompt: PromptInput,
    /// Validated sampling parameters; `max_tokens` is what the request asked for (or the
    /// default), capped by the context once the prompt's length is known; `seed` is set then.
    params: SamplingParams,
    /// `max_tokens` as the request gave it: a prompt that leaves less room is then a 400
    /// rather than a shorter completion.
    asked_max_tokens: Option<usize>,
    seed: Option<u64>,
    stream: bool,
    include_usage: bool,
}

/// The prompt as the request gave it.
enum PromptInput {
    /// Chat messages for the model's chat template (which writes its own BOS token).
    Chat(Vec<ChatMessage>),
    /// Text, tokenized after a BOS token.
    Text(String),
    /// Token ids, checked against the vocabulary when the prompt is tokenized.
    Ids(Vec<u64>),
}

/// An admitted request, ready to run.
struct Prepared {
    prompt: Vec<u32>,
    params: SamplingParams,
    stream: bool,
    include_usage: bool,
}

async fn chat_completions(State(gw): State<Arc<Gateway>>, req: Request<Body>) -> Response {
    let arrived = Instant::now();
    let checked = read_json::<ChatRequest>(&gw, req)
        .await
        .and_then(|req| check_chat(&gw, req));
    respond(gw, Kind::Chat, checked, arrived).await
}

async fn completions(State(gw): State<Arc<Gateway>>, req: Request<Body>) -> Response {
    let arrived = Instant::now();
    let checked = read_json::<CompletionRequest>(&gw, req)
        .await
        .and_then(|req| check_completion(&gw, req));
    respond(gw, Kind::Completion, checked, arrived).await
}

/// Reads and parses the body, which must arrive whole within `body_timeout`: a client
/// trickling it in would otherwise hold its connection and this request open at will.
async fn read_json<T: serde::de::DeserializeOwned>(
    gw: &Gateway,
    req: Request<Body>,
) -> Result<T, ApiError> {
    let limit = gw.cfg.body_timeout;
    let bytes = tokio::time::timeout(limit, Bytes::from_request(req, &()))
        .await
        .map_err(|_| ApiError::body_timeout(limit))?
        .map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(gw.cfg.max_body_bytes)
            } else {
                ApiError::invalid(format!("Could not read the request body: {e}"))
            }
        })?;
    if bytes.is_empty() {
        return Err(ApiError::invalid(
            "The request body is empty; send a JSON object.",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::invalid(format!(
            "The request body is not valid JSON for this endpoint: {e}"
        ))
    })
}

fn check_chat(gw: &Gateway, req: ChatRequest) -> Result<Checked, ApiError> {
    if !gw.knows_model(&req.model) {
        return Err(ApiError::model_not_found(&req.model));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "`messages` must hold at least one message.",
        ));
    }
    let messages = req
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| chat_message(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    check_common(gw, PromptInput::Chat(messages), req.common)
}

fn chat_message(i: usize, m: ChatMessageIn) -> Result<ChatMessage, ApiError> {
    let role = match m.role.as_str() {
        "system" | "user" | "assistant" | "tool" => m.role,
        // The newer name of `system` for reasoning models.
        "developer" => "system".to_string(),
        other => {
            return Err(ApiError::invalid_param(
                "messages",
                format!("messages[{i}].role {other:?} is not one of system, developer, user, assistant, tool."),
            ))
        }
    };
    let content = match m.content {
        None => String::new(),
        Some(ContentIn::Text(t)) => t,
        Some(ContentIn::Parts(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.into_iter().enumerate() {
                match (p.kind.as_str(), p.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => {
                        return Err(ApiError::invalid_param(
                            "messages",
                            format!("messages[{i}].content[{j}]: content parts of type {kind:?} are not supported (text only)."),
                        ))
                    }
                }
            }
            text
        }
    };
    Ok(ChatMessage::new(role, content))
}

fn check_completion(gw: &Gateway, req: CompletionRequest) -> Result<Checked, ApiError> {
    if !gw.knows_model(&req.model) {
        return Err(ApiError::model_not_found(&req.model));
    }
    if req.echo == Some(true) {
        return Err(ApiError::invalid_param("echo", "`echo` is not supported."));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid_param(
            "suffix",
            "`suffix` is not supported.",
        ));
    }
    let prompt = match req.prompt {
        PromptIn::Text(t) => PromptInput::Text(t),
        PromptIn::Many(items) => prompt_list(items)?,
    };
    check_common(gw, prompt, req.common)
}

/// `prompt` as a list: one string, or token ids.
fn prompt_list(items: Vec<Value>) -> Result<PromptInput, ApiError> {
    match items.as_slice() {
        [Value::String(s)] => Ok(PromptInput::Text(s.clone())),
        _ if !items.is_empty() && items.iter().all(Value::is_u64) => Ok(PromptInput::Ids(
            items.iter().filter_map(Value::as_u64).collect(),
        )),
        _ => Err(ApiError::invalid_param(
            "prompt",
            "`prompt` must be a string, a list with one string, or a list of token ids (one prompt per request).",
        )),
    }
}

/// The checks of the parameters both endpoints share that need no prompt.
fn check_common(gw: &Gateway, prompt: PromptInput, p: CommonParams) -> Result<Checked, ApiError> {
    if p.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid_param("n", "Only `n: 1` is supported."));
    }
    if p.logprobs
        .as_ref()
        .is_some_and(|v| !v.is_null() && *v != Value::Bool(false))
    {
        return Err(ApiError::invalid_param(
            "logprobs",
            "`logprobs` is not supported.",
        ));
    }
    if p.tools
        .as_ref()
        .is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    {
        return Err(ApiError::invalid_param("tools", "Tools are not supported."));
    }
    let asked_max_tokens = match p.max_completion_tokens.or(p.max_tokens) {
        Some(0) => {
            return Err(ApiError::invalid_param(
                "max_tokens",
                "`max_tokens` must be at least 1.",
            ))
        }
        Some(n) if n > gw.cfg.max_tokens as u64 => {
            return Err(ApiError::invalid_param(
                "max_tokens",
                format!(
                "`max_tokens` is too large: {n}. This gateway allows at most {} completion tokens.",
                gw.cfg.max_tokens
            ),
            ))
        }
        Some(n) => Some(n as usize),
        None => None,
    };
    let stop = p.stop.map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > 4 {
        return Err(ApiError::invalid_param("stop", "At most 4 stop sequences."));
    }
    if stop.iter().any(|s| s.is_empty() || s.len() > 256) {
        return Err(ApiError::invalid_param(
            "stop",
            "Stop sequences must be 1 to 256 bytes long.",
        ));
    }
    let temperature = p.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid_param(
            "temperature",
            format!("`temperature` must be between 0 and 2, got {temperature}."),
        ));
    }
    for (name, v) in [
        ("frequency_penalty", p.frequency_penalty),
        ("presence_penalty", p.presence_penalty),
    ] {
        if v.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
            return Err(ApiError::invalid_param(
                name,
                format!("`{name}` must be between -2 and 2."),
            ));
        }
    }
    let params = SamplingParams {
        temperature: temperature as f32,
        top_p: p.top_p.map(|t| t as f32),
        stop,
        max_tokens: asked_max_tokens.unwrap_or(gw.cfg.default_max_tokens),
        frequency_penalty: p.frequency_penalty.unwrap_or(0.0) as f32,
        presence_penalty: p.presence_penalty.unwrap_or(0.0) as f32,
        ..SamplingParams::default()
    };
    params.validate().map_err(|e| match e {
        SamplingError::InvalidParam { name, reason } => {
            ApiError::invalid_param(name, format!("`{name}` {reason}."))
        }
        other => ApiError::invalid(other.to_string()),
    })?;
    Ok(Checked {
        prompt,
        params,
        asked_max_tokens,
        seed: p.seed.map(|s| s as u64),
        stream: p.stream.unwrap_or(false),
        include_usage: p
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    })
}

/// Renders and tokenizes the prompt of an admitted request, and fits `max_tokens` to the
/// context left after it.
fn tokenize(gw: &Gateway, checked: Checked) -> Result<Prepared, ApiError> {
    let tokenizer = gw.backend.tokenizer();
    let cannot_tokenize = |param: &'static str| {
        move |e| ApiError::invalid_param(param, format!("Cannot tokenize: {e}"))
    };
    let prompt = match checked.prompt {
        PromptInput::Chat(messages) => {
            let template = tokenizer.chat_template().ok_or_else(|| {
                ApiError::invalid("This model has no chat template; use /v1/completions instead.")
            })?;
            let text = template.render(&messages, true).map_err(|e| {
                ApiError::invalid_param(
                    "messages",
                    format!("The chat template refused these messages: {e}"),
                )
            })?;
            // The template writes its own BOS token.
            tokenizer
                .encode(&text, false)
                .map_err(cannot_tokenize("messages"))?
        }
        PromptInput::Text(text) => tokenizer
            .encode(&text, true)
            .map_err(cannot_tokenize("prompt"))?,
        PromptInput::Ids(ids) => {
            let vocab = tokenizer.vocab_size() as u64;
            ids.into_iter()
                .map(|id| {
                    u32::try_from(id)
                        .ok()
                        .filter(|_| id < vocab)
                        .ok_or_else(|| {
                            ApiError::invalid_param(
                                "prompt",
                                format!("Token id {id} is outside the vocabulary (size {vocab})."),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid_param("prompt", "The prompt is empty."));
    }
    let ctx = gw.context_len();
    if prompt.len() >= ctx {
        return Err(ApiError::invalid_param(
            "messages",
            format!(
                "This model's maximum context length is {ctx} tokens. However, your prompt is {} tokens, leaving no room for a completion.",
                prompt.len()
            ),
        ));
    }
    let mut params = checked.params;
    params.max_tokens = match checked.asked_max_tokens {
        Some(n) if prompt.len() + n > ctx => {
            return Err(ApiError::invalid_param(
                "max_tokens",
                format!(
                    "This model's maximum context length is {ctx} tokens. However, you requested {} tokens ({} in the prompt, {n} in the completion). Please reduce the prompt or the completion length.",
                    prompt.len() + n,
                    prompt.len()
                ),
            ));
        }
        Some(n) => n,
        None => params.max_tokens.min(ctx - prompt.len()),
    };
    params.seed = checked
        .seed
        .unwrap_or_else(|| unix_now() ^ prompt.len() as u64);
    Ok(Prepared {
        prompt,
        params,
        stream: checked.stream,
        include_usage: checked.include_usage,
    })
}

/// What the generation thread sends to the response.
enum GenEvent {
    Text(String),
    Done(Result<Generation, ApiError>, Arc<Trail>),
}

/// Sets the cancel flag when the response (or its stream) is dropped: the client went away.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn respond(
    gw: Arc<Gateway>,
    kind: Kind,
    checked: Result<Checked, ApiError>,
    arrived: Instant,
) -> Response {
    let refuse = |e: ApiError| {
        gw.metrics.request(kind.endpoint(), e.status.as_u16());
        e.into_response()
    };
    let checked = match checked {
        Ok(c) => c,
        Err(e) => return refuse(e),
    };
    let Some(ticket) = gw.admission.try_admit(&gw.metrics) else {
        gw.metrics.rejected_busy.inc();
        return refuse(ApiError::busy(gw.admission.retry_after_secs()));
    };
    // Tokenized only now, so that a busy gateway refuses without that work; a prompt refused
    // here gives its place back as the ticket drops.
    let prepared = match tokenize(&gw, checked) {
        Ok(p) => p,
        Err(e) => return refuse(e),
    };
    let id = gw.fresh_id();
    let cancel = Arc::new(AtomicBool::new(false));
    let events = spawn_generation(gw.clone(), &id, &prepared, ticket, cancel.clone());
    let guard = CancelOnDrop(cancel);
    let mut response = if prepared.stream {
        let stream = sse_stream(
            gw.clone(),
            kind,
            id.clone(),
            prepared,
            events,
            guard,
            arrived,
        );
        Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        collect(gw.clone(), kind, &id, events, guard, arrived).await
    };
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-request-id", id.clone()),
        ("x-hearth-trail", format!("/v1/hearth/trails/{id}")),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    response
}

/// Events a generation may run ahead of its client's reading.
const GENERATION_AHEAD_EVENTS: usize = 16;

/// Starts the generation on the blocking pool once a slot is free; events arrive on the
/// returned channel. The generation stops when `cancel` is set or the receiver is dropped.
fn spawn_generation(
    gw: Arc<Gateway>,
    id: &str,
    prepared: &Prepared,
    ticket: Ticket,
    cancel: Arc<AtomicBool>,
) -> mpsc::Receiver<GenEvent> {
    // Small: a client that stops reading stops its generation (and the compute it takes from
    // others) after this many tokens past what the socket buffers hold, until the write
    // deadline cancels it.
    let (tx, rx) = mpsc::channel(GENERATION_AHEAD_EVENTS);
    let prompt = prepared.prompt.clone();
    let params = prepared.params.clone();
    let id = id.to_string();
    tokio::spawn(async move {
        let slot = tokio::select! {
            slot = ticket.start() => slot,
            // The client left while queued: give the place back without running.
            _ = tx.closed() => return,
        };
        let backend = gw.backend.clone();
        let started = Instant::now();
        let books = gw.clone();
        let worker = tokio::task::spawn_blocking(move || {
            let cancelled = || cancel.load(Ordering::Relaxed) || tx.is_closed();
            let mut on_text = |text: &str| {
                if tx.blocking_send(GenEvent::Text(text.to_string())).is_err() {
                    cancel.store(true, Ordering::Relaxed);
                }
            };
            let (result, trail) = backend.generate(Job {
                prompt: &prompt,
                params: &params,
                on_text: &mut on_text,
                cancelled: &cancelled,
            });
            let trail = match &result {
                Ok(g) => account(&books, &id, g, trail),
                Err(_) => Arc::new(trail),
            };
            let result = result.map_err(|e| {
                let failure = Failure::of(&e);
                tracing::warn!(id, kind = %failure.kind, "generation failed: {e}");
                books.metrics.generation_error(failure.kind);
                failure.error
            });
            let _ = tx.blocking_send(GenEvent::Done(result, trail));
        });
        let _ = worker.await;
        gw.admission.record_duration(started.elapsed());
        drop(slot);
    });
    rx
}

fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Eos | FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
    }
}

/// Books a finished (or cancelled) generation into the metrics and the trail store.
fn account(gw: &Gateway, id: &str, g: &Generation, trail: Trail) -> Arc<Trail> {
    if g.finish == FinishReason::Cancelled {
        gw.metrics.cancelled.inc();
    }
    gw.metrics.prompt_tokens.inc_by(g.prompt_tokens as u64);
    gw.metrics.completion_tokens.inc_by(g.tokens.len() as u64);
    if g.tokens.len() > 1 {
        gw.metrics
            .decode_tokens_per_second
            .observe(g.decode_tokens_per_sec());
    }
    gw.metrics.failovers.inc_by(trail.failovers.len() as u64);
    tracing::info!(
        id,
        prompt_tokens = g.prompt_tokens,
        completion_tokens = g.tokens.len(),
        finish = ?g.finish,
        ttft_ms = g.prefill.as_secs_f64() * 1000.0,
        decode_tok_s = g.decode_tokens_per_sec(),
        hops = trail.route.len(),
        receipts = trail.receipts.len(),
        failovers = trail.failovers.len(),
        "generation done"
    );
    for (node, steps, total) in &trail.node_latency {
        gw.metrics.node_steps(node, *steps, *total);
    }
    let trail = Arc::new(trail);
    gw.trails.put(id.to_string(), trail.clone());
    trail
}

async fn collect(
    gw: Arc<Gateway>,
    kind: Kind,
    id: &str,
    mut events: mpsc::Receiver<GenEvent>,
    guard: CancelOnDrop,
    arrived: Instant,
) -> Response {
    let mut first = true;
    let outcome = loop {
        match events.recv().await {
            Some(GenEvent::Text(_)) => {
                if first {
                    first = false;
                    gw.metrics
                        .time_to_first_token
                        .observe(arrived.elapsed().as_secs_f64());
                }
            }
            Some(GenEvent::Done(result, trail)) => break Some((result, trail)),
            None => break None,
        }
    };
    drop(guard);
    let (result, trail) = match outcome {
        Some(o) => o,
        None => {
            gw.metrics.request(kind.endpoint(), 500);
            return stopped_unexpectedly().into_response();
        }
    };
    let g = match result {
        Ok(g) => g,
        Err(err) => {
            gw.metrics.request(kind.endpoint(), err.status.as_u16());
            return err.into_response();
        }
    };
    let usage = Usage::new(g.prompt_tokens, g.tokens.len());
    let created = unix_now();
    let model = &gw.cfg.model_name;
    let body = match kind {
        Kind::Chat => json!({
            "id": format!("chatcmpl-{id}"),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": g.text},
                "logprobs": null,
                "finish_reason": finish_reason(g.finish),
            }],
            "usage": usage,
            "hearth": &*trail,
        }),
        Kind::Completion => json!({
            "id": format!("cmpl-{id}"),
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "text": g.text,
                "logprobs": null,
                "finish_reason": finish_reason(g.finish),
            }],
            "usage": usage,
            "hearth": &*trail,
        }),
    };
    gw.metrics.request(kind.endpoint(), 200);
    Json(body).into_response()
}

/// The state of one SSE response as it unfolds.
struct StreamState {
    gw: Arc<Gateway>,
    kind: Kind,
    id: String,
    created: u64,
    include_usage: bool,
    events: mpsc::Receiver<GenEvent>,
    /// Chunks ready to send before reading more events.
    pending: VecDeque<SseEvent>,
    first_text: bool,
    done: bool,
    arrived: Instant,
    _guard: CancelOnDrop,
}

impl StreamState {
    fn chunk(&self, delta: Value, finish: Option<&str>, extra: Option<(&str, Value)>) -> SseEvent {
        let choice = match self.kind {
            Kind::Chat => {
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Completion => json!({
                "index": 0,
                "text": delta.get("content").cloned().unwrap_or(Value::String(String::new())),
                "logprobs": null,
                "finish_reason": finish,
            }),
        };
        self.envelope(json!([choice]), extra)
    }

    fn usage_chunk(&self, usage: Usage) -> SseEvent {
        let usage = serde_json::to_value(usage).unwrap_or(Value::Null);
        self.envelope(json!([]), Some(("usage", usage)))
    }

    /// A chunk: id, object, created, model, `choices`, and one optional extra field.
    fn envelope(&self, choices: Value, extra: Option<(&str, Value)>) -> SseEvent {
        let (prefix, object) = self.kind.chunk_ids();
        let mut body = json!({
            "id": format!("{prefix}-{}", self.id),
            "object": object,
            "created": self.created,
            "model": self.gw.cfg.model_name,
            "choices": choices,
        });
        if let (Some((key, value)), Some(map)) = (extra, body.as_object_mut()) {
            map.insert(key.to_string(), value);
        }
        SseEvent::default().data(body.to_string())
    }

    fn on_event(&mut self, event: Option<GenEvent>) {
        let endpoint = self.kind.endpoint();
        match event {
            Some(GenEvent::Text(text)) => {
                if self.first_text {
                    self.first_text = false;
                    self.gw
                        .metrics
                        .time_to_first_token
                        .observe(self.arrived.elapsed().as_secs_f64());
                }
                let c = self.chunk(json!({"content": text}), None, None);
                self.pending.push_back(c);
            }
            Some(GenEvent::Done(Ok(g), trail)) => {
                let trail = serde_json::to_value(&*trail).unwrap_or(Value::Null);
                let c = self.chunk(
                    json!({}),
                    Some(finish_reason(g.finish)),
                    Some(("hearth", trail)),
                );
                self.pending.push_back(c);
                if self.include_usage {
                    let u = self.usage_chunk(Usage::new(g.prompt_tokens, g.tokens.len()));
                    self.pending.push_back(u);
                }
                self.pending.push_back(SseEvent::default().data("[DONE]"));
                self.gw.metrics.request(endpoint, 200);
                self.done = true;
            }
            Some(GenEvent::Done(Err(err), _)) => {
                self.pending
                    .push_back(SseEvent::default().data(err.body().to_string()));
                self.gw.metrics.request(endpoint, err.status.as_u16());
                self.done = true;
            }
            None => {
                self.pending
                    .push_back(SseEvent::default().data(stopped_unexpectedly().body().to_string()));
                self.gw.metrics.request(endpoint, 500);
                self.done = true;
            }
        }
    }
}

fn sse_stream(
    gw: Arc<Gateway>,
    kind: Kind,
    id: String,
    prepared: Prepared,
    events: mpsc::Receiver<GenEvent>,
    guard: CancelOnDrop,
    arrived: Instant,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let mut state = StreamState {
        gw,
        kind,
        id,
        created: unix_now(),
        include_usage: prepared.include_usage,
        events,
        pending: VecDeque::new(),
        first_text: true,
        done: false,
        arrived,
        _guard: guard,
    };
    if kind == Kind::Chat {
        let c = state.chunk(json!({"role": "assistant", "content": ""}), None, None);
        state.pending.push_back(c);
    }
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.pending.pop_front() {
                return Some((Ok(event), state));
            }
            if state.done {
                return None;
            }
            let event = state.events.recv().await;
            state.on_event(event);
        }
    })
}

/// Admission control: at most `running` generations at once and `queue` more waiting.
struct Admission {
    slots: Arc<Semaphore>,
    admitted: Arc<AtomicUsize>,
    limit: usize,
    running: usize,
    /// Exponentially weighted mean generation time, milliseconds (for `Retry-After`).
    mean_ms: AtomicU64,
}

/// A place in the queue, then (after [`Ticket::start`]) a running slot; released on drop.
struct Ticket {
    admitted: Arc<AtomicUsize>,
    slots: Arc<Semaphore>,
    queue_depth: prometheus_client::metrics::gauge::Gauge,
    running: prometheus_client::metrics::gauge::Gauge,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Admission {
    fn new(running: usize, queue: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(running)),
            admitted: Arc::new(AtomicUsize::new(0)),
            limit: running + queue,
            running,
            mean_ms: AtomicU64::new(1000),
        }
    }

    fn try_admit(&self, metrics: &Metrics) -> Option<Ticket> {
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()?;
        metrics.queue_depth.inc();
        Some(Ticket {
            admitted: self.admitted.clone(),
            slots: self.slots.clone(),
            queue_depth: metrics.queue_depth.clone(),
            running: metrics.running.clone(),
            permit: None,
        })
    }

    fn record_duration(&self, took: Duration) {
        let ms = took.as_millis().min(u128::from(u32::MAX)) as u64;
        let old = self.mean_ms.load(Ordering::Relaxed);
        self.mean_ms.store((old * 7 + ms) / 8, Ordering::Relaxed);
    }

    /// Seconds until a place is likely free: one mean generation per `running` queued ones.
    fn retry_after_secs(&self) -> u64 {
        let queued = self
            .admitted
            .load(Ordering::Relaxed)
            .saturating_sub(self.running) as u64;
        let mean = self.mean_ms.load(Ordering::Relaxed);
        (mean * (queued / self.running as u64 + 1))
            .div_ceil(1000)
            .clamp(1, 60)
    }
}

impl Ticket {
    /// Waits for a free slot and moves from the queue into it.
    async fn start(mut self) -> Self {
        // The semaphore is never closed, so this loop runs once; no unwrap on it regardless.
        while self.permit.is_none() {
            self.permit = self.slots.clone().acquire_owned().await.ok();
        }
        self.queue_depth.dec();
        self.running.inc();
        self
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.permit.is_some() {
            self.running.dec();
        } else {
            self.queue_depth.dec();
        }
        self.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

type TrailMap = HashMap<String, Arc<Trail>>;

/// The last N responses' verification trails, by response id.
struct Trails {
    kept: usize,
    /// Ids oldest first, and the trails by id.
    inner: Mutex<(VecDeque<String>, TrailMap)>,
}

impl Trails {
    fn new(kept: usize) -> Self {
        Self {
            kept,
            inner: Mutex::new((VecDeque::new(), HashMap::new())),
        }
    }

    fn put(&self, id: String, trail: Arc<Trail>) {
        if self.kept == 0 {
            return;
        }
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (order, map) = &mut *guard;
        if order.len() >= self.kept {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
        order.push_back(id.clone());
        map.insert(id, trail);
    }

    fn get(&self, id: &str) -> Option<Arc<Trail>> {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.1.get(id).cloned()
    }
}

/// Serves [`router`] on `listener` until `shutdown` resolves, under the connection limits of
/// the gateway's config (`max_connections`, `header_timeout`, `write_timeout`); then stops
/// accepting and returns once the open responses have finished.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gw: Arc<Gateway>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = Limits {
        max_connections: gw.cfg.max_connections,
        header_timeout: gw.cfg.header_timeout,
        write_timeout: gw.cfg.write_timeout,
    };
    let metrics = ConnectionMetrics {
        open: gw.metrics.connections_open.clone(),
        refused: gw.metrics.connections_refused.clone(),
        slow_clients: gw.metrics.slow_clients.clone(),
    };
    crate::connection::serve(listener, router(gw), limits, metrics, shutdown).await
}
