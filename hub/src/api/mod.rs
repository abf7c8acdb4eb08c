//! The HTTP API under `/api/v1` and the web UI: one module per resource with its own `router()`, all
//! merged by `app(state)` so tests can call it without a socket. Errors are RFC 9457 problem details;
//! every endpoint but the health checks needs a session cookie or a bearer token.

pub mod alarms;
pub mod auth;
pub mod calls;
pub mod campaigns;
pub mod connectors;
pub mod consumers;
pub mod events;
pub mod health;
pub mod import;
pub mod ivr;
pub mod meters;
pub mod network;
pub mod outages;
pub mod queues;
pub mod recordings;
pub mod rules;
pub mod sensors;
pub mod sip;
pub mod sites;
pub mod tenants;
pub mod tickets;
pub mod users;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use crate::auth::Permission;
use crate::bus::Bus;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::network::NetworkCache;
use crate::storage::users::User;
use crate::storage::{Db, PageRequest, StorageError};

/// What every handler can reach: handles, no globals.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub bus: Bus,
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
    pub network: NetworkCache,
    /// The running connectors (empty in tests that build the API alone).
    pub connectors: Arc<crate::ingest::Connectors>,
    /// Modbus writers by sensor, for rules' `write_register`.
    pub modbus: Arc<crate::automation::Writers>,
    /// The rules runtime, when it runs.
    pub rules: Option<crate::automation::RulesHandle>,
    /// The telephony core, when it runs (outbound calls, SIP accounts).
    pub telephony: Option<crate::telephony::Telephony>,
}

impl AppState {
    /// The shared state over an open database; connectors and other runtimes are attached by `hub::run`.
    pub fn new(db: Db, config: Config) -> Self {
        let metrics = Arc::new(Metrics::default());
        AppState {
            bus: Bus::new(metrics.clone()),
            db,
            metrics,
            config: Arc::new(config),
            network: NetworkCache::default(),
            connectors: Arc::default(),
            modbus: Arc::default(),
            rules: None,
            telephony: None,
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Hub API", description = "Rules-driven automation and notification hub for utilities."),
    components(schemas(Problem, FieldError)),
    modifiers(&SecurityAddon)
)]
struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(auth::COOKIE))),
        );
    }
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let (api, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", api_routes())
        .split_for_parts();
    let doc = Arc::new(doc);
    let metrics = state.metrics.clone();
    api.merge(health::router())
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .merge(crate::web::router())
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn(
            move |req: Request, next: axum::middleware::Next| {
                let metrics = metrics.clone();
                async move {
                    let res = next.run(req).await;
                    let class = match res.status().as_u16() {
                        200..=299 => "2xx",
                        300..=399 => "3xx",
                        400..=499 => "4xx",
                        _ => "5xx",
                    };
                    metrics.inc("hub_http_responses_total", &[("class", class)]);
                    as_problem(res).await
                }
            },
        ))
        .with_state(state)
}

fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(auth::router())
        .merge(tenants::router())
        .merge(sites::router())
        .merge(network::router())
        .merge(consumers::router())
        .merge(sensors::router())
        .merge(outages::router())
        .merge(users::router())
        .merge(import::router())
        .merge(events::router())
        .merge(connectors::router())
        .merge(rules::router())
        .merge(ivr::router())
        .merge(campaigns::router())
        .merge(calls::router())
        .merge(sip::router())
        .merge(meters::router())
        .merge(recordings::router())
        .merge(alarms::router())
        .merge(tickets::router())
        .merge(queues::router())
}

/// Rejections produced by axum itself (a path id that is not a number, a body over the limit) come as
/// plain text: they are turned into problem details like every other error.
async fn as_problem(res: Response) -> Response {
    let status = res.status();
    let is_text = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !is_text {
        return res;
    }
    let text = axum::body::to_bytes(res.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let detail = String::from_utf8_lossy(&text).into_owned();
    let problem = Problem {
        kind: "https://hub.example/problems/bad-request".into(),
        title: status.canonical_reason().unwrap_or("error").to_owned(),
        status: status.as_u16(),
        detail,
        errors: Vec::new(),
    };
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body,
    )
        .into_response()
}

/// One invalid field of a request or an import row.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct FieldError {
    /// Path of the field, e.g. `phones[1]` or `starts_at`.
    pub field: String,
    pub reason: String,
}

/// RFC 9457 problem details.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// The period of a report from its `from`/`to` query parameters: by default the 30 days up to now;
/// `from` must be before `to`, and a period spans at most 366 days.
pub fn report_period(
    from: Option<chrono::DateTime<chrono::Utc>>,
    to: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>), ApiError> {
    let to = to.unwrap_or_else(chrono::Utc::now);
    let from = from.unwrap_or(to - chrono::Duration::days(30));
    if from >= to {
        return Err(ApiError::field("from", "must be before `to`"));
    }
    if to - from > chrono::Duration::days(366) {
        return Err(ApiError::field("from", "the period is at most 366 days"));
    }
    Ok((from, to))
}

