//! Test-only: a mock API server for reconciler tests (the tower-test `fixtures.rs` of kube-rs
//! controller-rs, made general). A test lists, in order, the requests one reconcile must make —
//! method, path (never the query string), selected JSON-pointer values of the body — and the
//! answer to each; the test fails on a request it did not list, on silence where a request
//! was listed, and when the reconcile made fewer requests than listed. No real API server, no
//! clock control: a reconcile is checked in milliseconds.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::{Client, Resource};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_test::mock;

use super::config::OperatorConfig;
use super::context::Context;

/// How long the server waits for a listed request before it fails the test.
const SILENCE: Duration = Duration::from_secs(2);

/// The operator's context around a mock API server: leading at epoch 1 if `leading`, otherwise
/// not leading (as a replica that lost or never won the election). Another epoch:
/// `ctx.leader.lead_for_tests(epoch)`.
pub fn context(leading: bool) -> (Arc<Context>, ApiServer) {
    context_with(OperatorConfig::new("test-operator", "default"), leading)
}

/// [`context`] with `config` (a watched namespace, a step poll, …).
pub fn context_with(config: OperatorConfig, leading: bool) -> (Arc<Context>, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Context::new(client, config);
    if leading {
        ctx.leader.lead_for_tests(1);
    }
    (
        Arc::new(ctx),
        ApiServer {
            handle: Arc::new(tokio::sync::Mutex::new(handle)),
        },
    )
}

/// The server side of a mock client; [`ApiServer::expect`] gives it its script.
pub struct ApiServer {
    handle: Arc<tokio::sync::Mutex<MockHandle>>,
}

type MockHandle = mock::Handle<Request<Body>, Response<Body>>;

/// One listed request and the answer to it.
pub struct Expect {
    method: Method,
    path: String,
    fields: Vec<(String, Value)>,
    present: Vec<String>,
    absent: Vec<String>,
    status: StatusCode,
    answer: Answer,
}

enum Answer {
    /// This JSON body.
    Json(Value),
    /// The request's own body (what an Event create returns).
    Echo,
}

/// The collection path of kind `K` in `namespace`, e.g.
/// `/apis/shardplane.io/v1alpha1/namespaces/db/tables`.
pub fn collection<K: Resource<DynamicType = ()>>(namespace: &str) -> String {
    K::url_path(&(), Some(namespace))
}

/// The path of object `name` of kind `K` in `namespace`.
pub fn object<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> String {
    format!("{}/{name}", collection::<K>(namespace))
}

