//! The OpenAI request and response shapes this gateway speaks, and the error body every failure
//! is reported in. Only this module knows the JSON field names.
//!
//! Requests accept and ignore fields they do not use (clients send many optional ones); fields
//! that would change the meaning of the answer and that hearth cannot honour (`n > 1`, tools,
//! logprobs) are refused with a 400 rather than silently ignored.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /v1/chat/completions` body.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The gateway's model name or the model's content id (hex); anything else is a 404.
    pub model: String,
    /// The conversation, oldest first; rendered with the model's chat template. Non-empty.
    pub messages: Vec<ChatMessageIn>,
    /// Sampling, length and streaming parameters.
    #[serde(flatten)]
    pub common: CommonParams,
}

/// `POST /v1/completions` body.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// The gateway's model name or the model's content id (hex); anything else is a 404.
    pub model: String,
    /// The text to continue (tokenized with a BOS token), or its token ids.
    pub prompt: PromptIn,
    /// Echoing the prompt back is not supported; `true` is refused.
    #[serde(default)]
    pub echo: Option<bool>,
    /// Text after the completion; hearth has no suffix (fill-in-the-middle) support.
    #[serde(default)]
    pub suffix: Option<String>,
    /// Sampling, length and streaming parameters.
    #[serde(flatten)]
    pub common: CommonParams,
}

/// The sampling and streaming parameters both endpoints share.
#[derive(Debug, Default, Deserialize)]
pub struct CommonParams {
    /// Most completion tokens to generate, at least 1; `None` = the gateway's default, capped
    /// by the context left after the prompt.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// The newer name of `max_tokens` in the chat API.
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// Softmax temperature in `[0, 2]`; `0` = greedy; `None` = 1.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass in `(0, 1]`; `None` = off.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Seed of the sampling stream (reinterpreted as `u64`), for replayable answers; `None` =
    /// one derived from the clock.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Text sequences that end the completion (not included in it).
    #[serde(default)]
    pub stop: Option<StopIn>,
    /// Number of choices; only `1` is supported.
    #[serde(default)]
    pub n: Option<u64>,
    /// `true` = answer as server-sent events, one chunk per piece of text.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Extra options for a streamed answer.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Logit penalty in `[-2, 2]` per occurrence of a token in the recent window; `None` = 0.
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    /// Logit penalty in `[-2, 2]` once for any token in the recent window; `None` = 0.
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    /// Token log-probabilities: not supported, anything but `null`/`false` is refused.
    #[serde(default)]
    pub logprobs: Option<Value>,
    /// Tool definitions: not supported, a non-empty list is refused.
    #[serde(default)]
    pub tools: Option<Value>,
}

/// `stream_options`: settings that only apply to a streamed answer.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// `true` = send a last chunk carrying the token [`Usage`]; `None` = no.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// One message of a chat request.
#[derive(Debug, Deserialize)]
pub struct ChatMessageIn {
    /// `system`, `developer` (read as `system`), `user`, `assistant` or `tool`.
    pub role: String,
    /// What the message says; `None` = empty.
    #[serde(default)]
    pub content: Option<ContentIn>,
}

/// Message content: a string, or a list of typed parts of which only `text` parts are usable.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ContentIn {
    /// Plain text.
    Text(String),
    /// Typed parts, concatenated in order; all must be `text` parts.
    Parts(Vec<ContentPart>),
}

/// One typed part of a message's content.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    /// The part's `type`; only `"text"` is accepted (no images or audio).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// `prompt`: a string or a list holding exactly one string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptIn {
    /// The prompt as text.
    Text(String),
    /// A list: either exactly one string, or the prompt's token ids (each below the vocabulary
    /// size); other lists are refused.
    Many(Vec<Value>),
}

/// `stop`: one string or up to four.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopIn {
    /// A single stop sequence.
    One(String),
    /// Several stop sequences (at most four are accepted).
    Many(Vec<String>),
}

impl StopIn {
    /// The stop sequences as a list, whichever form they came in.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopIn::One(s) => vec![s],
            StopIn::Many(v) => v,
        }
    }
}

