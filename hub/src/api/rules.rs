//! `/rules`: the rules engineers write. List them with their metrics and compile errors (file, line,
//! column), read a rule's recent evaluations, write or delete a rule file (hot-loaded, audited), and
//! dry-run a source against given events without any side effect.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiJson, AppState, CurrentUser};
use crate::auth::Permission;
use crate::automation::{RuleStatus, RulesHandle};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(put, delete))
        .routes(routes!(trace))
        .routes(routes!(dry_run))
}

fn handle(s: &AppState) -> Result<&RulesHandle, ApiError> {
    s.rules
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("rules are disabled ([rules] enabled = false)".into()))
}

/// A rule id is a file stem: letters, digits, `_` and `-`.
fn check_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ApiError::field("id", "1 to 64 letters, digits, `_` or `-`"));
    }
    Ok(())
}

/// Every rule with its triggers, metrics (evaluations, errors, time) and, when its file's latest
/// version does not compile, the error with file, line and column (the previous version still runs).
#[utoipa::path(get, path = "/rules", tag = "rules", responses((status = 200, body = Vec<RuleStatus>)))]
async fn list(
    State(s): State<AppState>,
    user: CurrentUser,
) -> Result<Json<Vec<RuleStatus>>, ApiError> {
    user.require(Permission::Read)?;
    Ok(Json(handle(&s)?.list().await))
}

/// The rule's recent evaluations: input, actions, error and log lines.
#[utoipa::path(get, path = "/rules/{id}/trace", tag = "rules", responses((status = 200, body = Vec<Object>)))]
async fn trace(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<rules::TraceEntry>>, ApiError> {
    user.require(Permission::Read)?;
    Ok(Json(handle(&s)?.trace(&id).await))
}

/// Writes the rule's file (the body is the Rhai source) and loads it at once. A source that does not
/// compile is refused with the line and column, and nothing is written.
#[utoipa::path(put, path = "/rules/{id}", tag = "rules", request_body(content = String, content_type = "text/plain"),
    responses((status = 200, body = Vec<Object>), (status = 422, body = super::Problem)))]
async fn put(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Vec<rules::Diagnostic>>, ApiError> {
    user.require(Permission::ManageRules)?;
    check_id(&id)?;
    let h = handle(&s)?;
    let source = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the rule is not UTF-8".into()))?;
    let path = h.dir.join(format!("{id}.rhai"));
    // Compile first (naming the file it would be): a rule that fails must not replace the running
    // version's file.
    if let Err(e) = rules::RuleSet::default().load_source(&id, source, &path) {
        return Err(ApiError::field("source", e.to_string()));
    }
    std::fs::create_dir_all(&h.dir)
        .and_then(|()| std::fs::write(&path, source))
        .map_err(|e| {
            tracing::error!(path = %path.display(), error = %e, "rule not written");
            ApiError::BadRequest(format!("cannot write the rule file {}", path.display()))
        })?;
    match h.reload(path, &format!("user:{}", user.name())).await {
        Some(Ok(warnings)) => Ok(Json(warnings)),
        Some(Err(d)) => Err(ApiError::field("source", d.to_string())),
        None => Err(ApiError::NotFound(
            "the rules runtime is not running".into(),
        )),
    }
}

/// Deletes the rule's file and stops the rule.
#[utoipa::path(delete, path = "/rules/{id}", tag = "rules", responses((status = 204)))]
async fn delete(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    user.require(Permission::ManageRules)?;
    check_id(&id)?;
    let h = handle(&s)?;
    let path = h.dir.join(format!("{id}.rhai"));
    let existed = std::fs::remove_file(&path).is_ok();
    let removed = h.remove(&id, &format!("user:{}", user.name())).await;
    if existed || removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("rule {id} not found")))
    }
}

/// A dry run: the source, events and a world as in rule fixtures (`docs/rules.md`): events written
/// flat, `{"at": "...", "type": "reading", "sensor": "hp-3.p_supply", "value": 2.5}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRun {
    pub source: String,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<rules::testing::FixtureEvent>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub world: rules::StaticWorld,
}

/// Compiles the source and runs it on the events: what it would do, with no side effect.
#[utoipa::path(post, path = "/rules/dry-run", tag = "rules", request_body = DryRun,
    responses((status = 200, body = Vec<Object>), (status = 422, body = super::Problem)))]
async fn dry_run(
    user: CurrentUser,
    ApiJson(req): ApiJson<DryRun>,
) -> Result<Json<Vec<rules::Evaluation>>, ApiError> {
    user.require(Permission::ManageRules)?;
    let events: Vec<rules::Event> = req
        .events
        .into_iter()
        .enumerate()
        .map(|(n, e)| rules::Event {
            id: e.event_id.unwrap_or(n as u64),
            at: e.at,
            source: e.source.unwrap_or_else(|| "dry_run".into()),
            kind: e.kind,
        })
        .collect();
    rules::dry_run(&req.source, &events, &req.world)
        .map(Json)
        .map_err(|e| ApiError::field("source", e.to_string()))
}