impl Expect {
    /// A request of `method` on `path`, answered `200 {}` unless told otherwise.
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Expect {
            method,
            path: path.into(),
            fields: Vec::new(),
            present: Vec::new(),
            absent: Vec::new(),
            status: StatusCode::OK,
            answer: Answer::Json(json!({})),
        }
    }

    /// A GET of object `name` of kind `K`.
    pub fn get<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> Self {
        Self::new(Method::GET, object::<K>(namespace, name))
    }

    /// A create (POST to the collection) of kind `K`; the answer echoes the request's body.
    pub fn create<K: Resource<DynamicType = ()>>(namespace: &str) -> Self {
        Self::new(Method::POST, collection::<K>(namespace)).echo()
    }

    /// A PATCH of object `name` of kind `K`.
    pub fn patch<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> Self {
        Self::new(Method::PATCH, object::<K>(namespace, name))
    }

    /// A PATCH of the status subresource of object `name` of kind `K`.
    pub fn patch_status<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> Self {
        Self::new(
            Method::PATCH,
            format!("{}/status", object::<K>(namespace, name)),
        )
    }

    /// An Event published in `namespace` (by `Context::event`) with `reason`, echoed back.
    pub fn event(namespace: &str, reason: &str) -> Self {
        Self::create::<k8s_openapi::api::events::v1::Event>(namespace).field("/reason", reason)
    }

    /// The body's value at JSON pointer `pointer` (e.g. `/status/phase`) must be `value`.
    pub fn field(mut self, pointer: &str, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value).unwrap_or(Value::Null);
        self.fields.push((pointer.to_owned(), value));
        self
    }

    /// The body must have a value at `pointer` (any value: a timestamp, say).
    pub fn present(mut self, pointer: &str) -> Self {
        self.present.push(pointer.to_owned());
        self
    }

    /// The body must have no value at `pointer`.
    pub fn absent(mut self, pointer: &str) -> Self {
        self.absent.push(pointer.to_owned());
        self
    }

    /// Answers `200` with `object`.
    pub fn answer(mut self, object: impl Serialize) -> Self {
        self.status = StatusCode::OK;
        self.answer = Answer::Json(serde_json::to_value(object).unwrap_or(Value::Null));
        self
    }

    /// Answers with the request's own body.
    pub fn echo(mut self) -> Self {
        self.status = StatusCode::OK;
        self.answer = Answer::Echo;
        self
    }

    /// Answers with an API error `code` (a `Status` object with `reason`).
    pub fn fail(mut self, code: u16, reason: &str) -> Self {
        self.status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.answer = Answer::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("mock API server: {reason}"), "reason": reason, "code": code,
        }));
        self
    }

    /// Answers `404 NotFound`.
    pub fn not_found(self) -> Self {
        self.fail(404, "NotFound")
    }

    /// What is wrong with `method path body` as this request; `None` if it is the one.
    fn mismatch(&self, method: &Method, path: &str, body: &Value) -> Option<String> {
        if *method != self.method || path != self.path {
            return Some(format!("got {method} {path}"));
        }
        let mut wrong = Vec::new();
        for (pointer, value) in &self.fields {
            match body.pointer(pointer) {
                Some(actual) if actual == value => {}
                Some(actual) => wrong.push(format!("{pointer} is {actual}, expected {value}")),
                None => wrong.push(format!("{pointer} is missing, expected {value}")),
            }
        }
        for pointer in &self.present {
            if body.pointer(pointer).is_none() {
                wrong.push(format!("{pointer} is missing"));
            }
        }
        for pointer in &self.absent {
            if let Some(actual) = body.pointer(pointer) {
                wrong.push(format!("{pointer} is {actual}, expected nothing"));
            }
        }
        (!wrong.is_empty()).then(|| format!("{}; body {body}", wrong.join("; ")))
    }

    fn response(&self, body: &Value) -> Response<Body> {
        let answer = match &self.answer {
            Answer::Json(value) => value,
            Answer::Echo => body,
        };
        respond(self.status, answer)
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string().into_bytes()));
    *response.status_mut() = status;
    response
}

/// A script being served; [`Scenario::verify`] after the reconcile checks how it went.
pub struct Scenario {
    failures: Arc<Mutex<Vec<String>>>,
    scripted: oneshot::Receiver<()>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl ApiServer {
    /// Serves `script` in order, then answers any further request with a 500 and records it
    /// as unexpected, until [`Scenario::verify`]. An empty script: the reconcile must make no
    /// request at all. One scenario at a time; the next one starts after `verify`.
    pub fn expect(&self, script: Vec<Expect>) -> Scenario {
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (done, scripted) = oneshot::channel();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(
            self.handle.clone(),
            script,
            failures.clone(),
            done,
            stopped,
        ));
        Scenario {
            failures,
            scripted,
            stop,
            task,
        }
    }

    /// Runs `reconcile` against `script` and verifies it; returns what the reconcile returned.
    /// A reconcile that does not return within 10 s fails the test.
    pub async fn run<T>(&self, script: Vec<Expect>, reconcile: impl Future<Output = T>) -> T {
        let scenario = self.expect(script);
        let result = tokio::time::timeout(Duration::from_secs(10), reconcile)
            .await
            .unwrap_or_else(|_| panic!("the reconcile did not return within 10 s"));
        scenario.verify().await;
        result
    }
}