/// A CSV file to download as `name`.
pub fn csv_download(name: &str, body: impl Into<axum::body::Body>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body.into(),
    )
        .into_response()
}

/// Every error an endpoint can answer with. Internal causes are logged, never sent.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("authentication required")]
    Unauthorized,
    #[error("your role may not do this: needs {0:?}")]
    Forbidden(Permission),
    /// The role allows it, but not on this record (a worker completing another worker's ticket).
    #[error("{0}")]
    NotYours(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    BadRequest(String),
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::Invalid(vec![FieldError {
            field: field.into(),
            reason: reason.into(),
        }])
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound { what } => ApiError::NotFound(format!("{what} not found")),
            StorageError::Conflict { what } => ApiError::Conflict(format!("{what} already exists")),
            StorageError::Invalid { field, reason } => ApiError::field(field, reason),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        StorageError::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug) = match &self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) | ApiError::NotYours(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed"),
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let errors = match &self {
            ApiError::Invalid(errors) => errors.clone(),
            _ => Vec::new(),
        };
        let detail = match &self {
            ApiError::Invalid(errors) => errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.reason))
                .collect::<Vec<_>>()
                .join("; "),
            other => other.to_string(),
        };
        let problem = Problem {
            kind: format!("https://hub.example/problems/{slug}"),
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            status: status.as_u16(),
            detail,
            errors,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut res = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}

/// A JSON body whose errors name the field and reason (`phones[1]: not in E.164`).
pub struct ApiJson<T>(pub T);

/// Largest JSON body accepted (imports go through their own endpoint).
pub const MAX_JSON_BODY: usize = 1 << 20;

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json") || v.ends_with("+json"));
        if !is_json {
            return Err(ApiError::BadRequest(
                "expected Content-Type: application/json".into(),
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("cannot read body: {e}")))?;
        if bytes.len() > MAX_JSON_BODY {
            return Err(ApiError::BadRequest(format!(
                "body larger than {MAX_JSON_BODY} bytes"
            )));
        }
        parse_json(&bytes).map(ApiJson)
    }
}

/// Deserializes JSON, turning a failure into the field it happened at. A body that is not JSON is
/// malformed (400); JSON of the wrong shape is invalid (422). Parsing into a `Value` first keeps the
/// two apart: serde_json reports some type errors (a number where a name is expected) as syntax errors.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        let field = if path == "." {
            missing_field(&msg).unwrap_or(path)
        } else {
            path
        };
        ApiError::field(field, strip_position(&msg))
    })
}

/// serde says "missing field `x` at line 1 column 2": the field is `x`.
fn missing_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_owned())
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// A query string whose errors name the parameter.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|e| {
                let path = e.path().to_string();
                let msg = e.into_inner().to_string();
                let field = if path == "." {
                    missing_field(&msg).unwrap_or(path)
                } else {
                    path
                };
                ApiError::field(field, msg)
            })
    }
}

/// `?limit=&after=`: keyset pagination by id.
#[derive(Debug, Clone, Copy, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Items per page, 1-1000 (100 by default).
    pub limit: Option<i64>,
    /// Return items after this id (the `next_after` of the previous page).
    pub after: Option<i64>,
}

impl Page {
    pub fn request(self) -> Result<PageRequest, ApiError> {
        let limit = self.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::field("limit", "between 1 and 1000"));
        }
        let after = self.after.unwrap_or(0);
        if after < 0 {
            return Err(ApiError::field("after", "must not be negative"));
        }
        Ok(PageRequest { after, limit })
    }
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Paged<T> {
    pub items: Vec<T>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_after: Option<i64>,
}

impl<T> Paged<T> {
    pub fn new(items: Vec<T>, page: PageRequest, id: impl Fn(&T) -> i64) -> Self {
        let next_after = (items.len() as i64 == page.limit)
            .then(|| items.last().map(&id))
            .flatten();
        Paged { items, next_after }
    }
}

/// The authenticated user of a request.
#[derive(Debug, Clone)]
pub struct CurrentUser(pub User);

impl CurrentUser {
    /// Fails with 403 unless the user's role allows `p`.
    pub fn require(&self, p: Permission) -> Result<&Self, ApiError> {
        // Users, tenants and the audit log span all tenants: a tenant-bound admin may not manage them.
        let cross_tenant = p == Permission::Administer && self.0.tenant_id.is_some();
        if self.0.role.allows(p) && !cross_tenant {
            Ok(self)
        } else {
            Err(ApiError::Forbidden(p))
        }
    }

    /// The tenant filter for a list: a tenant-bound user only ever sees their own tenant.
    pub fn scope(&self, requested: Option<i64>) -> Result<Option<i64>, ApiError> {
        match (self.0.tenant_id, requested) {
            (Some(own), Some(r)) if r != own => Err(ApiError::Forbidden(Permission::Read)),
            (Some(own), _) => Ok(Some(own)),
            (None, r) => Ok(r),
        }
    }

