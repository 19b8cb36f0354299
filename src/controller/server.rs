//! The operator's HTTP server: `/metrics` (OpenMetrics), `/healthz`, `/readyz`, and the
//! agents' heartbeat endpoint. Every replica serves it; only the leader's liveness table is
//! acted on, and a heartbeat's answer tells the agent whether it reached the leader.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::context::{Context, now_ms};
use crate::protocol::{HEARTBEAT_PATH, SignedHeartbeat};

/// Serves until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener, ctx: Arc<Context>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route(HEARTBEAT_PATH, post(heartbeat))
        .with_state(ctx);
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "the metrics and heartbeat server stopped");
    }
}

async fn metrics(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.metrics.encode(),
    )
}

/// Ready as soon as it serves: a standby is ready to take over, which is what a readiness
/// probe of a leader-elected controller should say.
async fn ready(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
    let leading = ctx.leader.ensure().is_ok();
    (
        StatusCode::OK,
        Json(json!({"ready": true, "leader": leading})),
    )
}

/// Records a genuine heartbeat and answers it, signed with the node's key; refuses anything
/// else with `401 Unauthorized` and the reason, recording nothing.
async fn heartbeat(
    State(ctx): State<Arc<Context>>,
    Json(signed): Json<SignedHeartbeat>,
) -> axum::response::Response {
    match ctx.liveness.record(&signed, now_ms()) {
        Ok(key) => {
            let leading = ctx.leader.ensure().is_ok();
            Json(signed.answer(leading, &key)).into_response()
        }
        Err(refusal) => {
            ctx.metrics.heartbeat_refused(refusal);
            tracing::debug!(namespace = %signed.beat.namespace, node = %signed.beat.node, %refusal, "heartbeat refused");
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"refused": refusal.to_string()})),
            )
                .into_response()
        }
    }
}