async fn serve(
    handle: Arc<tokio::sync::Mutex<MockHandle>>,
    script: Vec<Expect>,
    failures: Arc<Mutex<Vec<String>>>,
    done: oneshot::Sender<()>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut handle = handle.lock().await;
    let fail = |failure: String| {
        if let Ok(mut failures) = failures.lock() {
            failures.push(failure);
        }
    };
    let listed = script.len();
    for (i, expect) in script.into_iter().enumerate() {
        let n = i + 1;
        let Ok(next) = tokio::time::timeout(SILENCE, handle.next_request()).await else {
            fail(format!(
                "request {n} of {listed} ({expect}) did not come within {SILENCE:?}: the \
                 reconcile made fewer requests than listed, or stalled"
            ));
            break;
        };
        let Some((request, reply)) = next else {
            fail(format!(
                "the client was dropped before request {n} ({expect})"
            ));
            break;
        };
        let (method, path, body) = read(request).await;
        if let Some(mismatch) = expect.mismatch(&method, &path, &body) {
            fail(format!(
                "request {n} of {listed}: expected {expect}: {mismatch}"
            ));
            reply.send_response(respond(StatusCode::INTERNAL_SERVER_ERROR, &json!({})));
            break;
        }
        reply.send_response(expect.response(&body));
    }
    let _ = done.send(());
    loop {
        let next = tokio::select! {
            next = handle.next_request() => next,
            _ = &mut stopped => return,
        };
        let Some((request, reply)) = next else {
            return;
        };
        let (method, path, body) = read(request).await;
        fail(format!("unexpected request: {method} {path} {body}"));
        reply.send_response(respond(StatusCode::INTERNAL_SERVER_ERROR, &json!({})));
    }
}

/// A request's method, path (without the query) and JSON body (`null` when empty).
async fn read(request: Request<Body>) -> (Method, String, Value) {
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.method, parts.uri.path().to_owned(), body)
}

impl Scenario {
    /// Call once the reconcile returned: panics, naming each, if a listed request did not
    /// come or differed, or if a request came that was not listed.
    pub async fn verify(self) {
        let _ = self.scripted.await;
        let _ = self.stop.send(());
        let _ = self.task.await;
        let failures = self
            .failures
            .lock()
            .map(|f| f.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        assert!(
            failures.is_empty(),
            "the mock API server saw:\n  {}",
            failures.join("\n  ")
        );
    }
}

#[cfg(test)]
mod tests {
    use kube::Api;
    use kube::api::{Patch, PatchParams};

    use super::*;
    use crate::api::Table;

    fn table() -> Value {
        json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Table",
            "metadata": {"name": "orders", "namespace": "db"},
            "spec": {"cluster": "main", "shardKey": "id", "columns": [], "primaryKey": ["id"]}
        })
    }

    async fn patch_orders(ctx: &Context, body: Value) -> kube::Result<Table> {
        Api::<Table>::namespaced(ctx.client.clone(), "db")
            .patch("orders", &PatchParams::default(), &Patch::Merge(body))
            .await
    }

    #[tokio::test]
    async fn a_listed_request_is_checked_and_answered() {
        let (ctx, server) = context(true);
        let script = vec![
            Expect::patch::<Table>("db", "orders")
                .field("/spec/shardKey", "id")
                .present("/metadata/labels")
                .absent("/status")
                .answer(table()),
            Expect::get::<Table>("db", "orders").not_found(),
        ];
        let (patched, got) = server
            .run(script, async {
                let patch = json!({"metadata": {"labels": {}}, "spec": {"shardKey": "id"}});
                let patched = patch_orders(&ctx, patch).await;
                let got = Api::<Table>::namespaced(ctx.client.clone(), "db")
                    .get_opt("orders")
                    .await;
                (patched, got)
            })
            .await;
        assert_eq!(patched.unwrap().spec.shard_key, "id");
        assert!(got.unwrap().is_none());
    }

    #[tokio::test]
    #[should_panic(expected = "/spec/shardKey is \"k\", expected \"id\"")]
    async fn a_wrong_body_value_fails() {
        let (ctx, server) = context(true);
        let script = vec![Expect::patch::<Table>("db", "orders").field("/spec/shardKey", "id")];
        let _ = server
            .run(
                script,
                patch_orders(&ctx, json!({"spec": {"shardKey": "k"}})),
            )
            .await;
    }

    #[tokio::test]
    #[should_panic(expected = "unexpected request: PATCH")]
    async fn an_unlisted_request_fails() {
        let (ctx, server) = context(true);
        let _ = server.run(vec![], patch_orders(&ctx, json!({}))).await;
    }

    #[tokio::test]
    #[should_panic(expected = "did not come within")]
    async fn fewer_requests_than_listed_fail() {
        let (_ctx, server) = context(true);
        let script = vec![Expect::get::<Table>("db", "orders")];
        server.run(script, async {}).await;
    }
}
