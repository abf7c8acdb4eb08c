//! Login, logout, who am I, and long-lived API tokens.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use chrono::{Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiJson, AppState, CurrentUser, token_of};
use crate::auth::{new_token, token_hash, verify_password};
use crate::storage::{audit, users};

/// Name of the session cookie the web UI uses.
pub const COOKIE: &str = "hub_session";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(create_token))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub username: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResult {
    /// Send as `Authorization: Bearer TOKEN`; the same value is set as the session cookie.
    pub token: String,
    pub user: users::User,
    pub expires_at: chrono::DateTime<Utc>,
}

/// A valid hash of a random password, made once, to spend the same time on unknown user names.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| crate::auth::hash_password(&new_token()).unwrap_or_default())
}

/// Logs in with a user name and password.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = Login,
    responses((status = 200, body = LoginResult), (status = 401, body = super::Problem)))]
async fn login(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<Login>,
) -> Result<Response, ApiError> {
    let mut conn = s.db.conn().await?;
    let found = users::credentials(&mut conn, &body.username).await?;
    // Verify against a dummy hash for unknown users so that timing does not tell which names exist.
    let (user, hash) = match found {
        Some((u, h)) => (Some(u), Some(h)),
        None => (None, None),
    };
    let password = body.password.clone();
    let ok = tokio::task::spawn_blocking(move || match hash {
        Some(h) => verify_password(&password, &h),
        None => {
            let _ = verify_password(&password, dummy_hash());
            false
        }
    })
    .await
    .unwrap_or(false);
    let user = match user {
        Some(u) if ok && !u.disabled => u,
        _ => {
            s.metrics.inc("hub_login_failures_total", &[]);
            tracing::info!(username = %body.username, "login failed");
            return Err(ApiError::Unauthorized);
        }
    };
    let token = new_token();
    let expires_at = Utc::now() + Duration::hours(i64::from(s.config.http.session_ttl_hours));
    users::create_session(
        &mut conn,
        &token_hash(&token),
        user.id,
        "session",
        expires_at,
    )
    .await?;
    audit::record(
        &mut conn,
        &user.username,
        "login",
        "user",
        &user.id.to_string(),
        serde_json::json!({}),
    )
    .await?;
    let secure = if s.config.http.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        i64::from(s.config.http.session_ttl_hours) * 3600
    );
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(LoginResult {
            token,
            user,
            expires_at,
        }),
    )
        .into_response())
}

/// Ends the current session.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", responses((status = 204)))]
async fn logout(
    State(s): State<AppState>,
    _user: CurrentUser,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(token) = token_of(&headers) {
        let mut conn = s.db.conn().await?;
        users::delete_session(&mut conn, &token_hash(&token)).await?;
    }
    let clear = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    Ok((
        axum::http::StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, clear)],
    )
        .into_response())
}

/// The logged-in user.
#[utoipa::path(get, path = "/auth/me", tag = "auth", responses((status = 200, body = users::User)))]
async fn me(user: CurrentUser) -> Json<users::User> {
    Json(user.0)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Days the token stays valid (1-3650).
    pub days: i64,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResult {
    /// Shown once; only its hash is stored.
    pub token: String,
    pub expires_at: chrono::DateTime<Utc>,
}

/// Creates a long-lived API token for the calling user (for dispatch systems and scripts).
#[utoipa::path(post, path = "/auth/tokens", tag = "auth", request_body = NewToken, responses((status = 200, body = TokenResult)))]
async fn create_token(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiJson(body): ApiJson<NewToken>,
) -> Result<Json<TokenResult>, ApiError> {
    if !(1..=3650).contains(&body.days) {
        return Err(ApiError::field("days", "between 1 and 3650"));
    }
    let token = new_token();
    let expires_at = Utc::now() + Duration::days(body.days);
    let mut conn = s.db.conn().await?;
    users::create_session(&mut conn, &token_hash(&token), user.0.id, "api", expires_at).await?;
    audit::record(
        &mut conn,
        user.name(),
        "create",
        "api_token",
        &user.0.id.to_string(),
        serde_json::json!({"days": body.days}),
    )
    .await?;
    Ok(Json(TokenResult { token, expires_at }))
}