/// `usage`: the tokens a request consumed.
#[derive(Debug, Serialize)]
pub struct Usage {
    /// Tokens in the prompt (after the chat template, for chat requests).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// `prompt_tokens + completion_tokens`.
    pub total_tokens: usize,
}

impl Usage {
    /// The usage of a request with these token counts; computes the total.
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelCard {
    /// The model name clients put in `model`.
    pub id: String,
    /// Always `"model"`.
    pub object: &'static str,
    /// When the gateway started, seconds since the Unix epoch.
    pub created: u64,
    /// Always `"hearth"`.
    pub owned_by: &'static str,
}

/// Seconds in the `Retry-After` of a 503: short, since the swarm's coverage changes as soon as
/// a node joins or announces.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

/// An OpenAI-style error: `{"error": {"message", "type", "param", "code"}}` with its status.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status of the response.
    pub status: StatusCode,
    /// Human-readable explanation, for the client's user.
    pub message: String,
    /// The error's `type`: `invalid_request_error`, `rate_limit_error` or `server_error`.
    pub kind: &'static str,
    /// The request parameter at fault, if one is.
    pub param: Option<&'static str>,
    /// Machine-readable code (e.g. `model_not_found`), where OpenAI defines one.
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (429 and 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400: the request is malformed or asks for something outside the limits.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 naming the offending parameter.
    pub fn invalid_param(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param),
            ..Self::invalid(message)
        }
    }

    /// 404: `model` names no model this gateway serves.
    pub fn model_not_found(model: &str) -> Self {
        Self {
            param: Some("model"),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{model}` does not exist or you do not have access to it."),
            )
        }
    }

    /// 401: the `Authorization` header is missing or holds no accepted key.
    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "Incorrect or missing API key: send `Authorization: Bearer <key>`.",
            )
        }
    }

    /// 413: the body is over the gateway's limit of `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        Self {
            code: Some("request_too_large"),
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("The request body is larger than this gateway's limit of {limit} bytes."),
            )
        }
    }

    /// 408: the body did not arrive within the gateway's `limit`.
    pub fn body_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!(
                "The request body did not arrive within this gateway's limit of {} s.",
                limit.as_secs_f64()
            ),
        )
    }

    /// 403 or 415: the browser guard refused the request (cross-origin, unknown host, or a
    /// body not declared as JSON); the message says why and which flag would allow it.
    pub fn refused(refusal: &hearth_core::Refusal) -> Self {
        let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::FORBIDDEN);
        Self::new(status, "invalid_request_error", refusal.to_string())
    }

    /// 429: the generation queue is full; retry after `retry_after` seconds.
    pub fn busy(retry_after: u64) -> Self {
        Self {
            code: Some("rate_limit_exceeded"),
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "The gateway's generation queue is full; retry after the time in Retry-After.",
            )
        }
    }

    /// 503: the swarm cannot serve right now (blocks uncovered, no route, nodes failing);
    /// retrying after `Retry-After` may succeed.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            code: Some("service_unavailable"),
            retry_after: Some(UNAVAILABLE_RETRY_AFTER_SECS),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
        }
    }

    /// 502: a node on the route answered with bad data (and nothing could replace it).
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self {
            code: Some("bad_gateway"),
            ..Self::new(StatusCode::BAD_GATEWAY, "server_error", message)
        }
    }

    /// 504: a node on the route did not answer in time (and nothing could replace it).
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self {
            code: Some("gateway_timeout"),
            ..Self::new(StatusCode::GATEWAY_TIMEOUT, "server_error", message)
        }
    }

    /// 500: the gateway itself failed (never for bad input).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// 404: no route for `path`.
    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Unknown path {path}."),
        )
    }

    /// 405: the path exists but not with this HTTP method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "This method is not allowed on this path.",
        )
    }

    /// The JSON body, also used as an SSE `data:` payload when a stream fails midway.
    pub fn body(&self) -> Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of a late body may still be on its way: do not read it as a next request.
            response
                .headers_mut()
                .insert("connection", HeaderValue::from_static("close"));
        }
        response
    }
}

/// Seconds since the Unix epoch, for `created` fields.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
