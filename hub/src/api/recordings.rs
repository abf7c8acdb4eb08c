//! `/calls/{id}/recording`: the WAV file of a recorded call (`[telephony] record = true`), for
//! operators and above (not viewers). A tenant-bound user gets their tenant's calls only.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, AppState, CurrentUser};
use crate::auth::Permission;
use crate::names::Role;
use crate::telephony::{recording, store};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_recording))
}

/// The call's recording: stereo WAV, 8 kHz 16-bit, the caller left and the hub right.
#[utoipa::path(get, path = "/calls/{id}/recording", tag = "calls", responses(
    (status = 200, content_type = "audio/wav", body = Vec<u8>),
    (status = 404, body = super::Problem)))]
async fn get_recording(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    user.require(Permission::Read)?;
    if user.0.role == Role::Viewer {
        // Recordings are people's voices: operators and above.
        return Err(ApiError::Forbidden(Permission::HandleTickets));
    }
    let mut conn = s.db.conn().await?;
    let call = store::get(&mut conn, id).await?;
    match (call.tenant_id, user.0.tenant_id) {
        (Some(t), _) => user.check_tenant(t, &format!("call {id}"))?,
        (None, Some(_)) => return Err(ApiError::NotFound(format!("call {id} not found"))),
        (None, None) => {}
    }
    let Some(path) = recording::of_call(&mut conn, id).await? else {
        return Err(ApiError::NotFound(format!(
            "recording of call {id} not found"
        )));
    };
    drop(conn);
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(call = id, %path, error = %e, "recording file unreadable");
            return Err(ApiError::NotFound(format!(
                "recording of call {id} not found"
            )));
        }
    };
    Ok(([(header::CONTENT_TYPE, "audio/wav")], bytes).into_response())
}

#[cfg(test)]
mod tests {
    use crate::api::test_app;
    use crate::names::Role;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    #[tokio::test]
    async fn operators_get_the_wav_and_viewers_do_not() {
        let (app, state, token, dir) = test_app(Role::Operator).await;
        let mut c = state.db.conn().await.unwrap();
        let id = crate::telephony::store::insert(&mut c, "r@x", "+79160000001", "ivr", 1)
            .await
            .unwrap();
        let get = |path: String, token: &str| {
            Request::get(path)
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap()
        };
        let res = app
            .clone()
            .oneshot(get(format!("/api/v1/calls/{id}/recording"), &token))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "not recorded");
        let wav = dir.path().join("r.wav");
        std::fs::write(&wav, b"RIFF....WAVE").unwrap();
        sqlx::query("UPDATE calls SET recording = $1 WHERE id = $2")
            .bind(wav.to_string_lossy().into_owned())
            .bind(id)
            .execute(&mut *c)
            .await
            .unwrap();
        let res = app
            .clone()
            .oneshot(get(format!("/api/v1/calls/{id}/recording"), &token))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "audio/wav");
        let viewer = crate::auth::new_token();
        let v = crate::storage::users::create(&mut c, "v", "x", Role::Viewer, None)
            .await
            .unwrap();
        crate::storage::users::create_session(
            &mut c,
            &crate::auth::token_hash(&viewer),
            v.id,
            "session",
            chrono::Utc::now() + chrono::Duration::hours(1),
        )
        .await
        .unwrap();
        let res = app
            .oneshot(get(format!("/api/v1/calls/{id}/recording"), &viewer))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
    }
}
