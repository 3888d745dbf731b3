//! The agent's HTTP API (axum): `GET /metrics`, `GET /api/state`, `POST /api/dr/events`,
//! `DELETE /api/dr/events/{id}`, `POST /api/price`, `POST /api/ai`, `POST /api/heat`.
//!
//! Bodies are limited to [`MAX_BODY`]; a malformed body is answered `400` with
//! `{"error": "..."}` and changes nothing (the last good values stay). Every request first
//! passes [`hearth_core::RequestGuard`]: JSON bodies only, no cross-origin browser requests, no
//! unknown `Host` names (a web page the operator visits cannot curtail the site).

use super::{parse_ai, unix_now, Shared};
use crate::signals::dr::parse_event;
use crate::signals::price::parse_json;
use crate::signals::HeatDemand;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

pub(super) const MAX_BODY: usize = 64 * 1024;

/// The router over the agent's shared state. Reading is open; writing (events, prices,
/// demand) needs a configured bearer key when any is configured.
pub fn router(shared: Arc<Shared>) -> Router {
    let writes = Router::new()
        .route("/api/dr/events", post(dr_event))
        .route("/api/dr/events/{id}", delete(dr_cancel))
        .route("/api/price", post(price))
        .route("/api/ai", post(ai))
        .route("/api/heat", post(heat))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            require_key,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/state", get(state))
        .route("/api/dr/events", get(dr_list))
        .merge(writes)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            guard_browsers,
        ))
        .with_state(shared)
}

async fn guard_browsers(
    State(s): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = req.headers();
    let head = hearth_core::RequestHead {
        method: req.method().as_str(),
        host: headers
            .get(header::HOST)
            .map(|v| v.as_bytes())
            .or_else(|| req.uri().authority().map(|a| a.as_str().as_bytes())),
        origin: headers.get(header::ORIGIN).map(|v| v.as_bytes()),
        content_type: headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
    };
    match s.guard.check(&head) {
        Ok(()) => next.run(req).await,
        Err(refusal) => {
            tracing::warn!("refused an API request: {refusal}");
            let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::FORBIDDEN);
            (status, Json(json!({ "error": refusal.to_string() }))).into_response()
        }
    }
}

async fn require_key(
    State(s): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if s.keys.accepts(presented) {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "this endpoint needs `Authorization: Bearer <key>`" })),
        )
            .into_response()
    }
}

fn bad(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": msg }))).into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn state(State(s): State<Arc<Shared>>) -> Response {
    Json(s.snapshot()).into_response()
}

async fn dr_list(State(s): State<Arc<Shared>>) -> Response {
    let events = s.dr.lock().map(|b| b.events().to_vec()).unwrap_or_default();
    Json(events).into_response()
}

async fn dr_event(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let now = unix_now();
    let ev = match parse_event(&body, now) {
        Ok(ev) => ev,
        Err(e) => {
            tracing::warn!("rejected demand-response event: {e}");
            return bad(e.to_string());
        }
    };
    let r = match s.dr.lock() {
        Ok(mut b) => b.upsert(ev.clone(), now),
        Err(_) => return bad("internal: event book unavailable".into()),
    };
    if let Err(e) = r {
        return bad(e.to_string());
    }
    tracing::info!(event = %ev.id, start = ev.start_s, end = ev.end_s, target = ?ev.target,
        "demand-response event accepted");
    // Decide at once: devices are curtailed in this step, not at the next interval.
    s.wake.notify_one();
    (StatusCode::CREATED, Json(ev)).into_response()
}

async fn dr_cancel(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let found = s.dr.lock().map(|mut b| b.cancel(&id)).unwrap_or(false);
    if found {
        s.wake.notify_one();
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "no such event" })),
        )
            .into_response()
    }
}

async fn price(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let r = parse_json(&body);
    let resp = match &r {
        Ok(u) => (
            StatusCode::OK,
            Json(json!({ "usd_per_mwh": u.usd_per_mwh })),
        )
            .into_response(),
        Err(e) => bad(e.to_string()),
    };
    if let Ok(mut sig) = s.signals.lock() {
        sig.price_update.update(r, unix_now());
    }
    s.wake.notify_one();
    resp
}

async fn ai(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let r = parse_ai(&body);
    let resp = match &r {
        Ok(d) => (StatusCode::OK, Json(json!(d))).into_response(),
        Err(e) => bad(e.clone()),
    };
    if let Ok(mut sig) = s.signals.lock() {
        sig.ai.update(r, unix_now());
    }
    s.wake.notify_one();
    resp
}

async fn heat(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let h: HeatDemand = match serde_json::from_slice(&body) {
        Ok(h) => h,
        Err(e) => return bad(format!("heat demand JSON: {e}")),
    };
    if !h.value_usd_per_mwh(unix_now()).is_finite() {
        return bad("heat demand: value is not finite".into());
    }
    if let Ok(mut sig) = s.signals.lock() {
        sig.heat = Some(h.clone());
    }
    s.wake.notify_one();
    Json(h).into_response()
}
