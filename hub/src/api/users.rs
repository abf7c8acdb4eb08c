//! `/users` and `/audit`: accounts, roles and the record of who did what (admins only).

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiJson, ApiQuery, AppState, CurrentUser, Page, Paged, commit_audited};
use crate::auth::{Permission, hash_password, new_password};
use crate::names::Role;
use crate::storage::audit::{self, AuditEntry};
use crate::storage::users::{self, User};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(update))
        .routes(routes!(audit_log))
}

#[utoipa::path(get, path = "/users", tag = "users", responses((status = 200, body = Vec<User>)))]
async fn list(State(s): State<AppState>, user: CurrentUser) -> Result<Json<Vec<User>>, ApiError> {
    user.require(Permission::Administer)?;
    let mut conn = s.db.conn().await?;
    Ok(Json(users::list(&mut conn).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub username: String,
    pub role: Role,
    /// Restrict the user to one tenant (its id).
    #[serde(default)]
    pub tenant_id: Option<i64>,
    /// At least 10 characters; a random one is generated (and returned once) when omitted.
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedUser {
    pub user: User,
    /// The generated password, present only when none was given.
    pub password: Option<String>,
}

fn check_password(p: &str) -> Result<(), ApiError> {
    if p.chars().count() < 10 {
        return Err(ApiError::field("password", "at least 10 characters"));
    }
    Ok(())
}

#[utoipa::path(post, path = "/users", tag = "users", request_body = NewUser, responses((status = 200, body = CreatedUser), (status = 409, body = super::Problem)))]
async fn create(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiJson(new): ApiJson<NewUser>,
) -> Result<Json<CreatedUser>, ApiError> {
    user.require(Permission::Administer)?;
    let (password, generated) = match new.password {
        Some(p) => {
            check_password(&p)?;
            (p, None)
        }
        None => {
            let p = new_password();
            (p.clone(), Some(p))
        }
    };
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut tx = s.db.begin().await?;
    let created = users::create(&mut tx, &new.username, &hash, new.role, new.tenant_id).await?;
    commit_audited(tx, &user, "create", "user", created.id, &created).await?;
    Ok(Json(CreatedUser {
        user: created,
        password: generated,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    #[serde(default)]
    pub role: Option<Role>,
    /// A disabled user cannot log in; their sessions end at once.
    #[serde(default)]
    pub disabled: Option<bool>,
    #[serde(default)]
    pub password: Option<String>,
}

#[utoipa::path(patch, path = "/users/{id}", tag = "users", request_body = UserChange, responses((status = 200, body = User)))]
async fn update(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
    ApiJson(ch): ApiJson<UserChange>,
) -> Result<Json<User>, ApiError> {
    user.require(Permission::Administer)?;
    let hash = match ch.password {
        Some(p) => {
            check_password(&p)?;
            Some(hash_password(&p).map_err(|e| ApiError::Internal(e.to_string()))?)
        }
        None => None,
    };
    let mut tx = s.db.begin().await?;
    let updated = users::update(&mut tx, id, ch.role, ch.disabled, hash.as_deref()).await?;
    let details = serde_json::json!({"role": ch.role, "disabled": ch.disabled, "password_changed": hash.is_some()});
    commit_audited(tx, &user, "update", "user", id, &details).await?;
    Ok(Json(updated))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub object_type: Option<String>,
    pub limit: Option<i64>,
    /// Entries older than this id (newest first).
    pub after: Option<i64>,
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/audit", tag = "users", params(AuditQuery), responses((status = 200, body = Paged<AuditEntry>)))]
async fn audit_log(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Paged<AuditEntry>>, ApiError> {
    user.require(Permission::Administer)?;
    let page = Page {
        limit: q.limit,
        after: q.after,
    }
    .request()?;
    let mut conn = s.db.conn().await?;
    let items = audit::list(
        &mut conn,
        q.actor.as_deref(),
        q.object_type.as_deref(),
        page,
    )
    .await?;
    Ok(Json(Paged::new(items, page, |x| x.id)))
}