    /// A record of another tenant is "not found" for a tenant-bound user.
    pub fn check_tenant(&self, tenant_id: i64, what: &str) -> Result<(), ApiError> {
        match self.0.tenant_id {
            Some(own) if own != tenant_id => Err(ApiError::NotFound(format!("{what} not found"))),
            _ => Ok(()),
        }
    }

    pub fn name(&self) -> &str {
        &self.0.username
    }
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = token_of(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let mut conn = state.db.conn().await?;
        let user = crate::storage::users::by_session(&mut conn, &crate::auth::token_hash(&token))
            .await?
            .ok_or(ApiError::Unauthorized)?;
        Ok(CurrentUser(user))
    }
}

/// The bearer token, or else the session cookie.
pub fn token_of(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return v.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == auth::COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Writes the audit entry of a change and commits it with the change.
pub async fn commit_audited<T: Serialize>(
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    user: &CurrentUser,
    action: &str,
    object_type: &str,
    object_id: i64,
    value: &T,
) -> Result<(), ApiError> {
    let details = serde_json::to_value(value).unwrap_or_default();
    crate::storage::audit::record(
        &mut tx,
        user.name(),
        action,
        object_type,
        &object_id.to_string(),
        details,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// One request to the app as the holder of `token`, for `oneshot` tests: the status and the body as
/// text. `body`, if any, is sent as JSON.
#[cfg(test)]
pub(crate) async fn test_call(
    app: &Router,
    token: &str,
    method: &str,
    uri: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, String) {
    use tower::ServiceExt;
    let mut req = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"));
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(body.map_or(axum::body::Body::empty(), |b| {
            axum::body::Body::from(b.to_string())
        }))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// A fresh hub state (as `test_app`) with tenant `t1` and the model in `files` (CSV imports, in
/// order), for tests of the layers above storage.
#[cfg(test)]
pub(crate) async fn test_world(
    role: crate::names::Role,
    files: &[(crate::import::ImportKind, &str)],
) -> (AppState, tempfile::TempDir) {
    let (_app, state, _token, dir) = test_app(role).await;
    let mut c = state.db.conn().await.unwrap();
    let t = serde_json::from_value(
        serde_json::json!({"external_id": "t1", "name": "T", "kind": "supplier"}),
    )
    .unwrap();
    crate::storage::tenants::upsert(&mut c, &t).await.unwrap();
    drop(c);
    let opts = crate::import::ImportOptions {
        actor: "test".into(),
        ..Default::default()
    };
    for (kind, text) in files {
        let r = crate::import::run(
            &state.db,
            *kind,
            crate::import::Format::Csv,
            "x.csv",
            text,
            &opts,
        )
        .await
        .unwrap();
        assert!(r.errors.is_empty(), "{kind:?}: {:?}", r.errors);
    }
    (state, dir)
}

/// Builds an app over a fresh database with a logged-in user of `role`, for `oneshot` tests.
#[cfg(test)]
pub(crate) async fn test_app(
    role: crate::names::Role,
) -> (Router, AppState, String, tempfile::TempDir) {
    let (db, dir) = crate::storage::test_db::fresh().await;
    let state = AppState::new(db.clone(), Config::default());
    let mut conn = db.conn().await.unwrap();
    let user = crate::storage::users::create(&mut conn, "u", "x", role, None)
        .await
        .unwrap();
    let token = crate::auth::new_token();
    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
    crate::storage::users::create_session(
        &mut conn,
        &crate::auth::token_hash(&token),
        user.id,
        "session",
        expires,
    )
    .await
    .unwrap();
    (app(state.clone()), state, token, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        phones: Vec<crate::types::PhoneNumber>,
        n: u32,
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<Body>(br#"{"phones": ["+74951234567", "12"], "n": 1}"#).unwrap_err();
        match e {
            ApiError::Invalid(f) => {
                assert_eq!(f[0].field, "phones[1]");
                assert!(f[0].reason.contains("E.164"), "{}", f[0].reason);
            }
            other => panic!("{other:?}"),
        }
        match parse_json::<Body>(br#"{"phones": []}"#).unwrap_err() {
            ApiError::Invalid(f) => assert_eq!(f[0].field, "n"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_json::<Body>(b"{"),
            Err(ApiError::BadRequest(_))
        ));
        match parse_json::<Body>(br#"{"phones": [], "n": 1, "x": 2}"#).unwrap_err() {
            ApiError::Invalid(f) => assert!(f[0].reason.contains("unknown field `x`"), "{f:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pages_are_bounded() {
        assert!(
            Page {
                limit: Some(0),
                after: None
            }
            .request()
            .is_err()
        );
        assert!(
            Page {
                limit: Some(1001),
                after: None
            }
            .request()
            .is_err()
        );
        assert_eq!(Page::default().request().unwrap().limit, 100);
    }

    #[test]
    fn tokens_come_from_bearer_or_cookie() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; hub_session=abc".parse().unwrap());
        assert_eq!(token_of(&h).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, "Bearer xyz".parse().unwrap());
        assert_eq!(token_of(&h).as_deref(), Some("xyz"));
    }
}
