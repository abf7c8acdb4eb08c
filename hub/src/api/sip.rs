//! `/sip`: the hub's registrar and trunks. Admins create and delete SIP accounts for operators'
//! phones (the password is turned into HA1 at once and never stored or shown); anyone who may read
//! lists accounts, the phones registered right now and the trunks with their lines and registration.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiJson, AppState, CurrentUser};
use crate::auth::Permission;
use crate::telephony::{AccountInfo, Registration, Telephony, TrunkStatus, accounts};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_accounts, create_account))
        .routes(routes!(delete_account))
        .routes(routes!(registrations))
        .routes(routes!(trunks))
}

fn phone(s: &AppState) -> Result<Telephony, ApiError> {
    s.telephony.clone().ok_or_else(|| {
        ApiError::BadRequest("telephony is not enabled ([telephony] enabled)".into())
    })
}

/// A SIP account to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// The SIP user name the phone registers with (1-64 letters, digits, `.`, `_`, `-`).
    pub username: String,
    /// At least 8 characters; stored only as HA1 = MD5(username:realm:password).
    pub password: String,
    /// The hub user (role operator) the phone belongs to.
    pub user: String,
}

/// SIP accounts of operators' phones.
#[utoipa::path(get, path = "/sip/accounts", tag = "sip", responses((status = 200, body = Vec<AccountInfo>)))]
async fn list_accounts(
    State(s): State<AppState>,
    user: CurrentUser,
) -> Result<Json<Vec<AccountInfo>>, ApiError> {
    user.require(Permission::Read)?;
    let mut conn = s.db.conn().await?;
    Ok(Json(accounts::list(&mut conn).await?))
}

/// Creates a SIP account (admins).
#[utoipa::path(post, path = "/sip/accounts", tag = "sip", request_body = NewAccount,
    responses((status = 201, body = AccountInfo), (status = 409, body = super::Problem), (status = 422, body = super::Problem)))]
async fn create_account(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiJson(body): ApiJson<NewAccount>,
) -> Result<(StatusCode, Json<AccountInfo>), ApiError> {
    user.require(Permission::Administer)?;
    let info = phone(&s)?
        .create_account(&body.username, &body.password, &body.user, user.name())
        .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// Deletes a SIP account and its registrations (admins).
#[utoipa::path(delete, path = "/sip/accounts/{username}", tag = "sip",
    responses((status = 204), (status = 404, body = super::Problem)))]
async fn delete_account(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    user.require(Permission::Administer)?;
    phone(&s)?.delete_account(&username, user.name()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Phones registered right now (expired bindings are left out).
#[utoipa::path(get, path = "/sip/registrations", tag = "sip", responses((status = 200, body = Vec<Registration>)))]
async fn registrations(
    State(s): State<AppState>,
    user: CurrentUser,
) -> Result<Json<Vec<Registration>>, ApiError> {
    user.require(Permission::Read)?;
    Ok(Json(phone(&s)?.registrations().await?))
}

/// Trunks: address, lines in use, registration with the provider.
#[utoipa::path(get, path = "/sip/trunks", tag = "sip", responses((status = 200, body = Vec<TrunkStatus>)))]
async fn trunks(
    State(s): State<AppState>,
    user: CurrentUser,
) -> Result<Json<Vec<TrunkStatus>>, ApiError> {
    user.require(Permission::Read)?;
    Ok(Json(phone(&s)?.trunks().await?))
}
