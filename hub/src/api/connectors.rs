//! `/connectors`: the state of every running connector (connected, counts of what arrived, was
//! accepted and was rejected and why, per topic or register), so junk on MQTT or Modbus is visible.

use axum::Json;
use axum::extract::State;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, AppState, CurrentUser};
use crate::auth::Permission;
use crate::ingest::ConnectorsReport;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// Every connector with its counters; `rejects` maps a topic (MQTT), register (Modbus) or sensor id
/// (unknown to the hub) to the reasons and their counts. Connectors serve all tenants, so a user bound
/// to one tenant may not read this.
#[utoipa::path(get, path = "/connectors", tag = "connectors", responses((status = 200, body = ConnectorsReport)))]
async fn list(
    State(s): State<AppState>,
    user: CurrentUser,
) -> Result<Json<ConnectorsReport>, ApiError> {
    user.require(Permission::Read)?;
    if user.0.tenant_id.is_some() {
        return Err(ApiError::Forbidden(Permission::Administer));
    }
    Ok(Json(s.connectors.report()))
}
